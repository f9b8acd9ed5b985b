"""The schedule's fine-tuning section turned into training calls (optimizer, options), and the
lottery-ticket control that applies the same recipe to a freshly initialised model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from iterprune import pruning, rng, sources, training
from iterprune.specs import FinetuneSpec, Schedule


def optimizer(f: FinetuneSpec, model: nn.Module) -> torch.optim.Optimizer:
    return training.build_optimizer(
        f.optimizer, model.parameters(), f.lr, f.weight_decay, f.momentum, f.nesterov
    )


def options(
    f: FinetuneSpec,
    model: nn.Module,
    params: dict[str, nn.Parameter],
    mask: pruning.Mask,
    val_loader: Iterable,
    device: torch.device,
    **extra: Any,
) -> training.Options:
    """Training options for one round under ``mask``: schedule, early stopping, batch cap."""
    validate = None
    if f.patience:
        validate = lambda: training.evaluate(model, val_loader, device)  # noqa: E731
    return training.Options(
        enforcer=training.MaskEnforcer(params, mask), device=device,
        max_batches=f.max_batches_per_epoch,
        cosine_lr=f.lr if f.lr_schedule == "cosine" else None,
        validate=validate, patience=f.patience, **extra,
    )  # fmt: skip


def control_accuracy(
    s: Schedule,
    mask: pruning.Mask,
    train_loader: Iterable,
    val_loader: Iterable,
    device: torch.device,
    seed: int,
    progress: Callable[[int, int, int], None] | None = None,
) -> float:
    """Train ``mask`` from a fresh random initialisation with the round's budget; its accuracy.

    Runs in forked random state and puts the loader's generator back, so the control never
    changes what the run itself draws.
    """
    with rng.untouched(train_loader, device):
        rng.seed_everything(seed, (train_loader,))
        model = sources.build_model(dataclasses.replace(s.model, weights=None), seed, s.base_dir)
        model = model.to(device)
        params = pruning.prunable_parameters(model, s.prune.exclude)
        pruning.apply(params, mask)
        f = s.finetune
        opts = options(f, model, params, mask, val_loader, device, progress=progress)
        result = training.train(model, train_loader, optimizer(f, model), f.epochs, opts)
        accuracy = result.best_accuracy
        if accuracy is None:
            accuracy = training.evaluate(model, val_loader, device)
    return accuracy
