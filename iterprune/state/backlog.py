"""The queue of runs that ``iterprune serve`` works through, and the serve process's own row.

A queued run is a run like any other (created by ``runs.open_run`` with status ``queued``, its
schedule stored with it); the queue adds its priority, its place in line, the sweep it came from,
and whether it is *held* (stopped by hand: serve leaves it until it is queued again). Order: runs
already started (interrupted, stopped by a serve that ended, yielded at a closed window) first,
then higher priority, then first come.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from iterprune.errors import UserError
from iterprune.state import owners
from iterprune.state.store import Store

DONE = ("finished", "failed")


class Backlog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, run: str, priority: int = 0, sweep: str | None = None) -> None:
        """Queue ``run`` (again: with the new priority, released if it was held)."""
        with self.store.transaction() as db:
            seq = db.execute("select coalesce(max(seq), 0) + 1 from queue").fetchone()[0]
            old = db.execute("select seq from queue where run = ?", [run]).fetchone()
            row = {"run": run, "priority": priority, "seq": old[0] if old else seq, "held": None}
            row.update(sweep=sweep, added_at=_now())
            db["queue"].upsert(row, pk="run")

    def remove(self, run: str) -> None:
        entry = self.entry(run)
        if entry is None:
            raise UserError(f"run '{run}' is not in the queue (see: iterprune queue)")
        if self.serves(run):
            raise UserError(
                f"run '{run}' is running now; stop it first (iterprune stop {run}: it is held in "
                "the queue), then remove it"
            )
        with self.store.transaction() as db:
            db.execute("delete from queue where run = ?", [run])

    def hold(self, run: str, why: str) -> None:
        with self.store.transaction() as db:
            db.execute("update queue set held = ? where run = ?", [why, run])

    def entries(self) -> list[dict[str, Any]]:
        """Every queued run with its run's status, in the order serve takes them (finished and
        held ones last); ``position`` counts the ones still to run."""
        rows = self.store.select(
            "select q.run, q.priority, q.seq, q.sweep, q.held, q.added_at, r.status, r.round, "
            "r.accepted_round, r.reason from queue q join runs r on r.run = q.run",
            [],
        )
        rows.sort(key=_order)
        position = 0
        for row in rows:
            waiting = row["status"] not in DONE and not row["held"]
            position += waiting
            row["position"] = position if waiting else None
        return rows

    def entry(self, run: str) -> dict[str, Any] | None:
        return next((e for e in self.entries() if e["run"] == run), None)

    def sweep(self, name: str) -> list[str]:
        return [e["run"] for e in self.entries() if e["sweep"] == name]

    # --- the serve process --------------------------------------------------------------------

    def serve(self) -> dict[str, Any] | None:
        rows = self.store.select("select * from serve where id = 1", [])
        return rows[0] if rows else None

    def serving(
        self,
        pid: int,
        host: str,
        now_s: float,
        current: str | None,
        devices: str = "cpu",
        since: float = float("inf"),
    ) -> bool:
        """Claim or refresh the serve row; False when a stop was requested. A stop asked for at
        ``since`` (when this serve went for its lock) or later is this serve's, even when it
        was written into the row of the serve before it: claiming the row keeps it."""
        with self.store.transaction() as db:
            row = self.serve()
            if row is None or row["pid"] != pid or row["host"] != host:
                asked = (row or {}).get("stop_requested")
                kept = asked if asked is not None and asked >= since else None
                fields = {"pid": pid, "host": host, "started_at": _now(), "stop_requested": kept}
                db["serve"].upsert({"id": 1, **fields, "devices": devices}, pk="id")
            db["serve"].update(1, {"heartbeat_at": now_s, "current": current})
        return not (self.serve() or {}).get("stop_requested")

    def workers(self) -> list[dict[str, Any]]:
        """The worker of each device, when serve serves several."""
        return self.store.select("select * from serve_slots order by slot", [])

    def working(self, slot: int, device: str, pid: int, host: str, now_s: float) -> bool:
        """Claim or refresh a device worker's row; False when the serve was asked to stop."""
        with self.store.transaction() as db:
            row = next((w for w in self.workers() if w["slot"] == slot), None)
            fields = {"slot": slot, "heartbeat_at": now_s}
            if row is None or row["pid"] != pid or row["host"] != host:
                fields.update(device=device, pid=pid, host=host, started_at=_now(), current=None)
            db["serve_slots"].upsert(fields, pk="slot")
        return not (self.serve() or {}).get("stop_requested")

    def claim(self, slot: int, run: str | None) -> None:
        """The run a device's worker serves, or is about to (None: none)."""
        with self.store.transaction() as db:
            db["serve_slots"].upsert({"slot": slot, "current": run}, pk="slot")

    def claimed(self, slot: int) -> set[str]:
        """The runs that the other devices' workers serve, or are about to."""
        return {w["current"] for w in self.workers() if w["slot"] != slot and w["current"]}

    def serves(self, run: str) -> bool:
        """Whether serve (or one of its device workers) is serving ``run`` now."""
        row = self.store.run(run) or {}
        if row.get("status") not in ("running", "paused") or owners.gone(row):
            return False  # not served, or its process died (by SIGKILL: its rows remain)
        serving = [self.serve() or {}, *self.workers()]
        return any((o.get("pid"), o.get("host")) == (row["pid"], row["host"]) for o in serving)

    def forget_workers(self) -> None:
        with self.store.transaction() as db:
            db.execute("delete from serve_slots")

    def request_stop(self, now_s: float) -> dict[str, Any] | None:
        """Ask the serve to stop (the time of asking: a serve starting now keeps it)."""
        row = self.serve()
        with self.store.transaction() as db:
            db["serve"].upsert({"id": 1, "stop_requested": now_s}, pk="id")
        return row

    def served(self) -> None:
        """The serve process ended (its row may not exist: a serve of an empty queue can end
        before its first heartbeat wrote it)."""
        with self.store.transaction() as db:
            db.execute(
                "update serve set pid = null, current = null, heartbeat_at = null where id = 1"
            )
            db.execute("delete from serve_slots")


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _order(row: dict[str, Any]) -> tuple:
    waiting = row["status"] not in DONE and not row["held"]
    started = row["status"] not in ("queued",) and row["status"] not in DONE
    return (not waiting, not started, -(row["priority"] or 0), row["seq"])
