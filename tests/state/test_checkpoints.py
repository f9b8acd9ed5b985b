from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iterprune.state import checkpoints
from iterprune.state.checkpoints import CheckpointCorrupt, CheckpointWriteError


def payload() -> dict:
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(100, 100)}, "mask": {"w": torch.rand(100, 100) > 0.5}}


def test_save_then_load_returns_identical_tensors(tmp_path: Path) -> None:
    written = checkpoints.save(payload(), tmp_path / "c.pt")
    assert written.bytes == (tmp_path / "c.pt").stat().st_size
    loaded = checkpoints.load(written.path, written.sha256)
    assert torch.equal(loaded["model"]["w"], payload()["model"]["w"])
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_damaged_checkpoint_is_never_loaded(tmp_path: Path, damage: str) -> None:
    written = checkpoints.save(payload(), tmp_path / "c.pt")
    data = bytearray(written.path.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0x01
        written.path.write_bytes(bytes(data))
    elif damage == "truncate":
        written.path.write_bytes(bytes(data[: len(data) // 3]))
    else:
        written.path.unlink()
    with pytest.raises(CheckpointCorrupt):
        checkpoints.load(written.path, written.sha256)


def test_failed_write_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = checkpoints.save(payload(), tmp_path / "c.pt")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "fsync", disk_full)
    with pytest.raises(CheckpointWriteError, match="no space left on device"):
        checkpoints.save({"other": torch.zeros(3)}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    monkeypatch.undo()
    assert checkpoints.load(old.path, old.sha256)["model"]["w"].shape == (100, 100)


def test_sweep_removes_temporary_and_unreferenced_files(tmp_path: Path) -> None:
    kept = checkpoints.save(payload(), tmp_path / "kept.pt")
    (tmp_path / ".kept.pt.123.tmp").write_bytes(b"half")
    (tmp_path / "orphan.pt").write_bytes(b"x")
    removed = checkpoints.sweep(tmp_path, {kept.path})
    assert sorted(p.name for p in removed) == [".kept.pt.123.tmp", "orphan.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["kept.pt"]
