"""One row of the schedule reference: a key's path, what it accepts, its default and its help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPEC: Any = object()  # the default is the spec field's of the same path


@dataclass(frozen=True)
class Key:
    path: str  # dotted, as in an error message: prune.step
    accepts: str  # what the validator accepts
    help: str
    default: Any = SPEC
