"""Checking the schedule's ``model`` and ``data`` sections: what a run prunes and trains on.

Paths (weights, image folders) are relative to the schedule's directory, and a factory is imported
here already, so a typo in its name is reported with the schedule's other problems.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from iterprune.errors import UserError
from iterprune.schedule import text
from iterprune.schedule.checker import Checker
from iterprune.schedule.factories import resolve_factory, torchvision_models
from iterprune.schedule.specs import (
    TASKS,
    DataSpec,
    HuggingFaceSpec,
    ImageFolderSpec,
    ModelSpec,
    Schedule,
    TaskSpec,
)

# each built-in model and the keyword arguments it takes (tests check them against the functions)
BUILTIN_KWARGS = {
    "digits_cnn": ("num_classes", "width"),
    "digits_mlp": ("num_classes", "hidden"),
    "tiny_gpt": ("vocab", "width", "depth", "heads", "context"),
}
BUILTIN_MODELS = tuple(BUILTIN_KWARGS)
BUILTIN_DATA = ("digits", "python_source")
LANGUAGE_ONLY = {"tiny_gpt", "python_source"}  # built-ins of language models
MODEL_KEYS = (
    "builtin",
    "torchvision",
    "factory",
    "huggingface",
    "num_classes",
    "kwargs",
    "weights",
    "trust_pickle",
)
DATA_KEYS = (
    *("builtin", "imagefolder", "factory", "kwargs", "batch_size", "workers", "val_fraction"),
    *("test_fraction", "text"),
)


def _factory(c: Checker, raw: dict, path: str, base_dir: Path) -> str | None:
    spec = c.text(raw, "factory", path, None)
    if spec is not None:
        try:
            resolve_factory(spec, base_dir)
        except UserError as exc:
            c.fail(f"{path}.factory", str(exc))
    return spec


def _torchvision_name(c: Checker, m: dict) -> str | None:
    name = c.text(m, "torchvision", "model", None)
    if name is not None:
        known = torchvision_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            c.fail("model.torchvision", f"unknown torchvision model {name!r}{hint}")
    return name


def model_section(c: Checker, raw: dict, base_dir: Path) -> ModelSpec:
    if "model" not in raw:
        c.fail("model", "missing: say which model to prune (e.g. model: {builtin: digits_cnn})")
    m = c.section(raw, "model", MODEL_KEYS)
    if isinstance(raw.get("model"), dict):
        c.one_of(m, ("builtin", "torchvision", "factory", "huggingface"), "model")
    spec = ModelSpec(
        builtin=c.text(m, "builtin", "model", None, BUILTIN_MODELS),
        torchvision=_torchvision_name(c, m),
        factory=_factory(c, m, "model", base_dir),
        num_classes=c.count(m, "num_classes", "model", None),
        kwargs=c.mapping(m, "kwargs", "model"),
        weights=c.text(m, "weights", "model", None),
        trust_pickle=c.boolean(m, "trust_pickle", "model", False),
        huggingface=_huggingface(c, m, base_dir),
    )
    takes = BUILTIN_KWARGS.get(spec.builtin or "", ())
    for key in sorted(set(spec.kwargs or {}) - set(takes)) if spec.builtin else ():
        close = difflib.get_close_matches(key, takes, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        c.fail(f"model.kwargs.{key}", f"{spec.builtin} takes {', '.join(takes)}{hint}")
    if spec.weights and not (base_dir / spec.weights).expanduser().is_file():
        c.fail("model.weights", f"file not found: {spec.weights}")
    if spec.weights and spec.huggingface is not None:
        c.fail("model.weights", "a Hugging Face directory holds its own weights")
    return spec


# What a class's architectures are called (config.json's "architectures"): GPT-2's causal LM is
# GPT2LMHeadModel, most others *ForCausalLM.
HF_CLASSES = {
    "causal_lm": ("ForCausalLM", "LMHeadModel"),
    "sequence_classification": ("ForSequenceClassification",),
}


def _huggingface(c: Checker, m: dict, base_dir: Path) -> HuggingFaceSpec | None:
    """``{path: DIR, class: causal_lm}``: the directory exists, holds a config.json, and its
    architecture (when the config names it) is of the class asked for."""
    if m.get("huggingface") is None:
        return None
    h = c.section(m, "huggingface", ("path", "class"), "model")
    path = c.text(h, "path", "model.huggingface", None)
    kind = c.text(h, "class", "model.huggingface", "causal_lm", tuple(HF_CLASSES))
    if path is None:
        c.fail("model.huggingface.path", "missing: a save_pretrained directory")
        return None
    config = (base_dir / path).expanduser() / "config.json"
    if not config.is_file():
        c.fail(
            "model.huggingface.path", f"no config.json in {path}: not a save_pretrained directory"
        )
        return HuggingFaceSpec(path, kind or "causal_lm")
    try:
        names = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError) as exc:
        c.fail("model.huggingface.path", f"{config} cannot be read: {exc}")
        names = []
    wanted = HF_CLASSES.get(kind or "", ())
    if names and not any(name.endswith(wanted) for name in names):
        c.fail(
            "model.huggingface.class",
            f"{path} holds {', '.join(names)}, not a model of class {kind}",
        )
    return HuggingFaceSpec(path, kind or "causal_lm")


def _image_folders(c: Checker, d: dict, base_dir: Path) -> ImageFolderSpec | None:
    if d.get("imagefolder") is None:
        return None
    f = c.section(d, "imagefolder", ("train", "val", "test", "image_size"), "data")
    dirs: dict[str, str | None] = {}
    for key in ("train", "val", "test"):
        value = c.text(f, key, "data.imagefolder", None)
        if value is None and key != "test" and isinstance(d.get("imagefolder"), dict):
            c.fail(f"data.imagefolder.{key}", "missing: the folder of class sub-folders")
        elif value is not None and not (base_dir / value).expanduser().is_dir():
            c.fail(f"data.imagefolder.{key}", f"folder not found: {value}")
        dirs[key] = value if value is not None or key == "test" else ""
    return ImageFolderSpec(
        train=dirs["train"] or "",
        val=dirs["val"] or "",
        image_size=c.count(f, "image_size", "data.imagefolder", 224, minimum=8),
        test=dirs["test"],
    )


def data_section(c: Checker, raw: dict, base_dir: Path) -> DataSpec:
    if "data" not in raw:
        c.fail("data", "missing: say which data to fine-tune on (e.g. data: {builtin: digits})")
    d = c.section(raw, "data", DATA_KEYS)
    if isinstance(raw.get("data"), dict):
        c.one_of(d, ("builtin", "imagefolder", "factory", "text"), "data")
    spec = DataSpec(
        builtin=c.text(d, "builtin", "data", None, BUILTIN_DATA),
        imagefolder=_image_folders(c, d, base_dir),
        factory=_factory(c, d, "data", base_dir),
        kwargs=c.mapping(d, "kwargs", "data"),
        batch_size=c.count(d, "batch_size", "data", 64),
        workers=c.count(d, "workers", "data", 0, minimum=0),
        val_fraction=c.number(
            d, "val_fraction", "data", 0.25, check=lambda v: 0 < v < 1, rule="in (0, 1)"
        ),
        test_fraction=c.number(
            d, "test_fraction", "data", 0.0, check=lambda v: 0 <= v < 1, rule="in [0, 1)"
        ),
        text=text.section(c, d, base_dir),
    )
    _split_shares(c, d, spec)
    return spec


def _split_shares(c: Checker, d: dict, spec: DataSpec) -> None:
    """Only built-in data is split by iterprune, and some of it must be left to train on."""
    if "test_fraction" in d and spec.builtin is None and spec.test_fraction:
        other = "data.imagefolder.test (a folder)"
        if spec.text:
            other = "data.text.test (files)"
        if spec.factory:
            other = "a data factory that returns (train, val, test) loaders"
        c.fail("data.test_fraction", f"applies to built-in data only; give {other} instead")
    if spec.builtin is not None and spec.val_fraction + spec.test_fraction > 0.9:
        c.fail(
            "data.test_fraction" if "test_fraction" in d else "data.val_fraction",
            "val_fraction + test_fraction must leave at least 10% to train on, got "
            f"{spec.val_fraction:g} + {spec.test_fraction:g}",
        )


def task_section(c: Checker, raw: dict, base_dir: Path) -> TaskSpec:
    t = c.section(raw, "task", ("kind", "factory", "kwargs"))
    if "factory" in t:
        if "kind" in t:
            c.fail("task", "give kind or factory, not both (a factory's task is its own kind)")
        factory = _factory(c, t, "task", base_dir)
        kwargs = c.mapping(t, "kwargs", "task")
        if factory is not None:
            _check_task(c, factory, kwargs, base_dir)
        return TaskSpec(kind="factory", factory=factory, kwargs=kwargs)
    if "kwargs" in t:
        c.fail("task.kwargs", "applies to a task factory only")
    return TaskSpec(kind=c.text(t, "kind", "task", "classification", TASKS) or "classification")


def _check_task(c: Checker, factory: str, kwargs: dict, base_dir: Path) -> None:
    """Build the user's task once, so that a missing method is reported with the schedule."""
    try:
        build = resolve_factory(factory, base_dir)
    except UserError:
        return  # said once already, by _factory
    try:
        task = build(**kwargs)
    except Exception as exc:  # noqa: BLE001 (whatever the user's factory raises)
        c.fail("task.factory", f"{factory} could not build the task: {type(exc).__name__}: {exc}")
        return
    missing = [m for m in ("loss", "scores") if not callable(getattr(task, m, None))]
    missing += [a for a in ("metric", "higher_is_better") if not hasattr(task, a)]
    if missing:
        c.fail(
            "task.factory",
            f"{factory} returned {type(task).__name__}, which lacks {', '.join(missing)} "
            "(see iterprune.Task: loss(model, batch), scores(model, batch), metric, "
            "higher_is_better)",
        )


def task_conflicts(c: Checker, s: Schedule) -> None:
    """What a language model run cannot take, and built-ins of the other kind of task."""
    m, d = s.model, s.data
    v = s.validate
    if s.finetune.distill is not None and s.lottery is not None:
        c.fail(
            "finetune.distill",
            "not with lottery mode: a lottery ticket is the rewound weights trained on the task "
            "alone; a teacher would change what the experiment tests",
        )
    if s.finetune.distill is not None and s.task.kind == "factory":
        c.fail("finetune.distill", "needs logits to compare; a task factory's outputs are its own")
    if s.task.kind == "classification" and not v.relative and v.max_drop > 100:
        c.fail(
            "validate.max_drop",
            f"must be in [0, 100] accuracy points, or a percentage like 2%, got {v.max_drop:g}",
        )
    hf = m.huggingface.kind if m.huggingface else None
    if (hf == "causal_lm") != (s.task.kind == "language_model") and hf is not None:
        want = "language_model" if hf == "causal_lm" else "classification"
        c.fail("model.huggingface.class", f"a {hf} model needs task: {{kind: {want}}}")
    if s.task.kind != "language_model":
        for path, name in (("model.builtin", m.builtin), ("data.builtin", d.builtin)):
            if name in LANGUAGE_ONLY:
                c.fail(path, f"{name} is a language model's: add task: {{kind: language_model}}")
        if d.text is not None:
            c.fail("data.text", "text is a language model's data: add task: {kind: language_model}")
        if s.task.kind == "factory":
            if s.prune.method == "channel":
                c.fail("prune.method", f"not available for a task factory ({_WHY['prune.method']})")
        return
    refused = {
        "model.num_classes": m.num_classes is not None,
        "model.torchvision": m.torchvision is not None,
        "data.imagefolder": d.imagefolder is not None,
        "prune.method": s.prune.method == "channel",
    }
    for path in (p for p, bad in refused.items() if bad):
        c.fail(path, f"not available for task kind language_model ({_WHY[path]})")
    _context(c, s)
    if s.benchmark is not None and len(s.benchmark.input_shape) != 1:
        c.fail(
            "benchmark.input_shape",
            "a language model's input is token ids: give [sequence length], e.g. [128]",
        )
    for path, name in (("model.builtin", m.builtin), ("data.builtin", d.builtin)):
        if name is not None and name not in LANGUAGE_ONLY:
            c.fail(path, f"{name} is a classification built-in, not a language model's")


def _context(c: Checker, s: Schedule) -> None:
    """A sequence no longer than the model's context, where both are known from the schedule:
    tiny_gpt's ``context`` (default 128) or a Hugging Face config's positions."""
    d, m = s.data, s.model
    seq_len = d.text.seq_len if d.text else d.kwargs.get("seq_len", 128) if d.builtin else None
    context, where = None, "model.kwargs.context"
    if m.builtin == "tiny_gpt":
        context = m.kwargs.get("context", 128)
    elif m.huggingface is not None:
        config = (Path(s.base_dir) / m.huggingface.path).expanduser() / "config.json"
        try:
            found = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = {}
        context = found.get("n_positions") or found.get("max_position_embeddings")
        where = "model.huggingface.path"
    if isinstance(seq_len, int) and isinstance(context, int) and seq_len > context:
        path = "data.text.seq_len" if d.text else "data.kwargs.seq_len"
        c.fail(path, f"{seq_len} tokens is longer than the model's context, {context} ({where})")


_WHY = {
    "model.num_classes": "a language model predicts tokens, not classes",
    "model.torchvision": "torchvision's models are image classifiers",
    "data.imagefolder": "images are a classifier's data",
    "prune.method": "channel mode is for classification and vision models",
}
