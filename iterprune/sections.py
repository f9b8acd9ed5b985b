"""Checking and building each section of a schedule (the rules behind ``schedule.parse``)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterprune.checker import Checker, Doc, describe
from iterprune.errors import UserError
from iterprune.specs import (
    BenchmarkSpec,
    CheckpointSpec,
    DataSpec,
    FinetuneSpec,
    ImageFolderSpec,
    LotterySpec,
    ModelSpec,
    PretrainSpec,
    PruneSpec,
    ReportSpec,
    RollbackSpec,
    Schedule,
    ValidateSpec,
    WhenSpec,
)

RUN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
BUILTIN_MODELS = ("digits_cnn", "digits_mlp")
BUILTIN_DATA = ("digits",)
METHODS = ("global_magnitude", "layer_magnitude", "random", "channel")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
KEEP = ("last", "all")
DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


def resolve_factory(spec: str, base_dir: Path | str = ".") -> Callable[..., Any]:
    """Import ``"package.module:function"``; the schedule's directory is searched first."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"must look like 'module:function', got {spec!r}")
    base = str(Path(base_dir).resolve())
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail with anything the module raises
        raise UserError(
            f"cannot import module '{module_name}' for '{spec}': {type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"module '{module_name}' has no function '{attr}'")
    return fn


def torchvision_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# --- building each section ----------------------------------------------------------------------

TOP_KEYS = (
    "name",
    "seed",
    "device",
    "threads",
    "model",
    "data",
    "pretrain",
    "prune",
    "finetune",
    "validate",
    "rollback",
    "checkpoints",
    "when",
    "benchmark",
    "lottery",
    "report",
)


def _factory(c: Checker, raw: dict, path: str, base_dir: Path) -> str | None:
    spec = c.text(raw, "factory", path, None)
    if spec is not None:
        try:
            resolve_factory(spec, base_dir)
        except UserError as exc:
            c.fail(f"{path}.factory", str(exc))
    return spec


def _positive(c: Checker, raw: dict, key: str, path: str, default: Any, minimum: int = 1) -> Any:
    return c.number(
        raw, key, path, default, integer=True, check=lambda v: v >= minimum, rule=f">= {minimum}"
    )


def _model(c: Checker, raw: dict, base_dir: Path) -> ModelSpec:
    if "model" not in raw:
        c.fail("model", "missing: say which model to prune (e.g. model: {builtin: digits_cnn})")
    m = c.section(
        raw,
        "model",
        ("builtin", "torchvision", "factory", "num_classes", "kwargs", "weights", "trust_pickle"),
    )
    if isinstance(raw.get("model"), dict):
        c.one_of(m, ("builtin", "torchvision", "factory"), "model")
    name = c.text(m, "torchvision", "model", None)
    if name is not None:
        known = torchvision_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            c.fail("model.torchvision", f"unknown torchvision model {name!r}{hint}")
    spec = ModelSpec(
        builtin=c.text(m, "builtin", "model", None, BUILTIN_MODELS),
        torchvision=name,
        factory=_factory(c, m, "model", base_dir),
        num_classes=_positive(c, m, "num_classes", "model", None),
        kwargs=c.mapping(m, "kwargs", "model"),
        weights=c.text(m, "weights", "model", None),
        trust_pickle=c.boolean(m, "trust_pickle", "model", False),
    )
    if spec.weights and not (base_dir / spec.weights).expanduser().is_file():
        c.fail("model.weights", f"file not found: {spec.weights}")
    return spec


def _data(c: Checker, raw: dict, base_dir: Path) -> DataSpec:
    if "data" not in raw:
        c.fail("data", "missing: say which data to fine-tune on (e.g. data: {builtin: digits})")
    d = c.section(
        raw,
        "data",
        ("builtin", "imagefolder", "factory", "kwargs", "batch_size", "workers", "val_fraction"),
    )
    if isinstance(raw.get("data"), dict):
        c.one_of(d, ("builtin", "imagefolder", "factory"), "data")
    folder = None
    if d.get("imagefolder") is not None:
        f = c.section(d, "imagefolder", ("train", "val", "image_size"), "data")
        dirs = {}
        for key in ("train", "val"):
            value = c.text(f, key, "data.imagefolder", None)
            if value is None and isinstance(d.get("imagefolder"), dict):
                c.fail(f"data.imagefolder.{key}", "missing: the folder of class sub-folders")
            elif value is not None and not (base_dir / value).expanduser().is_dir():
                c.fail(f"data.imagefolder.{key}", f"folder not found: {value}")
            dirs[key] = value or ""
        folder = ImageFolderSpec(
            train=dirs["train"],
            val=dirs["val"],
            image_size=_positive(c, f, "image_size", "data.imagefolder", 224, minimum=8),
        )
    return DataSpec(
        builtin=c.text(d, "builtin", "data", None, BUILTIN_DATA),
        imagefolder=folder,
        factory=_factory(c, d, "data", base_dir),
        kwargs=c.mapping(d, "kwargs", "data"),
        batch_size=_positive(c, d, "batch_size", "data", 64),
        workers=_positive(c, d, "workers", "data", 0, minimum=0),
        val_fraction=c.number(
            d, "val_fraction", "data", 0.25, check=lambda v: 0 < v < 1, rule="in (0, 1)"
        ),
    )


def _prune(c: Checker, raw: dict) -> PruneSpec:
    p = c.section(raw, "prune", ("method", "step", "target_sparsity", "exclude", "scope"))
    exclude = p.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        c.fail("prune.exclude", f"must be a list of module-name patterns, got {describe(exclude)}")
        exclude = []
    spec = PruneSpec(
        method=c.text(p, "method", "prune", "global_magnitude", METHODS) or "global_magnitude",
        step=c.number(p, "step", "prune", 0.10, check=lambda v: 0 < v < 1, rule="in (0, 1)"),
        target_sparsity=c.number(
            p, "target_sparsity", "prune", 0.90, check=lambda v: 0 < v < 1, rule="in (0, 1)"
        ),
        exclude=tuple(exclude),
        scope=c.text(p, "scope", "prune", "global", ("global", "layer")) or "global",
    )
    if "scope" in p and spec.method != "channel":
        c.fail("prune.scope", f"applies to method channel only, not {spec.method}")
    return spec


def _finetune(c: Checker, raw: dict) -> FinetuneSpec:
    f = c.section(
        raw,
        "finetune",
        (
            "epochs",
            "optimizer",
            "lr",
            "weight_decay",
            "momentum",
            "nesterov",
            "lr_schedule",
            "amp",
            "patience",
            "max_batches_per_epoch",
        ),
    )
    amp = f.get("amp", "auto")
    if amp is True or amp is False:
        amp = "on" if amp else "off"
    elif amp != "auto":
        c.fail("finetune.amp", f"must be auto, true or false, got {describe(amp)}")
        amp = "auto"
    spec = FinetuneSpec(
        epochs=_positive(c, f, "epochs", "finetune", 2),
        optimizer=c.text(f, "optimizer", "finetune", "adam", OPTIMIZERS) or "adam",
        lr=c.number(f, "lr", "finetune", 1e-4, check=lambda v: v > 0, rule="> 0"),
        weight_decay=c.number(
            f, "weight_decay", "finetune", 0.0, check=lambda v: v >= 0, rule=">= 0"
        ),
        momentum=c.number(
            f, "momentum", "finetune", 0.9, check=lambda v: 0 <= v < 1, rule="in [0, 1)"
        ),
        nesterov=c.boolean(f, "nesterov", "finetune", False),
        lr_schedule=c.text(f, "lr_schedule", "finetune", "constant", LR_SCHEDULES) or "constant",
        amp=amp,
        patience=_positive(c, f, "patience", "finetune", None),
        max_batches_per_epoch=_positive(c, f, "max_batches_per_epoch", "finetune", None),
    )
    if spec.nesterov and spec.optimizer != "sgd":
        c.fail("finetune.nesterov", f"applies to optimizer sgd only, not {spec.optimizer}")
    return spec


def _duration(c: Checker, raw: dict, key: str, path: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match and float(match.group(1)) > 0:
        return float(match.group(1)) * _UNIT_S[match.group(2)]
    c.fail(f"{path}.{key}", f"must be a duration like 30s, 10m, 2h, got {describe(value)}")
    return None


def _when(c: Checker, raw: dict) -> WhenSpec:
    w = c.section(
        raw,
        "when",
        ("window", "timezone", "window_policy", "pause_between_rounds", "checkpoint_every"),
    )
    window = c.text(w, "window", "when", None)
    timezone = c.text(w, "timezone", "when", None)
    if window is not None:
        from iterprune.daemon import window_problem  # the cron rules live with APScheduler

        problem = window_problem(window, timezone)
        if problem is not None:
            key = "timezone" if problem.startswith("unknown timezone") else "window"
            c.fail(f"when.{key}", f"{problem} ({window!r})" if key == "window" else problem)
    elif timezone is not None:
        c.fail("when.timezone", "applies only with when.window")
    spec = WhenSpec(
        window=window,
        timezone=timezone,
        window_policy=c.text(w, "window_policy", "when", "finish", ("finish", "pause")) or "finish",
        pause_between_rounds_s=_duration(c, w, "pause_between_rounds", "when"),
    )
    every = w.get("checkpoint_every")
    if every is None:
        return spec
    if isinstance(every, int) and not isinstance(every, bool) and every >= 1:
        return dataclasses.replace(spec, checkpoint_every_batches=every)
    if isinstance(every, str) and _DURATION.match(every):
        return dataclasses.replace(
            spec, checkpoint_every_s=_duration(c, w, "checkpoint_every", "when")
        )
    c.fail(
        "when.checkpoint_every",
        f"must be a number of batches (>= 1) or a duration like 30s, 10m, 2h, got {describe(every)}",
    )
    return spec


def _benchmark(c: Checker, raw: dict) -> BenchmarkSpec | None:
    if raw.get("benchmark") is None:
        return None
    b = c.section(raw, "benchmark", ("batch_size", "input_shape", "iterations", "warmup"))
    shape = b.get("input_shape", [3, 224, 224])
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in shape)
    ):
        c.fail(
            "benchmark.input_shape",
            f"must be a list of positive integers like [3, 224, 224], got {describe(shape)}",
        )
        shape = [3, 224, 224]
    return BenchmarkSpec(
        batch_size=_positive(c, b, "batch_size", "benchmark", 8),
        input_shape=tuple(shape),
        iterations=_positive(c, b, "iterations", "benchmark", 20),
        warmup=_positive(c, b, "warmup", "benchmark", 3, minimum=0),
    )


def _lottery(c: Checker, raw: dict, pretrain_epochs: int, has_weights: bool) -> LotterySpec | None:
    if raw.get("lottery") is None:
        return None
    section = c.section(raw, "lottery", ("rewind", "control"))
    rewind, at = section.get("rewind", "init"), 0
    if isinstance(rewind, dict):
        c.unknown_keys(rewind, ("epoch", "step"), "lottery.rewind")
        given = [k for k in ("epoch", "step") if k in rewind]
        if len(given) != 1:
            c.fail(
                "lottery.rewind", "give exactly one of 'epoch' or 'step' (e.g. rewind: {epoch: 1})"
            )
            rewind = "init"
        else:
            kind = given[0]
            at = _positive(c, rewind, kind, "lottery.rewind", 1)
            rewind = kind
            if has_weights or pretrain_epochs == 0:
                c.fail(
                    f"lottery.rewind.{kind}",
                    "rewinding to a point of dense training needs pretrain.epochs > 0 and no model.weights",
                )
            elif kind == "epoch" and at > pretrain_epochs:
                c.fail(
                    "lottery.rewind.epoch",
                    f"must not exceed pretrain.epochs ({pretrain_epochs}), got {at}",
                )
    elif rewind != "init":
        c.fail(
            "lottery.rewind", f"must be init, {{epoch: K}} or {{step: K}}, got {describe(rewind)}"
        )
        rewind = "init"
    control = c.text(section, "control", "lottery", None, ("random_reinit",))
    return LotterySpec(rewind=rewind, at=at, control=control)


def _report(c: Checker, raw: dict) -> ReportSpec:
    r = c.section(raw, "report", ("tensorboard",))
    logdir = c.text(r, "tensorboard", "report", None)
    if logdir is not None and importlib.util.find_spec("tensorboard") is None:
        c.fail(
            "report.tensorboard",
            "needs the tensorboard package: pip install 'iterprune[tensorboard]'",
        )
    return ReportSpec(tensorboard=logdir)


def build(raw: dict, doc: Doc, default_name: str, base_dir: Path) -> Schedule | None:
    """The Schedule for a parsed document, or None when the checker recorded problems."""
    c = Checker(doc)
    if "phases" in raw:
        c.fail(
            "phases",
            "a schedule has one pruning method; to follow a channel phase with an "
            "unstructured one, export the first run (iterprune export RUN --format pt holds "
            "the smaller module) and start a second schedule whose model.factory loads it",
        )
        raw = {k: v for k, v in raw.items() if k != "phases"}
    c.unknown_keys(raw, TOP_KEYS, "")
    name = c.text(raw, "name", "", default_name) or default_name
    if not RUN_NAME.match(name):
        c.fail("name", f"may contain only letters, digits, '.', '_' and '-', got {name!r}")
    device = c.text(raw, "device", "", "auto") or "auto"
    if not DEVICES.match(device):
        c.fail("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    p = c.section(raw, "pretrain", ("epochs", "lr"))
    v = c.section(raw, "validate", ("max_drop",))
    r = c.section(raw, "rollback", ("retries", "shrink", "min_step"))
    k = c.section(raw, "checkpoints", ("keep",))
    prune = _prune(c, raw)
    rollback = RollbackSpec(
        retries=_positive(c, r, "retries", "rollback", 3, minimum=0),
        shrink=c.number(r, "shrink", "rollback", 0.5, check=lambda x: 0 < x < 1, rule="in (0, 1)"),
        min_step=c.number(
            r, "min_step", "rollback", 0.01, check=lambda x: 0 < x < 1, rule="in (0, 1)"
        ),
    )
    if rollback.min_step > prune.step and "min_step" in r:
        c.fail(
            "rollback.min_step",
            f"must not exceed prune.step ({prune.step}), got {rollback.min_step}",
        )
    schedule = Schedule(
        name=name,
        seed=_positive(c, raw, "seed", "", 0, minimum=0),
        device=device,
        threads=_positive(c, raw, "threads", "", None),
        model=_model(c, raw, base_dir),
        data=_data(c, raw, base_dir),
        pretrain=PretrainSpec(
            epochs=_positive(c, p, "epochs", "pretrain", 15, minimum=0),
            lr=c.number(p, "lr", "pretrain", 1e-3, check=lambda x: x > 0, rule="> 0"),
        ),
        prune=prune,
        finetune=_finetune(c, raw),
        validate=ValidateSpec(
            max_drop=c.number(
                v,
                "max_drop",
                "validate",
                1.0,
                check=lambda x: 0 <= x <= 100,
                rule="in [0, 100] accuracy points",
            )
        ),
        rollback=rollback,
        checkpoints=CheckpointSpec(keep=c.text(k, "keep", "checkpoints", "last", KEEP) or "last"),
        when=_when(c, raw),
        benchmark=_benchmark(c, raw),
        lottery=None,
        report=_report(c, raw),
        base_dir=str(base_dir),
    )
    schedule = dataclasses.replace(
        schedule,
        lottery=_lottery(c, raw, schedule.pretrain.epochs, schedule.model.weights is not None),
    )
    if schedule.lottery is not None and schedule.prune.method == "channel":
        c.fail(
            "lottery",
            "lottery mode needs unstructured pruning: removing channels changes the "
            "architecture, so the rewind weights no longer fit (use global_magnitude)",
        )
    return None if c.problems else schedule
