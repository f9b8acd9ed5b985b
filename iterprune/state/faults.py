"""Fault injection for crash tests: the process kills itself at a named point.

``ITERPRUNE_KILL_AT=POINT[:N][@RANK]`` sends SIGKILL to this process the N-th time (default 1) it
reaches ``POINT``; with ``@RANK``, only in that torchrun rank (``RANK``; a single process is rank 0).
Workers that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0) ignore it: the kill happens once. Points: ``pretrain_batch``, ``finetune_batch``, ``prune``, ``validate``, ``recover`` and
``recover_batch`` (an attempt's recovery),
``tracking_sync`` (MLflow: an attempt committed, not yet logged), ``checkpoint_write`` (temp file
written, not yet renamed), ``checkpoint_renamed`` (file in place, row
not yet committed), ``db_commit`` (inside a transaction, before COMMIT). Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "ITERPRUNE_KILL_AT"
_spec: tuple[str, int] | None | bool = False  # False: not read yet
_seen: dict[str, int] = {}


def _read() -> tuple[str, int] | None:
    raw = os.environ.get(ENV, "")
    if not raw or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return None
    raw, _, rank = raw.partition("@")
    if rank and int(rank) != int(os.environ.get("RANK", "0") or 0):
        return None
    name, _, count = raw.partition(":")
    return name, int(count or 1)


def point(name: str) -> None:
    global _spec
    if _spec is False:
        _spec = _read()
    if _spec is None or _spec[0] != name:  # type: ignore[index]
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= _spec[1]:  # type: ignore[index]
        os.kill(os.getpid(), signal.SIGKILL)
