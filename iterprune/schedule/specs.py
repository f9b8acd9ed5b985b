"""The sections of a schedule as frozen dataclasses (validated and built by ``parsing.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# The controller's defaults, chosen with bench/frontier.py (see docs/decisions.md).
RECOVER_EPOCHS = 1
GROW_AFTER = 2
GROW = 2.0


@dataclass(frozen=True)
class HuggingFaceSpec:
    """A local ``save_pretrained`` directory, loaded with ``local_files_only``: never the hub."""

    path: str
    kind: str = "causal_lm"  # the YAML's ``class``: causal_lm | sequence_classification


@dataclass(frozen=True)
class ModelSpec:
    builtin: str | None = None
    torchvision: str | None = None
    factory: str | None = None
    num_classes: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    trust_pickle: bool = False
    huggingface: HuggingFaceSpec | None = None

    @property
    def label(self) -> str:
        """The model as logs and tables name it: ``tiny_gpt``, ``torchvision resnet50``,
        ``mypkg.models:build``, ``huggingface models/gpt2 (causal_lm)``."""
        if self.huggingface is not None:
            return f"huggingface {self.huggingface.path} ({self.huggingface.kind})"
        if self.torchvision is not None:
            return f"torchvision {self.torchvision}"
        return str(self.builtin or self.factory)


@dataclass(frozen=True)
class ImageFolderSpec:
    train: str
    val: str
    image_size: int = 224
    test: str | None = None  # measured and reported, never decides anything


@dataclass(frozen=True)
class TextSpec:
    """A language model's own text: each split a file, a directory or a glob of UTF-8 text,
    tokenized as bytes or by a local Hugging Face tokenizer, cut into ``seq_len`` sequences."""

    train: str
    val: str
    test: str | None = None  # measured and reported, never decides anything
    seq_len: int = 128
    tokenizer: str = "bytes"  # or a directory saved with a tokenizer's save_pretrained


@dataclass(frozen=True)
class DataSpec:
    builtin: str | None = None
    imagefolder: ImageFolderSpec | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    workers: int = 0
    val_fraction: float = 0.25
    test_fraction: float = 0.0  # built-in data: a held-out test split (0: none)
    text: TextSpec | None = None


TASKS = ("classification", "language_model")
# What each task's per-sample scores add up to, as every document names it (a factory's task
# names its own metric; the run keeps it once the task is built).
METRICS = {
    "classification": {"name": "accuracy", "unit": "points", "higher_is_better": True},
    "language_model": {"name": "perplexity", "unit": "", "higher_is_better": False},
    "factory": {"name": "score", "unit": "", "higher_is_better": True},
}


@dataclass(frozen=True)
class TaskSpec:
    """What the model is trained and judged by: classification (cross-entropy, top-1 accuracy)
    or language_model (next-token cross-entropy, perplexity)."""

    kind: str = "classification"  # or "factory", when a factory builds the task
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> dict[str, Any]:
        """The metric's name, unit and direction (a worse model's drop is positive either way)."""
        return dict(METRICS[self.kind])


@dataclass(frozen=True)
class PretrainSpec:
    epochs: int = 15
    lr: float = 1e-3


GLOBAL_METHODS = ("global_magnitude", "lamp")  # one ranking over all layers: these are capped


@dataclass(frozen=True)
class PruneSpec:
    method: str = "global_magnitude"
    step: float = 0.10
    target_sparsity: float = 0.90
    exclude: tuple[str, ...] = ()
    scope: str = "global"  # channel: rank channels over the whole model, or per layer
    max_layer_sparsity: float = 0.99  # global methods: no layer pruned past this (1: no cap)
    group: str = "row"  # wanda: what loses the same share: each output row, layer, or global
    calibration_batches: int = 8  # wanda: training batches whose inputs are measured
    pattern: str | None = None  # "N:M": at most N of every M consecutive weights of a row
    strict: bool = False  # pattern: a layer that cannot hold it is an error, not skipped

    @property
    def n_m(self) -> tuple[int, int] | None:
        if self.pattern is None:
            return None
        n, m = (int(x) for x in self.pattern.split(":"))
        return n, m

    @property
    def ranks_globally(self) -> bool:
        """One ranking over all layers (capped by max_layer_sparsity)."""
        return self.method in GLOBAL_METHODS or (self.method == "wanda" and self.group == "global")

    @property
    def layer_cap(self) -> float:
        """The sparsity no layer goes past under this method (1: none)."""
        return self.max_layer_sparsity if self.ranks_globally else 1.0


@dataclass(frozen=True)
class DistillSpec:
    """``finetune.distill``: the fine-tuning loss also follows a teacher's outputs."""

    weight: float = 0.5  # of the teacher's term; 1: labels are not used
    temperature: float = 2.0
    teacher: str = "dense"  # or "last": the last accepted round


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: int = 2
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "constant"
    amp: str = "auto"  # auto | on | off
    patience: int | None = None
    max_batches_per_epoch: int | None = None
    distill: DistillSpec | None = None


@dataclass(frozen=True)
class ValidateSpec:
    max_drop: float = 1.0
    rule: str = "estimate"  # estimate: drop <= max_drop; confident: its interval's top is
    confidence: float = 0.95  # of the drop's interval
    relative: bool = False  # max_drop is a percentage of the dense model's metric ("2%")

    def budget(self, baseline: float) -> float:
        """The drop a round may have, in the metric's units, given the dense model's value."""
        return baseline * self.max_drop / 100 if self.relative else self.max_drop

    def describe(self, metric: str = "accuracy") -> str:
        """The budget as the schedule says it: ``0.5 points``, ``2% of the dense model's
        accuracy``, ``0.3 perplexity``."""
        if self.relative:
            return f"{self.max_drop:g}% of the dense model's {metric}"
        if metric != "accuracy":
            return f"{self.max_drop:g} {metric}"
        return f"{self.max_drop:g} point{'' if self.max_drop == 1 else 's'}"


@dataclass(frozen=True)
class RollbackSpec:
    retries: int = 3
    shrink: float = 0.5
    min_step: float = 0.01
    recover_epochs: int = RECOVER_EPOCHS  # a failed attempt's extra fine-tuning before rollback
    grow_after: int = GROW_AFTER  # accepted rounds in a row before the step grows (0: never)
    grow: float = GROW  # the step's growth factor, never beyond prune.step


@dataclass(frozen=True)
class CheckpointSpec:
    keep: str = "last"


@dataclass(frozen=True)
class WhenSpec:
    """When rounds run (a cron window), and how often a round checkpoints itself."""

    window: str | None = None  # standard 5-field cron, matched minute by minute
    timezone: str | None = None  # of the window (default UTC)
    window_policy: str = "finish"  # a round running when the window closes: finish | pause
    pause_between_rounds_s: float | None = None
    checkpoint_every_batches: int | None = None
    checkpoint_every_s: float | None = None


@dataclass(frozen=True)
class BenchmarkSpec:
    """Inference latency measured after every accepted round."""

    batch_size: int = 8
    input_shape: tuple[int, ...] = (3, 224, 224)
    iterations: int = 20
    warmup: int = 3


@dataclass(frozen=True)
class LotterySpec:
    """Lottery-ticket mode: after each prune, reset surviving weights to the rewind point."""

    rewind: str = "init"  # init | epoch | step
    at: int = 0  # the epoch or step of dense training the rewind point is taken after
    control: str | None = None  # random_reinit: also train the same mask from a fresh init
    control_seeds: int = 1  # how many fresh initialisations the control trains, each round


@dataclass(frozen=True)
class MlflowSpec:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, as MLflow users expect
    experiment: str = "iterprune"


@dataclass(frozen=True)
class ReportSpec:
    tensorboard: str | None = None  # a log directory, relative to the schedule
    mlflow: MlflowSpec | None = None


# Sections that say how a run is watched and served, not what it computes: changing them on an
# existing run continues it with the new settings. Reports and latency never touch the model or
# the random numbers (latency runs in a forked RNG); a window, pauses and checkpoints change when
# work happens and where it can resume from, and a resumed run ends bit for bit as it would have.
OPERATING = ("report", "benchmark", "when", "checkpoints")


@dataclass(frozen=True)
class Schedule:
    name: str
    model: ModelSpec
    data: DataSpec
    task: TaskSpec = field(default_factory=TaskSpec)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    validate: ValidateSpec = field(default_factory=ValidateSpec)
    rollback: RollbackSpec = field(default_factory=RollbackSpec)
    checkpoints: CheckpointSpec = field(default_factory=CheckpointSpec)
    when: WhenSpec = field(default_factory=WhenSpec)
    benchmark: BenchmarkSpec | None = None
    lottery: LotterySpec | None = None
    report: ReportSpec = field(default_factory=ReportSpec)
    base_dir: str = "."

    def canonical(self) -> dict[str, Any]:
        """The schedule as plain data, without where it was read from: stored with a run."""
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return json.loads(json.dumps(data, sort_keys=True, default=list))

    def fingerprint(self) -> str:
        """What identifies a run: a hash of every field of the experiment that differs from its
        default.

        Fields left at their defaults are not part of it, so a field added by a later release
        (with a default that keeps the old behaviour) does not change the identity of runs
        started before it; nor are the operating sections (:data:`OPERATING`), which change how
        a run is watched and served but not what it computes. tests/schedule/test_parsing.py
        pins the fingerprint of the shipped schedules.
        """
        fields = {k: v for k, v in _set_fields(self).items() if k not in OPERATING}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _set_fields(value: Any) -> Any:
    """A spec as plain data with every field that equals its default left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "base_dir" or item == _default(f):
                continue
            out[f.name] = _set_fields(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_set_fields(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _set_fields(v) for k, v in value.items()}
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
