"""The queue and ``iterprune serve``: order, windows, a second serve, SIGKILL, sweeps, ranking."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import Recorder, checkpoint_state, iterprune, tiny, write

from iterprune.cli import queue as serving
from iterprune.cli import table as cli
from iterprune.engine.runner import Runner
from iterprune.report import views
from iterprune.serve import daemon, server, supervisor
from iterprune.state.backlog import Backlog
from iterprune.state.store import Store

UTC = dt.timezone.utc


def queue(tmp_path: Path, state: Path, docs: dict[str, dict], priority: dict | None = None) -> None:
    for name, doc in docs.items():
        path = write(tmp_path / f"{name}.yaml", {**doc, "name": name})
        args = ["queue", "add", str(path), "--state-dir", str(state)]
        assert cli.main([*args, "--priority", str((priority or {}).get(name, 0))]) == 0


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def recording(state: Path, order: list[str], after=None, before=None):
    """A serve_one that serves quietly and records the order (``before`` and ``after`` run
    before and after each)."""

    def serve_one(run_id, started, clock) -> str:
        order.append(run_id)
        if before:
            before(run_id)
        store = Store(state)
        try:
            runner = Runner(store, run_id, Recorder())
            started(runner)
            return daemon.serve(runner, clock=clock, heartbeat_s=0.05, queue=True)
        finally:
            store.close()
            if after:
                after(run_id)

    return serve_one


def background_serve(state: Path, *flags: str) -> subprocess.Popen:
    """``iterprune serve FLAGS`` in a process of its own, its output in a pipe."""
    command = [sys.executable, "-m", "iterprune", "serve", *flags, "--state-dir", str(state)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(condition, proc: subprocess.Popen) -> None:
    """Poll ``condition`` while ``proc`` serves (two minutes at most)."""
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)


def test_serve_takes_priority_then_first_come_and_ends_when_empty(tmp_path: Path) -> None:
    state = tmp_path / "s"
    docs = {name: tiny(prune={"target_sparsity": 0.3}) for name in ("low", "high", "mid", "mid2")}
    queue(tmp_path, state, docs, {"low": -1, "high": 9, "mid": 3, "mid2": 3})
    order: list[str] = []
    assert server.serve_queue(state, recording(state, order), poll_s=0.05, until_empty=True) == 4
    assert order == ["high", "mid", "mid2", "low"]
    entries = Backlog(Store(state)).entries()
    assert {e["status"] for e in entries} == {"finished"} and all(
        e["position"] is None for e in entries
    )


def test_a_closed_window_yields_to_an_open_run_and_comes_back(tmp_path: Path) -> None:
    state = tmp_path / "s"
    night = tiny(prune={"target_sparsity": 0.3}, when={"window": "* 22-23 * * *"})
    queue(
        tmp_path, state, {"night": night, "day": tiny(prune={"target_sparsity": 0.3})}, {"night": 5}
    )
    clock = Clock(dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    order: list[str] = []

    def after(run_id: str) -> None:
        clock.now = dt.datetime(2026, 11, 25, 22, 30, tzinfo=UTC)  # night falls

    served = server.serve_queue(
        state, recording(state, order, after), clock=clock, poll_s=0.05, until_empty=True
    )
    assert order == ["day", "night"] and served == 2  # the higher priority waited for its window


def evening_then_other(tmp_path: Path, state: Path, closing=None) -> tuple[Clock, list, Any]:
    """A queue of 'evening' (priority 5; its window, 18-21h, closes after its first round) and
    'other' (no window; when it ends, the next evening comes): the clock, the order runs were
    served in, and the serve_one to serve them with. ``closing`` runs as the window closes."""
    evening = tiny(prune={"step": 0.1, "target_sparsity": 0.6}, when={"window": "* 18-21 * * *"})
    other = tiny(prune={"target_sparsity": 0.3})
    queue(tmp_path, state, {"evening": evening, "other": other}, {"evening": 5})
    clock = Clock(dt.datetime(2026, 11, 25, 21, 59, tzinfo=UTC))
    order: list[str] = []

    def serve_one(run_id, started, clock_):
        order.append(run_id)
        s = Store(state)

        class Closes(Recorder):
            def round_done(self, row):
                super().round_done(row)
                if clock.now.day == 25:
                    clock.now = dt.datetime(2026, 11, 25, 22, 1, tzinfo=UTC)
                    if closing is not None:
                        closing()

        try:
            runner = Runner(s, run_id, Closes() if run_id == "evening" else Recorder())
            started(runner)
            return daemon.serve(runner, clock=clock_, heartbeat_s=0.05, queue=True)
        finally:
            s.close()
            if run_id == "other":
                clock.now = dt.datetime(2026, 11, 26, 18, 0, tzinfo=UTC)  # the next evening

    return clock, order, serve_one


def test_a_run_whose_window_closes_gives_the_device_to_the_next(tmp_path: Path) -> None:
    state = tmp_path / "s"
    clock, order, serve_one = evening_then_other(tmp_path, state)
    assert server.serve_queue(state, serve_one, clock=clock, poll_s=0.05, until_empty=True) == 3
    assert order == ["evening", "other", "evening"]
    store = Store(state)
    assert store.run("evening")["status"] == "finished"
    assert "yield" in [e["kind"] for e in store.events("evening")]


def test_a_yield_never_writes_on_the_heartbeats_connection_while_it_is_in_use(
    tmp_path: Path, monkeypatch
) -> None:
    """The heartbeat's connection belongs to its thread. The round job once wrote its yield event
    on it, and a heartbeat transaction in flight on that connection failed the run now and then
    (a serve of 2 runs instead of 3 in CI). Here, as the window closes, the round job waits
    until a heartbeat is inside its transaction (held 0.3 s) before it goes on to yield, and no
    connection may be inside a transaction in two threads at once."""
    inside: dict[int, int] = {}  # id(store): the thread in a transaction on it
    overlaps: list[str] = []
    transaction, heartbeat = Store.transaction, Store.heartbeat
    closing, beating = threading.Event(), threading.Event()

    @contextlib.contextmanager
    def watched(self, point="db_commit"):
        me, holder = threading.get_ident(), inside.get(id(self))
        if holder is not None and holder != me:
            overlaps.append(point)
        outermost = holder is None
        if outermost:
            inside[id(self)] = me
        try:
            with transaction(self, point) as db:
                yield db
        finally:
            if outermost:
                inside.pop(id(self), None)

    def slow(self, *args, **kwargs):  # while the window closes: a heartbeat holding its lock
        if not closing.is_set():
            return heartbeat(self, *args, **kwargs)
        with self.transaction("heartbeat_commit"):
            beating.set()
            time.sleep(0.3)
            closing.clear()
            return heartbeat(self, *args, **kwargs)

    def closes() -> None:
        closing.set()
        assert beating.wait(10)  # the yield comes while a heartbeat is in flight

    monkeypatch.setattr(Store, "transaction", watched)
    monkeypatch.setattr(Store, "heartbeat", slow)
    state = tmp_path / "s"
    clock, _, serve_one = evening_then_other(tmp_path, state, closes)
    assert server.serve_queue(state, serve_one, clock=clock, poll_s=0.05, until_empty=True) == 3
    store = Store(state)
    assert store.run("evening")["status"] == "finished"
    assert "yield" in [e["kind"] for e in store.events("evening")]
    assert overlaps == [] and beating.is_set()


def test_serving_an_empty_queue_of_a_new_state_directory_ends_at_once(tmp_path, capsys) -> None:
    """It ended before its first heartbeat wrote the serve's row, and clearing that row raised
    sqlite-utils' NotFoundError: a traceback for the first command a queue user might try."""
    assert cli.main(["serve", "--until-empty", "--state-dir", str(tmp_path / "new")]) == 0
    assert "serve ended after 0 run(s)" in capsys.readouterr().out


def test_a_second_serve_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    queue(tmp_path, state, {"a": tiny()})
    backlog = Backlog(Store(state))
    with server.serve_lock(state, backlog):
        backlog.serving(4242, "elsewhere", time.time(), None)
        with pytest.raises(daemon.RunBusy, match="already served by pid 4242"):
            with server.serve_lock(state, backlog):
                pass
        assert cli.main(["serve", "--until-empty", "--state-dir", str(state)]) == 4


def test_stop_serve_and_queue_remove(tmp_path: Path, capsys) -> None:
    state = tmp_path / "s"
    queue(tmp_path, state, {"a": tiny(), "b": tiny()})
    assert cli.main(["queue", "remove", "b", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert cli.main(["queue", "--json", "--state-dir", str(state)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in doc["runs"]] == ["a"] and doc["serve"] is None
    assert cli.main(["stop", "--serve", "--state-dir", str(state)]) == 0
    assert "not running" in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_serve_continues_every_run_exactly_once(tmp_path: Path) -> None:
    docs = {
        "first": tiny(prune={"step": 0.1, "target_sparsity": 0.6}, finetune={"epochs": 4}),
        "second": tiny(prune={"target_sparsity": 0.5}, seed=5),
    }
    state, alone = tmp_path / "s", tmp_path / "alone"
    queue(tmp_path, state, docs)
    for name in docs:  # what uninterrupted runs of the same schedules end with
        assert iterprune("start", str(tmp_path / f"{name}.yaml"), state=alone).returncode == 0
    proc, watcher = background_serve(state, "--until-empty"), Store(state)
    wait_until(lambda: (watcher.run("first")["accepted_round"] or 0) >= 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert watcher.run("first")["status"] == "running"  # killed mid-run
    again = iterprune("serve", "--until-empty", state=state)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in docs:
        row = watcher.run(name)
        assert row["status"] == "finished"
        accepted = [
            (r["round"], r["attempt"]) for r in watcher.rounds(name) if r["status"] == "accepted"
        ]
        assert len(accepted) == len({r for r, _ in accepted})  # no round accepted twice
        ours = checkpoint_state(state, name, row["accepted_round"])["model"]
        theirs = checkpoint_state(alone, name, Store(alone).run(name)["accepted_round"])["model"]
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_sweeps_expand_validate_and_rank(tmp_path: Path, capsys) -> None:
    state = tmp_path / "s"
    base = write(tmp_path / "base.yaml", {**tiny(prune={"target_sparsity": 0.3}), "name": "base"})
    args = ["sweep", str(base), "--set", "prune.step=0.1,0.3", "--set", "validate.max_drop=5,50"]
    assert cli.main([*args, "--seeds", "1,2", "--dry-run", "--state-dir", str(state)]) == 0
    names = capsys.readouterr().out.split("\n")[:8]
    assert names[0] == "base-step0.1-max_drop5-seed1" and len(set(names)) == 8
    assert not (state / "iterprune.db").exists()  # a dry run writes nothing
    bad = ["sweep", str(base), "--set", "prune.step=0.1,7", "--state-dir", str(state)]
    assert cli.main(bad) == 2 and "prune.step" in capsys.readouterr().err
    assert not (state / "iterprune.db").exists() or Backlog(Store(state)).entries() == []
    assert cli.main([*args[:4], "--seeds", "1,2", "--state-dir", str(state)]) == 0
    assert len(Backlog(Store(state)).sweep("base")) == 4
    assert server.serve_queue(state, recording(state, []), poll_s=0.05, until_empty=True) == 4
    capsys.readouterr()
    assert cli.main(["compare", "--sweep", "base", "--json", "--state-dir", str(state)]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert [d["rank"] for d in ranked] == [1, 2, 3, 4]
    keys = [(-d["sparsity"], -d["val_accuracy"], d["epochs"]) for d in ranked]
    assert keys == sorted(keys)
    over = ["compare", "--sweep", "base", "--over-seeds", "--json", "--state-dir", str(state)]
    assert cli.main(over) == 0
    settings = json.loads(capsys.readouterr().out)
    assert sorted(s["setting"] for s in settings) == ["base-step0.1", "base-step0.3"]
    for s in settings:
        mine = [d for d in ranked if d["run"] in s["runs"]]
        assert sorted(s["seeds"]) == [1, 2] and len(mine) == 2
        assert s["sparsity"]["mean"] == pytest.approx(sum(d["sparsity"] for d in mine) / 2)
    assert cli.main([*over[:4], "--state-dir", str(state)]) == 0
    assert "settings over 2 seed(s), mean ± sd" in capsys.readouterr().out
    assert cli.main(["compare", *[d["run"] for d in ranked[:3]], "--state-dir", str(state)]) == 0
    assert "ranked" in capsys.readouterr().out


def test_a_sweep_over_relative_budgets_names_its_runs_with_pct(tmp_path: Path, capsys) -> None:
    base = write(tmp_path / "base.yaml", {**tiny(), "name": "base"})
    args = ["sweep", str(base), "--set", "validate.max_drop=1%,2.5%", "--dry-run"]
    assert cli.main([*args, "--state-dir", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["base-max_drop1pct", "base-max_drop2.5pct"]


def test_a_seed_given_to_set_points_to_seeds(tmp_path: Path, capsys) -> None:
    base = write(tmp_path / "base.yaml", tiny())
    assert cli.main(["sweep", str(base), "--set", "seed=0,1", "--dry-run"]) == 2
    assert "seeds are swept with --seeds (--seeds 0,1)" in capsys.readouterr().err


@pytest.mark.slow
def test_stop_serve_checkpoints_the_current_run_and_serve_continues_it(tmp_path: Path) -> None:
    state = tmp_path / "s"
    long = tiny(finetune={"epochs": 3000}, prune={"step": 0.2, "target_sparsity": 0.2})
    queue(tmp_path, state, {"long": long})  # one round of 3000 epochs: caught fine-tuning
    proc, watcher = background_serve(state), Store(state)
    wait_until(lambda: watcher.run("long")["phase"] == "finetune", proc)
    assert iterprune("stop", "--serve", state=state).returncode == 0
    assert proc.wait(timeout=120) == 0, proc.stdout.read()
    assert watcher.run("long")["status"] == "stopped"
    assert watcher.mid_checkpoint("long", 1, 1) is not None  # the round's progress is kept
    assert Backlog(watcher).entry("long")["held"] is None  # not held: serve takes it up again
    again = iterprune("serve", "--until-empty", state=state)
    assert again.returncode == 0, again.stdout + again.stderr
    assert watcher.run("long")["status"] == "finished"
    assert any("continuing round" in e["message"] for e in watcher.events("long"))


def test_a_run_served_by_hand_is_left_to_its_owner(tmp_path: Path) -> None:
    state = tmp_path / "s"
    queue(tmp_path, state, {"a": tiny(), "b": tiny()}, {"a": 1})
    store = Store(state)
    backlog, clock = Backlog(store), Clock(dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    assert server.next_run(backlog, clock) == "a"
    with daemon.run_lock(state, "a", store):  # as `iterprune resume a` in another terminal
        assert server.next_run(backlog, clock) == "b"
    assert server.next_run(backlog, clock) == "a"


def test_two_device_workers_never_take_the_same_run(tmp_path: Path) -> None:
    state = tmp_path / "s"
    docs = {name: tiny(prune={"target_sparsity": 0.3}) for name in ("a", "b", "c", "d")}
    queue(tmp_path, state, docs)
    both = threading.Barrier(2, timeout=60)  # each worker's first run waits for the other's
    orders: dict[int, list[str]] = {0: [], 1: []}

    def worker(index: int) -> None:
        def first_waits(run_id: str) -> None:
            if len(orders[index]) == 1:
                both.wait()

        slot = server.Slot(index, "cpu", os.getppid())
        serve_one = recording(state, orders[index], before=first_waits)
        server.serve_queue(state, serve_one, poll_s=0.05, until_empty=True, slot=slot)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert orders[0] and orders[1]  # both served, and the first two at the same time
    assert sorted(orders[0] + orders[1]) == ["a", "b", "c", "d"]  # each once
    store = Store(state)
    assert not [e for r in docs for e in store.events(r) if "skipped by serve" in e["message"]]
    assert {e["status"] for e in Backlog(store).entries()} == {"finished"}
    assert all(w["current"] is None for w in Backlog(store).workers())


def test_devices_are_checked(tmp_path: Path, capsys, monkeypatch) -> None:
    state = ["--state-dir", str(tmp_path / "s")]
    for devices, why in [
        ("tpu", "cpu, cuda or cuda:N"),
        ("cuda,cuda:1", "name each GPU"),
        ("cuda:0,cuda:0", "GPU twice"),
        (",", "needs a device"),
    ]:
        assert cli.main(["serve", "--devices", devices, *state]) == 2
        assert why in capsys.readouterr().err
    for worker, why in [("x", "SLOT:PID"), ("0:1", "is gone")]:  # serve's own option
        assert cli.main(["serve", "--worker", worker, *state]) == 2
        assert why in capsys.readouterr().err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # cuda:N counts the GPUs this one may see
    assert serving._gpu("cuda:1") == "3"
    assert cli.main(["serve", "--devices", "cuda:2", *state]) == 2
    assert "shows 2 GPU(s)" in capsys.readouterr().err


def serve_pids(state: Path) -> list[int]:
    row = Backlog(Store(state)).serve() or {}
    return [row["pid"], *(w["pid"] for w in Backlog(Store(state)).workers())]


@pytest.mark.slow
def test_a_serve_of_two_devices_is_killed_stopped_and_finishes_every_run_once(
    tmp_path: Path,
) -> None:
    docs = {
        f"r{i}": tiny(
            prune={"step": 0.2, "target_sparsity": 0.36}, finetune={"epochs": 300}, seed=i
        )
        for i in range(2)
    }
    state, alone = tmp_path / "s", tmp_path / "alone"
    queue(tmp_path, state, docs)
    for name in docs:  # what uninterrupted runs of the same schedules end with
        assert iterprune("start", str(tmp_path / f"{name}.yaml"), state=alone).returncode == 0
    watcher = Store(state)

    def fine_tuning(runs: int):  # at least `runs` runs served, each served one fine-tuning
        served = [r for r in docs if watcher.run(r)["status"] == "running"]
        return len(served) >= runs and all(watcher.run(r)["phase"] == "finetune" for r in served)

    # 1. SIGKILL the serve: its workers checkpoint their runs and end by themselves
    proc = background_serve(state, "--devices", "cpu,cpu")
    wait_until(lambda: fine_tuning(2), proc)
    doc = views.serve(watcher)
    assert [d["device"] for d in doc["devices"]] == ["cpu", "cpu"]
    assert len({d["current"] for d in doc["devices"]}) == 2  # two runs at once
    workers = serve_pids(state)[1:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):
        assert time.monotonic() < deadline, "the workers outlived their serve"
        time.sleep(0.1)
    statuses = [watcher.run(r)["status"] for r in docs]  # a round may have ended a run first
    assert "stopped" in statuses and set(statuses) <= {"stopped", "finished"}
    # 2. started again; a worker SIGKILLed (the OOM killer, say): its run is taken up again;
    # then `iterprune stop --serve`: the runs checkpoint and every process ends
    proc = background_serve(state, "--devices", "cpu,cpu")
    wait_until(lambda: fine_tuning(1), proc)
    dead = next(w for w in Backlog(watcher).workers() if w["current"])
    os.kill(dead["pid"], signal.SIGKILL)
    run = dead["current"]
    wait_until(
        lambda: (
            watcher.run(run)["pid"] not in (None, dead["pid"])
            or watcher.run(run)["status"] == "finished"
        ),
        proc,
    )
    pids = serve_pids(state)
    assert cli.main(["stop", "--serve", "--state-dir", str(state)]) == 0
    assert proc.wait(timeout=120) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    out = proc.stdout.read()
    assert "the worker ended with exit code -9; starting it again in 2 s" in out
    for r in docs:
        assert watcher.run(r)["status"] in ("stopped", "finished")
        assert watcher.run(r)["status"] != "stopped" or f"{r}: stopped" in out
    # 3. once more to the end: every run finished once, with the weights of uninterrupted runs
    again = iterprune("serve", "--devices", "cpu,cpu", "--until-empty", state=state)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in docs:
        row = watcher.run(name)
        assert row["status"] == "finished"
        accepted = [r["round"] for r in watcher.rounds(name) if r["status"] == "accepted"]
        assert len(accepted) == len(set(accepted))
        ours = checkpoint_state(state, name, row["accepted_round"])["model"]
        theirs = checkpoint_state(alone, name, Store(alone).run(name)["accepted_round"])["model"]
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert Backlog(watcher).workers() == [] and views.serve(watcher) is None


class Exits:
    """A worker process that has ended with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code


def test_a_dying_worker_is_started_again_later_and_given_up_after_five(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    started = []
    monkeypatch.setattr(
        supervisor.launch, "popen", lambda args, log: started.append(args) or Exits(1)
    )
    w = supervisor.Worker(1, "cuda:1", "cuda:1", tmp_path / "log")
    now = [1000.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    pauses = []
    while not w.done:
        supervisor._tend(w, tmp_path, ["--until-empty"], stopping=False)  # start it
        supervisor._tend(w, tmp_path, ["--until-empty"], stopping=False)  # it died
        pauses.append(w.due - now[0])
        now[0] = w.due
    assert pauses == [2.0, 5.0, 15.0, 60.0, 0.0] and len(started) == 5 and w.deaths == 5
    assert started[0][-3:] == ["--worker", f"1:{os.getpid()}", "--until-empty"]
    out = capsys.readouterr().out
    assert "[cuda:1] the worker ended with exit code 1; starting it again in 2 s" in out
    assert "giving up on this device" in out
    old = supervisor.Worker(0, "cpu", "cpu", tmp_path / "log", proc=Exits(-9), deaths=4)
    supervisor._tend(old, tmp_path, [], stopping=False)  # it lived long: a new count
    assert old.deaths == 1 and not old.done
    supervisor._tend(old, tmp_path, [], stopping=True)  # a stop ends it for good
    assert old.done


@pytest.mark.slow
def test_stop_run_under_serve_holds_that_run_and_serve_moves_on(tmp_path: Path) -> None:
    state = tmp_path / "s"
    long = tiny(finetune={"epochs": 3000}, prune={"step": 0.2, "target_sparsity": 0.2})
    queue(tmp_path, state, {"long": long, "next": tiny(prune={"target_sparsity": 0.3})})
    proc, watcher = background_serve(state, "--until-empty"), Store(state)
    wait_until(lambda: watcher.run("long")["phase"] == "finetune", proc)
    stop = iterprune("stop", "long", state=state)
    assert stop.returncode == 0 and "serve holds it and moves on" in stop.stdout
    assert proc.wait(timeout=120) == 0, proc.stdout.read()  # it went on to `next`, then ended
    assert (
        watcher.run("long")["status"] == "stopped" and watcher.run("next")["status"] == "finished"
    )
    assert Backlog(watcher).entry("long")["held"] == server.HELD


def test_runs_at_once_on_a_crowded_cpu_are_warned_of(tmp_path: Path, monkeypatch) -> None:
    state = tmp_path / "s"
    queue(tmp_path, state, {"one": tiny(), "two": tiny(threads=2)})
    backlog = Backlog(Store(state))
    monkeypatch.setattr(supervisor.os, "cpu_count", lambda: 4)
    assert supervisor._crowded(backlog, ["cpu", "cpu"]) is None  # 2 x 2 threads on 4 cores
    assert supervisor._crowded(backlog, ["cpu", "cuda:0"]) is None
    warning = supervisor._crowded(backlog, ["cpu", "cpu", "cpu"])
    assert "3 runs at once on the CPU, with up to 2 threads each, on 4 cores" in warning
    assert "threads: 1" in warning


def test_a_stop_asked_while_a_serve_starts_is_kept_and_an_older_one_is_not(
    tmp_path: Path, capsys
) -> None:
    state = tmp_path / "s"
    queue(tmp_path, state, {"a": tiny()})
    backlog, host = Backlog(Store(state)), socket.gethostname()
    backlog.serving(dead_pid(), host, time.time(), None)  # the row of a serve killed earlier
    backlog.request_stop(time.time())  # asked of that serve, before the next one started
    since = time.time()
    with server.serve_lock(state, backlog):  # a new serve holds the lock, has no row yet
        assert backlog.serving(os.getpid(), host, time.time(), None, "cpu", since)  # not its stop
        Backlog(Store(state)).served()  # as if it had not written its row yet
        assert cli.main(["stop", "--serve", "--state-dir", str(state)]) == 0
        assert "serve that is starting to stop" in capsys.readouterr().out
        assert not backlog.serving(os.getpid(), host, time.time(), None, "cpu", since)


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_queue_remove_takes_a_run_whose_serve_and_worker_were_killed(tmp_path: Path) -> None:
    state = tmp_path / "s"
    queue(tmp_path, state, {"a": tiny()})
    store, host, gone = Store(state), socket.gethostname(), dead_pid()
    store.update_run("a", status="running", pid=gone, host=host, heartbeat_at=time.time())
    backlog = Backlog(store)
    backlog.serving(gone, host, time.time(), "a", "cpu,cpu")  # both left their rows behind
    backlog.working(0, "cpu", gone, host, time.time())
    backlog.claim(0, "a")
    assert cli.main(["queue", "remove", "a", "--state-dir", str(state)]) == 0
    assert backlog.entry("a") is None


def test_a_run_queued_from_one_directory_is_served_from_another(tmp_path: Path) -> None:
    """Its factories and files are found from the schedule's directory wherever serve runs: the
    run recorded that directory as given (``../proj``), and a serve started elsewhere failed with
    "cannot import module"."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "there").mkdir()
    (tmp_path / "proj" / "own_models.py").write_text(
        "from iterprune.engine import examples\n\n\ndef build():\n"
        "    return examples.digits_mlp(hidden=8)\n"
    )
    doc = tiny(model={"factory": "own_models:build", "builtin": None, "kwargs": None})
    write(tmp_path / "proj" / "s.yaml", {**doc, "name": "elsewhere"})
    state = ["--state-dir", str(tmp_path / "state")]

    def cli_in(where: Path, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "iterprune", *args, *state]
        return subprocess.run(argv, cwd=where, capture_output=True, text=True, timeout=300)

    assert cli_in(tmp_path / "there", "queue", "add", "../proj/s.yaml").returncode == 0
    served = cli_in(tmp_path, "serve", "--until-empty")
    assert served.returncode == 0, served.stderr
    assert Store(tmp_path / "state").run("elsewhere")["status"] == "finished", served.stdout
