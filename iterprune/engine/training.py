"""Fine-tuning and evaluation loops; pruned weights stay exactly zero, progress goes to a callback."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from iterprune.core.pruning import Mask
from iterprune.engine import tasks

Progress = Callable[[int, int, int], None]  # (epoch, batch done, batches per epoch)
# Under torchrun the ranks agree every this many batches (one small all-reduce: the loss, and rank
# 0's stop / checkpoint decisions). Every batch cost 17% on a small CPU model (bench/distributed.py).
AGREE_EVERY = 8


class Collective(Protocol):
    """The process group as training sees it under torchrun (``distributed.Group`` is one)."""

    rank: int
    world: int

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model for forward and backward passes (DistributedDataParallel)."""

    def agree(
        self, loss: float, bad: bool, stop: bool, due: bool
    ) -> tuple[float, bool, bool, bool]:
        """The mean loss over ranks, whether any was not finite, and rank 0's stop / checkpoint."""

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks."""

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank."""

    def collect(self, part: torch.Tensor) -> torch.Tensor | None:
        """At rank 0, every rank's strided shard of a split put back in the split's order."""


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
    epochs: int = 0  # epochs trained (fewer than asked when early stopping or a stop ends it)
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
    group: Collective | None = None  # under torchrun: DDP, and rank 0's stop/checkpoint decisions
    task: Any = tasks.CLASSIFICATION  # its loss of a batch is what is minimised


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
    run = _Run(model, loader, optimizer, epochs, opts or Options())
    for epoch in range(run.pos.epoch, epochs):
        ended = run.epoch(epoch)
        if ended is not None:
            return ended
        if run.o.patience is not None and run.pos.stale_epochs >= run.o.patience:
            break
    return run.finish()


class _Run:
    """One call of :func:`train`: its position, one epoch and one batch at a time."""

    def __init__(
        self,
        model: nn.Module,
        loader: Iterable,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        o: Options,
    ) -> None:
        self.model, self.loader, self.optimizer, self.o = model, loader, optimizer, o
        model.train()
        self.net = o.group.wrap(model) if o.group is not None else model  # DDP: gradients
        self.pos = o.start or Position()
        self.pending = 0.0  # loss not yet in pos.loss_sum (under torchrun: until ranks agree)
        self.generator = getattr(loader, "generator", None)
        self.n_batches = _batches(loader, o.max_batches)
        self.total_steps = max(1, epochs * self.n_batches)
        self.device_type = torch.device(o.device).type

    def epoch(self, epoch: int) -> TrainResult | None:
        """Train one epoch; a result when training ends inside it (stop, non-finite loss)."""
        o = self.o
        batches, skip, loader_state = self._begin(epoch)
        for i, batch in enumerate(batches, start=skip):
            if o.max_batches is not None and i >= o.max_batches:
                break
            ended = self._batch(epoch, i, batch, loader_state) or self._after_batch()
            if ended is not None:
                return ended
        if o.validate is not None and o.patience is not None:
            self.pos = _early_stopping(self.pos, epoch, self.model, self.optimizer, o.validate())
        return None

    def _begin(self, epoch: int) -> tuple[Iterator, int, torch.Tensor | None]:
        """The epoch's batches (a resumed epoch: in the same order, the done ones skipped)."""
        o, generator = self.o, self.generator
        resuming = o.start is not None and epoch == o.start.epoch
        if resuming and self.pos.loader_state is not None and generator is not None:
            generator.set_state(self.pos.loader_state)
        loader_state = generator.get_state() if isinstance(generator, torch.Generator) else None
        sampler = getattr(self.loader, "sampler", None)
        if o.group is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle of the shards
        batches = iter(self.loader)
        skip = self.pos.batch if resuming else 0
        for _ in range(skip):
            next(batches)
        if resuming and o.on_resumed is not None:
            o.on_resumed()
        return batches, skip, loader_state

    def _batch(
        self, epoch: int, i: int, batch: Any, state: torch.Tensor | None
    ) -> TrainResult | None:
        """One optimizer step; a result when the loss is not finite (single process)."""
        o, optimizer, pos = self.o, self.optimizer, self.pos
        if o.cosine_lr is not None:
            lr = o.cosine_lr * 0.5 * (1 + math.cos(math.pi * pos.count / self.total_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
        batch = tasks.to_device(batch, o.device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, enabled=o.scaler is not None):
            loss = o.task.loss(self.net, batch)
        value = float(loss.detach())
        if o.group is None and not math.isfinite(value):
            return self._result(value, finite=False)
        if o.scaler is not None:
            o.scaler.scale(loss).backward()
            o.scaler.step(optimizer)
            o.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if o.enforcer is not None:
            o.enforcer.mask_weights()
        self.pending += value
        self.pos = dataclasses.replace(
            pos, epoch=epoch, batch=i + 1, count=pos.count + 1, loader_state=state
        )
        if o.progress is not None:
            o.progress(epoch, i + 1, self.n_batches)
        return None

    def _after_batch(self) -> TrainResult | None:
        """Stop, checkpoint, or (under torchrun, every AGREE_EVERY batches) agree with the ranks."""
        o = self.o
        stopping = due = False
        if o.group is None:
            self.pos.loss_sum, self.pending = self.pos.loss_sum + self.pending, 0.0
            stopping = _asked(o.should_stop)
            due = o.checkpoint is not None and not stopping and _asked(o.checkpoint_due)
        elif self.pos.count % AGREE_EVERY == 0:
            # every rank steps even on a non-finite loss (DDP needs all of them); it is caught
            # here, and such an attempt is rolled back anyway
            self.pos, self.pending, finite, stopping, due = _agree(o, self.pos, self.pending)
            if not finite:
                return self._result(math.nan, finite=False)
        if o.checkpoint is not None and (stopping or due):
            o.checkpoint(self.pos)
        if stopping:
            return self._result(self.pos.loss_sum / max(self.pos.count, 1))
        return None

    def _result(self, loss: float, finite: bool = True) -> TrainResult:
        pos = self.pos
        epochs = pos.epoch + 1 if pos.count else 0
        return TrainResult(loss=loss, batches=pos.count, finite=finite, epochs=epochs)

    def finish(self) -> TrainResult:
        o, pos, model = self.o, self.pos, self.model
        if o.group is not None:
            pos, self.pending, finite, _, _ = _agree(o, pos, self.pending)
            if not finite:
                return self._result(math.nan, finite=False)
            o.group.sync_buffers(model)  # BatchNorm statistics: rank 0's, on every rank
        self.pos = pos
        result = self._result(pos.loss_sum / max(pos.count, 1))
        if pos.best_state is not None:
            model.load_state_dict(pos.best_state["model"])
            self.optimizer.load_state_dict(pos.best_state["optimizer"])
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
