"""Serving a run on APScheduler: the round job, the time window, the lease heartbeat, signals.

The only module that imports APScheduler. The round job runs attempts one after another (one
instance at a time); outside the schedule's time window it records ``paused``/``waiting`` and
reschedules itself for the window's next opening, computed by a cron trigger. The heartbeat is an
interval job that refreshes the run's lease and current progress in SQLite.

SIGTERM and the first Ctrl-C ask the runner to stop after the current batch: it writes a mid-round
checkpoint and the run is marked ``stopped``. A second Ctrl-C exits at once: the database and the
checkpoints are crash-safe, so that loses nothing accepted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from iterprune import paths
from iterprune.errors import IterpruneError, RunBusy
from iterprune.store import Store

if TYPE_CHECKING:
    from iterprune.runner import Runner

HEARTBEAT_S = 5.0
LEASE_TIMEOUT_S = 60.0
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
Clock = Callable[[], dt.datetime]


# --- the time window ----------------------------------------------------------------------------


def _standard_dow(field: str) -> str:
    """A standard cron day-of-week field (0 or 7 = Sunday) as APScheduler day names.

    APScheduler 3 counts 0 as *Monday*, so ``0 2 * * 0`` would silently run on Mondays; spelling
    the days out removes the ambiguity.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            lo, hi = 0, 6
        elif "-" in body:
            a, b = body.split("-", 1)
            lo, hi = _day_number(a), _day_number(b)
        else:
            lo = hi = _day_number(body)
            if step_text:
                hi = 6
        if hi == 0 and lo > 0:
            hi = 7  # "5-0" / "fri-sun": up to Sunday
        if lo > hi or step < 1:
            raise ValueError(f"day-of-week range '{part}' is empty")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def _day_number(text: str) -> int:
    if text in _DOW_NAMES:
        return _DOW_NAMES.index(text)
    if not re.fullmatch(r"\d+", text) or not 0 <= int(text) <= 7:
        raise ValueError(f"day of week must be 0-7 or sun-sat, got '{text}'")
    return int(text)


class Window:
    """When rounds may run: a standard 5-field cron expression, matched minute by minute.

    ``* 22-23,0-5 * * *`` is open from 22:00 to 05:59; ``0-59 1-5 * * mon-fri`` on weekday nights.
    Raises ValueError for an invalid expression or timezone, or a window that never opens.
    """

    def __init__(self, expression: str, timezone: str | None = None) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(
                f"must have 5 fields (minute hour day month weekday), got {len(fields)}"
            )
        try:
            self.tz = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone '{timezone}'") from None
        minute, hour, day, month, dow = fields
        self.trigger = CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_standard_dow(dow),
            timezone=self.tz,
        )
        if self.trigger.get_next_fire_time(None, dt.datetime.now(self.tz)) is None:
            raise ValueError("never opens")
        self.expression = expression

    def is_open(self, now: dt.datetime) -> bool:
        minute = now.astimezone(self.tz).replace(second=0, microsecond=0)
        return self.trigger.get_next_fire_time(None, minute) == minute

    def next_open(self, now: dt.datetime) -> dt.datetime | None:
        """``now`` when open, else the start of the next opening."""
        if self.is_open(now):
            return now.astimezone(self.tz)
        return self.trigger.get_next_fire_time(None, now.astimezone(self.tz))

    def next_close(self, now: dt.datetime, horizon: dt.timedelta = dt.timedelta(days=8)):
        """The first minute after ``now`` outside the window (None: open all the way to horizon)."""
        t = now.astimezone(self.tz).replace(second=0, microsecond=0)
        end = t + horizon
        while t < end:
            t += dt.timedelta(minutes=1)
            if not self.is_open(t):
                return t
        return None


def window_problem(expression: str, timezone: str | None) -> str | None:
    """Why a window is unusable, for the schedule validator; None when it is fine."""
    try:
        Window(expression, timezone)
    except ValueError as exc:
        return str(exc)
    return None


# --- owning the run -----------------------------------------------------------------------------


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
def _signals(stop: threading.Event, second_ctrl_c_exits: bool = True) -> Iterator[None]:
    """SIGTERM and Ctrl-C ask for a stop; a second Ctrl-C exits at once, except under torchrun,
    whose agent passes the terminal's Ctrl-C on as a second SIGINT of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT and second_ctrl_c_exits:
            os._exit(130)  # the second Ctrl-C: at once (the state on disk is crash-safe)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- serving ------------------------------------------------------------------------------------


class _Service:
    """The jobs of one served run, sharing a scheduler and the runner."""

    def __init__(self, runner: Runner, host: str, clock: Clock, heartbeat_s: float) -> None:
        self.runner = runner
        self.host = host
        self.pid = os.getpid()
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        when = runner.schedule.when
        self.window = Window(when.window, when.timezone) if when.window else None
        self.beat_store = Store(runner.store.state_dir)  # the heartbeat's own connection
        self.scheduler = BackgroundScheduler(timezone=self.window.tz if self.window else "UTC")
        self.done = threading.Event()
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
        runner, store, run_id = self.runner, self.runner.store, self.runner.run_id
        when = runner.schedule.when
        try:
            if not self.prepared:
                # all torch work happens in this thread: a second thread's OpenMP pool spinning
                # next to it made rounds ~40% slower on 2 cores
                runner.prepare()
                self.prepared = True
            runner.pin_threads()
            while not runner.stop.is_set():
                now = self.clock()
                if self.window is not None and not self.window.is_open(now):
                    opens = self.window.next_open(now)
                    store.update_run(
                        run_id,
                        status="paused",
                        phase="waiting",
                        next_window_at=opens.isoformat() if opens else None,
                    )
                    runner.narrator.event(
                        "info",
                        "waiting",
                        f"outside the time window "
                        f"'{self.window.expression}'; waiting until {opens:%Y-%m-%d %H:%M %Z}",
                    )
                    if opens is None:
                        raise IterpruneError(
                            f"the time window '{self.window.expression}' never opens again"
                        )
                    # the clock may be a test's: wait as long as it says, in real time
                    self._schedule_rounds(dt.datetime.now(dt.timezone.utc) + (opens - now))
                    return
                runner.pause.clear()
                store.update_run(run_id, status="running", next_window_at=None)
                if not runner.step():
                    break
                if when.pause_between_rounds_s and not runner.pause.is_set():
                    runner.stop.wait(when.pause_between_rounds_s)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        self.done.set()

    def heartbeat(self) -> None:
        runner = self.runner
        if not runner.stop.is_set() and not self.beat_store.heartbeat(
            runner.run_id, self.pid, self.host, time.time(), runner.narrator.progress_text()
        ):
            row = self.beat_store.run(runner.run_id) or {}
            if not row.get("stop_requested"):
                self.beat_store.add_event(
                    runner.run_id,
                    "error",
                    "lease",
                    f"pid {self.pid} lost the lease of run '{runner.run_id}'",
                )
            runner.stop.set()
        when = runner.schedule.when
        if self.window is not None and when.window_policy == "pause" and not runner.pause.is_set():
            if not self.window.is_open(self.clock()):
                runner.pause.set()  # checkpoint at the next batch and wait for the window

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=True)  # a heartbeat in flight still uses its connection
        self.beat_store.close()


def serve(
    runner: Runner,
    lease_timeout: float = LEASE_TIMEOUT_S,
    clock: Clock | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> str:
    """Own the run (lock file, then lease row) and run it until it ends; its final status."""
    store, run_id = runner.store, runner.run_id
    host = socket.gethostname()
    with run_lock(store.state_dir, run_id, store), _signals(runner.stop, runner.leader is None):
        owner = store.take_lease(run_id, os.getpid(), host, lease_timeout, time.time())
        if owner is not None:
            age = time.time() - owner["heartbeat_at"]
            raise RunBusy(
                f"run '{run_id}' is owned by pid {owner['pid']} on {owner['host']} (heartbeat "
                f"{age:.0f}s ago); a lease older than {lease_timeout:.0f}s is taken over"
            )
        service = None
        try:
            service = _Service(
                runner, host, clock or (lambda: dt.datetime.now(dt.timezone.utc)), heartbeat_s
            )
            service.start()
            _watch(service)
            if service.error is not None:
                raise service.error
        except IterpruneError as exc:
            _fail(runner, str(exc))
            raise
        except Exception as exc:
            _fail(runner, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if service is not None:
                service.shutdown()
        if store.run(run_id)["status"] == "finished":
            store.update_run(run_id, pid=None, next_window_at=None)
            return "finished"
        store.update_run(run_id, status="stopped", pid=None, next_window_at=None)
        runner.narrator.event(
            "info", "stopped", f"stopped; continue with: iterprune resume {run_id}"
        )
        runner.reporter.run_done("stopped", f"continue with: iterprune resume {run_id}")
        return "stopped"


def _watch(service: _Service) -> None:
    """The main thread's part: wait for the round job, noticing a stop (signals land here)."""
    runner = service.runner
    watch = Store(runner.store.state_dir)  # its own connection: the round job uses the runner's
    try:
        announced = False
        while True:
            finished = service.done.wait(0.2)
            if runner.stop.is_set() and not announced:
                watch.add_event(
                    runner.run_id, "info", "stopping", "stop requested: finishing the current batch"
                )
                announced = True
            if finished:
                return
            if runner.stop.is_set() and watch.run(runner.run_id)["status"] == "paused":
                return  # stopped while waiting for the window: nothing is running
    finally:
        watch.close()


def _fail(runner: Runner, message: str) -> None:
    runner.store.update_run(runner.run_id, status="failed", error=message, pid=None)
    runner.store.add_event(runner.run_id, "error", "failed", message)
    runner.reporter.run_done("failed", message)
