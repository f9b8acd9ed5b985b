"""Runs that differ only in their seed — a sweep's ``--seeds`` — summarised as one setting:
each number's mean and sample standard deviation over the seeds (``compare --over-seeds``), so a
setting is chosen by how it does across seeds, not by its luckiest seed.

Two runs are replicates when their schedules are the same experiment but for ``seed`` (and
their names): ``views.setting``.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from iterprune.report import views

FIELDS = ("sparsity", "val_accuracy", "test_accuracy", "epochs", "duration_s")


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
    return views.ranked([_setting(runs) for runs in groups.values()], number=_mean)


def _mean(setting: dict[str, Any], field: str) -> float | None:
    return (setting[field] or {}).get("mean")


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
