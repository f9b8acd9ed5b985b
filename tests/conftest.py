from __future__ import annotations

import os

# Under pytest-xdist each test process shares the cores with the others: OpenMP threads that spin
# while they wait (libgomp's default) then take the CPU from the other process, and a run with
# `threads: 2` took 86 s instead of 14 s here. Waiting passively costs a lone process more than
# it saves, so only the worker processes do (and the runs they start, which inherit it); it must
# be set before torch is first imported.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path
from typing import Any

import pytest
from helpers import TINY, write


@pytest.fixture
def write_schedule(tmp_path: Path):
    """Write a schedule (a dict, or YAML text) to a file in tmp_path and return its path."""

    def write_it(doc: dict[str, Any] | str = TINY, name: str = "tiny.yaml") -> Path:
        return write(tmp_path / name, doc)

    return write_it


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("ITERPRUNE_STATE_DIR", str(state))
    return state
