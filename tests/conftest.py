from __future__ import annotations

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
