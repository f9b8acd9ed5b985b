from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from iterprune.state.store import Store, migrations


def _open_when_released(state: str, barrier, results) -> None:
    barrier.wait()
    try:
        Store(state).close()
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """A run starting while ``status`` polls: before the schema lock, 10 of 10 trials failed
    with "database is locked"."""
    ctx = multiprocessing.get_context("fork")  # the children only open SQLite
    for trial in range(3):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(
                target=_open_when_released, args=(str(tmp_path / f"s{trial}"), barrier, results)
            )
            for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4


def new_run(store: Store, run: str = "r") -> None:
    store.create_run(
        {
            "run": run,
            "status": "running",
            "phase": "pretrain",
            "round": 0,
            "attempt": 0,
            "step": 0.1,
        }
    )


def test_schema_is_created_by_migrations_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert {"runs", "rounds", "layers", "checkpoints", "events"} <= set(store.db.table_names())
    applied = [m.name for m in migrations.applied(store.db)]
    assert applied[0] == "0001_initial" and len(applied) >= 4
    assert migrations.pending(store.db) == []
    assert store.db.journal_mode == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    Store(tmp_path).close()  # re-opening applies nothing twice


def test_a_failed_state_change_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path)
    new_run(store)
    store.begin_attempt("r", 1, 1, {"step": 0.1, "target_sparsity": 0.1})
    with pytest.raises(sqlite3.IntegrityError):
        store.finish_attempt(
            "r",
            1,
            1,
            {"status": "accepted"},
            [{"layer": "a", "params": 1, "nonzero": 1, "sparsity": 0}],
            {"accepted_round": 1},
            checkpoint={
                "round": 1,
                "attempt": 1,
                "kind": "accepted",
                "path": "p",
                "sha256": "s",
                "bytes": 1,
                "run": "no-such-run",
            },  # violates the foreign key
        )
    assert store.rounds("r")[0]["status"] == "running"
    assert store.layers("r", 1, 1) == []
    assert store.run("r")["accepted_round"] is None


def test_restarting_an_attempt_reuses_its_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    new_run(store)
    store.begin_attempt("r", 1, 1, {"step": 0.1, "target_sparsity": 0.1})
    store.begin_attempt("r", 1, 1, {"step": 0.1, "target_sparsity": 0.1})
    assert len(store.rounds("r")) == 1


def test_readers_see_committed_state_from_another_connection(tmp_path: Path) -> None:
    writer, reader = Store(tmp_path), Store(tmp_path)
    new_run(writer)
    writer.update_run("r", phase="finetune")
    assert reader.run("r")["phase"] == "finetune"


def test_a_database_from_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    from sqlite_utils import Database

    db = Database(tmp_path / "iterprune.db")
    migrations.apply(db, stop_before="0002_latency_and_early_stopping")
    db["runs"].insert({"run": "old", "status": "finished"})
    db.close()
    store = Store(tmp_path)
    assert store.run("old")["status"] == "finished"
    assert "latency_ms_p50" in store.db["rounds"].columns_dict
