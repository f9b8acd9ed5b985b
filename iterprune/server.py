"""``iterprune serve``: one long-running process that works through the queue, one run at a time.

It takes runs in the queue's order (started ones first, then priority, then first come), skipping
a run whose time window is closed; a run whose window closes while it runs is stopped at the
window policy's point (with its checkpoint) and gives the device to the next run, and is taken up
again once its window opens. With nothing to run it waits, cheaply, for runs added later.
SIGTERM, Ctrl-C or ``iterprune stop --serve`` stop the current run with its mid-round checkpoint
and end the process. Everything lives in the state database, so a serve killed with SIGKILL and
started again continues where it was: the interrupted run first, nothing run twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from iterprune import daemon, paths
from iterprune.backlog import Backlog
from iterprune.errors import RunBusy
from iterprune.runs import load_schedule
from iterprune.store import Store
from iterprune.window import Window

# serve_one(run_id, started, clock): serve that run to its end (``started`` gets the Served as
# soon as it exists, so a stop reaches it), returning its final status
ServeOne = Callable[[str, Callable[[daemon.Served], None], daemon.Clock], str]
HELD = "stopped by hand; queue it again (iterprune queue add) or resume it"


def serve_lock(state_dir: Path, backlog: Backlog) -> contextlib.AbstractContextManager:
    """One serve per state directory."""

    def busy() -> str:
        row = backlog.serve() or {}
        return (
            f"{state_dir} is already served by pid {row.get('pid')} on {row.get('host')} "
            "(one serve per state directory; stop it with: iterprune stop --serve)"
        )

    return daemon.exclusive(paths.serve_lock(state_dir), busy)


def window_open(store: Store, run: str, clock: daemon.Clock) -> bool:
    when = load_schedule(store, run).when
    return not when.window or Window(when.window, when.timezone).is_open(clock())


def next_run(backlog: Backlog, clock: daemon.Clock) -> str | None:
    """The first run in the queue's order that may run now."""
    state_dir = backlog.store.state_dir
    for entry in backlog.entries():
        run = entry["run"]
        if entry["position"] is None or daemon.held_elsewhere(state_dir, run):
            continue  # done, held, or served by another process (a resume by hand)
        if window_open(backlog.store, run, clock):
            return run
    return None


def serve_queue(
    state_dir: Path,
    serve_one: ServeOne,
    clock: daemon.Clock | None = None,
    poll_s: float = 2.0,
    heartbeat_s: float = daemon.HEARTBEAT_S,
    until_empty: bool = False,
) -> int:
    """Work through the queue until stopped (``until_empty``: until nothing is left to run, now
    or at a later window); how many runs it served."""
    clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
    store = Store(state_dir)
    backlog = Backlog(store)
    stop, finished, current = threading.Event(), threading.Event(), []
    served = 0

    def started(run: daemon.Served) -> None:
        current.append(run)
        if stop.is_set():
            run.stop.set()

    try:
        with serve_lock(state_dir, backlog), daemon.signals(stop):
            args = (state_dir, stop, finished, current, heartbeat_s)
            beat = threading.Thread(target=_beat, args=args)
            beat.start()
            try:
                while not stop.is_set():
                    run = next_run(backlog, clock)
                    if run is None:
                        if until_empty and not any(e["position"] for e in backlog.entries()):
                            break
                        stop.wait(poll_s)
                        continue
                    status = _one(serve_one, run, started, current, clock, store)
                    served += 1
                    if status == "stopped" and not stop.is_set() and window_open(store, run, clock):
                        backlog.hold(run, HELD)
            finally:
                finished.set()
                beat.join()
                backlog.served()
    finally:
        store.close()
    return served


def _one(
    serve_one: ServeOne,
    run: str,
    started: Callable[[daemon.Served], None],
    current: list,
    clock: daemon.Clock,
    store: Store,
) -> str:
    """Serve one run; its failure is the run's (recorded as failed), not the serve's."""
    try:
        return serve_one(run, started, clock)
    except RunBusy as exc:  # someone else serves it (iterprune resume by hand): leave it to them
        store.add_event(run, "warning", "serve", f"skipped by serve: {exc}")
        return "busy"
    except Exception as exc:  # noqa: BLE001 (the run is marked failed; serve goes on)
        store.add_event(run, "error", "serve", f"serve goes on after: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        current.clear()


def _beat(
    state_dir: Path,
    stop: threading.Event,
    finished: threading.Event,
    current: list,
    heartbeat_s: float,
) -> None:
    """The serve row's heartbeat; a stop (signal or ``stop --serve``) reaches the current run."""
    store = Store(state_dir)
    backlog = Backlog(store)
    pid, host, last = os.getpid(), socket.gethostname(), -heartbeat_s
    try:
        while not finished.is_set():
            if time.monotonic() - last >= heartbeat_s:
                run = current[0].run_id if current else None
                if not backlog.serving(pid, host, time.time(), run):
                    stop.set()
                last = time.monotonic()
            if stop.is_set():
                for run in list(current):
                    run.stop.set()
            finished.wait(0.1)
    finally:
        store.close()
