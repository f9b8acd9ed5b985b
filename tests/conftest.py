from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY = """\
name: tiny
seed: 3
threads: 1
model:
  builtin: digits_mlp
  kwargs: {hidden: 32}
data:
  builtin: digits
  kwargs: {limit: 400}
  batch_size: 32
pretrain: {epochs: 4, lr: 1.0e-2}
prune:
  method: global_magnitude
  step: 0.3
  target_sparsity: 0.6
finetune: {epochs: 1, optimizer: adam, lr: 1.0e-3}
validate: {max_drop: 5.0}
rollback: {retries: 2, shrink: 0.5, min_step: 0.05}
"""


@pytest.fixture
def tiny_text() -> str:
    return TINY


@pytest.fixture
def write_schedule(tmp_path: Path):
    """Write schedule text (dedented) to a file in tmp_path and return its path."""

    def write(text: str = TINY, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("ITERPRUNE_STATE_DIR", str(state))
    return state
