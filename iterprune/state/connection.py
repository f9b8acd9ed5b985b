"""How the state database file is opened, checked and copied: the one module that imports
``sqlite3`` (``store.py`` speaks SQL through sqlite-utils over the connections made here).

- :func:`writing`: a read-write connection that waits up to 30 s for another writer's lock;
- :func:`reading`: for a state directory this process cannot write (read-only media, another
  user's runs). SQLite's ``mode=ro`` reads a WAL database while its owner writes, as long as the
  WAL index (``iterprune.db-shm``) exists or can be created; where neither is true (a cleanly
  closed database on a read-only directory: no ``-shm`` left) the file is opened ``immutable=1``
  — nobody can change it there either, so reading it without locks is safe;
- :func:`problems`: ``PRAGMA integrity_check``;
- :func:`copy`: SQLite's online backup API, a consistent copy of the database while writers
  commit (each step copies some pages; a commit in between restarts the copy from the new state).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

Connection = sqlite3.Connection
Error = sqlite3.Error
OperationalError = sqlite3.OperationalError
TIMEOUT_S = 30.0  # how long a statement waits for another process's lock


def writing(path: Path) -> Connection:
    return sqlite3.connect(str(path), timeout=TIMEOUT_S, check_same_thread=False)


def reading(path: Path) -> Connection:
    """A connection that never writes, for a directory this process cannot write to."""
    uri = path.resolve().as_uri()
    try:
        conn = _opened(f"{uri}?mode=ro")
    except sqlite3.OperationalError:  # no WAL index and none can be made here
        conn = _opened(f"{uri}?immutable=1")
    return conn


def _opened(uri: str) -> Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=TIMEOUT_S, check_same_thread=False)
    try:
        conn.execute("select count(*) from sqlite_master").fetchone()  # opening is lazy
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def problems(conn: Connection) -> list[str]:
    """What ``PRAGMA integrity_check`` finds wrong (empty: the database is sound)."""
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows


def copy(conn: Connection, dest: Path) -> None:
    """The database as of one moment, written to ``dest`` (which must not exist) and closed."""
    target = sqlite3.connect(str(dest))
    try:
        conn.backup(target, pages=1024)
        target.execute("PRAGMA journal_mode=WAL")  # as the state directory's own database is
        target.commit()
    finally:
        target.close()
