"""iterprune: an iterative pruning scheduler daemon for PyTorch models.

The Python API (the CLI is a thin layer over it; see ``iterprune.api``)::

    import iterprune
    run = iterprune.start("schedules/digits.yaml", state_dir="state")
    run.status(); run.history(); run.stop(); run.model(round="last")
    iterprune.resume("digits-cnn", state_dir="state"); iterprune.list_runs("state")
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "list_runs", "load_sparse", "resume", "run", "start"]


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
    (Not ``iterprune.runs``: that is the module that opens runs.)"""
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
    raise AttributeError(f"module 'iterprune' has no attribute {name!r}")


def load_sparse(path):  # noqa: ANN001, ANN201
    """The exact state_dict of a ``iterprune export --format sparse`` file."""
    from iterprune.export import load_sparse as _load

    return _load(path)
