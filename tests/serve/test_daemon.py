"""Operating a run: time windows (on a controlled clock), pausing, stopping, detaching, logs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import Recorder, iterprune, open_runner, tiny, write

from iterprune.cli import table as cli
from iterprune.engine.runner import Runner
from iterprune.errors import ScheduleError
from iterprune.schedule import parsing as schedule
from iterprune.schedule import window
from iterprune.serve import daemon
from iterprune.state.runs import open_run
from iterprune.state.store import Store

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the window, on fixed datetimes -------------------------------------------------------------


def test_window_opens_and_closes_minute_by_minute() -> None:
    w = window.Window("* 22-23,0-5 * * *")
    assert w.is_open(at("2026-11-25 23:30")) and w.is_open(at("2026-11-26 05:59:59"))
    assert not w.is_open(at("2026-11-25 12:00")) and not w.is_open(at("2026-11-26 06:00"))
    assert w.next_open(at("2026-11-25 12:00")) == at("2026-11-25 22:00")
    assert w.next_close(at("2026-11-25 23:30")) == at("2026-11-26 06:00")


@pytest.mark.parametrize(
    "dow, open_on",
    [
        ("0", {"sun"}),
        ("7", {"sun"}),
        ("1-5", {"mon", "tue", "wed", "thu", "fri"}),
        ("sat,sun", {"sat", "sun"}),
        ("5-0", {"fri", "sat", "sun"}),
        ("*/2", {"sun", "tue", "thu", "sat"}),
    ],
)
def test_day_of_week_follows_standard_cron_not_apscheduler(dow: str, open_on: set[str]) -> None:
    """APScheduler 3 reads day 0 as Monday; a schedule's 0 means Sunday, as in every crontab."""
    w = window.Window(f"* * * * {dow}")
    week = {
        at(f"2026-11-{d} 10:00"): name
        for d, name in zip(
            range(22, 29), ["sun", "mon", "tue", "wed", "thu", "fri", "sat"], strict=True
        )
    }
    assert {name for t, name in week.items() if w.is_open(t)} == open_on


def test_window_in_a_timezone() -> None:
    w = window.Window("* 9-17 * * *", "Europe/Berlin")
    assert w.is_open(at("2026-11-25 08:30"))  # 09:30 in Berlin (UTC+1 in November)
    assert not w.is_open(at("2026-11-25 17:30"))  # 18:30 in Berlin


@pytest.mark.parametrize(
    "when, problem",
    [
        ("{window: '* * *'}", "when.window (line 3): must have 5 fields"),
        ("{window: '61 * * * *'}", "when.window (line 3):"),
        ("{window: '* * 31 2 *'}", "when.window (line 3): never opens"),
        ("{window: '* * * * 8'}", "day of week must be 0-7"),
        (
            "{window: '* 1 * * *', timezone: Mars/Olympus}",
            "when.timezone (line 3): unknown timezone 'Mars/Olympus'",
        ),
        (
            "{window: '* 1 * * *', window_policy: later}",
            "when.window_policy (line 3): must be one of finish, pause",
        ),
        ("{pause_between_rounds: soon}", "when.pause_between_rounds (line 3): must be a duration"),
    ],
)
def test_bad_windows_are_schedule_errors(when: str, problem: str) -> None:
    text = f"model: {{builtin: digits_mlp}}\ndata: {{builtin: digits}}\nwhen: {when}\n"
    with pytest.raises(ScheduleError) as err:
        schedule.parse(text, "s.yaml")
    assert any(problem in p for p in err.value.problems), err.value.problems


# --- serving under a window, with a controlled clock ---------------------------------------------


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def serve_in_background(runner: Runner, clock: Clock) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        out["status"] = daemon.serve(runner, clock=clock, heartbeat_s=0.02)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_outside_the_window_the_run_waits_paused_with_the_next_opening(tmp_path: Path) -> None:
    runner = open_runner(tmp_path, tiny(when={"window": "* 22-23 * * *"}))
    thread, out = serve_in_background(runner, Clock(at("2026-11-25 12:00")))
    watcher = Store(tmp_path)
    wait_for(lambda: watcher.run("tiny")["status"] == "paused")
    row = watcher.run("tiny")
    assert row["phase"] == "waiting" and row["next_window_at"].startswith("2026-11-25T22:00")
    assert watcher.rounds("tiny") == []  # no round started outside the window
    runner.stop.set()
    thread.join(10)
    assert out["status"] == "stopped"
    assert any("waiting until 2026-11-25 22:00" in e["message"] for e in watcher.events("tiny"))


class CloseWindowAfter(Recorder):
    """Moves the clock past the window's end after ``n`` fine-tuning batches; under the pause
    policy the batch then waits until the heartbeat has seen it (the runner's pause event), so
    the round is still running when it does, however slow the machine."""

    def __init__(self, clock: Clock, n: int, closed: dt.datetime) -> None:
        super().__init__()
        self.clock, self.n, self.closed, self.seen = clock, n, closed, 0
        self.pause: threading.Event | None = None  # the runner's, under the pause policy

    def advance(self, done: float) -> None:
        if self.phases[-1] == "finetune":
            self.seen += 1
            if self.seen == self.n:
                self.clock.now = self.closed
                if self.pause is not None:
                    assert self.pause.wait(30), "the heartbeat never saw the window close"


@pytest.mark.parametrize("policy", ["pause", "finish"])
def test_a_window_closing_mid_round_pauses_or_finishes_the_round(
    tmp_path: Path, policy: str
) -> None:
    clock = Clock(at("2026-11-25 22:30"))
    doc = tiny(finetune={"epochs": 3}, when={"window": "* 22 * * *", "window_policy": policy})
    rec = CloseWindowAfter(clock, 5, at("2026-11-25 23:00"))
    runner = open_runner(tmp_path, doc, rec)
    rec.pause = runner.pause if policy == "pause" else None
    thread, out = serve_in_background(runner, clock)
    watcher = Store(tmp_path)
    wait_for(lambda: watcher.run("tiny")["status"] == "paused")
    rounds = watcher.rounds("tiny")
    mids = [c for c in watcher.checkpoints("tiny") if c["kind"] == "mid"]
    if policy == "pause":
        assert [r["status"] for r in rounds] == ["interrupted"]  # to be continued
        assert len(mids) == 1 and mids[0]["round"] == 1
        assert any("the time window closed" in e["message"] for e in watcher.events("tiny"))
    else:
        assert [r["status"] for r in rounds] in (["accepted"], ["rolled_back"])  # it finished
        assert mids == []
    assert watcher.run("tiny")["next_window_at"].startswith("2026-11-26T22:00")
    runner.stop.set()
    thread.join(10)
    assert out["status"] == "stopped"


def test_pause_between_rounds(tmp_path: Path) -> None:
    rec = Recorder()
    stamps = []
    rec.round_done = lambda row: stamps.append(time.monotonic())  # type: ignore[method-assign]
    runner = open_runner(tmp_path, tiny(when={"pause_between_rounds": "0.3s"}), rec)
    thread, out = serve_in_background(runner, Clock(at("2026-11-25 12:00")))
    thread.join(60)
    assert out["status"] == "finished" and len(stamps) >= 2
    assert all(b - a >= 0.3 for a, b in zip(stamps, stamps[1:], strict=False))


# --- a real background process -------------------------------------------------------------------


def exited(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (a detached process's parent is init, or nothing here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_detach_stop_status_logs_and_resume(tmp_path: Path) -> None:
    # one round of 3000 epochs (about 25 s here): long enough to be caught fine-tuning even when
    # each status call (a fresh process) takes seconds; 1000 epochs sometimes finished first
    slow = tiny(
        finetune={"epochs": 3000}, prune={"target_sparsity": 0.3}, when={"checkpoint_every": 200}
    )
    path = write(tmp_path / "tiny.yaml", slow)
    state = tmp_path / "state"
    out = iterprune("start", str(path), "--detach", state=state)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split("pid ")[1].split()[0])
    assert str(state / "logs" / "tiny.log") in out.stdout

    def status() -> dict:
        return json.loads(iterprune("status", "tiny", "--json", state=state).stdout)

    wait_for(lambda: status()["phase"] == "finetune", timeout=60)
    s = status()
    assert s["status"] == "running" and s["pid"] == pid
    beat = Store(state).run("tiny")["heartbeat_at"]  # the heartbeat goes on: it moves
    wait_for(lambda: Store(state).run("tiny")["heartbeat_at"] > beat, timeout=60)
    assert iterprune("stop", "tiny", state=state).returncode == 0
    wait_for(lambda: status()["status"] == "stopped", timeout=60)  # each status call is a process
    wait_for(lambda: exited(pid), timeout=10)  # "exits within a few seconds"
    store = Store(state)
    assert [c for c in store.checkpoints("tiny") if c["kind"] == "mid"]  # written when stopped
    logs = iterprune("logs", "tiny", state=state).stdout
    assert (
        "dense baseline accuracy" in logs and "stop requested: finishing the current batch" in logs
    )
    log_file = (state / "logs" / "tiny.log").read_text()
    assert "pretraining dense model" in log_file and "stopped" in log_file

    assert cli.main(["resume", "tiny", "--state-dir", str(state)]) == 0
    assert any(e["message"].startswith("continuing round") for e in Store(state).events("tiny"))


def test_interrupted_runs_are_reported_as_such(tmp_path: Path, write_schedule, capsys) -> None:
    state = tmp_path / "s"
    store = Store(state)
    open_run(store, schedule.load(write_schedule()), "tiny.yaml")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update_run("tiny", status="running", pid=dead.pid, host=os.uname().nodename)
    assert cli.main(["status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "iterprune resume tiny" in out
