"""``iterprune serve --devices cuda:0,cuda:1``: one worker process per device, supervised.

The serve process holds the serve's lock and row, as a serve of one device does, and starts
``iterprune serve --devices D --worker I:PID`` for each device, in a session of its own, its
output in ``<state>/logs/serve/slot-I-D.log``; each worker runs the queue loop of ``server.py`` on
its device, and the runs' own logs stay in ``iterprune logs RUN``. A stop (SIGTERM, Ctrl-C,
``iterprune stop --serve``) is passed on to the workers, and the serve waits until each has
checkpointed its run. A worker that dies (the OOM killer, a crash) is started again after a pause
that grows while it keeps dying young; the run it had is continued first. When the serve itself
dies, even by SIGKILL, its workers notice within a tenth of a second and stop their runs with a
checkpoint, so a serve started again finds every run where it was.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from iterprune.report.console import device_label, say
from iterprune.serve import daemon, launch, server
from iterprune.state import paths
from iterprune.state.backlog import Backlog
from iterprune.state.store import Store

PAUSES_S = (2.0, 5.0, 15.0, 60.0)  # before starting a worker again, after 1, 2, 3, 4+ deaths
YOUNG_S = 120.0  # a worker that dies sooner counts towards giving up on its device
GIVE_UP = 5  # deaths in a row, each young


@dataclasses.dataclass
class Worker:
    slot: int
    device: str
    label: str  # the device's name in what serve prints (cpu#0, cpu#1 for cpu,cpu)
    log: Path
    proc: subprocess.Popen | None = None
    born: float = 0.0
    deaths: int = 0
    due: float = 0.0  # when to start it (again)
    done: bool = False  # ended for good: the queue is empty (--until-empty), a stop, or gave up
    asked: bool = False  # to stop


def supervise(
    state_dir: Path,
    devices: list[str],
    worker_args: list[str],
    poll_s: float = 0.5,
    heartbeat_s: float = daemon.HEARTBEAT_S,
) -> int:
    """Serve the queue with one worker per device until stopped (or, with ``--until-empty`` in
    ``worker_args``, until every worker found nothing left); how many workers gave up."""
    store = Store(state_dir)
    backlog = Backlog(store)
    stop, pid, host = threading.Event(), os.getpid(), socket.gethostname()
    workers = [
        Worker(i, d, device_label(i, devices), paths.slot_log(state_dir, i, d))
        for i, d in enumerate(devices)
    ]
    since = time.time()  # a stop asked for from now on is this serve's
    try:
        with server.serve_lock(state_dir, backlog), daemon.signals(stop):
            backlog.forget_workers()
            if not backlog.serving(pid, host, since, None, ",".join(devices), since):
                stop.set()  # asked to stop while it was starting
            say(
                f"serve: pid {pid}, one run at a time on each of {', '.join(devices)}",
                f"workers' logs: {paths.slot_log(state_dir, 0, devices[0]).parent}/  "
                "(each run's: iterprune logs RUN)",
                "stop it with Ctrl-C or: iterprune stop --serve",
            )
            crowded = _crowded(backlog, devices)
            if crowded:
                say(crowded)
            _loop(backlog, workers, worker_args, stop, poll_s, heartbeat_s)
    finally:
        for w in workers:
            if w.proc is not None:  # only after an error of our own: stop them, with checkpoints
                w.proc.terminate()
                w.proc.wait()
        store.close()
    return sum(w.deaths >= GIVE_UP for w in workers)


def _crowded(backlog: Backlog, devices: list[str]) -> str | None:
    """A warning when the waiting runs, several at once on the CPU, want more threads than it
    has cores: torch's threads then wait on each other and everything runs far slower."""
    slots, cores = devices.count("cpu"), os.cpu_count() or 1
    runs = [backlog.store.run(e["run"]) or {} for e in backlog.entries() if e["position"]]
    threads = max((int(r.get("num_threads") or 1) for r in runs), default=1)
    if slots < 2 or slots * threads <= cores:
        return None
    return (
        f"warning: {slots} runs at once on the CPU, with up to {threads} threads each, on "
        f"{cores} cores: they will run much slower than one after another; give each schedule "
        f"threads: {max(cores // slots, 1)}, or serve one cpu"
    )


def _loop(
    backlog: Backlog,
    workers: list[Worker],
    worker_args: list[str],
    stop: threading.Event,
    poll_s: float,
    heartbeat_s: float,
) -> None:
    pid, host, last, shown = os.getpid(), socket.gethostname(), -heartbeat_s, {}
    devices = [w.device for w in workers]
    try:
        while not all(w.done for w in workers):
            if time.monotonic() - last >= heartbeat_s:
                if not backlog.serving(pid, host, time.time(), None):
                    stop.set()  # iterprune stop --serve (from another machine, too)
                last = time.monotonic()
            for w in workers:
                _tend(w, backlog.store.state_dir, worker_args, stop.is_set())
            _show(backlog, shown, devices)
            time.sleep(poll_s)
    finally:
        _show(backlog, shown, devices)
        backlog.served()


def _tend(w: Worker, state_dir: Path, worker_args: list[str], stopping: bool) -> None:
    """Start, stop or reap one worker."""
    now = time.monotonic()
    if w.proc is None:
        if stopping:
            w.done = True
        elif not w.done and now >= w.due:
            arguments = ["serve", "--state-dir", str(state_dir.resolve()), "--devices", w.device]
            arguments += ["--worker", f"{w.slot}:{os.getpid()}", *worker_args]
            w.proc, w.born, w.asked = launch.popen(arguments, w.log), now, False
        return
    if stopping and not w.asked:
        w.proc.terminate()  # the worker checkpoints its run and ends
        w.asked = True
    code = w.proc.poll()
    if code is None:
        return
    w.proc = None
    if code == 0 or stopping:
        w.done = True
        return
    w.deaths = w.deaths + 1 if now - w.born < YOUNG_S else 1
    if w.deaths >= GIVE_UP:
        w.done = True
        say(
            f"[{w.label}] the worker died {w.deaths} times in a row; giving up on this device "
            f"(see {w.log})"
        )
        return
    pause = PAUSES_S[min(w.deaths, len(PAUSES_S)) - 1]
    w.due = now + pause
    say(
        f"[{w.label}] the worker ended with exit code {code}; starting it again in {pause:g} s "
        f"(its run continues first; see {w.log})"
    )


def _show(backlog: Backlog, shown: dict[int, str | None], devices: list[str]) -> None:
    """One line each time a device takes up a run or lets it go."""
    for w in backlog.workers():
        before, now = shown.get(w["slot"]), w["current"]
        if before == now:
            continue
        device = device_label(w["slot"], devices)
        if before is not None:
            say(f"[{device}] {before}: {(backlog.store.run(before) or {}).get('status')}")
        if now is not None:
            say(f"[{device}] serving {now}")
        shown[w["slot"]] = now
