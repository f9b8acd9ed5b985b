"""Measuring a model on a held-out split: its metric, and each sample's part in it — which
samples a classifier gets right, a language model's per-sequence NLL, a factory task's scores.

The per-sample answers or scores, in the split's order, are what makes the comparison with the
dense model paired (``core/evidence.py``, ``core/continuous.py``). Evaluation runs in a forked RNG, so it never shifts what training draws.
Under torchrun each rank answers its strided shard of the split; accuracies are exact (the counts
are summed) and the per-sample answers are put back together on rank 0, each sample once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from iterprune.core import continuous, pruning
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

    @property
    def value(self) -> float:
        """The task's metric: accuracy."""
        return self.accuracy

    def judged(self, dense: Reference, confidence: float) -> dict[str, Any]:
        """The drop against the dense model's answers, in points, with Newcombe's interval."""
        table = self.against(dense.correct)
        low, high = table.interval(confidence)
        return {
            "drop": table.drop,
            "drop_low": low,
            "drop_high": high,
            "lost": table.lost,
            "gained": table.gained,
        }

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
class Scores:
    """Per sample of a split, in its order, a continuous score and its weight: a language
    model's summed next-token NLL and tokens predicted (the metric is perplexity,
    ``exp(sum NLL / sum tokens)``, lower is better), or a factory task's score with weight 1 (the
    metric is their mean, in the direction the task says)."""

    values: torch.Tensor  # float64: summed NLL per sequence, or a task's scores
    weights: torch.Tensor  # float64: tokens predicted, or ones
    digest: str  # of the split's content, in order
    perplexity: bool = True
    higher_is_better: bool = False

    @property
    def n(self) -> int:
        return int(self.values.numel())

    @property
    def value(self) -> float:
        total = float(self.weights.sum())
        if not total:
            return float("nan")
        mean = float(self.values.sum()) / total
        return math.exp(mean) if self.perplexity else mean

    def labels_digest(self) -> str:
        return self.digest

    def judged(self, dense: Reference, confidence: float) -> dict[str, Any]:
        """How much worse than the dense model, in the metric's units (positive: worse), with
        the interval of core/continuous.py for the paired differences, sample by sample (a
        perplexity's: of the per-token log ratio)."""
        assert dense.scores is not None
        before = dense.scores
        if not bool(torch.isfinite(self.values).all()):  # fails like a NaN loss: rolled back
            nan = float("nan")
            return {"drop": nan, "drop_low": None, "drop_high": None, "lost": None, "gained": None}
        diffs = (self.values - before.values).tolist()
        found = continuous.Moments.of(diffs, before.weights.tolist())
        low, high = continuous.interval(found, confidence)
        base = before.value
        if self.perplexity:  # the interval is of the per-token log ratio
            low, high = base * math.expm1(low), base * math.expm1(high)
        elif self.higher_is_better:  # a higher score is better: a drop is a fall
            low, high = -high, -low
        sign = -1 if self.higher_is_better else 1
        return {
            "drop": sign * (self.value - base),
            "drop_low": low,
            "drop_high": high,
            "lost": None,
            "gained": None,
        }


@dataclass(frozen=True)
class Reference:
    """The dense model's answers (classification) or scores (language model) on the validation
    split, as kept with the run: what every attempt is paired with."""

    correct: torch.Tensor | None  # bool, per sample (classification)
    labels: str  # labels_digest() of the split it answered
    scores: Scores | None = None  # language models

    @property
    def n(self) -> int:
        """How many validation samples it holds."""
        return self.scores.n if self.scores is not None else int(self.correct.numel())

    @classmethod
    def of(cls, found: Answers | Scores) -> Reference:  # noqa: D102
        if isinstance(found, Scores):
            return cls(None, found.digest, found)
        return cls(found.correct.clone(), found.labels_digest())

    def row(self) -> dict[str, Any]:
        if self.scores is not None:
            both = torch.stack([self.scores.values, self.scores.weights]).to(torch.float64)
            return {
                "baseline_scores": both.numpy().tobytes(),
                "val_samples": self.n,
                "val_labels": self.labels,
            }
        assert self.correct is not None
        return {
            "baseline_correct": pack(self.correct),
            "val_samples": self.n,
            "val_labels": self.labels,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Reference | None:
        """The reference stored with a run (None for a run of an older release)."""
        if row.get("baseline_scores") is not None:
            both = torch.frombuffer(bytearray(row["baseline_scores"]), dtype=torch.float64)
            values, weights = both.view(2, row["val_samples"])
            metric = json.loads(row.get("metric") or '{"name": "perplexity"}')
            scores = Scores(
                values.clone(),
                weights.clone(),
                row["val_labels"],
                perplexity=metric["name"] == "perplexity",
                higher_is_better=bool(metric.get("higher_is_better")),
            )
            return cls(None, row["val_labels"], scores)
        if row.get("baseline_correct") is None:
            return None
        return cls(unpack(row["baseline_correct"], row["val_samples"]), row["val_labels"])


def answers(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    group: Collective | None = None,
    task: Any = tasks.CLASSIFICATION,
) -> Answers | Scores | None:
    """Which samples ``model`` gets right (a language model: its per-sequence scores); under
    torchrun, the whole split on rank 0 (None on the other ranks, which only answer their
    shard)."""
    if not isinstance(task, tasks.Classification):
        return _scores(model, loader, device, group, task)
    mine = _answer(model, loader, device, group)
    if group is None:
        return mine
    whole_correct, whole_labels = group.collect(mine.correct), group.collect(mine.labels)
    if whole_correct is None or whole_labels is None:
        return None
    return Answers(whole_correct, whole_labels)


def score(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    group: Collective | None = None,
    task: Any = tasks.CLASSIFICATION,
) -> float:
    """The task's metric as a score where higher is better (early stopping): accuracy, or
    minus the perplexity."""
    if not isinstance(task, tasks.Classification):
        if group is not None:
            group.sync_buffers(model)
        found = _score(model, loader, device, task)
        if group is not None:  # every rank: the metric of the whole split (sums over ranks)
            total, weight = group.sum([float(found.values.sum()), float(found.weights.sum())])
            one = torch.tensor([total], dtype=torch.float64)
            found = replace(found, values=one, weights=torch.tensor([weight], dtype=torch.float64))
        return found.value if found.higher_is_better else -found.value
    return accuracy(model, loader, device, group)


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


def _scores(
    model: nn.Module, loader: Iterable, device: torch.device | str, group: Any, task: Any
) -> Scores | None:
    """The split's per-sample scores; under torchrun each rank scores its strided shard and
    rank 0 puts them back in the split's order, with the digest one process would compute (of
    every sample's targets, in order); None on the other ranks."""
    if group is None:
        return _score(model, loader, device, task)
    group.sync_buffers(model)
    rows: list[bytes] = []
    mine = _score(model, loader, device, task, rows)
    values, weights = group.collect(mine.values), group.collect(mine.weights)
    parts = group.gather(rows)
    if values is None or weights is None or parts is None:
        return None
    digest = mine.digest  # a factory's targets that are not one row per sample: rank 0's
    if sum(len(part) for part in parts) == len(values):
        ordered: list[bytes] = [b""] * len(values)
        for rank, part in enumerate(parts):
            ordered[rank :: len(parts)] = part
        digest = hashlib.sha256(b"".join(ordered)).hexdigest()[:16]
    return replace(mine, values=values, weights=weights, digest=digest)


@torch.no_grad()
def _score(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    task: Any,
    rows: list[bytes] | None = None,
) -> Scores:
    """Per-sample scores and weights (an LM: NLL sums and token counts), and a digest of the
    targets seen; ``rows``, when given, receives each sample's target bytes."""
    model.eval()
    nll, tokens, digest = [], [], hashlib.sha256()
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            moved = tasks.to_device(batch, device)
            found, count = task.scores(model, moved)
            nll.append(found.double().cpu())
            tokens.append(count.double().cpu())
            targets = task.targets(moved).to(torch.int64).cpu()
            digest.update(targets.numpy().tobytes())
            if rows is not None:
                rows.extend(row.numpy().tobytes() for row in targets)
    model.train()
    perplexity = isinstance(task, tasks.LanguageModel)
    scores, weights = _cat(nll, torch.float64), _cat(tokens, torch.float64)
    return Scores(scores, weights, digest.hexdigest()[:16], perplexity, task.higher_is_better)


def pack(correct: torch.Tensor) -> bytes:
    """Per-sample answers as bits (to keep the dense model's with the run: 6 KB per 50,000)."""
    return pruning.pack_bits(correct).numpy().tobytes()


def unpack(data: bytes, n: int) -> torch.Tensor:
    return pruning.unpack_bits(torch.frombuffer(bytearray(data), dtype=torch.uint8), n)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts).to(dtype) if parts else torch.zeros(0, dtype=dtype)
