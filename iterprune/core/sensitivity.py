"""Per-layer sensitivity: how much worse a model gets when one layer alone is pruned.

For every prunable layer and every level, the layer's weights are pruned to that level (by
magnitude, or by zeroing its weakest output channels), the model is evaluated, and the layer is
put back exactly, bit for bit, before the next one. Layers that lose more than the budget at the
lowest level are the ones to keep out of pruning (``prune.exclude``). Any metric: a drop is how
much worse, in the metric's units (accuracy points lost, perplexity gained). Pure torch, no I/O:
the caller supplies the evaluation and the progress callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from iterprune.core import pruning

LEVELS = (0.5, 0.75, 0.9, 0.95, 0.98)
METHODS = ("magnitude", "channel")


def keep_masks(
    weight: torch.Tensor, levels: Sequence[float], method: str
) -> Iterator[torch.Tensor]:
    """For each level, the keep-mask of ``weight`` pruned to it: the smallest |w| (magnitude) or
    the output channels of smallest L1 norm (channel), ties by position with the last kept."""
    w = weight.detach()
    if method == "magnitude":
        scores, units = w.abs().reshape(-1).float(), w.numel()
    else:
        scores, units = w.abs().reshape(w.shape[0], -1).float().sum(dim=1), w.shape[0]
    everything = torch.ones(units, dtype=torch.bool, device=w.device)
    for level in levels:
        removed = min(units - 1, round(level * units))  # one unit always stays
        keep = pruning.drop_lowest(scores.clone(), everything, removed)
        if method == "channel":
            keep = keep.view(-1, *([1] * (w.dim() - 1))).expand_as(w)
        yield keep.reshape(w.shape)


@torch.no_grad()
def analyse(
    params: dict[str, nn.Parameter],
    evaluate: Callable[[], float],
    levels: Sequence[float] = LEVELS,
    method: str = "magnitude",
    tick: Callable[[], None] = lambda: None,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """The metric with each layer of ``params`` pruned alone to each level (ascending);
    ``evaluate`` returns the model's metric (accuracy in points for a classifier), ``tick`` is
    called after each one. The keys keep their classification names (``accuracy``)."""
    if method not in METHODS:
        raise ValueError(f"unknown sensitivity method {method!r}")
    levels = sorted(levels)
    baseline = evaluate()
    tick()
    layers = []
    for name, p in params.items():
        saved = p.detach().clone()
        found = []
        try:
            for keep in keep_masks(p, levels, method):
                p.mul_(keep)
                found.append(evaluate())
                tick()
                p.copy_(saved)
        finally:
            p.copy_(saved)  # also when an evaluation fails or is interrupted
        layers.append(
            {
                "layer": name.removesuffix(".weight"),
                "params": p.numel(),
                "accuracy": found,
                "drop": [(baseline - a) if higher_is_better else (a - baseline) for a in found],
            }
        )
    return {"baseline_accuracy": baseline, "levels": levels, "layers": layers}


def suggested_exclude(layers: list[dict[str, Any]], max_drop: float) -> list[str]:
    """The layers that lose more than ``max_drop`` already at the lowest level."""
    return [r["layer"] for r in layers if r["drop"] and r["drop"][0] > max_drop + 1e-9]
