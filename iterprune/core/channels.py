"""Structured pruning that really removes channels (through torch-pruning's dependency graph),
and a description of the smaller architecture that can be stored and rebuilt without pickle.

The pure part of ``prune.method: channel``: remove channels, measure MACs, save and restore the
shapes. The runner decides when.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

SHAPE_ATTRS = {
    nn.Conv1d: ("in_channels", "out_channels"),
    nn.Conv2d: ("in_channels", "out_channels"),
    nn.Conv3d: ("in_channels", "out_channels"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm3d: ("num_features",),
    nn.GroupNorm: ("num_channels",),
}


def output_layer(model: nn.Module) -> nn.Module | None:
    """The last Linear (or Conv) module: the classifier, whose outputs are never removed."""
    last = None
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = module
    return last


def remove_channels(
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    scope: str = "global",
    exclude: Iterable[str] = (),
) -> None:
    """Remove ``fraction`` of the prunable output channels, smallest L2 norm first, in place.

    Dependent layers follow (the next layers' inputs, BatchNorm entries, residual partners,
    Flatten→Linear), so the model stays runnable; the classifier's outputs are kept.
    """
    import torch_pruning as tp

    patterns = tuple(exclude)
    ignored = [
        m
        for name, m in model.named_modules()
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    head = output_layer(model)
    if head is not None:
        ignored.append(head)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=fraction,
        global_pruning=scope == "global",
        ignored_layers=ignored,
    )
    pruner.step()


def round_fraction(step: float, alive: int, target_alive: int) -> float:
    """The fraction of channels to remove this round: ``step``, but not much past the target.

    Removing a fraction f of the channels removes about 1 - (1 - f)^2 of the weights (a layer
    loses outputs and the next one inputs).
    """
    needed = 1 - math.sqrt(target_alive / alive) if alive > 0 else 0.0
    return min(step, max(needed, 0.01))


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def architecture(model: nn.Module) -> dict[str, dict[str, int]]:
    """The shape-defining attributes of every resizable module, as plain ints."""
    out = {}
    for name, module in model.named_modules():
        attrs = SHAPE_ATTRS.get(type(module))
        if attrs:
            out[name] = {a: int(getattr(module, a)) for a in attrs}
    return out


def rebuild(
    model: nn.Module, arch: dict[str, dict[str, int]], state: dict[str, torch.Tensor]
) -> None:
    """Shrink a freshly built ``model`` to ``arch`` and load ``state`` (both from a checkpoint)."""
    modules = dict(model.named_modules())
    for name, attrs in arch.items():
        module = modules[name]
        for attr, value in attrs.items():
            setattr(module, attr, value)
        for key, tensor in list(module.named_parameters(recurse=False)):
            full = f"{name}.{key}" if name else key
            setattr(module, key, nn.Parameter(torch.empty_like(state[full]), tensor.requires_grad))
        for key, buffer in list(module.named_buffers(recurse=False)):
            full = f"{name}.{key}" if name else key
            if buffer is not None and full in state:
                module.register_buffer(key, torch.empty_like(state[full]))
    model.load_state_dict(state)


def fit(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    arch: dict[str, dict[str, int]] | None,
    fresh: Callable[[], nn.Module],
) -> nn.Module:
    """The model that holds ``state``: ``model`` itself, or, when ``arch`` (a checkpoint's channel
    layout) differs from its shapes, a ``fresh()`` model shrunk to ``arch``."""
    if arch is not None and arch != architecture(model):
        model = fresh()
        rebuild(model, arch, state)
        return model
    model.load_state_dict(state)
    return model


def describe(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to restore a channel-pruned model exactly."""
    return {"architecture": architecture(model), "model": model.state_dict()}
