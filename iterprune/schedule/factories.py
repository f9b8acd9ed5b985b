"""Importing what a schedule names by reference: ``module:function`` factories, and the names of
torchvision's classification models. Used by the validator (to report an import error with the
schedule's other problems) and by ``sources`` (to build the model and the data)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterprune.errors import UserError


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
