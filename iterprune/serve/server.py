"""``iterprune serve``: one long-running process that works through the queue, one run at a time.

It takes runs in the queue's order (started ones first, then priority, then first come), skipping
a run whose time window is closed; a run whose window closes while it runs is stopped at the
window policy's point (with its checkpoint) and gives the device to the next run, and is taken up
again once its window opens. With nothing to run it waits, cheaply, for runs added later.
SIGTERM, Ctrl-C or ``iterprune stop --serve`` stop the current run with its mid-round checkpoint
and end the process. Everything lives in the state database, so a serve killed with SIGKILL and
started again continues where it was: the interrupted run first, nothing run twice.

A serve of several devices (``supervisor.py``) runs this loop once per device, each in a worker
process of its own with a :class:`Slot`: the worker holds its device's lock instead of the
serve's, picks runs under a lock shared by the workers and claims each in its row so that no two
take the same run, and stops (checkpointing its run) when the serve that started it dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from iterprune.errors import RunBusy
from iterprune.schedule.window import Window
from iterprune.serve import daemon
from iterprune.state import paths
from iterprune.state.backlog import Backlog
from iterprune.state.runs import load_schedule
from iterprune.state.store import Store

# serve_one(run_id, started, clock): serve that run to its end (``started`` gets the Served as
# soon as it exists, so a stop reaches it), returning its final status
ServeOne = Callable[[str, Callable[[daemon.Served], None], daemon.Clock], str]
HELD = "stopped by hand; queue it again (iterprune queue add) or resume it"


@dataclasses.dataclass(frozen=True)
class Slot:
    """One device of a serve of several, served by this worker process."""

    index: int
    device: str
    parent: int  # the serve's pid: the worker stops when that process is gone


SLOT_WAIT_S = 300.0  # a worker of a serve killed just now may still be checkpointing its run


def serve_lock(
    state_dir: Path, backlog: Backlog, slot: Slot | None = None
) -> contextlib.AbstractContextManager:
    """One serve per state directory; one worker per device of it."""

    def busy() -> str:
        row = backlog.serve() or {}
        return (
            f"{state_dir} is already served by pid {row.get('pid')} on {row.get('host')} "
            "(one serve per state directory; stop it with: iterprune stop --serve)"
        )

    if slot is None:
        return daemon.exclusive(paths.serve_lock(state_dir), busy)
    why = f"device {slot.device} of {state_dir} is still served after {SLOT_WAIT_S:g} s"
    return daemon.exclusive(paths.slot_lock(state_dir, slot.index), lambda: why, SLOT_WAIT_S)


def window_open(store: Store, run: str, clock: daemon.Clock) -> bool:
    when = load_schedule(store, run).when
    return not when.window or Window(when.window, when.timezone).is_open(clock())


def next_run(backlog: Backlog, clock: daemon.Clock, skip: set[str] | None = None) -> str | None:
    """The first run in the queue's order that may run now (not one in ``skip``)."""
    state_dir = backlog.store.state_dir
    for entry in backlog.entries():
        run = entry["run"]
        if entry["position"] is None or run in (skip or ()):
            continue  # done, held, or another device's
        if daemon.lock_held(paths.lock_file(state_dir, run)):
            continue  # served by another process (a resume by hand, a worker still stopping)
        if window_open(backlog.store, run, clock):
            return run
    return None


def pick(backlog: Backlog, clock: daemon.Clock, slot: Slot | None) -> str | None:
    """The next run; a device's worker claims it under the workers' lock."""
    if slot is None:
        return next_run(backlog, clock)
    with daemon.exclusive(paths.pick_lock(backlog.store.state_dir), lambda: "", wait_s=3600):
        run = next_run(backlog, clock, backlog.claimed(slot.index))
        backlog.claim(slot.index, run)
    return run


def serve_queue(
    state_dir: Path,
    serve_one: ServeOne,
    clock: daemon.Clock | None = None,
    poll_s: float = 2.0,
    heartbeat_s: float = daemon.HEARTBEAT_S,
    until_empty: bool = False,
    slot: Slot | None = None,
    device: str = "cpu",
) -> int:
    """Work through the queue until stopped (``until_empty``: until nothing is left to run, now
    or at a later window); how many runs it served. ``slot``: as one device's worker."""
    clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
    store = Store(state_dir)
    backlog = Backlog(store)
    stop, finished, current = threading.Event(), threading.Event(), []
    served = 0

    def started(run: daemon.Served) -> None:
        current.append(run)
        if stop.is_set():
            run.stop.set()

    since = time.time()  # a stop asked for from now on is this serve's
    try:
        with serve_lock(state_dir, backlog, slot), daemon.signals(stop):
            if slot is not None:  # the row exists before the first claim
                backlog.working(slot.index, slot.device, os.getpid(), socket.gethostname(), 0)
            args = (state_dir, stop, finished, current, heartbeat_s, slot or device, since)
            beat = threading.Thread(target=_beat, args=args)
            beat.start()
            try:
                while not stop.is_set():
                    run = pick(backlog, clock, slot)
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
                backlog.served() if slot is None else backlog.claim(slot.index, None)
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
    who: Slot | str,  # a device worker, or the serve (of this device)
    since: float,
) -> None:
    """The serve's (or the device worker's) heartbeat; a stop (signal, ``stop --serve``, or the
    end of the serve that started this worker) reaches the current run."""
    store = Store(state_dir)
    backlog = Backlog(store)
    pid, host, last = os.getpid(), socket.gethostname(), -heartbeat_s
    try:
        while not finished.is_set():
            if time.monotonic() - last >= heartbeat_s:
                now = time.time()
                if isinstance(who, Slot):
                    going = backlog.working(who.index, who.device, pid, host, now)
                else:
                    run = current[0].run_id if current else None
                    going = backlog.serving(pid, host, now, run, who, since)
                if not going:
                    stop.set()
                last = time.monotonic()
            if isinstance(who, Slot) and os.getppid() != who.parent:
                stop.set()  # the serve is gone (even by SIGKILL): checkpoint and end
            if stop.is_set():
                for run in list(current):
                    run.stop.set()
            finished.wait(0.1)
    finally:
        store.close()
