"""How a run's numbers are written: a metric's values in its units, the decimals a drop needs
beside its budget, an interval, a share."""

from __future__ import annotations

from typing import Any

from iterprune.core import decisions


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def frac(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def decimals(doc: dict[str, Any]) -> int:
    """How many decimals a run's metric and drops are shown with: enough to read them beside
    its budget (two for accuracy points or a perplexity; six for an MSE budget of 5.7e-05)."""
    return decisions.decimals(doc.get("max_drop") or 0.0)


def metric_value(found: float | None, name: str, d: int | None = None) -> str:
    """A metric's value in a table of runs, whose budgets differ: two decimals (``99.44``,
    ``8.50``), or three significant digits under 0.1 (an MSE's ``0.000286``, not ``0.00``);
    with ``d``, a run's own decimals (:func:`decimals`), at least two."""
    if found is None:
        return "—"
    if d is not None and name != "accuracy":
        return f"{found:.{max(2, d)}f}"
    small = name != "accuracy" and 0 < abs(found) < 0.1
    return f"{found:.3g}" if small else f"{found:.2f}"


def measure(doc: dict[str, Any] | None) -> tuple[str, str, str]:
    """How a document's metric is shown: (its name, a value's suffix, a column's label):
    accuracy is ``99.72%`` under ``acc %``, a perplexity ``4.21`` under ``ppl``."""
    name = ((doc or {}).get("metric") or {}).get("name", "accuracy")
    if name == "accuracy":
        return name, "%", "acc %"
    return name, "", "ppl" if name == "perplexity" else name


def baseline(doc: dict[str, Any]) -> str:
    """The dense model's metric as a run's header says it: ``99.72%``, ``perplexity 8.63``."""
    name, suffix, _ = measure(doc)
    shown = f"{pct(doc.get('baseline_accuracy'), decimals(doc))}{suffix}"
    return shown if name == "accuracy" else f"{name} {shown}"


def interval(low: float | None, high: float | None, least: int = 1) -> str:
    """``[low, high]`` with ``least`` decimals or more, enough that the interval spans at least
    five units of the last one: one for accuracy points (about ±1), two or more for a
    perplexity's narrow ones (one decimal showed ``[-0.34, -0.27]`` as ``[-0.3, -0.3]``)."""
    if low is None or high is None:
        return "—"
    d = interval_places(low, high, least)
    return f"[{low:+.{d}f}, {high:+.{d}f}]"


def interval_places(low: float, high: float, least: int = 1) -> int:
    """The decimals :func:`interval` writes ``[low, high]`` with."""
    width, d = high - low, least
    while d < least + 3 and 0 < width < 5 * 10.0**-d:
        d += 1
    return d


def in_units(found: float | None, name: str) -> str:
    """A value of the metric ``name``, with its unit: ``98.33%``, ``4.21 ppl``, ``0.12 mse``."""
    unit = "%" if name == "accuracy" else " ppl" if name == "perplexity" else f" {name}"
    return "—" if found is None else metric_value(found, name) + unit
