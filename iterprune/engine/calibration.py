"""Calibration for Wanda: the norm of every prunable layer's input features over a few training
batches, collected with forward pre-hooks on the current (already pruned) model.

The batches are the first ``prune.calibration.batches`` of the training split in an order drawn
from the attempt's own seed, inside forked random state: a resumed or rolled-back attempt sees
the same batches, and calibrating never shifts what the run draws next. The model runs in eval
mode (no dropout) without gradients, through the task's own loss, so any batch a task trains on
calibrates too.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from torch import nn

from iterprune.core import rng, wanda
from iterprune.engine import tasks
from iterprune.errors import UserError


def input_scales(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    loader: Any,
    batches: int,
    seed: int,
    device: torch.device | str = "cpu",
    task: Any = tasks.CLASSIFICATION,
) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """Per prunable weight, its input norms shaped to broadcast against it; and the names of the
    weights stored transposed (``[in, out]``)."""
    modules = {n: model.get_submodule(n.removesuffix(".weight")) for n in params}
    squares: dict[str, torch.Tensor | None] = dict.fromkeys(params)

    def hook(name: str, module: nn.Module):
        def record(_: nn.Module, args: tuple) -> None:
            squares[name] = wanda.add_squares(module, args[0], squares[name])

        return record

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with rng.untouched(loader, torch.device(device)), torch.no_grad():
            rng.seed_everything(seed, (loader,))
            for batch in islice(loader, batches):
                task.loss(model, tasks.to_device(batch, device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [n for n, found in squares.items() if found is None]
    if missing:
        raise UserError(
            f"Wanda calibration never ran {', '.join(missing[:5])}: a layer the forward pass "
            "does not use has no inputs to score; leave it out with prune.exclude"
        )
    scales = {n: wanda.scale(modules[n], squares[n]) for n in params}  # type: ignore[arg-type]
    flipped = frozenset(n for n, m in modules.items() if wanda.transposed(m))
    return scales, flipped
