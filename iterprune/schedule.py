"""Schedule files: YAML -> frozen dataclasses, with every problem reported at once.

Problems carry their key path and line (``prune.step (line 14): must be in (0, 1), got 1.5``).
The YAML 1.1 traps are handled on purpose: ``1e-3`` (read as a string) is accepted where a number
is expected, ``no``/``off`` read as booleans are refused where text is expected, and duplicate keys
are errors instead of silently keeping the last one.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iterprune.errors import UserError

RUN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
BUILTIN_MODELS = ("digits_cnn", "digits_mlp")
BUILTIN_DATA = ("digits",)
METHODS = ("global_magnitude", "layer_magnitude", "random")
OPTIMIZERS = ("adam", "adamw", "sgd")
KEEP = ("last", "all")
DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ScheduleError(UserError):
    """The schedule has one or more problems; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}\n{lines}")


@dataclass(frozen=True)
class ModelSpec:
    builtin: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(frozen=True)
class DataSpec:
    builtin: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    val_fraction: float = 0.25


@dataclass(frozen=True)
class PretrainSpec:
    epochs: int = 15
    lr: float = 1e-3


@dataclass(frozen=True)
class PruneSpec:
    method: str = "global_magnitude"
    step: float = 0.10
    target_sparsity: float = 0.90
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: int = 2
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass(frozen=True)
class ValidateSpec:
    max_drop: float = 1.0


@dataclass(frozen=True)
class RollbackSpec:
    retries: int = 3
    shrink: float = 0.5
    min_step: float = 0.01


@dataclass(frozen=True)
class CheckpointSpec:
    keep: str = "last"


@dataclass(frozen=True)
class WhenSpec:
    """Mid-round checkpoints inside fine-tuning: every N batches, or every so many seconds."""

    checkpoint_every_batches: int | None = None
    checkpoint_every_s: float | None = None


@dataclass(frozen=True)
class Schedule:
    name: str
    model: ModelSpec
    data: DataSpec
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
    base_dir: str = "."

    def canonical(self) -> dict[str, Any]:
        """The schedule as plain data, without where it was read from: what identifies a run."""
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return json.loads(json.dumps(data, sort_keys=True, default=list))

    def fingerprint(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- reading YAML with line numbers -------------------------------------------------------------


class _Doc:
    """Plain Python values from a YAML document, with the line each key path came from."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []
        self._construct = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._construct.construct_object(key_node, deep=True)
                sub = f"{path}.{key}" if path else str(key)
                if key in out:
                    self.problems.append(
                        f"{sub} (line {key_node.start_mark.line + 1}): duplicate key "
                        f"(first given on line {self.lines.get(sub, '?')})"
                    )
                    continue
                self.lines[sub] = key_node.start_mark.line + 1
                out[key] = self.convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self._construct.construct_object(node, deep=True)


# --- validation ---------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Checker:
    def __init__(self, doc: _Doc) -> None:
        self.doc = doc
        self.problems = doc.problems

    def where(self, path: str) -> str:
        line = self.doc.lines.get(path)
        if line is None and "." in path:  # a missing key: point at its section
            line = self.doc.lines.get(path.rsplit(".", 1)[0])
        return f"{path} (line {line})" if line else path

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{self.where(path)}: {message}")

    def section(self, raw: dict, key: str, allowed: tuple[str, ...], path: str = "") -> dict:
        """The mapping at ``key``; unknown keys inside it are reported with a did-you-mean."""
        sub = f"{path}.{key}" if path else key
        value = raw.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(sub, f"must be a mapping, got {_describe(value)}")
            return {}
        self.unknown_keys(value, allowed, sub)
        return value

    def unknown_keys(self, raw: dict, allowed: tuple[str, ...], path: str) -> None:
        for key in raw:
            if key in allowed:
                continue
            sub = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
            )
            self.fail(sub, f"unknown key{hint}")

    def number(
        self,
        raw: dict,
        key: str,
        path: str,
        default: Any,
        *,
        integer: bool = False,
        check: Callable[[float], bool] | None = None,
        rule: str = "",
    ) -> Any:
        sub = f"{path}.{key}"
        if key not in raw:
            return default
        value = raw[key]
        if isinstance(value, str) and not integer and _FLOAT_TEXT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(sub, f"must be {kind}, got {_describe(value)}")
            return default
        if integer and not isinstance(value, int):
            self.fail(sub, f"must be {kind}, got {value!r}")
            return default
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(sub, f"must be a finite number, got {value!r}")
            return default
        if check is not None and not check(value):
            self.fail(sub, f"must be {rule}, got {value!r}")
            return default
        return value if integer else float(value)

    def text(
        self, raw: dict, key: str, path: str, default: str | None, choices: tuple[str, ...] = ()
    ) -> str | None:
        sub = f"{path}.{key}" if path else key
        if key not in raw:
            return default
        value = raw[key]
        if isinstance(value, bool):
            self.fail(
                sub,
                f"must be text, got {_describe(value)} (YAML reads yes/no/on/off as booleans; quote it)",
            )
            return default
        if not isinstance(value, str):
            self.fail(sub, f"must be text, got {_describe(value)}")
            return default
        if choices and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.fail(sub, f"must be one of {', '.join(choices)}, got {value!r}{hint}")
            return default
        return value

    def mapping(self, raw: dict, key: str, path: str) -> dict:
        sub = f"{path}.{key}"
        value = raw.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail(sub, f"must be a mapping of names to values, got {_describe(value)}")
            return {}
        return value

    def factory(self, raw: dict, path: str, base_dir: Path) -> str | None:
        spec = self.text(raw, "factory", path, None)
        if spec is None:
            return None
        sub = f"{path}.factory"
        try:
            resolve_factory(spec, base_dir)
        except UserError as exc:
            self.fail(sub, str(exc))
        return spec

    def one_of(self, raw: dict, keys: tuple[str, str], path: str) -> None:
        given = [k for k in keys if raw.get(k) is not None]
        if len(given) != 1:
            what = "both" if given else "neither"
            self.fail(path, f"give exactly one of '{keys[0]}' or '{keys[1]}' ({what} given)")


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


TOP_KEYS = (
    "name", "seed", "device", "threads", "model", "data", "pretrain", "prune", "finetune",
    "validate", "rollback", "checkpoints", "when",
)  # fmt: skip


def _build(raw: dict, doc: _Doc, default_name: str, base_dir: Path) -> Schedule | None:
    c = _Checker(doc)
    c.unknown_keys(raw, TOP_KEYS, "")
    name = c.text(raw, "name", "", default_name) or default_name
    if not RUN_NAME.match(name):
        c.fail("name", f"may contain only letters, digits, '.', '_' and '-', got {name!r}")
    seed = c.number(raw, "seed", "", 0, integer=True, check=lambda v: v >= 0, rule=">= 0")
    device = c.text(raw, "device", "", "auto") or "auto"
    if not DEVICES.match(device):
        c.fail("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    threads = c.number(raw, "threads", "", None, integer=True, check=lambda v: v >= 1, rule=">= 1")

    if "model" not in raw:
        c.fail("model", "missing: say which model to prune (e.g. model: {builtin: digits_cnn})")
    m = c.section(raw, "model", ("builtin", "factory", "kwargs", "weights"))
    if "model" in raw and isinstance(raw.get("model"), dict):
        c.one_of(m, ("builtin", "factory"), "model")
    model = ModelSpec(
        builtin=c.text(m, "builtin", "model", None, BUILTIN_MODELS),
        factory=c.factory(m, "model", base_dir),
        kwargs=c.mapping(m, "kwargs", "model"),
        weights=c.text(m, "weights", "model", None),
    )
    if model.weights and not (base_dir / model.weights).expanduser().is_file():
        c.fail("model.weights", f"file not found: {model.weights}")

    if "data" not in raw:
        c.fail("data", "missing: say which data to fine-tune on (e.g. data: {builtin: digits})")
    d = c.section(raw, "data", ("builtin", "factory", "kwargs", "batch_size", "val_fraction"))
    if "data" in raw and isinstance(raw.get("data"), dict):
        c.one_of(d, ("builtin", "factory"), "data")
    data = DataSpec(
        builtin=c.text(d, "builtin", "data", None, BUILTIN_DATA),
        factory=c.factory(d, "data", base_dir),
        kwargs=c.mapping(d, "kwargs", "data"),
        batch_size=c.number(
            d, "batch_size", "data", 64, integer=True, check=lambda v: v >= 1, rule=">= 1"
        ),
        val_fraction=c.number(
            d, "val_fraction", "data", 0.25, check=lambda v: 0 < v < 1, rule="in (0, 1)"
        ),
    )

    p = c.section(raw, "pretrain", ("epochs", "lr"))
    pretrain = PretrainSpec(
        epochs=c.number(
            p, "epochs", "pretrain", 15, integer=True, check=lambda v: v >= 0, rule=">= 0"
        ),
        lr=c.number(p, "lr", "pretrain", 1e-3, check=lambda v: v > 0, rule="> 0"),
    )

    p = c.section(raw, "prune", ("method", "step", "target_sparsity", "exclude"))
    exclude = p.get("exclude", [])
    if exclude is None:
        exclude = []
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        c.fail("prune.exclude", f"must be a list of module-name patterns, got {_describe(exclude)}")
        exclude = []
    prune = PruneSpec(
        method=c.text(p, "method", "prune", "global_magnitude", METHODS) or "global_magnitude",
        step=c.number(p, "step", "prune", 0.10, check=lambda v: 0 < v < 1, rule="in (0, 1)"),
        target_sparsity=c.number(
            p, "target_sparsity", "prune", 0.90, check=lambda v: 0 < v < 1, rule="in (0, 1)"
        ),
        exclude=tuple(exclude),
    )

    f = c.section(raw, "finetune", ("epochs", "optimizer", "lr", "weight_decay", "momentum"))
    finetune = FinetuneSpec(
        epochs=c.number(
            f, "epochs", "finetune", 2, integer=True, check=lambda v: v >= 1, rule=">= 1"
        ),
        optimizer=c.text(f, "optimizer", "finetune", "adam", OPTIMIZERS) or "adam",
        lr=c.number(f, "lr", "finetune", 1e-4, check=lambda v: v > 0, rule="> 0"),
        weight_decay=c.number(
            f, "weight_decay", "finetune", 0.0, check=lambda v: v >= 0, rule=">= 0"
        ),
        momentum=c.number(
            f, "momentum", "finetune", 0.9, check=lambda v: 0 <= v < 1, rule="in [0, 1)"
        ),
    )

    v = c.section(raw, "validate", ("max_drop",))
    validate = ValidateSpec(
        max_drop=c.number(
            v,
            "max_drop",
            "validate",
            1.0,
            check=lambda x: 0 <= x <= 100,
            rule="in [0, 100] accuracy points",
        ),
    )

    r = c.section(raw, "rollback", ("retries", "shrink", "min_step"))
    rollback = RollbackSpec(
        retries=c.number(
            r, "retries", "rollback", 3, integer=True, check=lambda x: x >= 0, rule=">= 0"
        ),
        shrink=c.number(r, "shrink", "rollback", 0.5, check=lambda x: 0 < x < 1, rule="in (0, 1)"),
        min_step=c.number(
            r, "min_step", "rollback", 0.01, check=lambda x: 0 < x < 1, rule="in (0, 1)"
        ),
    )
    if rollback.min_step > prune.step and "min_step" in r and "step" in p:
        c.fail(
            "rollback.min_step",
            f"must not exceed prune.step ({prune.step}), got {rollback.min_step}",
        )

    k = c.section(raw, "checkpoints", ("keep",))
    keep = CheckpointSpec(keep=c.text(k, "keep", "checkpoints", "last", KEEP) or "last")

    w = c.section(raw, "when", ("checkpoint_every",))
    when = WhenSpec()
    every = w.get("checkpoint_every")
    if every is not None:
        match = _DURATION.match(every) if isinstance(every, str) else None
        if isinstance(every, int) and not isinstance(every, bool) and every >= 1:
            when = WhenSpec(checkpoint_every_batches=every)
        elif match and float(match.group(1)) > 0:
            when = WhenSpec(checkpoint_every_s=float(match.group(1)) * _UNIT_S[match.group(2)])
        else:
            c.fail("when.checkpoint_every",
                   f"must be a number of batches (>= 1) or a duration like 30s, 10m, 2h, got {_describe(every)}")  # fmt: skip

    if c.problems:
        return None
    return Schedule(
        name=name, seed=seed, device=device, threads=threads, model=model, data=data,
        pretrain=pretrain, prune=prune, finetune=finetune, validate=validate, rollback=rollback,
        checkpoints=keep, when=when, base_dir=str(base_dir),
    )  # fmt: skip


def parse(text: str, source: str = "<schedule>", base_dir: Path | str = ".") -> Schedule:
    """Validate schedule text; raises ScheduleError listing every problem found."""
    default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else "run"
    doc = _Doc()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScheduleError(source, [f"YAML syntax error at {where}{problem}"]) from None
    if node is None:
        raise ScheduleError(source, ["the file is empty: a schedule needs at least model and data"])
    raw = doc.convert(node, "")
    if not isinstance(raw, dict):
        raise ScheduleError(
            source, [f"the top level must be a mapping of keys, got {_describe(raw)}"]
        )
    bad_keys = [k for k in raw if not isinstance(k, str)]
    for k in bad_keys:
        doc.problems.append(f"{k!r}: keys must be text")
        raw.pop(k)
    schedule = _build(raw, doc, default_name, Path(base_dir))
    if schedule is None or doc.problems:
        raise ScheduleError(source, doc.problems)
    return schedule


def load(path: str | Path) -> Schedule:
    """Read and validate a schedule file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"schedule file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read schedule {path}: {exc}") from None
    return parse(text, str(path), path.parent)


def from_canonical(data: dict[str, Any], base_dir: str = ".") -> Schedule:
    """Rebuild a Schedule from ``Schedule.canonical()`` (as stored with a run)."""
    return Schedule(
        name=data["name"], seed=data["seed"], device=data["device"], threads=data["threads"],
        model=ModelSpec(**data["model"]), data=DataSpec(**data["data"]),
        pretrain=PretrainSpec(**data["pretrain"]),
        prune=PruneSpec(**{**data["prune"], "exclude": tuple(data["prune"]["exclude"])}),
        finetune=FinetuneSpec(**data["finetune"]), validate=ValidateSpec(**data["validate"]),
        rollback=RollbackSpec(**data["rollback"]),
        checkpoints=CheckpointSpec(**data.get("checkpoints", {})),
        when=WhenSpec(**data.get("when", {})), base_dir=base_dir,
    )  # fmt: skip


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of what changed between two canonical schedules."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, path))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out
