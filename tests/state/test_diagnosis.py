"""Faults from the machine, not the process: a file that is not a database, a database from a
newer iterprune, a full disk at a checkpoint and at a commit (injected with
ITERPRUNE_ENOSPC_AT) — each a clear message and an exit code, never a traceback, and a full disk
loses nothing: resume ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_state, iterprune, tiny, write

from iterprune.cli import table as cli
from iterprune.errors import EXIT_DAMAGED, EXIT_FAILED, EXIT_INVALID, UserError
from iterprune.state import connection, faults
from iterprune.state.store import Store


def test_a_file_that_is_not_a_database_is_named_not_a_traceback(tmp_path: Path, capsys) -> None:
    (tmp_path / "iterprune.db").write_bytes(b"this is a shopping list, not SQLite\n" * 100)
    for args in (["runs"], ["history", "x"], ["start", str(write(tmp_path / "t.yaml", tiny()))]):
        assert cli.main([*args, "--state-dir", str(tmp_path)]) == EXIT_DAMAGED, args
        assert "is not an iterprune state database" in capsys.readouterr().err


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


def test_a_state_directory_that_cannot_be_created_is_said_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    schedule = write(tmp_path / "t.yaml", tiny())
    state = tmp_path / "a-file" / "state"
    assert cli.main(["start", str(schedule), "--state-dir", str(state)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "cannot create the state directory" in err and "not a directory" in err


def test_a_database_locked_longer_than_the_timeout_is_said_so(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path)
    holder = sqlite3.connect(tmp_path / "iterprune.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    monkeypatch.setattr(connection, "TIMEOUT_S", 0.2)
    try:
        with pytest.raises(UserError, match="stayed locked by another process"):
            Store(tmp_path).add_event("x", "info", "note", "waits for the lock, then gives up")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


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


def test_a_reader_that_leaves_early_does_not_end_the_run(tmp_path: Path) -> None:
    """``iterprune start x.yaml | head -1``: Rich exits the program on a broken pipe, which ended
    the run (exit 1, "interrupted") at its next line. It goes on, says so once, and finishes."""
    schedule = write(tmp_path / "t.yaml", tiny())
    env = {**os.environ, "ITERPRUNE_STATE_DIR": str(tmp_path / "s")}
    argv = [sys.executable, "-m", "iterprune", "start", str(schedule)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"20")  # the first line, then the reader goes
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    err = proc.stderr.read().decode()
    assert err.count("the run's output cannot be written (its reader went away") == 1, err
    assert "Traceback" not in err
    assert Store(tmp_path / "s").run("tiny")["status"] == "finished"
    with subprocess.Popen(  # a reading command's reader leaving is no error either
        [sys.executable, "-m", "iterprune", "history", "tiny"], env=env, stdout=subprocess.PIPE
    ) as history:
        history.stdout.close()
        assert history.wait(timeout=60) == 0


@pytest.mark.slow
def test_a_full_disk_at_the_log_lets_the_run_go_on_and_at_an_export_or_plot_writes_nothing(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    schedule = write(tmp_path / "t.yaml", tiny())
    done = start(schedule, tmp_path / "s", "log_write:2")  # its output goes to a pipe, as a log
    assert done.returncode == 0, done.stderr
    assert "the run's output cannot be written (no space left on device)" in done.stderr
    stamped = [line for line in done.stdout.splitlines() if line.startswith("20")]
    assert len(stamped) == 1  # the run's lines stop at the full disk (the first one got out)
    assert Store(tmp_path / "s").run("tiny")["status"] == "finished"
    out = tmp_path / "out" / "m.pt"
    out.parent.mkdir()
    out.write_bytes(b"an older export")
    state = ["--state-dir", str(tmp_path / "s")]
    image = ["plot", "tiny", "--out", str(tmp_path / "out" / "p.png")]
    formats = ("pt", "safetensors", "sparse")
    for args in [["export", "tiny", "--out", str(out), "--format", f] for f in formats] + [image]:
        monkeypatch.setattr(faults, "_spec", None)  # as ITERPRUNE_ENOSPC_AT=export_write does
        monkeypatch.setattr(faults, "_full", ("export_write", 1))
        monkeypatch.setattr(faults, "_seen", {})
        assert cli.main([*args, *state]) == EXIT_FAILED, args  # in process: no torch start-up
        assert "no space left on device; nothing was written" in capsys.readouterr().err
        assert out.read_bytes() == b"an older export"  # left as it was
        assert [p.name for p in out.parent.iterdir()] == ["m.pt"]  # no partial file
