"""iterprune: an iterative pruning scheduler daemon for PyTorch models.

The Python API (the CLI is a thin layer over it; see ``iterprune.api``)::

    import iterprune
    run = iterprune.start("schedules/digits.yaml", state_dir="state")
    run.status(); run.history(); run.stop(); run.model(round="last")
    iterprune.resume("digits-cnn", state_dir="state"); iterprune.list_runs("state")
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "Task", "list_runs", "load_sparse", "resume", "run", "start"]


def start(*args: Any, **kwargs: Any) -> Any:
    """Start (or continue) a run from a schedule file or dict: see :func:`iterprune.api.start`."""
    from iterprune import api

    return api.start(*args, **kwargs)


def resume(*args: Any, **kwargs: Any) -> Any:
    """Continue a stopped or interrupted run: see :func:`iterprune.api.resume`."""
    from iterprune import api

    return api.resume(*args, **kwargs)


def list_runs(*args: Any, **kwargs: Any) -> Any:
    """Every run in a state directory (``iterprune runs --json``): see :func:`iterprune.api.runs`.
    (Not ``iterprune.state.runs``: that is the module that opens runs.)"""
    from iterprune import api

    return api.runs(*args, **kwargs)


def run(run_id: str, state_dir: Any = None) -> Any:
    """A handle to an existing run: see :class:`iterprune.api.Run`."""
    from iterprune import api

    return api.Run(run_id, state_dir)


def __getattr__(name: str) -> Any:
    if name == "Run":  # the class itself, imported on first use (it brings the store)
        from iterprune.api import Run

        return Run
    if name == "Task":  # what a task factory returns (a Protocol; it brings torch)
        from iterprune.engine.tasks import Task

        return Task
    raise AttributeError(f"module 'iterprune' has no attribute {name!r}")


def load_sparse(path):  # noqa: ANN001, ANN201
    """The exact state_dict of a ``iterprune export --format sparse`` file."""
    from iterprune.report.export import load_sparse as _load

    return _load(path)


# Modules of releases before the packages by layer, and where they live now. A pickle written by
# an older release (``torch.save`` of a channel run's model refers to ``iterprune.examples``) and
# old scripts that imported them keep working: importing an old name gives the new module.
MOVED = {
    **{m: f"schedule.{m}" for m in ("specs", "checker", "factories", "window", "inputs", "sweeps")},
    **{"operations": "schedule.operating", "sections": "schedule.rounds"},
    **{m: f"core.{m}" for m in ("evidence", "decisions", "rng", "selection", "pruning")},
    **{m: f"core.{m}" for m in ("channels", "analysis", "sensitivity", "latency")},
    **{m: f"state.{m}" for m in ("paths", "faults", "store", "migrations", "checkpoints")},
    **{m: f"state.{m}" for m in ("snapshots", "runs", "backlog")},
    **{m: f"engine.{m}" for m in ("examples", "sources", "training", "evaluation", "recipe")},
    **{m: f"engine.{m}" for m in ("workbench", "distributed", "reporter", "attempts")},
    **{m: f"engine.{m}" for m in ("baseline", "resumption", "orders", "runner")},
    **{m: f"report.{m}" for m in ("views", "console", "plots", "export")},
    **{"board": "report.tensorboard", "tracking": "report.mlflow", "targets": "report.subject"},
    **{m: f"serve.{m}" for m in ("daemon", "server", "supervisor", "launch")},
    **{"commands": "cli.commands", "serving": "cli.queue"},
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import iterprune.store`` (an old name) gives ``iterprune.state.store``, with a warning."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        old = fullname.removeprefix(__name__ + ".")
        if old == fullname or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} is now {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        pass  # the module under its new name is already complete


sys.meta_path.append(_MovedModules())
