"""The schedule's fine-tuning section turned into training calls (optimizer, options, one round's
fine-tuning), and the lottery-ticket control that applies the same recipe to a freshly
initialised model. Rank 0 and the other ranks under torchrun make the same calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from iterprune.core import pruning, rng
from iterprune.engine import distillation, evaluation, sources, tasks, training
from iterprune.schedule.specs import FinetuneSpec, Schedule


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
    group: training.Collective | None = None,
    task: Any = tasks.CLASSIFICATION,
    **extra: Any,
) -> training.Options:
    """Training options for one round under ``mask``: schedule, early stopping, batch cap."""
    validate = None
    judged = task.task if isinstance(task, distillation.Distilled) else task  # by its metric
    if f.patience:
        validate = lambda: evaluation.score(model, val_loader, device, group, judged)  # noqa: E731
    return training.Options(
        task=task,
        enforcer=training.MaskEnforcer(params, mask),
        device=device,
        max_batches=f.max_batches_per_epoch,
        cosine_lr=f.lr if f.lr_schedule == "cosine" else None,
        validate=validate,
        patience=f.patience,
        group=group,
        **extra,
    )


def finetune(
    f: FinetuneSpec,
    model: nn.Module,
    params: dict[str, nn.Parameter],
    mask: pruning.Mask,
    optimizer: torch.optim.Optimizer,
    loaders: tuple[Iterable, Iterable],
    device: torch.device,
    epochs: int | None = None,
    **extra: Any,
) -> training.TrainResult:
    """One round's fine-tuning of ``model`` under ``mask``: ``epochs`` (default: the section's)
    of the recipe (``extra``: more :func:`options`)."""
    train_loader, val_loader = loaders
    opts = options(f, model, params, mask, val_loader, device, **extra)
    if f.lr_schedule == "constant":
        for param_group in optimizer.param_groups:
            param_group["lr"] = f.lr
    return training.train(model, train_loader, optimizer, epochs or f.epochs, opts)


def control_accuracy(
    s: Schedule,
    mask: pruning.Mask,
    train_loader: Iterable,
    val_loader: Iterable,
    device: torch.device,
    seed: int,
    progress: Callable[[int, int, int], None] | None = None,
    group: training.Collective | None = None,
    task: Any = tasks.CLASSIFICATION,
) -> float:
    """Train ``mask`` from a fresh random initialisation with the round's budget; its metric
    on validation, in the task's units (accuracy points, perplexity, a factory's score).

    Runs in forked random state and puts the loader's generator back, so the control never
    changes what the run itself draws.
    """
    with rng.untouched(train_loader, device):
        rng.seed_everything(seed, (train_loader,), group.rank if group is not None else 0)
        model = sources.fresh_model(s.model, seed, s.base_dir)
        model = model.to(device)
        params = pruning.prunable_parameters(model, (*s.prune.exclude, *task.exclude))
        pruning.apply(params, mask)
        f = s.finetune
        result = finetune(
            f,
            model,
            params,
            mask,
            optimizer(f, model),
            (train_loader, val_loader),
            device,
            group=group,
            progress=progress,
            task=task,
        )
        score = result.best_accuracy  # with early stopping: higher is better
        if score is None:
            score = evaluation.score(model, val_loader, device, group, task)
    return score if task.higher_is_better else -score
