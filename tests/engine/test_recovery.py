"""What a run does when its state is damaged: corrupt checkpoints, a full disk, a second owner."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny

from iterprune.cli import table as cli
from iterprune.schedule import parsing as schedule
from iterprune.state import paths
from iterprune.state.runs import open_run
from iterprune.state.store import Store


def rounds(state: Path, run: str = "tiny") -> list[tuple]:
    store = Store(state)
    rows = [
        (r["round"], r["attempt"], r["status"], r["sparsity"], r["val_accuracy"])
        for r in store.rounds(run)
    ]
    store.close()
    return rows


def start(path: Path, state: Path, *extra: str) -> int:
    return cli.main(["start", str(path), "--state-dir", str(state), *extra])


@pytest.fixture
def reference(write_schedule, tmp_path: Path) -> tuple[Path, list]:
    path = write_schedule(tiny(checkpoints={"keep": "all"}))
    assert start(path, tmp_path / "ref") == 0
    return path, rounds(tmp_path / "ref")


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_corrupt_latest_checkpoint_falls_back_and_redoes_the_rounds(
    reference, tmp_path: Path, capsys, damage: str
) -> None:
    path, expected = reference
    state = tmp_path / "damaged"
    assert start(path, state) == 0
    store = Store(state)
    latest = store.checkpoints("tiny")[-1]
    store.update_run("tiny", status="stopped")  # as if it had stopped before its last round
    store.close()
    file = state / latest["path"]
    data = bytearray(file.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0x40
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(bytes(data[:100]))
    else:
        file.unlink()
    capsys.readouterr()

    assert cli.main(["resume", "tiny", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and latest["path"] in out
    store = Store(state)
    kinds = [e["kind"] for e in store.events("tiny")]
    store.close()
    assert "corrupt" in kinds and "fallback" in kinds
    assert rounds(state) == expected  # the lost round was redone, identically


def test_no_valid_checkpoint_stops_with_a_clear_message(reference, tmp_path: Path, capsys) -> None:
    path, _ = reference
    state = tmp_path / "ruined"
    assert start(path, state) == 0
    store = Store(state)
    for c in store.checkpoints("tiny"):
        (state / c["path"]).write_bytes(b"garbage")
    store.update_run("tiny", status="stopped")
    store.close()
    capsys.readouterr()
    assert cli.main(["resume", "tiny", "--state-dir", str(state)]) == 5
    err = capsys.readouterr().err
    assert "no valid checkpoint left" in err and "--fresh" in err and "Traceback" not in err


def test_disk_full_at_a_checkpoint_write_stops_cleanly_and_resumes(
    reference, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, expected = reference
    state = tmp_path / "full"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # dense and round 1 fit; round 2 hits a full disk
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert start(path, state) == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err and "Traceback" not in err
    store = Store(state)
    run = store.run("tiny")
    assert run["status"] == "failed" and "no space left on device" in run["error"]
    assert run["accepted_round"] == 1
    assert [c["round"] for c in store.checkpoints("tiny")] == [0, 1]
    store.close()
    files = sorted(p.name for p in paths.checkpoint_dir(state, "tiny").iterdir())
    assert files == ["dense.pt", "round-0001-a1.pt"]  # no partial file left behind

    monkeypatch.setattr(torch, "save", real_save)  # space is back
    assert cli.main(["resume", "tiny", "--state-dir", str(state)]) == 0
    assert rounds(state) == expected


def test_a_live_owner_on_this_host_is_refused_with_its_pid(
    write_schedule, tmp_path: Path, capsys
) -> None:
    state = tmp_path / "s"
    path = write_schedule()
    assert start(path, state) == 0
    store = Store(state)
    store.update_run("tiny", status="running", pid=4242)
    store.close()
    lock = paths.lock_file(state, "tiny")
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process serving the run holds this
    try:
        capsys.readouterr()
        assert cli.main(["resume", "tiny", "--state-dir", str(state)]) == 4
        assert "pid 4242" in capsys.readouterr().err
    finally:
        os.close(fd)


def test_a_fresh_lease_from_another_host_is_refused_and_a_stale_one_taken_over(
    write_schedule, tmp_path: Path, capsys
) -> None:
    state = tmp_path / "s"
    path = write_schedule(tiny(prune={"target_sparsity": 0.3}))
    store = Store(state)

    open_run(store, schedule.load(path), str(path))
    store.update_run("tiny", pid=777, host="gpu-box-2", heartbeat_at=time.time() - 5)
    capsys.readouterr()
    assert start(path, state) == 4
    err = capsys.readouterr().err
    assert "pid 777 on gpu-box-2" in err

    store.update_run("tiny", heartbeat_at=time.time() - 120)  # its owner died two minutes ago
    assert start(path, state, "--lease-timeout", "60") == 0
    assert store.run("tiny")["status"] == "finished"


def test_heartbeat_reports_a_lost_lease(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_run({"run": "r", "status": "running"})
    assert store.take_lease("r", 1, "a", 60, time.time()) is None
    assert store.heartbeat("r", 1, "a", time.time())
    store.update_run("r", pid=2, host="b")  # taken over
    assert not store.heartbeat("r", 1, "a", time.time())
