"""The tables and views of the inspection commands (and the dashboard's rounds table), built
with Rich; the ``--json`` documents they render come from ``views.py``."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from iterprune.report.console.numbers import (
    baseline,
    decimals,
    frac,
    in_units,
    interval,
    interval_places,
    measure,
    pct,
)

DECISION_STYLE = {
    "accepted": "green",
    "rolled_back": "yellow",
    "running": "cyan",
    "interrupted": "magenta",
    "failed": "red",
}


def plain_table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )


def control(row: dict[str, Any], d: int) -> str:
    """A lottery control's metric, with its spread when it trained from several seeds."""
    std = row.get("control_std")
    spread = f" ± {std:.{d}f}" if std is not None else ""
    return pct(row.get("control_accuracy"), d) + spread


def rounds_table(
    rows: list[dict[str, Any]],
    title: str | None = None,
    metric: dict[str, Any] | None = None,
    d: int = 2,
) -> Table:
    """The rounds so far: each drop with its interval, the test split's metric where there is
    one (never used to decide), a lottery run's control, a benchmark's latency; the metric with
    ``d`` decimals (:func:`decimals`)."""
    _, _, label = measure({"metric": metric})
    has = {
        key: any(r.get(key) is not None for r in rows)
        for key in ("drop_low", "test_accuracy", "control_accuracy", "latency_ms_p50")
    }
    table = plain_table(title)
    # with intervals (every run since they exist) the non-zero count makes way for them
    columns = ["round", "step", "sparsity"] + ([] if has["drop_low"] else ["nonzero"])
    columns += [label, "drop"] + (["interval"] if has["drop_low"] else [])
    columns += [f"test {label.removeprefix('acc ')}"] if has["test_accuracy"] else []
    columns += [f"ctrl {label.removeprefix('acc ')}"] if has["control_accuracy"] else []
    columns += ["ms p50"] if has["latency_ms_p50"] else []
    for name in [*columns, "decision", "time"]:
        table.add_column(name, justify="left" if name == "decision" else "right", no_wrap=True)
    # one number of decimals down the interval column: as many as its narrowest interval needs
    places = max(
        (
            interval_places(r["drop_low"], r["drop_high"], d - 1)
            for r in rows
            if r.get("drop_low") is not None and r.get("drop_high") is not None
        ),
        default=d - 1,
    )
    for r in rows:
        status = r.get("status") or "running"
        drop = r.get("drop")
        cells = [f"{r['round']}.{r['attempt']}", frac(r.get("step"), 1), frac(r.get("sparsity"))]
        if not has["drop_low"]:
            cells.append("—" if r.get("params") is None else f"{r['params']:,}")
        cells += [pct(r.get("val_accuracy"), d), "—" if drop is None else f"{drop:+.{d}f}"]
        ends = interval(r.get("drop_low"), r.get("drop_high"), places)
        cells += [ends] if has["drop_low"] else []
        cells += [pct(r.get("test_accuracy"), d)] if has["test_accuracy"] else []
        cells += [control(r, d)] if has["control_accuracy"] else []
        cells += [pct(r.get("latency_ms_p50"))] if has["latency_ms_p50"] else []
        decision = status.replace("_", " ") + (" ↻" if r.get("recovered") else "")
        table.add_row(
            *cells,
            Text(decision, style=DECISION_STYLE.get(status, "")),
            "—" if r.get("duration_s") is None else f"{r['duration_s']:.1f}s",
        )
    return table


def _in_units(row: dict[str, Any]) -> Any:
    """A field of a runs row in its run's metric."""
    return lambda key: in_units(row.get(key), row.get("metric", "accuracy"))


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = plain_table("runs")
    test = any(r.get("test_accuracy") is not None for r in runs)
    names = ["run", "status", "rounds", "sparsity", "val", "baseline"]
    names += ["test", "baseline test"] if test else []
    for name in [*names, "disk", "updated"]:
        table.add_column(name, justify="left" if name in ("run", "status", "updated") else "right")
    for r in runs:
        value = _in_units(r)
        cells = [value("test_accuracy"), value("baseline_test_accuracy")] if test else []
        table.add_row(
            r["run"],
            Text(r["status"], style={"finished": "green", "failed": "red"}.get(r["status"], "")),
            str(r["rounds"]),
            frac(r["sparsity"]),
            value("val_accuracy"),
            value("baseline_accuracy"),
            *cells,
            _size(r.get("disk_bytes") or 0),
            (r["updated_at"] or "")[5:16].replace("T", " "),
        )
    return table


def history_view(doc: dict[str, Any]) -> Group:
    d = decimals(doc)
    name, suffix, _ = measure(doc)
    head = Text.assemble(
        ("run ", "dim"),
        (doc["run"], "bold"),
        ("  status ", "dim"),
        doc["status"],
        ("  baseline ", "dim"),
        baseline(doc),
        *_test_and_rule(doc),
        ("  dense prunable weights ", "dim"),
        f"{doc['baseline_params'] or 0:,}",
    )
    parts: list[Any] = [head, rounds_table(doc["rounds"], metric=doc.get("metric"), d=d)]
    accepted = [r["val_accuracy"] for r in doc["rounds"] if r["status"] == "accepted"]
    if len(accepted) > 1:
        shown = accepted[-60:]
        label = f"{name} by accepted round" + (
            f" (last {len(shown)})" if len(shown) < len(accepted) else ""
        )
        parts.append(
            Text.assemble(
                (f"{label}  ", "dim"),
                sparkline(shown),
                ("  ", ""),
                f"{min(shown):.{d}f}–{max(shown):.{d}f}{suffix}",
            )
        )
    if doc.get("reason"):
        parts.append(Text(doc["reason"], style="dim"))
    return Group(*parts)


def _test_and_rule(doc: dict[str, Any]) -> list[Any]:
    """The test split's baseline, and how rounds are judged (the rule, budget, confidence)."""
    parts: list[Any] = []
    name, suffix, _ = measure(doc)
    if doc.get("baseline_test_accuracy") is not None:
        parts += [
            ("  test ", "dim"),
            f"{pct(doc['baseline_test_accuracy'], decimals(doc))}{suffix}",
        ]
    if doc.get("max_drop") is not None:
        rule = doc.get("rule") or "estimate"
        budget = f"{doc['max_drop']:.3g} {'points' if name == 'accuracy' else name}"
        if "% of the dense" in (doc.get("budget") or ""):  # relative: "2% of the dense ..."
            budget += f" ({doc['budget'].split(' ')[0]} of the dense)"
        parts += [("  rule ", "dim"), f"{rule}, drop ≤ {budget}"]
        if doc.get("val_samples"):
            confidence = doc.get("confidence") or 0.95
            parts += [f", {confidence:.0%} intervals on {doc['val_samples']} samples"]
    return parts


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the smallest and the largest."""
    blocks = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(blocks[min(7, int((v - lo) / span * 7 + 0.5))] for v in values)


def layers_table(doc: dict[str, Any]) -> Table:
    table = plain_table(f"{doc['run']} round {doc['round']}")
    for name in ("layer", "params", "nonzero", "sparsity", ""):
        table.add_column(name, justify="left" if name in ("layer", "") else "right")
    for r in doc["layers"]:
        bar = "█" * round(r["sparsity"] * 20)
        if r.get("capped"):
            bar += f"  [yellow]capped at {doc['max_layer_sparsity']:.0%}[/]"
        if r.get("pattern"):  # prune.pattern: whether each layer holds it
            style = {"holds": "green", "no": "yellow"}.get(r["pattern"], "dim")
            word = {"holds": "holds", "no": "not yet", "skipped": "skipped (fan-in)"}[r["pattern"]]
            bar += f"  [{style}]{doc['pattern']} {word}[/]"
        table.add_row(r["layer"], f"{r['params']:,}", f"{r['nonzero']:,}", frac(r["sparsity"]), bar)
    return table


def analysis_view(doc: dict[str, Any]) -> Group:
    pct = "  ".join(f"{k} {v:.1e}" for k, v in doc["percentiles"].items())
    weights = doc["weights"] or "random initialisation (no model.weights)"
    head = Text.assemble(
        ("model ", "dim"),
        str(doc["model"]),
        ("   weights ", "dim"),
        weights,
        ("\n|w| percentiles  ", "dim"),
        pct,
        ("\nbelow 1e-3 ", "dim"),
        f"{doc['near_zero']:.2%} of {doc['params']:,} prunable weights",
    )
    table = plain_table("per layer")
    for name in ("layer", "params", "mean |w|", "std |w|", "< 1e-3"):
        table.add_column(name, justify="left" if name == "layer" else "right")
    for r in doc["layers"]:
        table.add_row(
            r["layer"],
            f"{r['params']:,}",
            f"{r['mean_abs']:.2e}",
            f"{r['std_abs']:.2e}",
            frac(r["near_zero"]),
        )
    return Group(head, table)


def status_view(rows: list[dict[str, Any]]) -> Group:
    """The status table, then what to do about each run that needs it."""
    notes: list[Any] = []
    for r in rows:
        if r["status"] == "interrupted":
            notes.append(
                f"{r['run']} was interrupted; continue it with: iterprune resume {r['run']}"
            )
        if r["next_window_at"] and r["status"] == "paused":
            notes.append(
                f"{r['run']} waits for its time window: next opening {r['next_window_at']}"
            )
        if r["error"]:
            notes.append(Text(f"{r['run']} last error: {r['error']}"))
    return Group(status_table(rows), *notes)


def status_table(rows: list[dict[str, Any]]) -> Table:
    table = plain_table("status")
    for name in ("run", "status", "phase", "round", "progress", "pid", "heartbeat"):
        table.add_column(name)
    for r in rows:
        age = r.get("heartbeat_age_s")
        style = {"finished": "green", "failed": "red", "interrupted": "yellow"}.get(r["status"], "")
        table.add_row(
            r["run"],
            Text(r["status"], style=style),
            r.get("phase") or "—",
            f"{r.get('round') or 0}.{r.get('attempt') or 0}",
            (r.get("progress") or "—") if r["status"] in ("running", "paused") else "—",
            str(r.get("pid") or "—"),
            "—" if age is None else f"{age:.0f}s ago",
        )
    return table


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _drop_style(drop: float, budget: float) -> str:
    """Green within the budget, then yellow, orange and red as the drop passes 1x, 2x, 5x it."""
    if drop <= budget:
        return "green"
    if drop <= 2 * budget:
        return "yellow"
    return "dark_orange" if drop <= 5 * budget else "bold red"


def sensitivity_table(doc: dict[str, Any]) -> Group:
    """How much worse per layer (rows) and level (columns), coloured against the budget."""
    budget, d = doc["max_drop"], decimals(doc)
    name, suffix, _ = measure(doc)
    units = "points" if name == "accuracy" else f"{name}, positive: worse"
    head = Text.assemble(
        ("model ", "dim"),
        str(doc["model"]),
        ("   from ", "dim"),
        str(doc["source"]),
        ("   baseline ", "dim"),
        f"{name} {doc['baseline_accuracy']:.{d}f}{suffix} on {doc['val_samples']:,} validation "
        "samples",
        ("\neach layer pruned alone by ", "dim"),
        "its weakest output channels" if doc["method"] == "channel" else "magnitude",
        (f"; drop in {units}, budget ", "dim"),
        f"{budget:.3g}",
    )
    table = plain_table()
    table.add_column("layer", justify="left")
    table.add_column("params", justify="right")
    for level in doc["levels"]:
        table.add_column(f"{level:.0%}", justify="right")
    for r in doc["layers"]:
        cells = [Text(f"{x:+.{d}f}", style=_drop_style(x, budget)) for x in r["drop"]]
        table.add_row(r["layer"], f"{r['params']:,}", *cells)
    excluded = doc["suggested_exclude"]
    tail = Text.assemble(
        ("suggested prune.exclude ", "dim"),
        f"{excluded}"
        if excluded
        else f"none: every layer keeps within the budget at {doc['levels'][0]:.0%}",
    )
    return Group(head, table, tail)
