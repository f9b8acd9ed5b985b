"""The tables of many runs: the queue, two runs side by side, runs ranked."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from iterprune.report.console.numbers import (
    decimals,
    frac,
    in_units,
    measure,
    metric_value,
    pct,
)
from iterprune.report.console.tables import DECISION_STYLE, plain_table


def _metric(docs: list[dict[str, Any]]) -> tuple[str, str, Callable[[Any, dict], str]]:
    """How runs' metric is shown together: its name and a column's label (``metric`` when the
    runs are judged by different ones), and the cell of a value of a run (or setting) — bare
    under one metric, with its own units (``99.44%``, ``8.50 ppl``) when they differ."""
    shown = {measure(d) for d in docs}
    if len(shown) == 1:  # a run's own decimals where its document says its budget (compare)
        name, _, label = shown.pop()
        return name, label, lambda found, doc: metric_value(found, name, _places(doc))
    return "metric", "metric", lambda found, doc: in_units(found, measure(doc)[0])


def _places(doc: dict[str, Any]) -> int | None:
    return decimals(doc) if doc.get("max_drop") else None


def _order(name: str) -> str:
    """What a ranking goes by after the sparsity (``name``: ``metric`` when they differ)."""
    if name == "metric":
        return "epochs, time (metrics differ)"
    return f"validation {name}, epochs, time; test beside, never ranking"


def compare_table(docs: list[dict[str, Any]]) -> Table:
    table = plain_table("compare")
    table.add_column("")
    for d in docs:
        table.add_column(d["run"], justify="right")
    name, _, shown_as = _metric(docs)

    def value(key: str) -> Callable[[dict], str]:
        return lambda d: shown_as(d.get(key), d)

    rows = [
        ("status", lambda d: d["status"]),
        ("model", lambda d: str(d["model"])),
        (f"baseline {name}", value("baseline_accuracy")),
        ("final sparsity", lambda d: frac(d["sparsity"])),
        (f"final {name}", value("val_accuracy")),
        (f"baseline test {name}", value("baseline_test_accuracy")),
        (f"final test {name}", value("test_accuracy")),
        (f"control {name}", value("control_accuracy")),
        ("non-zero weights", lambda d: f"{d['params'] or 0:,}"),
        ("latency p50 ms", lambda d: pct(d["latency_ms_p50"])),
        ("accepted rounds", lambda d: str(d["accepted_rounds"])),
        ("attempts (rolled back)", lambda d: f"{d['attempts']} ({d['rolled_back']})"),
        ("fine-tuning epochs", lambda d: str(d.get("epochs") or 0)),
        ("time in rounds", lambda d: f"{d['duration_s']:.0f}s"),
        ("ended", lambda d: d["reason"] or "—"),
    ]
    for label, cell in rows:
        table.add_row(label, *[cell(d) for d in docs])
    return table


def serve_text(serve: dict[str, Any] | None) -> str:
    """The serve process in a line: what each of its devices serves."""
    if serve is None:
        return "serve: not running (start it with: iterprune serve)"
    devices = serve["devices"]
    if len(devices) == 1:
        what = f"serving {devices[0]['current'] or 'nothing (idle)'} on {devices[0]['device']}"
    else:
        names = [d["device"] for d in devices]
        what = ", ".join(
            f"{device_label(i, names)}: {d['current'] or 'idle'}" for i, d in enumerate(devices)
        )
    return f"serve: pid {serve['pid']} on {serve['host']}, {what}"


def device_label(slot: int, devices: list[str]) -> str:
    """A device's name, numbered where a serve has several of it (cpu,cpu: cpu#0, cpu#1)."""
    device = devices[slot]
    return device if devices.count(device) == 1 else f"{device}#{slot}"


def queue_table(doc: dict[str, Any]) -> Group:
    """The serve process, then the queued runs in the order serve takes them."""
    head = Text(serve_text(doc["serve"]))
    table = plain_table("queue")
    for name in ("#", "run", "status", "priority", "sweep", "round", "added"):
        table.add_column(name, justify="right" if name in ("#", "priority", "round") else "left")
    for r in doc["runs"]:
        status = f"held: {r['held']}" if r["held"] else r["status"]
        table.add_row(
            str(r["position"] or "—"),
            r["run"],
            Text(status, style=DECISION_STYLE.get(r["status"], "")),
            str(r["priority"]),
            r["sweep"] or "—",
            str(r["round"] or 0),
            r["added_at"] or "—",
        )
    return Group(head, table)


def ranking_table(docs: list[dict[str, Any]]) -> Table:
    """Runs ranked: sparsity reached within the budget, then the validation split's metric
    (better first in its direction), epochs, time; the test split's beside, never ranking."""
    name, label, cell = _metric(docs)
    table = plain_table(f"ranked: sparsity within the budget, {_order(name)}")
    test = f"test {label.removeprefix('acc ')}"
    for column in ("#", "run", "status", "sparsity", label, test, "epochs", "time"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for d in docs:
        table.add_row(
            str(d["rank"]),
            d["run"],
            d["status"],
            frac(d["sparsity"]),
            cell(d.get("val_accuracy"), d),
            cell(d.get("test_accuracy"), d),
            str(d.get("epochs") or 0),
            f"{d['duration_s']:.0f}s",
        )
    if len({d.get("setting") for d in docs}) < len(docs):
        table.caption = "some runs differ in their seed alone: --over-seeds ranks their settings"
    return table


def settings_table(settings: list[dict[str, Any]]) -> Table:
    """Settings ranked over their seeds (``compare --over-seeds``): mean ± sample sd."""
    name, label, cell = _metric(settings)
    seeds = max(len(s["seeds"]) for s in settings)
    table = plain_table(
        f"settings over {seeds} seed(s), mean ± sd: sparsity within the budget, {_order(name)}"
    )
    test = f"test {label.removeprefix('acc ')}"
    for column in ("#", "setting", "seeds", "sparsity", label, test, "epochs", "time"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for s in settings:
        shown = functools.partial(cell, doc=s)
        table.add_row(
            str(s["rank"]),
            s["setting"],
            str(len(s["seeds"])),
            _spread(s["sparsity"], lambda v: f"{100 * v:.2f}", "%", scale=100),
            _spread(s["val_accuracy"], shown),
            _spread(s["test_accuracy"], shown),
            _spread(s["epochs"], lambda v: f"{v:.1f}"),
            _spread(s["duration_s"], lambda v: f"{v:.0f}", "s", sd=False),
        )
    return table


def _spread(
    found: dict[str, Any] | None, shown: Callable, unit: str = "", sd: bool = True, scale: float = 1
) -> str:
    """``mean ± sd`` of a setting's seeds (the mean alone for one seed, or with ``sd=False``);
    ``scale``: what ``shown`` multiplies the mean by (a sparsity's 100), for the sd too."""
    if found is None:
        return "—"
    mean = shown(found["mean"])
    if not sd or found["sd"] is None:
        return f"{mean}{unit}"
    places = len(mean.split(".")[1]) if "." in mean and "e" not in mean else 0
    return f"{mean} ± {scale * found['sd']:.{places}f}{unit}"
