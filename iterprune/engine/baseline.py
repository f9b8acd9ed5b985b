"""The dense starting point of a run: pretraining (when no weights are given), the lottery rewind
point captured on the way, and the baseline accuracy and latency that every round is judged by.

:func:`establish` computes it; :func:`record` commits it as round 0 (checkpoints, then the row).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from iterprune.core import decisions, evidence, pruning, rng
from iterprune.engine import evaluation, orders, training
from iterprune.engine.attempts import Accepted
from iterprune.engine.reporter import Narrator
from iterprune.engine.workbench import Workbench
from iterprune.errors import RunConflict, UserError
from iterprune.schedule.specs import Schedule
from iterprune.state import paths
from iterprune.state.snapshots import Snapshots

State = dict[str, torch.Tensor]


@dataclass
class Baseline:
    reference: evaluation.Reference  # the dense model's answers on the validation split
    accuracy: float  # its validation metric (accuracy in points; a perplexity)
    test_accuracy: float | None  # on the test split, when there is one (never decides)
    latency: dict[str, float]  # latency_ms_p50 / _p99, with a benchmark section
    rewind: State | None  # lottery mode: the weights every round rewinds to


def start(
    bench: Workbench,
    snapshots: Snapshots,
    narrator: Narrator,
    ranks: orders.Ranks,
    stop: threading.Event,
) -> tuple[Accepted, State | None] | None:
    """A new run: pretrain and measure the dense model and commit it as round 0; the accepted
    state and the rewind point (lottery), or None when stopped during pretraining."""
    found = establish(bench, narrator, ranks, stop.is_set)
    if found is None:
        return None
    total = sum(p.numel() for p in bench.params.values())
    mask = record(snapshots, bench, found, total)
    speed = found.latency.get("latency_ms_p50")
    n = found.reference.n
    d = decisions.decimals(bench.schedule.validate.budget(found.accuracy))
    shown = _shown(bench.metric, found.accuracy, d)
    test = ""
    if found.test_accuracy is not None:
        test = f", {_shown(bench.metric, found.test_accuracy, d)} on the test split"
    narrator.event(
        "info",
        "baseline",
        f"dense baseline {bench.metric['name']} {shown} on {n} validation "
        f"samples{test}, {total:,} prunable weights"
        + (f", {speed:.2f} ms/batch" if speed is not None else ""),
    )
    if found.reference.correct is not None:  # 0/1 answers: can their interval see the budget?
        warn_unresolved(narrator, bench.schedule, n, found.accuracy)
    return Accepted.of(0, bench, mask, optimizer=False), found.rewind


def _shown(metric: dict, value: float, d: int) -> str:
    """A metric's value as the round lines show it: ``99.72%``, a perplexity ``4.22``, with
    ``d`` decimals (:func:`decisions.decimals` of the budget: an MSE's ``0.000286``)."""
    return f"{value:.{d}f}" + ("%" if metric["name"] == "accuracy" else "")


def warn_unresolved(narrator: Narrator, schedule: Schedule, n: int, accuracy: float) -> None:
    """A warning when the validation split is too small to tell a drop of the budget from none."""
    v = schedule.validate
    seen = evidence.resolution(n, accuracy, v.budget(accuracy), v.confidence)
    if not seen.resolved:
        narrator.event("warning", "resolution", seen.message(v.confidence))


def establish(
    bench: Workbench, narrator: Narrator, ranks: orders.Ranks, should_stop: Callable[[], bool]
) -> Baseline | None:
    """Pretrain the dense model if the schedule asks for it, then measure it; None when a stop
    was asked for during pretraining (nothing is kept: resume starts over)."""
    s = bench.schedule
    lottery = s.lottery
    catcher = _RewindCatcher(
        bench, lottery.rewind if lottery else None, lottery.at if lottery else 0
    )
    ranks.sync(bench, None)
    if s.pretrain.epochs and not s.model.weights:
        if not _pretrain(bench, narrator, ranks, should_stop, catcher):
            return None
    if lottery is not None and catcher.state is None:
        raise UserError(
            f"lottery.rewind.{lottery.rewind}: {lottery.at} is past the end of pretraining "
            f"({narrator.batches} steps in {s.pretrain.epochs} epochs)"
        )
    narrator.phase("validate", 1, "measuring the dense baseline")
    found = ranks.evaluate(bench, "val")
    if not math.isfinite(found.value):
        raise UserError(
            f"the dense model's validation {bench.metric['name']} is {found.value}: every round "
            "is judged against it, so it must be a number (check the task's scores)"
        )
    test = ranks.evaluate(bench, "test").value if bench.test_loader is not None else None
    latency = measure_latency(bench, narrator)
    return Baseline(evaluation.Reference.of(found), found.value, test, latency, catcher.state)


def record(snapshots: Snapshots, bench: Workbench, found: Baseline, total: int) -> pruning.Mask:
    """Commit the dense model as round 0: its checkpoint (and the rewind point's) first, then the
    run's baseline row that points to them. Returns the dense mask."""
    store, run_id = snapshots.store, snapshots.run_id
    mask = pruning.dense_mask(bench.params)
    state = {"model": bench.model.state_dict(), "mask": mask, "optimizer": None}
    dense = snapshots.write(paths.checkpoint_file(store.state_dir, run_id, 0, 0), state)
    written = [{"round": 0, "attempt": 0, "kind": "dense", **dense}]
    if found.rewind is not None:
        rewind = snapshots.write(
            paths.rewind_file(store.state_dir, run_id), {"model": found.rewind}
        )
        written.append({"round": 0, "attempt": 0, "kind": "rewind", **rewind})
    run_fields = {
        **found.reference.row(),
        "metric": json.dumps(bench.metric),
        "baseline_accuracy": found.accuracy,
        "baseline_test_accuracy": found.test_accuracy,
        "test_accuracy": found.test_accuracy,
        "baseline_params": total,
        "total_params": total,
        "val_accuracy": found.accuracy,
        "sparsity": 0.0,
        "accepted_round": 0,
        "phase": "prune",
        **{f"baseline_{k}": v for k, v in found.latency.items()},
    }
    layers = bench.layer_stats()
    store.record_baseline(run_id, run_fields, layers, written)
    return mask


def measure_latency(bench: Workbench, narrator: Narrator) -> dict[str, float]:
    """Inference latency of the current model, when the schedule has a benchmark section."""
    spec = bench.schedule.benchmark
    if spec is None:
        return {}
    narrator.phase("benchmark", 1, "measuring inference latency")
    return bench.latency(spec)


class _RewindCatcher:
    """Keeps the lottery rewind point: the initial weights, or those after K epochs / steps."""

    def __init__(self, bench: Workbench, kind: str | None, at: int) -> None:
        self.bench, self.kind, self.at = bench, kind, at
        self.state: State | None = _clone(bench.model.state_dict()) if kind == "init" else None

    def after_batch(self, step: int, epoch: int, batch: int, batches: int) -> None:
        if self.state is not None or self.kind is None:
            return
        if (self.kind == "step" and step == self.at) or (
            self.kind == "epoch" and epoch + 1 == self.at and batch == batches
        ):
            self.state = _clone(self.bench.model.state_dict())


def _pretrain(
    bench: Workbench,
    narrator: Narrator,
    ranks: orders.Ranks,
    should_stop: Callable[[], bool],
    catcher: _RewindCatcher,
) -> bool:
    """Dense training with Adam; False when stopped part-way."""
    s, model = bench.schedule, bench.model
    epochs, lr = s.pretrain.epochs, s.pretrain.lr
    seed = rng.derive_seed(s.seed, 0, 0)
    rng.seed_everything(seed, (bench.train_loader,))
    narrator.phase("pretrain", epochs, f"pretraining dense model, {epochs} epochs")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    narrator.batches = 0

    def progress(epoch: int, batch: int, batches: int) -> None:
        narrator.batch(epoch, batch, batches)
        catcher.after_batch(narrator.batches, epoch, batch, batches)

    options = training.Options(
        device=bench.device,
        progress=progress,
        should_stop=should_stop,
        group=bench.group,
        task=bench.task,
    )
    with ranks.order(orders.Pretrain(seed, lr, epochs)):
        result = training.train(model, bench.train_loader, optimizer, epochs, options)
    if should_stop():
        return False
    if not result.finite:
        raise RunConflict(f"pretraining diverged (loss {result.loss}); lower pretrain.lr")
    return True


def _clone(state: State) -> State:
    return {k: v.detach().clone() for k, v in state.items()}
