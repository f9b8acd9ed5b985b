"""``iterprune check``: whether a state directory is whole — the database's own integrity check,
every checkpoint a row references (present, of its recorded size and sha256), the files no row
references, each run's accepted rounds (1, 2, ... in order, matching the run's row) and whether
its newest accepted checkpoint loads. Each file is read once.

Safe beside a live run: the files are listed *before* the rows are read in one snapshot, so a
checkpoint written meanwhile is not called unreferenced for long (a file renamed into place but
not yet committed is listed, as it is for that moment); a referenced file found missing is asked
about again, and a row gone by then (a superseded checkpoint, removed after its commit) is not a
problem.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from iterprune.errors import CheckpointCorrupt, UnknownRun
from iterprune.state import checkpoints, connection, paths
from iterprune.state.store import Store


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def audit(store: Store, runs: list[str] | None = None) -> dict[str, Any]:
    """The ``check --json`` document: ``ok``, the database's integrity, and per run what is wrong
    (``problems``) and the files no row references (``unreferenced``, not a problem by itself)."""
    integrity = connection.problems(store.db.conn)
    names = runs or [r["run"] for r in store.runs()]
    for run in runs or []:
        if store.run(run) is None:
            raise UnknownRun(f"no run {run!r} in {store.state_dir} (see: iterprune runs)")
    present = {run: files(store.state_dir, run) for run in names}
    conn = store.db.conn
    conn.execute("BEGIN")  # one read snapshot of every run's rows
    try:
        rows = {run: _rows(store, run) for run in names}
    finally:
        conn.execute("COMMIT")
    docs = [_run(store, run, rows[run], present[run]) for run in names]
    if runs is None:
        docs += _orphans(store, set(names))
    problems = [f"database: {p}" for p in integrity]
    problems += [f"{d['run']}: {p}" for d in docs for p in d["problems"]]
    return {
        "state_dir": str(store.state_dir),
        "ok": not problems,
        "integrity": integrity or "ok",
        "runs": docs,
        "problems": problems,
    }


def files(state: Path, run: str) -> list[Path]:
    folder = paths.checkpoint_dir(state, run)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _rows(store: Store, run: str) -> dict[str, Any]:
    return {
        "run": store.run(run),
        "checkpoints": store.checkpoints(run),
        "rounds": store.rounds(run),
    }


def _run(store: Store, run: str, rows: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    if rows["run"] is None:  # removed while this check ran
        return {"run": run, "status": None, "checkpoints": 0, "problems": [], "unreferenced": []}
    saved = rows["checkpoints"]
    resumed, problems = _resumed(rows)
    problems += [p for r in saved if (p := _checkpoint(store, r, loads=r is resumed))]
    referenced = {(store.state_dir / r["path"]).resolve() for r in saved}
    loose = [str(p.relative_to(store.state_dir)) for p in files if p.resolve() not in referenced]
    return {
        "run": run,
        "status": rows["run"]["status"],
        "checkpoints": len(saved),
        "bytes": sum(r["bytes"] or 0 for r in saved),
        "problems": problems,
        "unreferenced": loose,
    }


def _gone(store: Store, row: dict[str, Any]) -> bool:
    """Whether a checkpoint's row is gone by now (superseded while this check ran)."""
    return not store.select("select id from checkpoints where id = ?", [row["id"]])


def _checkpoint(store: Store, row: dict[str, Any], loads: bool) -> str | None:
    """What is wrong with a checkpoint's file, if anything. The one a resume continues from
    (``loads``) is also unpickled, from the same read that hashes it: each file is read once."""
    path = store.state_dir / row["path"]
    what = f"{row['kind']} checkpoint {row['path']}"
    try:
        size = path.stat().st_size
        if row["bytes"] is not None and size != row["bytes"]:
            return f"{what} has {size} bytes, recorded {row['bytes']}"
        if loads:
            checkpoints.load(path, row["sha256"])
        elif sha256_of(path) != row["sha256"]:
            return f"{what} does not match its recorded sha256 (damaged)"
    except FileNotFoundError:  # (also when a live run deleted it while it was read)
        return None if _gone(store, row) else f"{what} is missing"
    except CheckpointCorrupt as exc:
        if not path.exists() and _gone(store, row):
            return None
        return f"{what}, which a resume continues from, does not load: {exc}"
    return None


def _resumed(rows: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The checkpoint row a resume continues from (None before the dense model is measured,
    or when it is missing), and what is wrong with the run's accepted rounds: they are 1, 2, ...
    with one accepted attempt each, and the run's row agrees."""
    run = rows["run"]
    numbers = [r["round"] for r in rows["rounds"] if r["status"] == "accepted"]
    out = []
    if numbers != list(range(1, len(numbers) + 1)):
        out.append(f"accepted rounds are {numbers}, not 1 to {len(numbers)} in order")
    newest = numbers[-1] if numbers else 0
    if (run["accepted_round"] or 0) != newest:
        out.append(f"the run records round {run['accepted_round']} as accepted, its rows {newest}")
    if run["baseline_accuracy"] is None:
        return None, out  # no dense model yet: nothing to load
    newest = run["accepted_round"] or 0  # what resume continues from
    kind = "accepted" if newest else "dense"
    found = [r for r in rows["checkpoints"] if r["kind"] == kind and r["round"] == newest]
    if not found:
        return None, [*out, f"round {newest} has no {kind} checkpoint"]
    return found[-1], out


def _orphans(store: Store, names: set[str]) -> list[dict[str, Any]]:
    """Checkpoint folders of no run (a run removed by hand, or another state's files)."""
    root = store.state_dir / "checkpoints"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [
        {
            "run": p.name,
            "status": None,
            "checkpoints": 0,
            "bytes": 0,
            "problems": [],
            "unreferenced": [
                str(f.relative_to(store.state_dir)) for f in files(root.parent, p.name)
            ],
        }
        for p in folders
        if p.name not in names and any(p.iterdir())
    ]
