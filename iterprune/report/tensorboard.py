"""TensorBoard: scalars per accepted round and a histogram of per-layer sparsity (optional extra).

The metric's scalars carry its name: ``round/val_accuracy`` for a classifier, ``round/val_perplexity``
for a language model (lower is better), a factory task's ``round/val_<metric>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from iterprune.report.views import metric_key

SCALARS = (
    "sparsity",
    "val_accuracy",
    "test_accuracy",
    "drop",
    "drop_low",
    "drop_high",
    "loss",
    "latency_ms_p50",
    "latency_ms_p99",
    "control_accuracy",
    "control_std",
)


class TensorBoardReporter:
    """A reporter that writes what matters per round to a TensorBoard log directory."""

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))
        self.metric = "accuracy"

    def _add(self, key: str, value: float, step: int) -> None:
        prefix, _, field = key.rpartition("/")
        self.writer.add_scalar(f"{prefix}/{metric_key(field, self.metric)}", value, step)

    def round_done(self, row: dict[str, Any]) -> None:
        prefix = "round" if row.get("status") == "accepted" else "rolled_back"
        step = row["round"]
        for key in SCALARS:
            if row.get(key) is not None:
                self._add(f"{prefix}/{key}", row[key], step)
        layers = row.get("layers")
        if layers and prefix == "round":
            values = torch.tensor([x["sparsity"] for x in layers])
            self.writer.add_histogram("layer_sparsity", values, step, bins=20)
        self.writer.flush()

    def run_started(self, info: dict[str, Any]) -> None:
        self.metric = (info.get("metric") or {}).get("name", "accuracy")
        if info.get("baseline_accuracy") is not None:
            self._add("round/val_accuracy", info["baseline_accuracy"], 0)
            self._add("round/sparsity", 0.0, 0)
        if info.get("baseline_test_accuracy") is not None:
            self._add("round/test_accuracy", info["baseline_test_accuracy"], 0)

    def phase(self, name: str, total: int, description: str) -> None:
        pass

    def advance(self, done: float) -> None:
        pass

    def event(self, level: str, kind: str, message: str) -> None:
        pass

    def run_done(self, status: str, reason: str) -> None:
        self.writer.close()
