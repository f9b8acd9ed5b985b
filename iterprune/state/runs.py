"""Run identity: which run a schedule starts or continues, and the schedule a run was started with."""

from __future__ import annotations

import json

from iterprune.errors import RunConflict, UnknownRun
from iterprune.schedule.specs import OPERATING, Schedule
from iterprune.schedule.stored import differences, from_canonical
from iterprune.state.store import Store


def open_run(
    store: Store, schedule: Schedule, schedule_path: str, fresh: bool = False, queued: bool = False
) -> str:
    """The run id for ``schedule``: a new run, or the existing one when the schedule is unchanged.

    A changed schedule for an existing run is refused with what changed; ``fresh`` starts a new
    run id (``NAME-2``, ``NAME-3``, ...) instead. ``queued``: a new run waits for ``serve``.
    """
    import torch  # here, not at the top: the reading commands load runs, and they need no torch

    run_id = schedule.name
    existing = store.run(run_id)
    if existing is not None and fresh:
        n = 2
        while store.run(f"{schedule.name}-{n}") is not None:
            n += 1
        run_id, existing = f"{schedule.name}-{n}", None
    if existing is None:
        store.create_run(
            {
                "run": run_id,
                "status": "queued" if queued else "running",
                "phase": "pretrain",
                "round": 0,
                "attempt": 0,
                "step": schedule.prune.step,
                "schedule": dumps({**schedule.canonical(), "name": run_id}),
                "fingerprint": schedule.fingerprint(),
                "schedule_path": schedule_path,
                "base_dir": schedule.base_dir,
                "model": schedule.model.label,
                "torch_version": torch.__version__,
                "num_threads": schedule.threads or torch.get_num_threads(),
            }
        )
        return run_id
    # compared through the stored schedule, not the stored hash: a run started by an older
    # release (whose hash also covered fields left at their defaults) keeps its identity
    stored = from_canonical({**json.loads(existing["schedule"]), "name": schedule.name})
    changes = differences(stored.canonical(), schedule.canonical())
    if stored.fingerprint() != schedule.fingerprint():
        listing = "\n".join(
            f"  - {c}" for c in changes if c.split(":")[0].split(".")[0] not in OPERATING
        )
        raise RunConflict(
            f"run '{run_id}' exists and its schedule has changed:\n{listing}\n"
            f"Resume it with the original schedule (iterprune resume {run_id}), or start a new "
            f"run from the changed one with --fresh."
        )
    if changes:  # only how the run is watched or served: it continues with the new settings
        with store.transaction():
            store.update_run(run_id, schedule=dumps({**schedule.canonical(), "name": run_id}))
            store.add_event(run_id, "info", "schedule", "settings changed: " + "; ".join(changes))
    if existing["base_dir"] != schedule.base_dir:  # the file's directory, where its paths start
        with store.transaction():  # (relative in runs of earlier releases; a moved project)
            store.update_run(run_id, base_dir=schedule.base_dir)
            store.add_event(
                run_id, "info", "schedule", f"the schedule's directory is now {schedule.base_dir}"
            )
    return run_id


def load_schedule(store: Store, run_id: str) -> Schedule:
    """The schedule a run was started with (as stored in the database)."""
    row = store.run(run_id)
    if row is None:
        raise UnknownRun(f"no run named '{run_id}' in {store.path}")
    return from_canonical(json.loads(row["schedule"]), row["base_dir"] or ".")


def dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True)
