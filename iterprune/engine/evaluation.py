"""Measuring a model on a held-out split: its accuracy, and which samples it gets right.

The per-sample answers, in the split's order, are what makes the comparison with the dense model
paired (``evidence.py``). Evaluation runs in a forked RNG, so it never shifts what training draws.
Under torchrun each rank answers its strided shard of the split; accuracies are exact (the counts
are summed) and the per-sample answers are put back together on rank 0, each sample once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iterprune.core import pruning
from iterprune.core.evidence import Paired
from iterprune.engine import tasks
from iterprune.engine.training import Collective


@dataclass(frozen=True)
class Answers:
    """Per sample of a split, in its order: whether the model was right, and the label."""

    correct: torch.Tensor  # bool
    labels: torch.Tensor  # int64

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in points (0-100)."""
        return 100.0 * int(self.correct.sum()) / self.n if self.n else 0.0

    def labels_digest(self) -> str:
        """Identifies the split and its order (a shuffled split would pair the wrong samples)."""
        return hashlib.sha256(self.labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]

    def against(self, before: torch.Tensor) -> Paired:
        """The paired table of ``before`` (the dense model's answers) against these."""
        after = self.correct
        return Paired(
            both=int((before & after).sum()),
            lost=int((before & ~after).sum()),
            gained=int((~before & after).sum()),
            neither=int((~before & ~after).sum()),
        )


@dataclass(frozen=True)
class Reference:
    """The dense model's answers on the validation split, as kept with the run: what every
    attempt is paired with."""

    correct: torch.Tensor  # bool, per sample
    labels: str  # Answers.labels_digest() of the split it answered

    @classmethod
    def of(cls, found: Answers) -> Reference:
        return cls(found.correct.clone(), found.labels_digest())

    def row(self) -> dict[str, Any]:
        return {
            "baseline_correct": pack(self.correct),
            "val_samples": int(self.correct.numel()),
            "val_labels": self.labels,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Reference | None:
        """The reference stored with a run (None for a run of an older release)."""
        if row.get("baseline_correct") is None:
            return None
        return cls(unpack(row["baseline_correct"], row["val_samples"]), row["val_labels"])


def answers(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    group: Collective | None = None,
) -> Answers | None:
    """Which samples ``model`` gets right; under torchrun, the whole split on rank 0 (None on
    the other ranks, which only answer their shard)."""
    mine = _answer(model, loader, device, group)
    if group is None:
        return mine
    whole_correct, whole_labels = group.collect(mine.correct), group.collect(mine.labels)
    if whole_correct is None or whole_labels is None:
        return None
    return Answers(whole_correct, whole_labels)


def accuracy(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    group: Collective | None = None,
) -> float:
    """Top-1 accuracy in points (0-100), the same figure on every rank (counts are summed)."""
    mine = _answer(model, loader, device, group)
    if group is None:
        return mine.accuracy
    correct, seen = group.sum([int(mine.correct.sum()), mine.n])
    return 100.0 * correct / seen if seen else 0.0


@torch.no_grad()
def _answer(
    model: nn.Module, loader: Iterable, device: torch.device | str, group: Collective | None
) -> Answers:
    """This rank's answers for its part of the split, in its order."""
    if group is not None:
        group.sync_buffers(model)  # BatchNorm statistics: rank 0's
    model.eval()
    correct, labels = [], []
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            right, truth = tasks.CLASSIFICATION.correct(model, tasks.to_device(batch, device))
            correct.append(right.cpu())
            labels.append(truth.cpu())
    model.train()
    return Answers(_cat(correct, torch.bool), _cat(labels, torch.int64))


def pack(correct: torch.Tensor) -> bytes:
    """Per-sample answers as bits (to keep the dense model's with the run: 6 KB per 50,000)."""
    return pruning.pack_bits(correct).numpy().tobytes()


def unpack(data: bytes, n: int) -> torch.Tensor:
    return pruning.unpack_bits(torch.frombuffer(bytearray(data), dtype=torch.uint8), n)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts).to(dtype) if parts else torch.zeros(0, dtype=dtype)
