"""``iterprune sweep``: a grid of schedules from one, each a run with a readable name.

``--set prune.step=0.1,0.2 --set validate.max_drop=0.5,1.0 --seeds 0,1`` gives every combination
(2 x 2 x 2 = 8 runs). A run is named after the base name and its settings, ``digits-cnn-step0.1-
max_drop0.5-seed0`` (the last part of each key; the whole key where two would read the same), and
every schedule is validated before anything is queued.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from iterprune.errors import UserError
from iterprune.schedule.parsing import from_mapping
from iterprune.schedule.specs import Schedule

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``section.key=v1,v2`` as (key path, values read as YAML scalars)."""
    key, sep, values = text.partition("=")
    if key == "seed":
        raise UserError(f"seeds are swept with --seeds (--seeds {values or '0,1,2'}), got {text!r}")
    if not sep or not key or not values or "." not in key:
        raise UserError(f"--set must look like section.key=value1,value2, got {text!r}")
    return key, [yaml.safe_load(v) for v in values.split(",")]


def _label(key: str, value: Any, short: bool) -> str:
    name = key.rsplit(".", 1)[-1] if short else key.replace(".", "_")
    return UNSAFE.sub("_", f"{name}{value}".replace("%", "pct"))


def expand(
    path: str | Path, settings: list[str], seeds: list[int] | None = None
) -> list[tuple[str, Schedule]]:
    """Every combination of the settings (and seeds), validated: [(run name, schedule)]."""
    path = Path(path)
    try:
        base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read schedule {path}: {exc}") from None
    grid = [parse_set(s) for s in settings]
    if seeds:
        grid.append(("seed", list(seeds)))
    if not grid:
        raise UserError("a sweep needs at least one --set or --seeds")
    ends = [key.rsplit(".", 1)[-1] for key, _ in grid]
    short = len(set(ends)) == len(ends)
    name = base.get("name") or path.stem
    out = []
    for combo in itertools.product(*(values for _, values in grid)):
        doc = copy.deepcopy(base)
        labels = []
        for (key, _), value in zip(grid, combo, strict=True):
            _put(doc, key, value)
            labels.append(_label(key, value, short))
        doc["name"] = "-".join([name, *labels])
        out.append((doc["name"], from_mapping(doc, path.parent)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"the sweep gives two runs the same name: {sorted(names)}")
    return out


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    cur = doc
    for part in sections:
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {key}: {part} is not a section of the schedule")
        cur = nxt
    cur[last] = value
