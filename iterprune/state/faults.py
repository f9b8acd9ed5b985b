"""Fault injection for crash tests: the process kills itself at a named point, or finds the disk
full there.

``ITERPRUNE_KILL_AT=POINT[:N][@RANK]`` sends SIGKILL to this process the N-th time (default 1) it
reaches ``POINT``; with ``@RANK``, only in that torchrun rank (``RANK``; a single process is rank 0).
Workers that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0) ignore it: the kill happens once. Points: ``pretrain_batch``, ``finetune_batch``, ``prune``, ``validate``, ``recover`` and
``recover_batch`` (an attempt's recovery),
``tracking_sync`` (MLflow: an attempt committed, not yet logged), ``checkpoint_write`` (temp file
written, not yet renamed), ``checkpoint_renamed`` (file in place, row
not yet committed), ``db_commit`` (inside a transaction, before COMMIT; the daemon's lease
heartbeat, in its own thread, is ``heartbeat_commit``), ``log_write`` (a line of a run's
output: its log), ``export_write`` (an export's or a plot's file written, not yet renamed).
Unset, a point costs one dictionary lookup.

``ITERPRUNE_ENOSPC_AT=POINT[:N]`` raises ``OSError(ENOSPC)`` instead, as a full disk does, the
N-th time ``POINT`` is reached: a test puts a full disk at each write without mounting anything.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "ITERPRUNE_KILL_AT"
FULL_ENV = "ITERPRUNE_ENOSPC_AT"
_spec: tuple[str, int] | None | bool = False  # False: not read yet
_full: tuple[str, int] | None | bool = False
_seen: dict[str, int] = {}


def _read(env: str = ENV) -> tuple[str, int] | None:
    raw = os.environ.get(env, "")
    if not raw or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return None
    raw, _, rank = raw.partition("@")
    if rank and int(rank) != int(os.environ.get("RANK", "0") or 0):
        return None
    name, _, count = raw.partition(":")
    return name, int(count or 1)


def point(name: str) -> None:
    global _spec, _full
    if _spec is False:
        _spec, _full = _read(), _read(FULL_ENV)
    if _full and _full[0] == name:  # type: ignore[index]
        _seen[f"full {name}"] = _seen.get(f"full {name}", 0) + 1
        if _seen[f"full {name}"] == _full[1]:  # type: ignore[index]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if _spec is None or _spec[0] != name:  # type: ignore[index]
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= _spec[1]:  # type: ignore[index]
        os.kill(os.getpid(), signal.SIGKILL)
