"""Exports of a run's rounds that need no iterprune to use: plain state_dicts (``pt``,
``safetensors``) with the masks baked in as zeros, and a compact ``sparse`` file (bit-packed mask
plus the surviving values) that :func:`load_sparse` turns back into the exact state_dict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from iterprune.core import pruning
from iterprune.errors import OutputWriteError, UserError
from iterprune.report import semi_structured, views
from iterprune.state import checkpoints, diagnosis, faults, paths
from iterprune.state.store import Store

SPARSE_FORMAT = "iterprune-sparse/1"
FORMATS = ("pt", "pt2", "safetensors", "sparse", "onnx", "semi_structured")


def choose_round(store: Store, run: str, which: str) -> dict[str, Any]:
    """The accepted round ``which`` names (a number, ``last`` or ``best``) and its checkpoint row.

    ``best`` is the sparsest accepted round (ties: the better on validation, in the metric's
    direction: a perplexity's lower); round 0 is the dense model.
    """
    accepted = [r for r in store.rounds(run) if r["status"] == "accepted"]
    kept = {c["round"]: c for c in store.checkpoints(run) if c["kind"] in ("dense", "accepted")}
    if which == "last":
        chosen = accepted[-1]["round"] if accepted else 0
    elif which == "best":
        sign = 1 if views.metric_of_run(store, run)["higher_is_better"] else -1
        chosen = (
            max(accepted, key=lambda r: (r["sparsity"], sign * r["val_accuracy"]))["round"]
            if accepted
            else 0
        )
    elif which.isdigit():
        chosen = int(which)
        if chosen and chosen not in {r["round"] for r in accepted}:
            raise UserError(f"run '{run}' has no accepted round {chosen}")
    else:
        raise UserError(f"--round must be a number, last or best, got {which!r}")
    if chosen not in kept:
        raise UserError(
            f"the checkpoint of round {chosen} was not kept (schedule checkpoints.keep: last keeps "
            f"the dense model and the newest round); rounds with a checkpoint: "
            f"{', '.join(map(str, sorted(kept)))}"
        )
    row = next((r for r in accepted if r["round"] == chosen), None)
    return {"round": chosen, "row": row, "checkpoint": kept[chosen]}


def baked_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's state_dict with every masked weight exactly zero."""
    model = {k: v.clone() for k, v in state["model"].items()}
    for name, keep in state["mask"].items():
        model[name].mul_(keep.to(model[name].dtype))
    return model


def _fill(model: Any, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put a checkpoint's weights into a fresh model of the run's architecture (rebuilt smaller
    first for a channel run)."""
    arch = state.get("architecture")
    if arch:
        from iterprune.core import channels

        channels.rebuild(model, arch, tensors)
    else:
        model.load_state_dict(tensors)
    model.eval()


def round_model(store: Store, run: str, which: str) -> tuple[Any, int]:
    """The model of one kept round of a run (``which``: a number, last or best; 0 is dense)."""
    chosen = choose_round(store, run, which)
    ckpt = chosen["checkpoint"]
    state = checkpoints.load(store.state_dir / ckpt["path"], ckpt["sha256"])
    model, _ = _architecture(store, run, None, False)
    _fill(model, state, baked_state(state))
    return model, chosen["round"]


def write(state: dict[str, Any], out: Path, fmt: str, model: Any = None, example=None) -> int:
    """Write the export; returns its size in bytes (``onnx`` and ``pt2`` need the model and an
    example batch of its input: a tuple of arguments, or a dict of keyword arguments)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = baked_state(state)
    if model is not None:  # the run's architecture, channel-pruned if it was, with these weights
        _fill(model, state, tensors)
    if fmt == "onnx":
        _onnx(model, example, out)
    elif fmt == "pt2":
        args, kwargs = _call(example)
        program = torch.export.export(model, args, kwargs, dynamic_shapes=_any_batch(example))
        torch.export.save(program, str(out))
    elif fmt == "pt" and state.get("architecture"):
        torch.save(model, out)  # a channel run's smaller nn.Module itself (a pickle)
    elif fmt == "pt":
        torch.save(tensors, out)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
        out.chmod(0o666 & ~paths.umask())  # as open() makes a file: safetensors' own is 0600
    elif fmt == "sparse":
        torch.save(to_sparse(tensors, state["mask"]), out)
    else:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return out.stat().st_size


# The first dimension of the input is free: a served model takes any batch. The example is traced
# with two samples, since torch.export specialises a dimension it sees at size 1. Other dimensions
# (a language model's sequence length) stay those of the example.
def _any_batch(example: tuple | dict) -> tuple | dict:
    batch = torch.export.Dim("batch")
    if isinstance(example, dict):
        return {k: {0: batch} for k in example}
    return tuple({0: batch} for _ in example)


def _call(example: tuple | dict) -> tuple[tuple, dict]:
    return ((), dict(example)) if isinstance(example, dict) else (tuple(example), {})


def random_example(input_shape: tuple[int, ...]) -> tuple[torch.Tensor]:
    return (torch.randn(2, *input_shape),)


def data_example(batch: Any, task: Any) -> tuple | dict:
    """Two samples of a validation batch as the model is called with them: an LM's token ids
    (or its dict without labels), a classifier's inputs."""
    from iterprune.engine import tasks

    if isinstance(task, tasks.LanguageModel):
        inputs = task.inputs(batch)
    else:
        inputs = tasks.split(batch)[0]
    if isinstance(inputs, dict):
        return {k: v[:2] for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    return (inputs[:2],)


def _onnx(model: Any, example: tuple | dict, out: Path) -> None:
    """An ONNX graph of the pruned model, for Netron or ONNX Runtime (the onnx extra)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(
            "--format onnx needs the onnx extra: pip install 'iterprune[onnx]'"
        ) from None
    tensors = model.state_dict()
    try:
        # one self-contained file, unless the weights pass protobuf's 2 GB limit
        big = sum(t.numel() * t.element_size() for t in tensors.values()) > 1_500_000_000
        args, kwargs = _call(example)
        torch.onnx.export(
            model,
            args,
            str(out),
            kwargs=kwargs,
            dynamo=True,
            dynamic_shapes=_any_batch(example),
            input_names=list(example) if isinstance(example, dict) else ["input"],
            output_names=["output"],
            external_data=big,
            verbose=False,
        )
    except Exception as exc:
        raise UserError(
            f"the model could not be exported to ONNX: {type(exc).__name__}: {exc}"
        ) from None


def to_sparse(tensors: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> dict[str, Any]:
    dense, sparse = {}, {}
    for name, t in tensors.items():
        keep = mask.get(name)
        if keep is None:
            dense[name] = t
            continue
        flat = keep.reshape(-1)
        values = t.reshape(-1)[flat].clone()
        sparse[name] = {"shape": list(t.shape), "bits": pruning.pack_bits(flat), "values": values}
    return {"format": SPARSE_FORMAT, "dense": dense, "sparse": sparse}


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The exact state_dict stored in a ``--format sparse`` export (no pickled code is run)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != SPARSE_FORMAT:
        raise ValueError(f"{path} is not an iterprune sparse export ({SPARSE_FORMAT})")
    state = dict(data["dense"])
    for name, entry in data["sparse"].items():
        shape = entry["shape"]
        n = 1
        for d in shape:
            n *= d
        keep = pruning.unpack_bits(entry["bits"], n)
        values = entry["values"]
        t = torch.zeros(n, dtype=values.dtype)
        t[keep] = values
        state[name] = t.view(shape)
    return state


def export(
    store: Store,
    run: str,
    which: str,
    out: Path,
    fmt: str,
    input_shape: tuple[int, ...] | None = None,
    dtype: str = "float16",
) -> dict[str, Any]:
    """Export one round of a run; a summary of what was written."""
    if fmt == "semi_structured":
        semi_structured.require_cuda()  # before anything is read
    chosen = choose_round(store, run, which)
    ckpt = chosen["checkpoint"]
    state = checkpoints.load(store.state_dir / ckpt["path"], ckpt["sha256"])
    model = example = None
    traced = fmt in ("onnx", "pt2", "semi_structured")
    if traced or state.get("architecture"):
        model, example = _architecture(store, run, input_shape, traced)
    extra: dict[str, Any] = {}
    # written beside ``out`` and renamed into place: a failed export leaves no half file and an
    # older file of that name intact (ONNX: in place, its weights file is named after it)
    target = (
        out if fmt == "onnx" else out.with_name(f".{out.name}.{os.getpid()}.partial{out.suffix}")
    )
    try:
        if fmt == "semi_structured":
            _fill(model, state, baked_state(state))
            extra = semi_structured.write(model, example, target, dtype)
        else:
            write(state, target, fmt, model, example)
        faults.point("export_write")
        os.replace(target, out)
        size = out.stat().st_size
    except (OSError, RuntimeError) as exc:
        target.unlink(missing_ok=True)
        why = diagnosis.cause(exc, out)
        if isinstance(exc, RuntimeError) and why == str(exc):
            raise  # not the disk: an error of the model or its tracing
        raise OutputWriteError(f"could not write {out}: {why}; nothing was written") from None
    dense_bytes = sum(t.numel() * t.element_size() for t in state["model"].values())
    row = chosen["row"] or {}
    return {
        "run": run,
        "round": chosen["round"],
        "format": fmt,
        "out": str(out),
        "bytes": size,
        "dense_state_dict_bytes": dense_bytes,
        "sparsity": row.get("sparsity", 0.0),
        "val_accuracy": row.get("val_accuracy", (store.run(run) or {}).get("baseline_accuracy")),
        "metric": views.metric_of_run(store, run),
        **extra,
    }


def _architecture(store: Store, run: str, input_shape: tuple[int, ...] | None, need_example: bool):
    """A fresh model of the run's architecture, and the example input to trace it with: random
    floats of ``--input-shape`` (or the benchmark's, or digits'), else two validation samples."""

    from iterprune.engine import sources, tasks
    from iterprune.state import runs

    s = runs.load_schedule(store, run)
    model = sources.fresh_model(s.model, s.seed, s.base_dir)
    if not need_example:
        return model, None
    task = tasks.task_for(s.task, s.base_dir)
    language = isinstance(task, tasks.LanguageModel)
    if input_shape is not None and language:
        raise UserError("a language model is traced with token ids from its data: no --input-shape")
    if input_shape is None and s.benchmark is not None and not language:
        input_shape = s.benchmark.input_shape
    if input_shape is None and s.data.builtin == "digits":
        input_shape = (1, 8, 8)
    if input_shape is not None:
        return model, random_example(tuple(input_shape))
    if isinstance(task, tasks.FactoryTask):
        raise UserError(
            "this format traces the model with one example, and a task factory's batches do not "
            "say which part is the model's input: give its shape without the batch dimension, "
            "--input-shape 10 for ten features, 3,224,224 for an image"
        )
    _, val, _ = sources.build_loaders(s.data, s.seed, s.base_dir)
    return model, data_example(next(iter(val)), task)
