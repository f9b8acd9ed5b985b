"""The weight-distribution report practitioners look at before pruning (``iterprune analyze``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from iterprune.core import pruning

PERCENTILES = (10, 25, 50, 75, 90)
NEAR_ZERO = 1e-3


@torch.no_grad()
def weight_report(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Percentiles of |w| over all prunable weights, the share under 1e-3, and per-layer stats."""
    params = pruning.prunable_parameters(model, exclude)
    flat = torch.cat([p.detach().abs().reshape(-1).float().cpu() for p in params.values()])
    n = flat.numel()
    percentiles = {
        f"p{q}": float(pruning.kth_smallest(flat, max(1, round(q / 100 * n)))) for q in PERCENTILES
    }
    layers = []
    for name, p in params.items():
        w = p.detach().abs().float()
        layers.append(
            {
                "layer": name.removesuffix(".weight"),
                "params": w.numel(),
                "mean_abs": float(w.mean()),
                "std_abs": float(w.std()) if w.numel() > 1 else 0.0,
                "near_zero": float(torch.count_nonzero(w < NEAR_ZERO)) / w.numel(),
            }
        )
    return {
        "params": n,
        "percentiles": percentiles,
        "near_zero": float(torch.count_nonzero(flat < NEAR_ZERO)) / n,
        "near_zero_threshold": NEAR_ZERO,
        "layers": layers,
    }
