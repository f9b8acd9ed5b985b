"""Fine-tuning and evaluation loops; pruned weights stay exactly zero, progress goes to a callback."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from iterprune.pruning import Mask

Progress = Callable[[int, int, int], None]  # (epoch, batch done, batches per epoch)


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
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass
class TrainResult:
    loss: float
    batches: int
    finite: bool = True


@dataclass
class Position:
    """Where training is inside a round, enough to continue it exactly (a mid-round checkpoint).

    ``loader_state`` is the train loader's generator state at the start of ``epoch``: restoring it
    and re-creating the iterator reproduces the epoch's order, and ``batch`` batches are skipped.
    """

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    count: int = 0
    loader_state: torch.Tensor | None = None


def _batches(loader: Iterable) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return 0


def train(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    enforcer: MaskEnforcer | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    start: Position | None = None,
    on_resumed: Callable[[], None] | None = None,
    checkpoint: Callable[[Position], None] | None = None,
    checkpoint_due: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train for ``epochs``; stops early (finite=False) on a NaN or infinite loss.

    With ``start``, training continues from that position; ``on_resumed`` runs once the skipped
    batches are behind (to restore the RNG states saved with the position). ``checkpoint`` is
    called with the current position after a batch when ``checkpoint_due()`` says so, and when
    ``should_stop()`` ends training early.
    """
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    pos = start or Position()
    generator = getattr(loader, "generator", None)
    n_batches = _batches(loader)
    for epoch in range(pos.epoch, epochs):
        resuming = start is not None and epoch == start.epoch
        if resuming and pos.loader_state is not None and generator is not None:
            generator.set_state(pos.loader_state)
        loader_state = generator.get_state() if isinstance(generator, torch.Generator) else None
        batches = iter(loader)
        skip = pos.batch if resuming else 0
        for _ in range(skip):
            next(batches)
        if resuming and on_resumed is not None:
            on_resumed()
        for i, (x, y) in enumerate(batches, start=skip):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                return TrainResult(loss=value, batches=pos.count, finite=False)
            loss.backward()
            optimizer.step()
            if enforcer is not None:
                enforcer.mask_weights()
            pos = Position(epoch, i + 1, pos.loss_sum + value, pos.count + 1, loader_state)
            if progress is not None:
                progress(epoch, i + 1, n_batches)
            stopping = should_stop is not None and should_stop()
            if checkpoint is not None and (stopping or (checkpoint_due and checkpoint_due())):
                checkpoint(pos)
            if stopping:
                return TrainResult(loss=pos.loss_sum / max(pos.count, 1), batches=pos.count)
    return TrainResult(loss=pos.loss_sum / max(pos.count, 1), batches=pos.count)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in points (0-100). Runs in a forked RNG so it never shifts training."""
    model.eval()
    correct = seen = 0
    with torch.random.fork_rng(devices=[]):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(dim=1) == y).sum())
            seen += y.numel()
    model.train()
    return 100.0 * correct / seen if seen else 0.0
