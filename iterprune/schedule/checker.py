"""Reading a YAML document with the line of every key, and checking values with exact messages.

Problems are collected, never raised one at a time, so a schedule reports everything at once:
``prune.step (line 14): must be in (0, 1), got 1.5``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import yaml

_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


# --- reading YAML with line numbers -------------------------------------------------------------


class Doc:
    """Plain Python values from a YAML document, with the line each key path came from."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []
        self._construct = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._construct.construct_object(key_node, deep=True)
                sub = f"{path}.{key}" if path else str(key)
                if key in out:
                    self.problems.append(
                        f"{sub} (line {key_node.start_mark.line + 1}): duplicate key "
                        f"(first given on line {self.lines.get(sub, '?')})"
                    )
                    continue
                self.lines[sub] = key_node.start_mark.line + 1
                out[key] = self.convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self._construct.construct_object(node, deep=True)


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class Checker:
    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.problems = doc.problems

    def where(self, path: str) -> str:
        line = self.doc.lines.get(path)
        if line is None and "." in path:  # a missing key: point at its section
            line = self.doc.lines.get(path.rsplit(".", 1)[0])
        return f"{path} (line {line})" if line else path

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{self.where(path)}: {message}")

    def section(self, raw: dict, key: str, allowed: tuple[str, ...], path: str = "") -> dict:
        """The mapping at ``key``; unknown keys inside it are reported with a did-you-mean."""
        sub = f"{path}.{key}" if path else key
        value = raw.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(sub, f"must be a mapping, got {describe(value)}")
            return {}
        self.unknown_keys(value, allowed, sub)
        return value

    def unknown_keys(self, raw: dict, allowed: tuple[str, ...], path: str) -> None:
        for key in raw:
            if key in allowed:
                continue
            sub = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
            )
            self.fail(sub, f"unknown key{hint}")

    def number(
        self,
        raw: dict,
        key: str,
        path: str,
        default: Any,
        *,
        integer: bool = False,
        check: Callable[[float], bool] | None = None,
        rule: str = "",
    ) -> Any:
        sub = f"{path}.{key}"
        if key not in raw:
            return default
        value = raw[key]
        if isinstance(value, str) and not integer and _FLOAT_TEXT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(sub, f"must be {kind}, got {describe(value)}")
            return default
        if integer and not isinstance(value, int):
            self.fail(sub, f"must be {kind}, got {value!r}")
            return default
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(sub, f"must be a finite number, got {value!r}")
            return default
        if check is not None and not check(value):
            self.fail(sub, f"must be {rule}, got {value!r}")
            return default
        return value if integer else float(value)

    def count(self, raw: dict, key: str, path: str, default: Any, minimum: int = 1) -> Any:
        """An integer of at least ``minimum`` (epochs, batch sizes, retries)."""
        return self.number(
            raw,
            key,
            path,
            default,
            integer=True,
            check=lambda v: v >= minimum,
            rule=f">= {minimum}",
        )

    def text(
        self, raw: dict, key: str, path: str, default: str | None, choices: tuple[str, ...] = ()
    ) -> str | None:
        sub = f"{path}.{key}" if path else key
        if key not in raw:
            return default
        value = raw[key]
        if isinstance(value, bool):
            self.fail(
                sub,
                f"must be text, got {describe(value)} (YAML reads yes/no/on/off as booleans; quote it)",
            )
            return default
        if not isinstance(value, str):
            self.fail(sub, f"must be text, got {describe(value)}")
            return default
        if choices and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.fail(sub, f"must be one of {', '.join(choices)}, got {value!r}{hint}")
            return default
        return value

    def mapping(self, raw: dict, key: str, path: str) -> dict:
        sub = f"{path}.{key}"
        value = raw.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail(sub, f"must be a mapping of names to values, got {describe(value)}")
            return {}
        return value

    def boolean(self, raw: dict, key: str, path: str, default: bool) -> bool:
        sub = f"{path}.{key}"
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.fail(sub, f"must be true or false, got {describe(value)}")
            return default
        return value

    def one_of(self, raw: dict, keys: tuple[str, ...], path: str) -> None:
        given = [k for k in keys if raw.get(k) is not None]
        if len(given) != 1:
            names = " / ".join(f"'{k}'" for k in keys)
            what = f"{' and '.join(given)} given" if given else "none given"
            self.fail(path, f"give exactly one of {names} ({what})")
