"""Where a continued run picks up: the newest accepted checkpoint that passes its sha256 check.

A damaged checkpoint (a flipped byte, a truncated or deleted file) is skipped with a warning; the
run falls back to the newest older one that verifies, and the rounds after it are forgotten, to be
redone. A lottery run also needs its rewind point, which must verify too (else exit code 5).
"""

from __future__ import annotations

from typing import Any

import torch

from iterprune.engine import evaluation, orders
from iterprune.engine.attempts import Accepted
from iterprune.engine.reporter import Narrator
from iterprune.engine.workbench import Workbench
from iterprune.schedule.specs import Schedule
from iterprune.state.snapshots import Snapshots


def resume(
    bench: Workbench, snapshots: Snapshots, narrator: Narrator, ranks: orders.Ranks
) -> tuple[Accepted, dict[str, torch.Tensor] | None]:
    """Load the newest accepted state that verifies into ``bench`` (every rank gets it); the
    accepted state and the rewind point (lottery)."""
    store, run_id, schedule = snapshots.store, snapshots.run_id, bench.schedule
    row = store.run(run_id) or {}
    if evaluation.Reference.from_row(row) is None:
        _measure_dense(bench, snapshots, narrator, ranks, row)
    ckpt, state = snapshots.newest_valid(row["accepted_round"])
    if ckpt["round"] != row["accepted_round"]:
        _fall_back(snapshots, schedule, ckpt["round"], row)
        narrator.event(
            "warning",
            "fallback",
            f"fell back to round {ckpt['round']}: rounds {ckpt['round'] + 1}.."
            f"{row['accepted_round']} will be redone",
        )
    bench.load(state["model"], state.get("architecture"))
    if state["optimizer"] is not None:
        bench.optimizer.load_state_dict(state["optimizer"])
    accepted = Accepted.of(ckpt["round"], bench, state["mask"], state["optimizer"] is not None)
    rewind = snapshots.rewind_point() if schedule.lottery is not None else None
    ranks.sync(bench, accepted.mask)
    narrator.event("info", "resume", f"resumed from round {ckpt['round']} ({ckpt['path']})")
    return accepted, rewind


def _measure_dense(
    bench: Workbench,
    snapshots: Snapshots,
    narrator: Narrator,
    ranks: orders.Ranks,
    row: dict[str, Any],
) -> None:
    """A run started by an older release kept only the dense model's accuracy. Every attempt is
    now paired with its per-sample answers, so they are measured once, from the dense
    checkpoint, and kept with the run."""
    _, state = snapshots.newest_valid(0)
    bench.load(state["model"], state.get("architecture"))
    ranks.sync(bench, None)
    narrator.phase("validate", 1, "measuring the dense model's answers")
    found = ranks.evaluate(bench, "val")
    snapshots.store.update_run(snapshots.run_id, **evaluation.Reference.of(found).row())
    recorded = row.get("baseline_accuracy")
    note = "" if recorded is None else f" (recorded when the run started: {recorded:.2f}%)"
    narrator.event(
        "info",
        "baseline",
        f"measured the dense model's answers on {found.n} validation samples, accuracy "
        f"{found.accuracy:.2f}%{note}: this run was started by an earlier release",
    )


def _fall_back(snapshots: Snapshots, schedule: Schedule, round_: int, row: dict[str, Any]) -> None:
    """Forget the rounds after ``round_`` (their checkpoints are lost): they will be redone."""
    store, run_id = snapshots.store, snapshots.run_id
    accepted = [r for r in store.rounds(run_id) if r["status"] == "accepted"]
    kept = next((r for r in accepted if r["round"] == round_), None)
    fields = {
        "step": kept["step"] if kept else schedule.prune.step,
        "sparsity": kept["sparsity"] if kept else 0.0,
        "val_accuracy": kept["val_accuracy"] if kept else row["baseline_accuracy"],
        "round": round_,
        "attempt": kept["attempt"] if kept else 0,
    }
    snapshots.forget(store.rewind_to(run_id, round_, fields))
