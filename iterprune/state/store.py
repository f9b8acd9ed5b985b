"""The state database: runs, rounds, per-layer stats, checkpoints and events (sqlite-utils).

The only module that speaks SQL (with ``migrations.py``, its schema; ``connection.py`` opens the
file). Every state change is one ``BEGIN IMMEDIATE`` transaction, so a kill leaves the old state
or the new one. WAL with ``synchronous=FULL``: a commit that returned survives power loss, and
readers never block the writer.

Who may change a run's state: ``runs.py`` creates a run; then only its engine — ``runner.py``
(status, rounds), ``baseline.py`` and ``resumption.py`` (forgetting rounds whose checkpoints were
lost). ``daemon.py`` holds the lease and ``iterprune stop`` asks through :meth:`request_stop`;
neither changes the status (tests/test_architecture.py checks this).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from iterprune.errors import UserError
from iterprune.state import connection, diagnosis, faults
from iterprune.state.migrations import migrations, unapplied

DB_NAME = "iterprune.db"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """One connection to ``<state>/iterprune.db``; open one per process (or thread).
    ``read_only``: the caller only reads, so a directory this process cannot write (read-only
    media, another user's runs) is opened by ``connection.reading``, not refused."""

    def __init__(self, state_dir: Path | str, *, create: bool = True, read_only: bool = False):
        self.state_dir, self.path = Path(state_dir), Path(state_dir) / DB_NAME
        self.read_only = read_only and not diagnosis.writable(self.path)
        try:  # a machine's fault (not a database, read-only, locked) becomes words, not a traceback
            if create and not self.read_only:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            opened = connection.reading if self.read_only else connection.writing
            self.db = Database(opened(self.path))
            self.db.execute("PRAGMA foreign_keys=ON")
            if (pending := unapplied(self.db, self.path)) and self.read_only:
                raise diagnosis.older(self.path)
            if self.read_only:
                return
            self.db.execute("PRAGMA synchronous=FULL")  # per connection: set on every open
            if pending or self.db.journal_mode != "wal":
                self._set_up()
        except (connection.Error, OSError) as exc:
            raise diagnosis.explain(exc, self.path) from None

    def _set_up(self) -> None:
        """WAL mode and the schema, one process at a time: two processes opening a new database at
        once (a run starting while ``status`` polls) otherwise fail with "database is locked"."""
        lock = self.state_dir / "locks" / "schema.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if self.db.journal_mode != "wal":
                self.db.enable_wal()
            if migrations.pending(self.db):
                migrations.apply(self.db)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self, point: str = "db_commit") -> Iterator[Database]:
        """One state change. ``BEGIN IMMEDIATE`` waits for the write lock instead of failing."""
        if self.read_only:
            raise UserError(f"{self.path} is open for reading only: this command cannot change it")
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield self.db
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except connection.OperationalError as exc:  # locked for longer than the timeout
            raise diagnosis.explain(exc, self.path) from None
        try:
            yield self.db
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if "readonly database" in str(exc):  # a file this process may not write
                raise diagnosis.unwritable(exc, self.path) from None
            raise
        with diagnosis.committing(conn, self.path, connection.OperationalError):
            faults.point(point)
            conn.execute("COMMIT")

    # --- runs ---------------------------------------------------------------------------------

    def select(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def run(self, run: str) -> dict[str, Any] | None:
        rows = self.select("select * from runs where run = ?", [run])
        return rows[0] if rows else None

    def runs(self) -> list[dict[str, Any]]:
        sql = """
            select r.*, coalesce((select count(*) from rounds x where x.run = r.run
                                  and x.status = 'accepted'), 0) as accepted_rounds,
                   coalesce((select sum(bytes) from checkpoints c where c.run = r.run), 0)
                       as disk_bytes
            from runs r order by r.created_at
        """
        return list(self.db.query(sql))

    def create_run(self, row: dict[str, Any]) -> None:
        stamp = now()
        with self.transaction():
            self.db["runs"].insert({**row, "created_at": stamp, "updated_at": stamp})

    def update_run(self, run: str, **fields: Any) -> None:
        with self.transaction():
            self._update_run(run, fields)

    def _update_run(self, run: str, fields: dict[str, Any]) -> None:
        self.db["runs"].update(run, {**fields, "updated_at": now()})

    def take_lease(
        self, run: str, pid: int, host: str, timeout_s: float, now_s: float
    ) -> dict[str, Any] | None:
        """Become the run's owner; returns the live owner's row instead when another holds it.

        A lease is live while its heartbeat is younger than ``timeout_s`` and it was taken on
        another host (on this host the caller holds the run's lock file, so any other owner here
        is dead). Older leases belong to dead processes and are taken over.
        """
        with self.transaction():
            row = self.run(run)
            if row is None:
                return None
            beat = row["heartbeat_at"]
            if (
                row["pid"] is not None
                and row["host"] not in (None, host)
                and beat is not None
                and now_s - beat < timeout_s
            ):
                return row
            self._update_run(
                run, {"pid": pid, "host": host, "heartbeat_at": now_s, "stop_requested": None}
            )
        return None

    def heartbeat(
        self, run: str, pid: int, host: str, now_s: float, progress: str | None = None
    ) -> bool:
        """Refresh the lease (and the progress line); False when the owner should stop: another
        process has taken the lease over, or ``iterprune stop`` asked."""
        with self.transaction("heartbeat_commit"):
            cursor = self.db.execute(
                "update runs set heartbeat_at = ?, progress = coalesce(?, progress) "
                "where run = ? and pid = ? and host = ? and stop_requested is null",
                [now_s, progress, run, pid, host],
            )
        return cursor.rowcount == 1

    def fail_run(self, run: str, error: str) -> None:
        """The run failed: its status, the error, the attempt it was in, and an event, at once."""
        with self.transaction():
            self.db.execute(
                "update rounds set status = 'failed', note = ?, finished_at = ? "
                "where run = ? and status = 'running'",
                [error[:500], now(), run],
            )
            self._update_run(run, {"status": "failed", "error": error, "pid": None})
            self._add_event(run, "error", "failed", error)

    def request_stop(self, run: str) -> None:  # the owner's heartbeat sees it
        self.update_run(run, stop_requested=1)

    def rewind_to(self, run: str, round_: int, run_fields: dict[str, Any]) -> list[str]:
        """Forget every round after ``round_`` (their checkpoints were lost); returns their files."""
        with self.transaction():
            where = "where run = ? and round > ?"
            paths = [
                r["path"]
                for r in self.select(f"select path from checkpoints {where}", [run, round_])
            ]
            for table in ("layers", "rounds", "checkpoints"):
                self.db.execute(f"delete from {table} {where}", [run, round_])
            self._update_run(run, {**run_fields, "accepted_round": round_})
        return paths

    # --- rounds -------------------------------------------------------------------------------

    def begin_attempt(self, run: str, round_: int, attempt: int, fields: dict[str, Any]) -> None:
        """Mark an attempt running (re-using its row when a crashed attempt is restarted)."""
        with self.transaction():
            self.db["layers"].delete_where(
                "run = ? and round = ? and attempt = ?", [run, round_, attempt]
            )
            self.db.execute(
                "delete from rounds where run = ? and round = ? and attempt = ?",
                [run, round_, attempt],
            )
            row = {"run": run, "round": round_, "attempt": attempt, "status": "running"}
            self.db["rounds"].insert({**row, "started_at": now(), **fields})
            self._update_run(run, {"round": round_, "attempt": attempt, "phase": "prune"})

    def interrupt_attempt(self, run: str, round_: int, attempt: int) -> None:
        """An attempt stopped before its end; resume continues it (from a mid-round checkpoint)."""
        with self.transaction():
            self.db.execute(
                "update rounds set status = 'interrupted', note = 'stopped; continued on resume', "
                "finished_at = ? where run = ? and round = ? and attempt = ? and status = 'running'",
                [now(), run, round_, attempt],
            )

    def finish_attempt(
        self,
        run: str,
        round_: int,
        attempt: int,
        fields: dict[str, Any],
        layers: list[dict[str, Any]],
        run_fields: dict[str, Any],
        checkpoint: dict[str, Any] | None = None,
        event: tuple[str, str, str] | None = None,
    ) -> list[str]:
        """Record an attempt's outcome, its layers, its checkpoint and the run's new state at once.

        Returns the files of the attempt's mid-round checkpoints, which are forgotten here.
        """
        with self.transaction():
            mids = self._drop_mids(run, round_, attempt)
            if checkpoint is not None:
                fields = {**fields, "checkpoint_id": self._add_checkpoint(run, checkpoint)}
            self.db.execute(
                "update rounds set {} where run = ? and round = ? and attempt = ?".format(
                    ", ".join(f"[{k}] = ?" for k in fields)
                ),
                [*fields.values(), run, round_, attempt],
            )
            self._insert_layers(run, round_, attempt, layers)
            self._update_run(run, run_fields)
            if event is not None:
                self._add_event(run, *event)
        return mids

    def mid_checkpoint(self, run: str, round_: int, attempt: int) -> dict[str, Any] | None:
        where = "run = ? and round = ? and attempt = ? and kind = 'mid'"
        rows = self.select(
            f"select * from checkpoints where {where} order by id desc", [run, round_, attempt]
        )
        return rows[0] if rows else None

    def replace_mid(self, run: str, round_: int, attempt: int, row: dict[str, Any]) -> list[str]:
        """Record a new mid-round checkpoint; returns the files of the ones it supersedes."""
        with self.transaction():
            old = self._drop_mids(run, round_, attempt)
            self._add_checkpoint(run, {"round": round_, "attempt": attempt, "kind": "mid", **row})
        return old

    def drop_mids(self, run: str, round_: int, attempt: int) -> list[str]:
        with self.transaction():
            return self._drop_mids(run, round_, attempt)

    def _drop_mids(self, run: str, round_: int, attempt: int) -> list[str]:
        where = "run = ? and round = ? and attempt = ? and kind = 'mid'"
        rows = self.select(f"select path from checkpoints where {where}", [run, round_, attempt])
        self.db.execute(f"delete from checkpoints where {where}", [run, round_, attempt])
        return [r["path"] for r in rows]

    def record_baseline(
        self,
        run: str,
        run_fields: dict[str, Any],
        layers: list[dict[str, Any]],
        checkpoints: list[dict[str, Any]],
    ) -> None:
        """The dense baseline (and a lottery run's rewind point), its layers and stats, at once."""
        with self.transaction():
            for checkpoint in checkpoints:
                self._add_checkpoint(run, checkpoint)
            self._insert_layers(run, 0, 0, layers)
            self._update_run(run, run_fields)

    def _insert_layers(self, run: str, round_: int, attempt: int, layers: list[dict]) -> None:
        self.db["layers"].insert_all(
            [
                {"run": run, "round": round_, "attempt": attempt, "position": i, **row}
                for i, row in enumerate(layers)
            ],
            replace=True,
        )

    def rounds(self, run: str) -> list[dict[str, Any]]:
        return self.select("select * from rounds where run = ? order by round, attempt", [run])

    def layers(self, run: str, round_: int, attempt: int) -> list[dict[str, Any]]:
        where = "run = ? and round = ? and attempt = ?"
        return self.select(
            f"select * from layers where {where} order by position", [run, round_, attempt]
        )

    # --- checkpoints --------------------------------------------------------------------------

    def _add_checkpoint(self, run: str, row: dict[str, Any]) -> int:
        table = self.db["checkpoints"]
        table.insert({"run": run, "created_at": now(), **row})
        return int(table.last_pk)  # type: ignore[arg-type]

    def drop_superseded(self, run: str) -> list[str]:
        """Forget every accepted checkpoint but the newest (the dense one stays); their paths."""
        with self.transaction():
            accepted = "from checkpoints where run = ? and kind = 'accepted'"
            rows = self.select(
                f"select id, path {accepted} and id < (select max(id) {accepted})", [run, run]
            )
            for r in rows:
                self.db.execute(
                    "update rounds set checkpoint_id = null where checkpoint_id = ?", [r["id"]]
                )
                self.db.execute("delete from checkpoints where id = ?", [r["id"]])
        return [r["path"] for r in rows]

    def checkpoints(self, run: str) -> list[dict[str, Any]]:
        return self.select("select * from checkpoints where run = ? order by id", [run])

    # --- events -------------------------------------------------------------------------------

    def add_event(self, run: str, level: str, kind: str, message: str) -> None:
        with self.transaction():
            self._add_event(run, level, kind, message)

    def _add_event(self, run: str, level: str, kind: str, message: str) -> None:
        self.db["events"].insert(
            {"run": run, "at": now(), "level": level, "kind": kind, "message": message}
        )

    def events(self, run: str, after_id: int = 0) -> list[dict[str, Any]]:
        return self.select(
            "select * from events where run = ? and id > ? order by id", [run, after_id]
        )
