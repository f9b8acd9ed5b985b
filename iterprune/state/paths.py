"""Where every file iterprune writes lives, in one place."""

from __future__ import annotations

import os
from pathlib import Path

ENV_STATE_DIR = "ITERPRUNE_STATE_DIR"


def state_dir(given: str | os.PathLike | None = None) -> Path:
    """``--state-dir``, else ``$ITERPRUNE_STATE_DIR``, else ``./state``."""
    return Path(given or os.environ.get(ENV_STATE_DIR) or "state")


def umask() -> int:
    """This process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checkpoint_dir(state: Path, run: str) -> Path:
    return state / "checkpoints" / run


def checkpoint_file(state: Path, run: str, round_: int, attempt: int) -> Path:
    name = "dense.pt" if round_ == 0 else f"round-{round_:04d}-a{attempt}.pt"
    return checkpoint_dir(state, run) / name


def rewind_file(state: Path, run: str) -> Path:
    return checkpoint_dir(state, run) / "rewind.pt"


def mid_checkpoint_file(state: Path, run: str, round_: int, attempt: int, batches: int) -> Path:
    return checkpoint_dir(state, run) / f"round-{round_:04d}-a{attempt}-mid-{batches:07d}.pt"


def lock_file(state: Path, run: str) -> Path:
    return state / "locks" / f"{run}.lock"


def serve_lock(state: Path) -> Path:
    """Held by the one ``iterprune serve`` of a state directory (a run id cannot contain '/')."""
    return state / "locks" / "serve" / "serve.lock"


def serve_log(state: Path) -> Path:
    return state / "logs" / "serve" / "serve.log"


def slot_lock(state: Path, slot: int) -> Path:
    """Held by the worker that serves the ``slot``-th device of a serve of several devices."""
    return state / "locks" / "serve" / f"slot-{slot}.lock"


def pick_lock(state: Path) -> Path:
    """Held while a worker picks its next run, so that no two pick the same one."""
    return state / "locks" / "serve" / "pick.lock"


def slot_log(state: Path, slot: int, device: str) -> Path:
    return state / "logs" / "serve" / f"slot-{slot}-{device.replace(':', '')}.log"


def log_file(state: Path, run: str) -> Path:
    return state / "logs" / f"{run}.log"
