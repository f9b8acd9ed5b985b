"""Starting the process that serves a run: in the foreground, detached in the background, or as
one of several ranks under torchrun.

``opening`` is the command's own part (validate the schedule, open the run): it runs first, so its
errors reach the user before anything starts. It returns the store and the run id to serve, or no
run id when there is nothing to do (the run already finished).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterprune.engine import distributed, orders
from iterprune.engine.reporter import NullReporter, Reporter, Tee
from iterprune.engine.runner import Runner
from iterprune.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, IterpruneError
from iterprune.report import console
from iterprune.serve import daemon, server
from iterprune.state import paths
from iterprune.state.runs import load_schedule
from iterprune.state.store import Store

Opening = Callable[[], "tuple[Store, str | None]"]


def serve(opening: Opening, lease_timeout: float, detach: bool = False, quiet: bool = False) -> int:
    """Serve the run that ``opening`` names, here or (``detach``) in the background."""
    store, run_id = opening()
    if run_id is None:
        return EXIT_OK
    if detach:
        return _detach(store, run_id, lease_timeout, quiet)
    return foreground(store, run_id, lease_timeout, quiet=quiet)


def foreground(
    store: Store, run_id: str, lease_timeout: float, ranks: Any = None, quiet: bool = False
) -> int:
    """Serve the run in this process, drawing the console (``quiet``: saying nothing); exit code
    0 (finished) or 3."""
    if quiet:
        runner = Runner(store, run_id, _reporters(store, run_id, NullReporter()), ranks)
        return EXIT_OK if daemon.serve(runner, lease_timeout) == "finished" else EXIT_STOPPED
    con = console.make_console()
    with console.reporter_for(con) as shown:
        runner = Runner(store, run_id, _reporters(store, run_id, shown), ranks)
        status = daemon.serve(runner, lease_timeout)
    if status == "finished":
        con.print(f"Done. See the rounds with: iterprune history {run_id}")
        return EXIT_OK
    return EXIT_STOPPED


def serve_queue(
    state_dir: Path,
    lease_timeout: float,
    until_empty: bool = False,
    device: str = "cpu",
    slot: server.Slot | None = None,
) -> int:
    """``iterprune serve`` in this process (of one device, or as the worker of one device of a
    serve of several: ``slot``): the queue's runs one after another, each with the console (and
    the schedule's TensorBoard / MLflow); how many runs it served."""
    con = console.make_console()

    def serve_one(run_id: str, started: Callable[[Runner], None], clock: Any) -> str:
        store = Store(state_dir)
        try:
            with console.reporter_for(con) as shown:
                runner = Runner(store, run_id, _reporters(store, run_id, shown))
                started(runner)
                return daemon.serve(runner, lease_timeout, clock, queue=True)
        finally:
            store.close()

    return server.serve_queue(
        state_dir, serve_one, until_empty=until_empty, slot=slot, device=device
    )


def _reporters(store: Store, run_id: str, shown: Reporter) -> Reporter:
    """The console, plus TensorBoard and MLflow when the schedule asks for them (their extras
    are imported only then)."""
    schedule = load_schedule(store, run_id)
    reporters = [shown]
    if schedule.report.tensorboard:
        from iterprune.report.tensorboard import TensorBoardReporter

        logdir = Path(schedule.base_dir) / schedule.report.tensorboard / run_id
        reporters.append(TensorBoardReporter(logdir))
    if schedule.report.mlflow is not None:
        from iterprune.report.mlflow import MlflowTracker

        spec = schedule.report.mlflow
        reporters.append(MlflowTracker(store.state_dir, run_id, schedule, spec, shown))
    return reporters[0] if len(reporters) == 1 else Tee(*reporters)


def _detach(store: Store, run_id: str, lease_timeout: float, quiet: bool = False) -> int:
    """Serve the run from a background process (new session, no terminal), logging to a file."""
    with daemon.run_lock(store.state_dir, run_id, store):
        pass  # nobody serves it now: errors until here reach the caller
    log = paths.log_file(store.state_dir, run_id)
    pid = spawn(
        ["resume", run_id, "--state-dir", str(store.state_dir.resolve())]
        + ["--lease-timeout", str(lease_timeout)],
        log,
    )
    if quiet:
        return EXIT_OK
    console.say(
        f"run {run_id} started in the background: pid {pid}",
        f"log: {log}",
        f"follow it: iterprune logs {run_id} -f    status: iterprune status {run_id}    "
        f"stop it: iterprune stop {run_id}",
    )
    return EXIT_OK


def spawn(arguments: list[str], log: Path) -> int:
    """``iterprune ARGUMENTS`` in a background process; its pid."""
    return popen(arguments, log).pid


def popen(arguments: list[str], log: Path) -> subprocess.Popen:
    """``iterprune ARGUMENTS`` in a process of its own session (no terminal: a Ctrl-C there does
    not reach it), its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "iterprune", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def under_torchrun(opening: Opening, lease_timeout: float) -> int:
    """One rank under torchrun: rank 0 serves the run and leads; every other rank follows it.

    A stop (``iterprune stop``, SIGTERM, Ctrl-C) ends every rank with exit code 0, so that an
    elastic torchrun does not restart a run that was asked to stop; failures exit non-zero on
    rank 0, and torchrun ends (or restarts) the other ranks.
    """
    group = distributed.Group()
    try:
        if group.rank != 0:
            return orders.follow(group)
        leader = orders.Leader(group)
        code = EXIT_FAILED
        try:
            store, run_id = opening()
            if run_id is None:
                code = EXIT_OK
                return code
            leader.open(run_id, store.run(run_id) or {})
            code = foreground(store, run_id, lease_timeout, leader)
            if code == EXIT_STOPPED:
                console.say(
                    f"stopped on all {group.world} ranks (exit code 0 under torchrun); continue "
                    f"with: torchrun ... -m iterprune resume {run_id}"
                )
                code = EXIT_OK
            return code
        except IterpruneError as exc:
            code = exc.exit_code
            raise
        finally:
            leader.close(code)
    finally:
        group.close()


def leave(code: int) -> None:
    """End a process that served or followed a run under torchrun, at once.

    torch's C++ teardown of the process group at interpreter exit sometimes aborts ("terminate
    called without an active exception", once in ~17 two-rank runs here), which torchrun reports
    as a crash. Everything iterprune wrote is already committed and fsynced.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
