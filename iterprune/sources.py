"""Build the model and the data loaders a schedule names: built-ins, factories, weight files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from iterprune import examples
from iterprune.errors import UserError
from iterprune.schedule import DataSpec, ModelSpec, resolve_factory

BUILTIN_MODELS = {"digits_cnn": examples.digits_cnn, "digits_mlp": examples.digits_mlp}


def build_model(spec: ModelSpec, seed: int, base_dir: str = ".") -> nn.Module:
    """The schedule's model, initialised from ``seed`` (and from ``weights`` when given)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.builtin:
            model = BUILTIN_MODELS[spec.builtin](**spec.kwargs)
        else:
            fn = resolve_factory(str(spec.factory), base_dir)
            model = fn(**spec.kwargs)
            if not isinstance(model, nn.Module):
                raise UserError(
                    f"model.factory '{spec.factory}' returned {type(model).__name__}, "
                    "expected a torch.nn.Module"
                )
    if spec.weights:
        load_weights(model, Path(base_dir) / spec.weights)
    return model


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict file into ``model``; mismatches name the first offending keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model.weights: file not found: {path}") from None
    except Exception as exc:
        raise UserError(
            f"model.weights: {path} is not a state_dict that loads safely "
            f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"model.weights: {path} holds {type(state).__name__}, expected a state_dict"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes[:5])}")
    if problems:
        raise UserError(f"model.weights: {path} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state)


def build_loaders(spec: DataSpec, seed: int, base_dir: str = ".") -> tuple[Any, Any]:
    """(train, validation) iterables of (inputs, targets) batches."""
    if spec.builtin == "digits":
        return examples.digits_loaders(spec.batch_size, spec.val_fraction, seed, **spec.kwargs)
    fn = resolve_factory(str(spec.factory), base_dir)
    kwargs = {"batch_size": spec.batch_size, **spec.kwargs}
    try:
        result = fn(**kwargs)
    except TypeError as exc:
        raise UserError(f"data.factory '{spec.factory}' could not be called: {exc}") from None
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise UserError(
            f"data.factory '{spec.factory}' must return (train_loader, val_loader), "
            f"got {type(result).__name__}"
        )
    return result[0], result[1]
