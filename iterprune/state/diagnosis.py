"""Why a state directory cannot be used, in words a user can act on: a file that is not a
database, a database from a newer iterprune, a directory that cannot be created or written, a
database locked for longer than the timeout. ``store.py`` turns what SQLite and the file system
raise into these errors; none of them is a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iterprune.errors import IterpruneError, StateDamaged, StateWriteError, UserError
from iterprune.state.connection import TIMEOUT_S


def newer(path: Path, steps: list[str]) -> UserError:
    return UserError(
        f"{path} was written by a newer iterprune (schema steps {', '.join(steps)} are unknown "
        "to this release); upgrade iterprune to open it: pip install -U iterprune"
    )


def explain(exc: BaseException, path: Path) -> IterpruneError:
    """The error to show for what opening ``path`` raised."""
    text = str(exc)
    where = path.parent
    if "not a database" in text:
        return StateDamaged(
            f"{path} is not an iterprune state database (SQLite: file is not a database) — a bad "
            "copy, or the wrong path? Give --state-dir (or ITERPRUNE_STATE_DIR) a state "
            "directory, or move this file aside to start afresh"
        )
    if "locked" in text:
        return UserError(
            f"{path} stayed locked by another process for longer than the {TIMEOUT_S:g} s timeout; try "
            "again, or look for a process holding it (fuser / lsof)"
        )
    if isinstance(exc, OSError):  # SQLite's errors are not OSErrors: this is the file system
        reason = (exc.strerror or text).lower()
        return UserError(f"cannot create the state directory {where}: {reason}")
    if not os.access(where, os.W_OK):
        return UserError(
            f"cannot open {path} for writing: {_why_not_writable(where)}; give --state-dir a "
            "directory you can write to (or copy this one there)"
        )
    return UserError(f"cannot open {path}: {text}")


def writable(path: Path) -> bool:
    """Whether this process may write the database (and its directory, for the WAL files)."""
    where = path.parent if path.parent.exists() else path.parent.parent
    return os.access(where, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def older(path: Path) -> UserError:
    return UserError(
        f"{path} was written by an older iterprune and must be upgraded before this release can "
        "read it, which needs write access: copy the state directory somewhere writable (or "
        "open it once as its owner with any iterprune command)"
    )


def _why_not_writable(where: Path) -> str:
    try:
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        return "the directory cannot be read"
    return "permission denied: the directory is not writable by this user"


def unwritable(exc: BaseException, path: Path) -> StateWriteError:
    """A commit that did not land (nothing of it is kept): why, and what to do."""
    text = str(exc)
    full = getattr(exc, "errno", None) == errno.ENOSPC or "disk is full" in text
    reason = "no space left on device" if full else _why_not_writable(path.parent)
    if not full and os.access(path.parent, os.W_OK):
        reason = text
    return StateWriteError(
        f"could not write the state database {path}: {reason}; nothing of this change was "
        "kept — fix it, then `iterprune resume RUN` continues from the last committed state"
    )


@contextlib.contextmanager
def committing(conn: Any, path: Path, sqlite_error: type[Exception]) -> Iterator[None]:
    """A COMMIT whose failure (a full disk, a directory gone read-only) rolls back and says why
    (``sqlite_error``: SQLite's OperationalError, from ``connection.py``, which owns sqlite3)."""
    try:
        yield
    except (sqlite_error, OSError) as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise unwritable(exc, path) from None


def cause(exc: BaseException, path: Path | None = None) -> str:
    """In words: a full disk is said to be one, as are a read-only or forbidden directory; else
    the error itself. ``torch.save`` reports a full disk as a RuntimeError ("unexpected pos ..."),
    without an errno: for that one the free space where ``path`` was written decides."""
    errno_ = getattr(exc, "errno", None)
    if errno_ == errno.ENOSPC:
        return "no space left on device"
    if errno_ == errno.EROFS:
        return "read-only file system"
    if errno_ in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if errno_ == errno.EPIPE:
        return "its reader went away: a closed pipe"
    if isinstance(exc, RuntimeError) and path is not None:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(path.parent).free < 1 << 20:
                return "no space left on device"
    return str(exc)
