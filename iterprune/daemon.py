"""Serving a run: the round loop, the heartbeat (APScheduler), the run lock and signals.

SIGTERM and the first Ctrl-C ask the runner to stop at the next batch; the attempt in progress is
given up (it is redone from its own start on resume), and the run is marked ``stopped``. A second
Ctrl-C exits at once: the database and checkpoints are crash-safe, so that loses nothing accepted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from iterprune import paths
from iterprune.errors import IterpruneError, RunBusy
from iterprune.runner import Runner
from iterprune.store import Store

HEARTBEAT_S = 5.0
LEASE_TIMEOUT_S = 60.0


@contextlib.contextmanager
def run_lock(state_dir: Path, run_id: str, store: Store) -> Iterator[None]:
    """Hold the run's lock file. The kernel drops the lock when its holder dies, even by SIGKILL."""
    path = paths.lock_file(state_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            row = store.run(run_id) or {}
            raise RunBusy(
                f"run '{run_id}' is already being served by pid {row.get('pid')} on "
                f"{row.get('host')}; stop it first (iterprune stop {run_id})"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _heartbeat(runner: Runner, host: str) -> Iterator[None]:
    """Refresh the lease from a background job on its own connection; stop if it was taken over."""
    store = Store(runner.store.state_dir)
    run_id, pid = runner.run_id, os.getpid()

    def beat() -> None:
        if not store.heartbeat(run_id, pid, host, time.time()):
            store.add_event(
                run_id, "error", "lease", f"pid {pid} lost the lease of run '{run_id}'; stopping"
            )
            runner.stop.set()

    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        beat, "interval", seconds=HEARTBEAT_S, id="heartbeat", coalesce=True, max_instances=1,
        misfire_grace_time=None,
    )  # fmt: skip
    scheduler.start()
    try:
        yield
    finally:
        scheduler.shutdown(wait=True)
        store.close()


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(runner: Runner, lease_timeout: float = LEASE_TIMEOUT_S) -> str:
    """Own the run (lock file, then lease row), run rounds until it ends; its final status."""
    store, run_id = runner.store, runner.run_id
    host = socket.gethostname()
    with run_lock(store.state_dir, run_id, store), _signals(runner.stop):
        owner = store.take_lease(run_id, os.getpid(), host, lease_timeout, time.time())
        if owner is not None:
            age = time.time() - owner["heartbeat_at"]
            raise RunBusy(
                f"run '{run_id}' is owned by pid {owner['pid']} on {owner['host']} (heartbeat "
                f"{age:.0f}s ago); a lease older than {lease_timeout:.0f}s is taken over"
            )
        try:
            runner.prepare()
            with _heartbeat(runner, host):
                while runner.step():
                    pass
        except KeyboardInterrupt:
            raise
        except IterpruneError as exc:
            _fail(runner, str(exc))
            raise
        except Exception as exc:
            _fail(runner, f"{type(exc).__name__}: {exc}")
            raise
        row = store.run(run_id) or {}
        if row.get("status") == "finished":
            store.update_run(run_id, pid=None)
            return "finished"
        store.update_run(run_id, status="stopped", pid=None)
        store.add_event(
            run_id, "info", "stopped", f"stopped; continue with: iterprune resume {run_id}"
        )
        runner.reporter.run_done("stopped", f"continue with: iterprune resume {run_id}")
        return "stopped"


def _fail(runner: Runner, message: str) -> None:
    runner.store.update_run(runner.run_id, status="failed", error=message, pid=None)
    runner.store.add_event(runner.run_id, "error", "failed", message)
    runner.reporter.run_done("failed", message)
