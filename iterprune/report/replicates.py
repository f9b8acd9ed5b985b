"""Runs that differ only in their seed — a sweep's ``--seeds`` — summarised as one setting:
each number's mean and sample standard deviation over the seeds (``compare --over-seeds``), so a
setting is chosen by how it does across seeds, not by its luckiest seed.

Two runs are replicates when their schedules are the same experiment but for ``seed`` (and
their names): what identifies a run (``Schedule.fingerprint``: the fields set away from their
defaults, without the operating sections) is compared with the seed set aside.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Any

from iterprune.schedule.specs import Schedule

FIELDS = ("sparsity", "val_accuracy", "test_accuracy", "epochs", "duration_s")


def setting(schedule: Schedule) -> str:
    """What a run computes, its seed and name aside."""
    return dataclasses.replace(schedule, seed=0, name="").fingerprint()


def spread(values: list[float | None]) -> dict[str, Any] | None:
    """``{"mean", "sd", "min", "max", "n"}`` of the values there are (sd: the sample standard
    deviation, None with one value); None when there is none (no test split)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    sd = statistics.stdev(present) if len(present) > 1 else None
    return {
        "mean": statistics.fmean(present),
        "sd": sd,
        "min": min(present),
        "max": max(present),
        "n": len(present),
    }


def grouped(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run summaries (each with its ``setting`` and ``seed``) as settings, best first: the mean
    sparsity reached, then the mean validation metric in its direction, fewer epochs, less time
    — never the test split's, which is shown beside (as in ``views.ranked``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        groups.setdefault(d["setting"], []).append(d)
    out = [_setting(runs) for runs in groups.values()]
    mixed = len({(d.get("metric") or {}).get("name", "accuracy") for d in docs}) > 1

    def key(s: dict[str, Any]) -> tuple:
        mean = lambda field: (s[field] or {}).get("mean")  # noqa: E731
        higher = (s.get("metric") or {}).get("higher_is_better", True)
        value = mean("val_accuracy")
        better = -(value or 0) if higher else (value if value is not None else float("inf"))
        return (
            -(mean("sparsity") or 0),
            0 if mixed else better,
            mean("epochs"),
            mean("duration_s"),
        )

    return [{"rank": i + 1, **s} for i, s in enumerate(sorted(out, key=key))]


def _setting(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "setting": _label([d["run"] for d in runs]),
        "runs": [d["run"] for d in runs],
        "seeds": [d["seed"] for d in runs],
        "statuses": sorted({d["status"] for d in runs}),
        "metric": runs[0].get("metric"),
        **{f: spread([d[f] for d in runs]) for f in FIELDS},
    }


def _label(names: list[str]) -> str:
    """A setting's name: its runs' shared name without ``-seedN`` (a sweep's), else all of them."""
    bare = {re.sub(r"-seed\d+$", "", n) for n in names}
    return bare.pop() if len(bare) == 1 else ", ".join(names)
