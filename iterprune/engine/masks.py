"""An attempt's next mask, by the schedule's method: magnitude, LAMP or random (``core/pruning``),
Wanda (``core/wanda``, with input norms measured by ``calibration``), or one more step of an N:M
pattern (``core/patterns``) ranked by magnitude or Wanda's scores. Channel mode removes channels
instead (``workbench.remove_channels``)."""

from __future__ import annotations

import torch

from iterprune.core import decisions, patterns, pruning, rng, wanda
from iterprune.engine import calibration
from iterprune.engine.workbench import Workbench


def next_mask(bench: Workbench, plan: decisions.Attempt, accepted: pruning.Mask) -> pruning.Mask:
    """``plan.n_prune`` fewer survivors than ``accepted``; the mask only shrinks."""
    s = bench.schedule
    p = s.prune
    if p.n_m is not None:
        return _tighten(bench, plan, accepted)
    if p.method == "wanda":
        found = (_scales(bench, plan), p.group, bench.flipped, p.max_layer_sparsity)
        return wanda.prune(bench.params, accepted, plan.n_prune, *found)
    generator = torch.Generator().manual_seed(rng.derive_seed(s.seed, plan.round, plan.attempt))
    cap = p.max_layer_sparsity
    return pruning.prune(bench.params, accepted, plan.n_prune, p.method, generator, cap)


def _scales(bench: Workbench, plan: decisions.Attempt) -> dict[str, torch.Tensor]:
    """Wanda's input norms, measured on the current model in the attempt's seeded order."""
    s = bench.schedule
    seed = rng.derive_seed(s.seed, plan.round, plan.attempt, "calibration")
    data = (bench.train_loader, s.prune.calibration_batches, seed, bench.device, bench.task)
    return calibration.input_scales(bench.model, bench.params, *data)[0]


def _tighten(bench: Workbench, plan: decisions.Attempt, accepted: pruning.Mask) -> pruning.Mask:
    """N:M: one more weight out of every group above N, by magnitude or Wanda's score."""
    p = bench.schedule.prune
    n, m = p.n_m or (0, 0)
    if p.method == "wanda":
        scores = wanda.scores(bench.params, _scales(bench, plan))
    else:  # every magnitude method ranks within a group by |w| (LAMP keeps a layer's order)
        scores = {k: w.detach().abs() for k, w in bench.params.items()}
    return patterns.tighten(scores, accepted, n, m, bench.pattern_layers, bench.flipped)
