"""Checking the schedule's ``prune`` section: the method, its step and target, Wanda's group and
calibration, an N:M pattern, the layer cap and the layers left out."""

from __future__ import annotations

import dataclasses

from iterprune.schedule.checker import Checker, describe
from iterprune.schedule.specs import GLOBAL_METHODS, PruneSpec

METHODS = ("global_magnitude", "lamp", "layer_magnitude", "random", "channel", "wanda")
WANDA_GROUPS = ("row", "layer", "global")


def fraction(c: Checker, raw: dict, key: str, path: str, default: float) -> float:
    return c.number(raw, key, path, default, check=lambda v: 0 < v < 1, rule="in (0, 1)")


def section(c: Checker, raw: dict) -> PruneSpec:
    p = c.section(
        raw,
        "prune",
        (
            *("method", "step", "target_sparsity", "exclude", "scope", "max_layer_sparsity"),
            *("group", "calibration", "pattern", "strict"),
        ),
    )
    exclude = p.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        c.fail("prune.exclude", f"must be a list of module-name patterns, got {describe(exclude)}")
        exclude = []
    spec = PruneSpec(
        method=c.text(p, "method", "prune", "global_magnitude", METHODS) or "global_magnitude",
        step=fraction(c, p, "step", "prune", 0.10),
        target_sparsity=fraction(c, p, "target_sparsity", "prune", 0.90),
        exclude=tuple(exclude),
        scope=c.text(p, "scope", "prune", "global", ("global", "layer")) or "global",
        max_layer_sparsity=float(
            c.number(
                p, "max_layer_sparsity", "prune", 0.99, check=lambda v: 0 < v <= 1, rule="in (0, 1]"
            )
        ),
        group=c.text(p, "group", "prune", "row", WANDA_GROUPS) or "row",
        calibration_batches=_calibration(c, p),
        strict=c.boolean(p, "strict", "prune", False),
    )
    if p.get("pattern") is not None:
        spec = _pattern(c, p, spec)
    if "strict" in p and "pattern" not in p:
        c.fail("prune.strict", "applies to prune.pattern only")
    if "scope" in p and spec.method != "channel":
        c.fail("prune.scope", f"applies to method channel only, not {spec.method}")
    if "max_layer_sparsity" in p and not spec.ranks_globally:
        c.fail(
            "prune.max_layer_sparsity",
            f"caps the global methods ({', '.join(GLOBAL_METHODS)}, wanda with group global), "
            f"not {spec.method}" + (f" with group {spec.group}" if spec.method == "wanda" else ""),
        )
    for key in ("group", "calibration"):
        if key in p and spec.method != "wanda":
            c.fail(f"prune.{key}", f"applies to method wanda only, not {spec.method}")
    return spec


PATTERN_METHODS = ("global_magnitude", "layer_magnitude", "lamp", "wanda")


def _pattern(c: Checker, p: dict, spec: PruneSpec) -> PruneSpec:
    """``pattern: "2:4"``: rounds remove one weight per group of M until N are left, so the
    target is 1 - N/M and the step is not the schedule's."""
    found = _n_m(p["pattern"])
    if found is None:
        c.fail("prune.pattern", f'must be "N:M" with 0 < N < M, like "2:4", got {p["pattern"]!r}')
        return spec
    n, m = found
    if spec.method not in PATTERN_METHODS:
        c.fail("prune.pattern", f"needs a magnitude or wanda method, not {spec.method}")
    for key in ("step", "target_sparsity"):
        if key in p:
            c.fail(
                f"prune.{key}",
                f"not with a pattern: each round removes one weight of every group of {m} until "
                f"{n} are left (target {1 - n / m:g})",
            )
    return dataclasses.replace(spec, pattern=f"{n}:{m}", step=1 / m, target_sparsity=1 - n / m)


def _n_m(text: object) -> tuple[int, int] | None:
    """``"2:4"`` → (2, 4); None unless ``0 < N < M``."""
    parts = str(text).split(":")
    if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
        return None
    n, m = (int(x) for x in parts)
    return (n, m) if 0 < n < m else None


def _calibration(c: Checker, p: dict) -> int:
    """``prune.calibration: {batches: 8}``: the training batches Wanda measures inputs on."""
    section = c.section(p, "calibration", ("batches",), "prune")
    return c.count(section, "batches", "prune.calibration", 8)
