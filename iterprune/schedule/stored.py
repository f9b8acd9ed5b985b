"""A schedule as a run stores it: rebuilt from its canonical form (``Schedule.canonical()``) with
defaults for what an older release did not store, and what changed between two of them."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from iterprune.schedule.specs import Schedule


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A spec dataclass from plain data (as ``canonical()`` stores it), nested specs included.

    Nested spec types come from the field annotations; lists become tuples; keys an older
    version did not store get their defaults.
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        nested = next(
            (
                t
                for t in (hints[f.name], *typing.get_args(hints[f.name]))
                if dataclasses.is_dataclass(t)
            ),
            None,
        )
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def from_canonical(data: dict[str, Any], base_dir: str = ".") -> Schedule:
    """Rebuild a Schedule from ``Schedule.canonical()`` (as stored with a run); fields a run
    stored by an older release lacks get their defaults."""
    return from_dict(Schedule, {**data, "base_dir": base_dir})


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of what changed between two canonical schedules."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, path))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out
