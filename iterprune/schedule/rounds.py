"""Checking the sections that shape the rounds (pretrain, prune, finetune, validate, rollback,
lottery) and assembling the whole :class:`Schedule` — the rules behind ``parsing.parse``.

The model and data sections live in ``inputs.py``, the operating ones (when, checkpoints,
benchmark, report) in ``operating.py``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from iterprune.schedule import prune as prune_section
from iterprune.schedule.checker import Checker, Doc, describe
from iterprune.schedule.inputs import data_section, model_section, task_conflicts, task_section
from iterprune.schedule.operating import (
    benchmark_section,
    checkpoints_section,
    report_section,
    when_section,
)
from iterprune.schedule.specs import (
    GROW,
    GROW_AFTER,
    RECOVER_EPOCHS,
    DistillSpec,
    FinetuneSpec,
    LotterySpec,
    PretrainSpec,
    PruneSpec,
    RollbackSpec,
    Schedule,
    ValidateSpec,
)

RUN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
TOP_KEYS = (
    *("name", "seed", "device", "threads", "model", "data", "task", "pretrain", "prune"),
    "finetune",
    *("validate", "rollback", "checkpoints", "when", "benchmark", "lottery", "report"),
)
FINETUNE_KEYS = (
    *("epochs", "optimizer", "lr", "weight_decay", "momentum", "nesterov", "lr_schedule"),
    *("amp", "patience", "max_batches_per_epoch", "distill"),
)
ROLLBACK_KEYS = ("retries", "shrink", "min_step", "recover_epochs", "grow_after", "grow")
RULES = ("estimate", "confident")
PHASES_REFUSED = (
    "a schedule has one pruning method; to follow a channel phase with an unstructured one, "
    "export the first run (iterprune export RUN --format pt holds the smaller module) and start "
    "a second schedule whose model.factory loads it"
)


def _pretrain(c: Checker, raw: dict) -> PretrainSpec:
    p = c.section(raw, "pretrain", ("epochs", "lr"))
    return PretrainSpec(
        epochs=c.count(p, "epochs", "pretrain", 15, minimum=0),
        lr=c.number(p, "lr", "pretrain", 1e-3, check=lambda x: x > 0, rule="> 0"),
    )


def _amp(c: Checker, f: dict) -> str:
    amp = f.get("amp", "auto")
    if amp is True or amp is False:
        return "on" if amp else "off"
    if amp != "auto":
        c.fail("finetune.amp", f"must be auto, true or false, got {describe(amp)}")
    return "auto"


def _finetune(c: Checker, raw: dict) -> FinetuneSpec:
    f = c.section(raw, "finetune", FINETUNE_KEYS)
    spec = FinetuneSpec(
        epochs=c.count(f, "epochs", "finetune", 2),
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
        amp=_amp(c, f),
        patience=c.count(f, "patience", "finetune", None),
        max_batches_per_epoch=c.count(f, "max_batches_per_epoch", "finetune", None),
        distill=_distill(c, f),
    )
    if spec.nesterov and spec.optimizer != "sgd":
        c.fail("finetune.nesterov", f"applies to optimizer sgd only, not {spec.optimizer}")
    return spec


def _distill(c: Checker, f: dict) -> DistillSpec | None:
    """``distill: {weight: 0.5, temperature: 2.0, teacher: dense}`` (absent: off)."""
    if f.get("distill") is None:
        return None
    d = c.section(f, "distill", ("weight", "temperature", "teacher"), "finetune")
    return DistillSpec(
        weight=c.number(
            d, "weight", "finetune.distill", 0.5, check=lambda v: 0 < v <= 1, rule="in (0, 1]"
        ),
        temperature=c.number(
            d, "temperature", "finetune.distill", 2.0, check=lambda v: v > 0, rule="> 0"
        ),
        teacher=c.text(d, "teacher", "finetune.distill", "dense", ("dense", "last")) or "dense",
    )


def _max_drop(c: Checker, v: dict) -> tuple[float, bool]:
    """``max_drop``: accuracy points (``0.5``), or a percentage of the dense model's (``2%``)."""
    raw = v.get("max_drop")
    if isinstance(raw, str) and raw.strip().endswith("%"):
        number = raw.strip()[:-1].strip()
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is None or not 0 < value <= 100:
            c.fail("validate.max_drop", f"must be a percentage in (0, 100] like 2%, got {raw!r}")
            return 1.0, False
        return value, True
    # in the metric's units: at most 100 for accuracy, which task_conflicts checks once the
    # task is known
    in_range = lambda x: 0 <= x < math.inf  # noqa: E731
    rule = (
        "≥ 0 in the metric's units (accuracy points), or a percentage of the dense model's like 2%"
    )
    return c.number(v, "max_drop", "validate", 1.0, check=in_range, rule=rule), False


def _validate(c: Checker, raw: dict) -> ValidateSpec:
    v = c.section(raw, "validate", ("max_drop", "rule", "confidence"))
    max_drop, relative = _max_drop(c, v)
    return ValidateSpec(
        max_drop=max_drop,
        relative=relative,
        rule=c.text(v, "rule", "validate", "estimate", RULES) or "estimate",
        confidence=c.number(
            v, "confidence", "validate", 0.95, check=lambda x: 0.5 <= x < 1, rule="in [0.5, 1)"
        ),
    )


def _rollback(c: Checker, raw: dict, prune: PruneSpec) -> RollbackSpec:
    r = c.section(raw, "rollback", ROLLBACK_KEYS)
    spec = RollbackSpec(
        retries=c.count(r, "retries", "rollback", 3, minimum=0),
        shrink=prune_section.fraction(c, r, "shrink", "rollback", 0.5),
        min_step=prune_section.fraction(c, r, "min_step", "rollback", 0.01),
        recover_epochs=c.count(r, "recover_epochs", "rollback", RECOVER_EPOCHS, minimum=0),
        grow_after=c.count(r, "grow_after", "rollback", GROW_AFTER, minimum=0),
        grow=c.number(r, "grow", "rollback", GROW, check=lambda x: 1 <= x <= 10, rule="in [1, 10]"),
    )
    if spec.min_step > prune.step and "min_step" in r:
        c.fail(
            "rollback.min_step", f"must not exceed prune.step ({prune.step}), got {spec.min_step}"
        )
    return spec


def _rewind_point(c: Checker, rewind: dict, pretrain: PretrainSpec, weights: bool):
    """(kind, at) of ``rewind: {epoch: K}`` / ``{step: K}``."""
    c.unknown_keys(rewind, ("epoch", "step"), "lottery.rewind")
    given = [k for k in ("epoch", "step") if k in rewind]
    if len(given) != 1:
        c.fail("lottery.rewind", "give exactly one of 'epoch' or 'step' (e.g. rewind: {epoch: 1})")
        return "init", 0
    kind = given[0]
    at = c.count(rewind, kind, "lottery.rewind", 1)
    if weights or pretrain.epochs == 0:
        c.fail(
            f"lottery.rewind.{kind}",
            "rewinding to a point of dense training needs pretrain.epochs > 0 and no model.weights",
        )
    elif kind == "epoch" and at > pretrain.epochs:
        c.fail(
            "lottery.rewind.epoch", f"must not exceed pretrain.epochs ({pretrain.epochs}), got {at}"
        )
    return kind, at


def _lottery(c: Checker, raw: dict, pretrain: PretrainSpec, weights: bool) -> LotterySpec | None:
    if raw.get("lottery") is None:
        return None
    section = c.section(raw, "lottery", ("rewind", "control"))
    rewind, at = section.get("rewind", "init"), 0
    if isinstance(rewind, dict):
        rewind, at = _rewind_point(c, rewind, pretrain, weights)
    elif rewind != "init":
        c.fail(
            "lottery.rewind", f"must be init, {{epoch: K}} or {{step: K}}, got {describe(rewind)}"
        )
        rewind = "init"
    control, seeds = _control(c, section.get("control"))
    return LotterySpec(rewind=rewind, at=at, control=control, control_seeds=seeds)


def _control(c: Checker, raw: object) -> tuple[str | None, int]:
    """``random_reinit`` or ``{kind: random_reinit, seeds: N}``: (kind, N)."""
    if raw is None:
        return None, 1
    if isinstance(raw, dict):
        section = c.section({"control": raw}, "control", ("kind", "seeds"), "lottery")
        kind = c.text(section, "kind", "lottery.control", "random_reinit", ("random_reinit",))
        seeds = c.count(section, "seeds", "lottery.control", 1, minimum=1)
        return kind, seeds
    return c.text({"control": raw}, "control", "lottery", None, ("random_reinit",)), 1


def _identity(c: Checker, raw: dict, default_name: str) -> tuple[str, str]:
    name = c.text(raw, "name", "", default_name) or default_name
    if not RUN_NAME.match(name):
        c.fail("name", f"may contain only letters, digits, '.', '_' and '-', got {name!r}")
    device = c.text(raw, "device", "", "auto") or "auto"
    if not DEVICES.match(device):
        c.fail("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    return name, device


def build(raw: dict, doc: Doc, default_name: str, base_dir: Path) -> Schedule | None:
    """The Schedule for a parsed document, or None when the checker recorded problems."""
    c = Checker(doc)
    if "phases" in raw:
        c.fail("phases", PHASES_REFUSED)
        raw = {k: v for k, v in raw.items() if k != "phases"}
    c.unknown_keys(raw, TOP_KEYS, "")
    name, device = _identity(c, raw, default_name)
    model, data = model_section(c, raw, base_dir), data_section(c, raw, base_dir)
    pretrain, prune = _pretrain(c, raw), prune_section.section(c, raw)
    schedule = Schedule(
        name=name,
        seed=c.count(raw, "seed", "", 0, minimum=0),
        device=device,
        threads=c.count(raw, "threads", "", None),
        model=model,
        data=data,
        task=task_section(c, raw, base_dir),
        pretrain=pretrain,
        prune=prune,
        finetune=_finetune(c, raw),
        validate=_validate(c, raw),
        rollback=_rollback(c, raw, prune),
        checkpoints=checkpoints_section(c, raw),
        when=when_section(c, raw),
        benchmark=benchmark_section(c, raw),
        lottery=_lottery(c, raw, pretrain, model.weights is not None),
        report=report_section(c, raw),
        # absolute: a run is resumed, served or exported from wherever its user is then
        base_dir=str(Path(base_dir).resolve()),
    )
    task_conflicts(c, schedule)
    if schedule.lottery is not None and prune.method == "channel":
        c.fail(
            "lottery",
            "lottery mode needs unstructured pruning: removing channels changes the "
            "architecture, so the rewind weights no longer fit (use global_magnitude)",
        )
    return None if c.problems else schedule
