"""Whether the process a row names as its owner (a run's, a serve's) is still alive: on this
machine, whether its pid exists; on another, whether its heartbeat is younger than the lease
timeout. A process killed by SIGKILL leaves its row behind; this is how readers tell."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

LEASE_TIMEOUT_S = 60.0


def heartbeat_age(row: dict[str, Any]) -> float | None:
    beat = row.get("heartbeat_at")
    return None if beat is None else max(0.0, time.time() - beat)


def gone(row: dict[str, Any], lease_timeout: float = LEASE_TIMEOUT_S) -> bool:
    if row.get("pid") is None:
        return True
    if row.get("host") == socket.gethostname():
        try:
            os.kill(row["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, and another user's
        return False
    age = heartbeat_age(row)
    return age is None or age > lease_timeout
