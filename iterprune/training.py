"""Fine-tuning and evaluation loops; pruned weights stay exactly zero, progress goes to a callback."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from iterprune.pruning import Mask

if TYPE_CHECKING:
    from iterprune.distributed import Group

Progress = Callable[[int, int, int], None]  # (epoch, batch done, batches per epoch)
# Under torchrun the ranks agree every this many batches (one small all-reduce: the loss, and rank
# 0's stop / checkpoint decisions). Every batch cost 17% on a small CPU model (bench/distributed.py).
AGREE_EVERY = 8


class MaskEnforcer:
    """Keeps masked weights at exactly zero through training, whatever the optimizer does.

    Momentum, Adam moments and weight decay all move a zeroed weight on the next step; masking the
    weights right after every ``optimizer.step()`` puts them back before any forward pass sees
    them. Gradients and optimizer state are deliberately left alone: on CPUs, Adam's step runs
    about twice as slow when ``exp_avg_sq`` holds scattered exact zeros (slow ``sqrt`` of zero
    lanes, measured in bench/mask_overhead.py), and a pruned weight's moments never matter because
    its mask never comes back. Layers without a pruned weight are skipped: a dense model pays nothing.
    """

    def __init__(self, params: dict[str, nn.Parameter], mask: Mask | None) -> None:
        self.params: list[nn.Parameter] = []
        self.masks: list[torch.Tensor] = []
        for name, p in params.items():
            m = None if mask is None else mask.get(name)
            if m is not None and not bool(m.all()):
                self.params.append(p)
                self.masks.append(m.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def mask_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


def build_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov
        )
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass
class TrainResult:
    loss: float
    batches: int
    finite: bool = True
    best_accuracy: float | None = None  # with early stopping: the kept epoch's accuracy
    best_epoch: int | None = None


@dataclass
class Position:
    """Where training is inside a round, enough to continue it exactly (a mid-round checkpoint).

    ``loader_state`` is the train loader's generator state at the start of ``epoch``: restoring it
    and re-creating the iterator reproduces the epoch's order, and ``batch`` batches are skipped.
    The ``best_*`` fields carry early stopping's state (``best_state`` holds the model and
    optimizer state of the best epoch so far).
    """

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    count: int = 0
    loader_state: torch.Tensor | None = None
    best_accuracy: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0
    best_state: dict[str, Any] | None = None


@dataclass
class Options:
    """How to train, beyond model, data and optimizer (all optional)."""

    enforcer: MaskEnforcer | None = None
    device: torch.device | str = "cpu"
    max_batches: int | None = None  # per epoch
    cosine_lr: float | None = None  # base lr of a cosine decay over the whole call
    scaler: Any = None  # a torch.amp.GradScaler: mixed precision (CUDA)
    validate: Callable[[], float] | None = None  # accuracy after each epoch, for early stopping
    patience: int | None = None
    progress: Progress | None = None
    should_stop: Callable[[], bool] | None = None
    start: Position | None = None
    on_resumed: Callable[[], None] | None = None  # after the skipped batches: restore RNG states
    checkpoint: Callable[[Position], None] | None = None
    checkpoint_due: Callable[[], bool] | None = None
    group: Group | None = None  # under torchrun: DDP, and rank 0's stop/checkpoint decisions


def _batches(loader: Iterable, cap: int | None) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return cap or 0
    return min(n, cap) if cap else n


def train(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    opts: Options | None = None,
) -> TrainResult:
    """Train for ``epochs``; ends early (finite=False) on a NaN or infinite loss.

    With ``opts.validate`` and ``opts.patience``, accuracy is measured after every epoch, training
    stops once it has not improved for ``patience`` epochs, and the best epoch's model and optimizer
    state are put back. ``opts.checkpoint`` is called with the position after a batch when
    ``opts.checkpoint_due()`` says so, and when ``opts.should_stop()`` ends training early.
    """
    o = opts or Options()
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    net = o.group.wrap(model) if o.group is not None else model  # DDP all-reduces the gradients
    sampler = getattr(loader, "sampler", None)
    pos = o.start or Position()
    pending = 0.0  # loss not yet added to pos.loss_sum (under torchrun: until the ranks agree)
    generator = getattr(loader, "generator", None)
    n_batches = _batches(loader, o.max_batches)
    total_steps = max(1, epochs * n_batches)
    device_type = torch.device(o.device).type
    for epoch in range(pos.epoch, epochs):
        resuming = o.start is not None and epoch == o.start.epoch
        if resuming and pos.loader_state is not None and generator is not None:
            generator.set_state(pos.loader_state)
        loader_state = generator.get_state() if isinstance(generator, torch.Generator) else None
        if o.group is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle of the shards
        batches = iter(loader)
        skip = pos.batch if resuming else 0
        for _ in range(skip):
            next(batches)
        if resuming and o.on_resumed is not None:
            o.on_resumed()
        for i, (x, y) in enumerate(batches, start=skip):
            if o.max_batches is not None and i >= o.max_batches:
                break
            if o.cosine_lr is not None:
                lr = o.cosine_lr * 0.5 * (1 + math.cos(math.pi * pos.count / total_steps))
                for group in optimizer.param_groups:
                    group["lr"] = lr
            x, y = x.to(o.device, non_blocking=True), y.to(o.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type, enabled=o.scaler is not None):
                loss = loss_fn(net(x), y)
            value = float(loss.detach())
            if o.group is None and not math.isfinite(value):
                return TrainResult(loss=value, batches=pos.count, finite=False)
            if o.scaler is not None:
                o.scaler.scale(loss).backward()
                o.scaler.step(optimizer)
                o.scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if o.enforcer is not None:
                o.enforcer.mask_weights()
            pending += value
            pos = dataclasses.replace(
                pos, epoch=epoch, batch=i + 1, count=pos.count + 1, loader_state=loader_state
            )
            if o.progress is not None:
                o.progress(epoch, i + 1, n_batches)
            stopping = due = False
            if o.group is None:
                pos.loss_sum, pending = pos.loss_sum + pending, 0.0
                stopping = _asked(o.should_stop)
                due = o.checkpoint is not None and not stopping and _asked(o.checkpoint_due)
            elif pos.count % AGREE_EVERY == 0:
                # every rank steps even on a non-finite loss (DDP needs all of them); it is caught
                # here, and such an attempt is rolled back anyway
                pos, pending, finite, stopping, due = _agree(o, pos, pending)
                if not finite:
                    return TrainResult(loss=math.nan, batches=pos.count, finite=False)
            if o.checkpoint is not None and (stopping or due):
                o.checkpoint(pos)
            if stopping:
                return TrainResult(loss=pos.loss_sum / max(pos.count, 1), batches=pos.count)
        if o.validate is not None and o.patience is not None:
            pos = _early_stopping(pos, epoch, model, optimizer, o.validate())
            if pos.stale_epochs >= o.patience:
                break
    if o.group is not None:
        pos, pending, finite, _, _ = _agree(o, pos, pending)
        if not finite:
            return TrainResult(loss=math.nan, batches=pos.count, finite=False)
        o.group.sync_buffers(model)  # BatchNorm statistics: rank 0's, on every rank
    result = TrainResult(loss=pos.loss_sum / max(pos.count, 1), batches=pos.count)
    if pos.best_state is not None:
        model.load_state_dict(pos.best_state["model"])
        optimizer.load_state_dict(pos.best_state["optimizer"])
        result.best_accuracy, result.best_epoch = pos.best_accuracy, pos.best_epoch
    return result


def _agree(o: Options, pos: Position, pending: float) -> tuple[Position, float, bool, bool, bool]:
    """The ranks' agreement: every rank adds the mean of their pending losses to ``loss_sum`` (so
    all hold the same position), learns whether any loss was not finite, and takes rank 0's
    decisions to stop and to write a mid-round checkpoint."""
    assert o.group is not None
    mean, bad, stopping, due = o.group.agree(
        pending, not math.isfinite(pending), _asked(o.should_stop), _asked(o.checkpoint_due)
    )
    return dataclasses.replace(pos, loss_sum=pos.loss_sum + mean), 0.0, not bad, stopping, due


def _asked(question: Callable[[], bool] | None) -> bool:
    return question is not None and bool(question())


def _early_stopping(
    pos: Position, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, accuracy: float
) -> Position:
    model.train()
    if pos.best_accuracy is None or accuracy > pos.best_accuracy:
        best = {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }
        return dataclasses.replace(
            pos, best_accuracy=accuracy, best_epoch=epoch, stale_epochs=0, best_state=best
        )
    return dataclasses.replace(pos, stale_epochs=pos.stale_epochs + 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    group: Group | None = None,
) -> float:
    """Top-1 accuracy in points (0-100). Runs in a forked RNG so it never shifts training.

    Under torchrun each rank counts its shard of the validation set and the counts are summed, so
    the figure is exact for the whole set however unevenly it splits.
    """
    if group is not None:
        group.sync_buffers(model)
    model.eval()
    correct = seen = 0
    with torch.random.fork_rng(devices=[]):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(dim=1) == y).sum())
            seen += y.numel()
    model.train()
    if group is not None:
        correct, seen = (int(v) for v in group.sum([correct, seen]))
    return 100.0 * correct / seen if seen else 0.0
