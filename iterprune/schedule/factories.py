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
    base = Path(base_dir).resolve()
    _search_first(base, module_name.partition(".")[0])
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail with anything the module raises
        raise UserError(
            f"cannot import module '{module_name}' for '{spec}' (looked first in {base}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"module '{module_name}' has no function '{attr}'")
    return fn


_SCHEDULE_DIRS: set[Path] = set()  # the directories factories were imported from


def _search_first(base: Path, top: str) -> None:
    """Put the schedule's directory first on the import path, and forget a module of the same
    name that another schedule's directory gave: one process serves the runs of many schedules
    (``serve``, the Python API), and two projects' ``models.py`` must not meet in
    ``sys.modules``, where the second run would silently get the first one's model. Modules from
    anywhere else (the standard library, installed packages) are never forgotten."""
    if str(base) in sys.path:
        sys.path.remove(str(base))
    sys.path.insert(0, str(base))
    _SCHEDULE_DIRS.add(base)
    found = getattr(sys.modules.get(top), "__file__", None)
    if not found:
        return
    origin = Path(found).resolve()  # base/top.py, or base/top/__init__.py for a package
    home = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    if home != base and home in _SCHEDULE_DIRS:
        for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
            del sys.modules[name]


def torchvision_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))
