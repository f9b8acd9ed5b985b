"""``iterprune backup DEST [RUN...]``: a consistent copy of a state directory while its runs are
live, that ``iterprune resume`` continues from.

The order makes it consistent without stopping anyone: (1) every checkpoint file present is
copied first; (2) the database is copied with SQLite's online backup API (a moment's state, however
many commits land meanwhile); (3) each file a copied row references and step 1 did not find (one
written since) is copied now; (4) every copied file is verified against its row's sha256, and the
files no copied row references are removed. A live run deletes a checkpoint only after the commit
that supersedes it, so a file the copied rows reference was present at step 1 or is still there
at step 3 — unless a second commit superseded it within the copy, in which case the copy starts
again (up to three times). The copy is made in a temporary folder and renamed into place: DEST
exists only when it is whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from iterprune.errors import StateDamaged, StateWriteError, UserError
from iterprune.state import audit, checkpoints, connection, diagnosis, paths
from iterprune.state.store import DB_NAME, Store

TRIES = 3
_RUN_TABLES = ("layers", "rounds", "checkpoints", "events", "queue", "runs")  # children first


def backup(store: Store, dest: Path, runs: list[str] | None = None) -> dict[str, Any]:
    """Copy ``store``'s state (or only ``runs``) to ``dest``; what was copied."""
    dest = Path(dest)
    if dest.resolve().is_relative_to(store.state_dir.resolve()):
        raise UserError(f"{dest} is inside the state directory it would copy: back up elsewhere")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} already exists and is not empty: back up into a new directory")
    for run in runs or []:
        if store.run(run) is None:
            raise UserError(f"no run {run!r} in {store.state_dir}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    for _ in range(TRIES):
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        work.chmod(0o777 & ~paths.umask())  # as a directory made by mkdir would be
        try:
            doc = _copy(store, work, runs)
        except _Superseded:
            shutil.rmtree(work, ignore_errors=True)
            continue
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            reason = diagnosis.cause(exc, dest)
            raise StateWriteError(f"could not write the backup {dest}: {reason}") from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(work, dest)
        return {**doc, "dest": str(dest)}
    raise StateWriteError(
        f"the runs in {store.state_dir} replaced their checkpoints faster than they could be "
        f"copied ({TRIES} tries); try again, or stop the runs for the backup"
    )


class _Superseded(Exception):
    """A file the copied rows reference was deleted before it was copied."""


def _copy(store: Store, work: Path, runs: list[str] | None) -> dict[str, Any]:
    source = store.state_dir
    folders = source / "checkpoints"
    present = sorted(p.name for p in folders.iterdir()) if folders.is_dir() else []
    early = {}  # step 1: every checkpoint file present now
    for run in runs or present:
        for f in audit.files(source, run):
            rel = f.relative_to(source)
            if not f.name.endswith(checkpoints.TEMP_SUFFIX) and _copy_if_present(f, work / rel):
                early[rel] = work / rel  # (a file deleted since it was listed is not needed)
    connection.copy(store.db.conn, work / DB_NAME)  # step 2
    copied = Store(work, create=False)
    try:
        _keep_only(copied, runs)
        names = [r["run"] for r in copied.runs()]
        rows = [r for run in names for r in copied.checkpoints(run)]
        for row in rows:  # steps 3 and 4
            _verified(source, work, Path(row["path"]), row["sha256"], rel_in=early)
        keep = {Path(r["path"]) for r in rows}
        for rel in set(early) - keep:
            (work / rel).unlink()
        _copy_logs(source, work, names)
    finally:
        copied.close()
    return {"runs": names, "checkpoints": len(rows), "bytes": sum(r["bytes"] or 0 for r in rows)}


def _verified(source: Path, work: Path, rel: Path, sha256: str, rel_in: dict) -> None:
    """The copy of ``rel`` matches its row: copied at step 1, or now (a file written since, or
    one rewritten under the same name after step 1: an attempt redone after a crash)."""
    if rel in rel_in and audit.sha256_of(work / rel) == sha256:
        return
    if not _copy_if_present(source / rel, work / rel):
        raise _Superseded(str(rel))
    if audit.sha256_of(work / rel) != sha256:
        raise StateDamaged(
            f"{source / rel} does not match its recorded sha256: it is damaged (iterprune check "
            f"--state-dir {source} lists what is); the backup was not made"
        )


def _copy_file(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _copy_if_present(src: Path, dst: Path) -> bool:
    """Copy a file; False when it is already gone (superseded and deleted by a live run)."""
    try:
        _copy_file(src, dst)
    except FileNotFoundError:
        return False
    return True


def _keep_only(copied: Store, runs: list[str] | None) -> None:
    """Forget the source's serve process in the copy (none serves it), and every run but
    ``runs`` when they are named."""
    with copied.transaction() as db:
        db.execute("delete from serve")
        db.execute("delete from serve_slots")
        if runs is not None:
            marks = ", ".join("?" for _ in runs)
            for table in _RUN_TABLES:
                db.execute(f"delete from {table} where run not in ({marks})", runs)


def _copy_logs(source: Path, work: Path, names: list[str]) -> None:
    for run in names:
        log = paths.log_file(source, run)
        if log.is_file():
            _copy_file(log, paths.log_file(work, run))
