"""The schedule reference page (docs/reference/schedule.md, made by docs/hooks.py): every key of
``keys.py`` in one table per section, each default read from the spec field of the same path."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from iterprune.schedule.keys import KEYS, SPEC, Key
from iterprune.schedule.specs import Schedule


def spec_field(path: str) -> dataclasses.Field | None:
    """The spec field a dotted path names (``prune.step``), or None."""
    spec: Any = Schedule
    found = None
    for part in path.split("."):
        if spec is None or not dataclasses.is_dataclass(spec):
            return None
        hints = typing.get_type_hints(spec)
        found = next((f for f in dataclasses.fields(spec) if f.name == part), None)
        if found is None:
            return None
        kinds = (hints[part], *typing.get_args(hints[part]))
        spec = next((t for t in kinds if dataclasses.is_dataclass(t)), None)
    return found


def default(key: Key) -> Any:
    if key.default is not SPEC:
        return key.default
    f = spec_field(key.path)
    assert f is not None, f"{key.path}: no spec field; give its default in the table"
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list, tuple)):
        return f"`{list(value) if isinstance(value, tuple) else value}`"
    if isinstance(value, (int, float)):
        return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
    return value if " " in value else f"`{value}`"


def markdown() -> str:
    """The reference as Markdown: one table per section, in the order of the table above."""
    out: list[str] = []
    for key in KEYS:
        if "." not in key.path and key.default is None:  # a section: its own heading
            out += ["", f"## `{key.path}`", "", key.help, ""]
            out += ["| key | accepts | default | what it does |", "| --- | --- | --- | --- |"]
            continue
        if not out:
            out += ["## Top level", ""]
            out += ["| key | accepts | default | what it does |", "| --- | --- | --- | --- |"]
        out.append(f"| `{key.path}` | {key.accepts} | {_shown(default(key))} | {key.help} |")
    return "\n".join(out) + "\n"
