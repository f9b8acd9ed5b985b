"""Serving a run on APScheduler: the round job, the time window, the lease heartbeat, signals.

One of the two modules that import APScheduler (``window.py`` is the other). The round job runs
attempts one after another (one instance at a time); outside the schedule's time window it has the
run marked paused and reschedules itself for the window's next opening. The heartbeat is an
interval job that refreshes the run's lease and current progress in SQLite, on its own connection.

The daemon talks to the run through :class:`Served` (the runner implements it) and owns only the
lease; the run's status is the runner's to write.

SIGTERM and the first Ctrl-C ask the run to stop after the current batch: it writes a mid-round
checkpoint and is marked ``stopped``. A second Ctrl-C exits at once: the database and the
checkpoints are crash-safe, so that loses nothing accepted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from iterprune.errors import EXIT_SECOND_CTRL_C, IterpruneError, RunBusy
from iterprune.schedule.specs import WhenSpec
from iterprune.schedule.window import Window
from iterprune.state import paths
from iterprune.state.store import Store

HEARTBEAT_S = 5.0
LEASE_TIMEOUT_S = 60.0
Clock = Callable[[], dt.datetime]


class Served(Protocol):
    """What the daemon needs of the run it serves."""

    run_id: str
    stop: threading.Event  # set: stop after the current batch, with a mid-round checkpoint
    pause: threading.Event  # set: the window closed; checkpoint and wait for it to open

    @property
    def state_dir(self) -> Path: ...

    @property
    def when(self) -> WhenSpec: ...

    @property
    def leads_ranks(self) -> bool:
        """Rank 0 under torchrun (whose agent forwards the terminal's Ctrl-C a second time)."""

    def prepare(self) -> None:
        """Build the model and data; load (or create) the last accepted state."""

    def step(self) -> bool:
        """One attempt; False when the run has finished or was asked to stop."""

    def pin_threads(self) -> None: ...

    def progress(self) -> str:
        """Where the current phase is, for ``status``."""

    def waiting(self, opens: dt.datetime, expression: str) -> None:
        """The run is paused until ``opens`` (outside its time window)."""

    def event(self, level: str, kind: str, message: str) -> None: ...  # on its own connection

    def window_open(self) -> None:
        """The window is open: the run is running."""

    def close(self, error: str | None = None) -> str:
        """Serving ended: record it (failed with ``error``, finished or stopped); the status."""


# --- owning the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(path: Path, busy: Callable[[], str], wait_s: float = 0.0) -> Iterator[None]:
    """Hold a lock file (waiting up to ``wait_s`` for it), or raise RunBusy with ``busy()``. The
    kernel drops the lock when its holder dies, even by SIGKILL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunBusy(busy()) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def run_lock(state_dir: Path, run_id: str, store: Store) -> contextlib.AbstractContextManager:
    """Hold the run's lock file: one process serves a run."""

    def busy() -> str:
        row = store.run(run_id) or {}
        return (
            f"run '{run_id}' is already being served by pid {row.get('pid')} on "
            f"{row.get('host')}; stop it first (iterprune stop {run_id})"
        )

    return exclusive(paths.lock_file(state_dir, run_id), busy)


def lock_held(path: Path) -> bool:
    """Whether another process on this machine holds the lock file ``path`` now (a run's: it
    serves the run; serve's: a serve is running, or starting)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def stop_owner(row: dict[str, Any]) -> None:
    """SIGTERM to the process serving a run, when it runs on this machine (it also sees the
    stop request in the database at its next heartbeat, on whatever host it runs)."""
    if row.get("host") == socket.gethostname() and row.get("pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(row["pid"], signal.SIGTERM)


@contextlib.contextmanager
def signals(stop: threading.Event, second_ctrl_c_exits: bool = True) -> Iterator[None]:
    """SIGTERM and Ctrl-C ask for a stop; a second Ctrl-C exits at once, except under torchrun,
    whose agent passes the terminal's Ctrl-C on as a second SIGINT of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT and second_ctrl_c_exits:
            os._exit(EXIT_SECOND_CTRL_C)  # at once: the state on disk is crash-safe
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- serving ------------------------------------------------------------------------------------


class _Service:
    """The jobs of one served run, sharing a scheduler and the run."""

    def __init__(
        self, run: Served, host: str, clock: Clock, heartbeat_s: float, yields: bool = False
    ) -> None:
        self.run = run
        self.yields = yields  # outside the window: stop and give the device back (serve)
        self.host = host
        self.pid = os.getpid()
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        when = run.when
        self.window = Window(when.window, when.timezone) if when.window else None
        self.beat_store = Store(run.state_dir)  # the heartbeat's own connection
        self.scheduler = BackgroundScheduler(timezone=self.window.tz if self.window else "UTC")
        self.done = threading.Event()
        self.waiting = False  # the round job is scheduled for the window's next opening
        self.error: BaseException | None = None
        self.prepared = False

    def start(self) -> None:
        self.scheduler.add_job(
            self.heartbeat,
            "interval",
            seconds=self.heartbeat_s,
            id="heartbeat",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self._schedule_rounds(None)
        self.scheduler.start()

    def _schedule_rounds(self, at: dt.datetime | None) -> None:
        self.scheduler.add_job(
            self.rounds,
            "date",
            run_date=at,
            id="rounds",
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )

    def rounds(self) -> None:
        """The round job: attempts until the run ends, the window closes, or a stop."""
        run = self.run
        self.waiting = False
        try:
            if not self.prepared:
                # all torch work happens in this thread: a second thread's OpenMP pool spinning
                # next to it made rounds ~40% slower on 2 cores
                run.prepare()
                self.prepared = True
            run.pin_threads()
            while not run.stop.is_set():
                if self._outside_window():
                    if not self.yields:
                        return  # the round job comes back when the window opens
                    break
                run.window_open()
                if not run.step():
                    break
                pause = run.when.pause_between_rounds_s
                if pause and not run.pause.is_set():
                    run.stop.wait(pause)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        self.done.set()

    def _outside_window(self) -> bool:
        """Outside the window: mark the run paused and come back when it opens."""
        now = self.clock()
        if self.window is None or self.window.is_open(now):
            return False
        opens = self.window.next_open(now)
        if opens is None:
            raise IterpruneError(f"the time window '{self.window.expression}' never opens again")
        if self.yields:  # said by the run: beat_store is the heartbeat thread's connection
            message = f"outside the time window: giving the device to the next run until {opens}"
            self.run.event("info", "yield", message)
            self.run.stop.set()  # recorded as stopped; serve takes it up again when it opens
            return True
        self.run.waiting(opens, self.window.expression)
        self.waiting = True
        # the clock may be a test's: wait as long as it says, in real time
        self._schedule_rounds(dt.datetime.now(dt.timezone.utc) + (opens - now))
        return True

    def heartbeat(self) -> None:
        run = self.run
        try:
            held = run.stop.is_set() or self.beat_store.heartbeat(
                run.run_id, self.pid, self.host, time.time(), run.progress()
            )
        except IterpruneError:  # a full disk: the run's own next write stops it, with the reason
            held = True
        if not held:
            row = self.beat_store.run(run.run_id) or {}
            if not row.get("stop_requested"):
                message = f"pid {self.pid} lost the lease of run '{run.run_id}'"
                self.beat_store.add_event(run.run_id, "error", "lease", message)
            run.stop.set()
        if self.window is not None and run.when.window_policy == "pause" and not run.pause.is_set():
            if not self.window.is_open(self.clock()):
                run.pause.set()  # checkpoint at the next batch and wait for the window

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=True)  # a heartbeat in flight still uses its connection
        self.beat_store.close()


def serve(
    run: Served,
    lease_timeout: float = LEASE_TIMEOUT_S,
    clock: Clock | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    queue: bool = False,
) -> str:
    """Own the run (lock file, then lease row) and serve it until it ends; its final status.
    ``queue`` (for ``iterprune serve``): the caller handles signals, and outside the run's time
    window the run stops instead of waiting."""
    host = socket.gethostname()
    store = Store(run.state_dir)  # the lease's (and the main thread's) own connection
    handled = contextlib.nullcontext() if queue else signals(run.stop, not run.leads_ranks)
    try:
        with run_lock(run.state_dir, run.run_id, store), handled:
            _take_lease(store, run.run_id, host, lease_timeout)
            try:
                _serve(run, store, host, clock or _utc_now, heartbeat_s, queue)
            except IterpruneError as exc:
                run.close(str(exc))
                raise
            except Exception as exc:
                run.close(f"{type(exc).__name__}: {exc}")
                raise
            return run.close()
    finally:
        store.close()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _take_lease(store: Store, run_id: str, host: str, lease_timeout: float) -> None:
    owner = store.take_lease(run_id, os.getpid(), host, lease_timeout, time.time())
    if owner is not None:
        age = time.time() - owner["heartbeat_at"]
        raise RunBusy(
            f"run '{run_id}' is owned by pid {owner['pid']} on {owner['host']} (heartbeat "
            f"{age:.0f}s ago); a lease older than {lease_timeout:.0f}s is taken over"
        )


def _serve(
    run: Served, store: Store, host: str, clock: Clock, heartbeat_s: float, yields: bool
) -> None:
    service = _Service(run, host, clock, heartbeat_s, yields)
    try:
        service.start()
        _watch(service, store)
        if service.error is not None:
            raise service.error
    finally:
        service.shutdown()


def _watch(service: _Service, store: Store) -> None:
    """The main thread's part: wait for the round job, noticing a stop (signals land here)."""
    run = service.run
    announced = False
    while True:
        finished = service.done.wait(0.2)
        if run.stop.is_set() and not announced:
            message = "stop requested: finishing the current batch"
            store.add_event(run.run_id, "info", "stopping", message)
            announced = True
        if finished:
            return
        if run.stop.is_set() and service.waiting:
            return  # stopped while waiting for the window: nothing is running
