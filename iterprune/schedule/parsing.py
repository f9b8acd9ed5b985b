"""Schedule files: YAML -> frozen dataclasses, with every problem reported at once.

Problems carry their key path and line (``prune.step (line 14): must be in (0, 1), got 1.5``).
The YAML 1.1 traps are handled on purpose: ``1e-3`` (read as a string) is accepted where a number
is expected, ``no``/``off`` read as booleans are refused where text is expected, and duplicate keys
are errors instead of silently keeping the last one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from iterprune.errors import ScheduleError, UserError
from iterprune.schedule.checker import Doc, describe
from iterprune.schedule.rounds import build
from iterprune.schedule.specs import Schedule


def parse(text: str, source: str = "<schedule>", base_dir: Path | str = ".") -> Schedule:
    """Validate schedule text; raises ScheduleError listing every problem found."""
    default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else "run"
    doc = Doc()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScheduleError(source, [f"YAML syntax error at {where}{problem}"]) from None
    if node is None:
        raise ScheduleError(source, ["the file is empty: a schedule needs at least model and data"])
    raw = doc.convert(node, "")
    if not isinstance(raw, dict):
        raise ScheduleError(
            source, [f"the top level must be a mapping of keys, got {describe(raw)}"]
        )
    bad_keys = [k for k in raw if not isinstance(k, str)]
    for k in bad_keys:
        doc.problems.append(f"{k!r}: keys must be text")
        raw.pop(k)
    schedule = build(raw, doc, default_name, Path(base_dir))
    if schedule is None or doc.problems:
        raise ScheduleError(source, doc.problems)
    return schedule


def from_mapping(doc: dict[str, Any], base_dir: Path | str = ".") -> Schedule:
    """Validate a schedule given as a dict (the Python API), as if it were a file's content."""
    return parse(yaml.safe_dump(doc, sort_keys=False), "<dict>", base_dir)


def load(path: str | Path) -> Schedule:
    """Read and validate a schedule file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"schedule file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read schedule {path}: {exc}") from None
    return parse(text, str(path), path.parent)
