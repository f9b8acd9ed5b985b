"""The Python API: start, resume, watch and stop runs, read their documents, load their models.

The CLI is a thin layer over these functions, and what they return are the CLI's ``--json``
documents, so the two cannot drift apart. Errors are the exceptions the CLI maps to exit codes
(:mod:`iterprune.errors`)::

    import iterprune
    run = iterprune.start("schedules/digits.yaml", state_dir="state")   # runs to the end
    run.history()["rounds"][-1]["sparsity"]
    model = run.model()                                                  # the pruned nn.Module
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

from iterprune.errors import UserError
from iterprune.report import views
from iterprune.schedule import parsing as schedule
from iterprune.schedule.specs import Schedule
from iterprune.state import paths
from iterprune.state.store import DB_NAME, Store

ENDED = ("finished", "stopped", "failed", "interrupted")


class Run:
    """A run in a state directory. Every call opens the state database afresh, so a handle stays
    valid while another process serves the run."""

    def __init__(self, run_id: str, state_dir: str | Path | None = None) -> None:
        self.id = run_id
        self.state_dir = paths.state_dir(None if state_dir is None else str(state_dir))
        with closing(self._store()) as store:
            views.status(store, run_id)  # an unknown run raises UnknownRun here

    def __repr__(self) -> str:
        return f"Run({self.id!r}, state_dir={str(self.state_dir)!r})"

    def _store(self, write: bool = False) -> Store:
        if not (self.state_dir / DB_NAME).exists():
            raise UserError(f"no iterprune state in {self.state_dir}")
        return Store(self.state_dir, read_only=not write)

    def status(self) -> dict[str, Any]:
        """What the run is doing now: ``iterprune status RUN --json``."""
        with closing(self._store()) as store:
            return views.status(store, self.id)[0]

    def history(self) -> dict[str, Any]:
        """Every round and attempt: ``iterprune history RUN --json``."""
        with closing(self._store()) as store:
            return views.history(store, self.id)

    def show(self, round: int | None = None) -> dict[str, Any]:  # noqa: A002 (the CLI's name)
        """Per-layer sparsity of a round: ``iterprune show RUN --json``."""
        with closing(self._store()) as store:
            return views.show(store, self.id, round)

    def stop(self) -> dict[str, Any]:
        """Ask the process serving the run to stop after its current batch (it writes a
        mid-round checkpoint; under ``iterprune serve``, serve holds it and moves on); the status
        document as it is now."""
        from iterprune.serve import daemon
        from iterprune.state.backlog import Backlog

        with closing(self._store(write=True)) as store:
            if views.status(store, self.id)[0]["status"] in ("running", "paused"):
                store.request_stop(self.id)  # the owner's heartbeat sees it, on any host
                if not Backlog(store).serves(self.id):  # a signal would stop serve itself
                    daemon.stop_owner(store.run(self.id) or {})  # on this machine: at once
        return self.status()

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the run is no longer served (finished, stopped, failed); its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = self.status()
            if doc["status"] in ENDED:
                return doc
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id!r} is still {doc['status']} after {timeout}s")
            time.sleep(poll)

    def model(self, round: int | str = "last") -> Any:  # noqa: A002
        """The pruned ``nn.Module`` of a kept round (``last``, ``best`` or a number; 0 is the
        dense model), masked weights exactly zero, in eval mode."""
        from iterprune.report import export

        with closing(self._store()) as store:
            return export.round_model(store, self.id, str(round))[0]


def load(spec: str | Path | dict[str, Any]) -> tuple[Schedule, str]:
    """A validated schedule from a file or a dict (relative paths: from the current directory),
    and where it came from."""
    if isinstance(spec, dict):
        return schedule.from_mapping(spec, Path.cwd()), "<dict>"
    return schedule.load(spec), str(Path(spec).resolve())


def open_for_start(
    spec: str | Path | dict[str, Any], state_dir: str | Path | None, fresh: bool = False
) -> tuple[Store, str]:
    """Validate the schedule (before anything is written), then open its run: a new one, or the
    existing one when the schedule is unchanged (``fresh``: a new id beside it)."""
    from iterprune.state.runs import open_run

    s, source = load(spec)
    store = Store(paths.state_dir(None if state_dir is None else str(state_dir)))
    return store, open_run(store, s, source, fresh=fresh)


def _serve(store: Store, run_id: str, detach: bool, lease_timeout: float, quiet: bool) -> Run:
    from iterprune.serve import launch

    before = store.run(run_id) or {}
    if before.get("status") != "finished":
        launch.serve(lambda: (store, run_id), lease_timeout, detach, quiet=quiet)
        if detach:
            _claimed(store, run_id, before.get("status"))
    return Run(run_id, store.state_dir)


def _claimed(store: Store, run_id: str, status: str | None, timeout: float = 120.0) -> None:
    """Wait until the background process has taken the run (its pid is recorded, or the run
    moved on), so that the handle's status and ``wait`` see it served."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = store.run(run_id) or {}
        if row.get("pid") is not None or row.get("status") != status:
            return
        time.sleep(0.2)
    log = paths.log_file(store.state_dir, run_id)
    raise UserError(f"the background process did not take run {run_id!r} in {timeout:.0f}s: {log}")


def start(
    spec: str | Path | dict[str, Any],
    state_dir: str | Path | None = None,
    *,
    detach: bool = False,
    fresh: bool = False,
    lease_timeout: float = 60.0,
    quiet: bool = False,
) -> Run:
    """Start (or continue) the run of a schedule file or dict and serve it to its end here, or
    (``detach``) from a background process, returning at once. ``quiet``: no console output."""
    store, run_id = open_for_start(spec, state_dir, fresh)
    return _serve(store, run_id, detach, lease_timeout, quiet)


def resume(
    run_id: str,
    state_dir: str | Path | None = None,
    *,
    detach: bool = False,
    lease_timeout: float = 60.0,
    quiet: bool = False,
) -> Run:
    """Continue a stopped or interrupted run (see :func:`start`)."""
    run = Run(run_id, state_dir)
    return _serve(Store(run.state_dir), run_id, detach, lease_timeout, quiet)


def runs(state_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every run in the state directory: ``iterprune runs --json`` (``[]`` when there is none)."""
    root = paths.state_dir(None if state_dir is None else str(state_dir))
    if not (root / DB_NAME).exists():
        return []
    with closing(_existing(root)) as store:
        return views.runs(store)


def _existing(state_dir: str | Path | None) -> Store:
    root = paths.state_dir(None if state_dir is None else str(state_dir))
    if not (root / DB_NAME).exists():
        raise UserError(f"no iterprune state in {root}")
    return Store(root, read_only=True)


def check(runs: list[str] | None = None, state_dir: str | Path | None = None) -> dict[str, Any]:
    """Whether the state directory is whole: ``iterprune check --json`` (``ok``, ``problems``)."""
    from iterprune.state import audit

    with closing(_existing(state_dir)) as store:
        return audit.audit(store, runs or None)


def backup(
    dest: str | Path, runs: list[str] | None = None, state_dir: str | Path | None = None
) -> dict[str, Any]:
    """A consistent copy of the state directory (or of ``runs``) in ``dest``, made while runs
    are live, that ``resume`` continues from: ``iterprune backup DEST``."""
    from iterprune.state import backup as copying

    with closing(_existing(state_dir)) as store:
        return copying.backup(store, Path(dest), runs or None)
