"""Faults from the machine, not the process: a file that is not a database, a database from a
newer iterprune, a full disk at a checkpoint and at a commit (injected with
ITERPRUNE_ENOSPC_AT) — each a clear message and an exit code, never a traceback, and a full disk
loses nothing: resume ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_state, iterprune, tiny, write

from iterprune.errors import EXIT_DAMAGED, EXIT_FAILED, EXIT_INVALID
from iterprune.state.store import Store


def test_a_file_that_is_not_a_database_is_named_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "iterprune.db").write_bytes(b"this is a shopping list, not SQLite\n" * 100)
    for args in (["runs"], ["history", "x"], ["start", str(write(tmp_path / "t.yaml", tiny()))]):
        done = iterprune(*args, state=tmp_path)
        assert done.returncode == EXIT_DAMAGED, done.stderr
        assert "is not an iterprune state database" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_database_from_a_newer_release_says_to_upgrade(tmp_path: Path) -> None:
    Store(tmp_path).close()
    store = Store(tmp_path)
    store.db["_sqlite_migrations"].insert(
        {"migration_set": "iterprune", "name": "0099_from_the_future", "applied_at": "2027"}
    )
    store.close()
    done = iterprune("runs", state=tmp_path)
    assert done.returncode == EXIT_INVALID
    assert "written by a newer iterprune" in done.stderr and "0099_from_the_future" in done.stderr


def start(schedule: Path, state: Path, full_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "ITERPRUNE_STATE_DIR": str(state), "ITERPRUNE_ENOSPC_AT": full_at}
    argv = [sys.executable, "-m", "iterprune", "start", str(schedule)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "says"),
    [
        ("checkpoint_write:2", "could not write checkpoint"),
        ("db_commit:6", "could not write the state database"),
    ],
)
def test_a_full_disk_stops_cleanly_and_resume_reaches_the_same_end(
    tmp_path: Path, point: str, says: str
) -> None:
    schedule = write(tmp_path / "t.yaml", tiny())
    assert start(schedule, tmp_path / "ref").returncode == 0
    full = start(schedule, tmp_path / "full", point)
    assert full.returncode == EXIT_FAILED, full.stderr
    assert says in full.stderr and "no space left on device" in full.stderr
    assert "Traceback" not in full.stderr
    assert not list((tmp_path / "full").rglob("*.tmp"))  # no half-written file left behind
    done = iterprune("resume", "tiny", state=tmp_path / "full")
    assert done.returncode == 0, done.stderr
    ref, resumed = Store(tmp_path / "ref"), Store(tmp_path / "full")
    last = ref.run("tiny")["accepted_round"]
    assert resumed.run("tiny")["accepted_round"] == last
    a, b = (checkpoint_state(tmp_path / s, "tiny", last) for s in ("ref", "full"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
