"""The tables and views of the inspection commands (and the dashboard's rounds table), built
with Rich; the ``--json`` documents they render come from ``views.py``."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

DECISION_STYLE = {
    "accepted": "green",
    "rolled_back": "yellow",
    "running": "cyan",
    "interrupted": "magenta",
    "failed": "red",
}


def pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def frac(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )


def rounds_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """The rounds so far; lottery runs with a control add its accuracy, benchmarks the latency."""
    control = any(r.get("control_accuracy") is not None for r in rows)
    speed = any(r.get("latency_ms_p50") is not None for r in rows)
    table = _table(title)
    columns = [
        ("round", "right"),
        ("step", "right"),
        ("target", "right"),
        ("sparsity", "right"),
        ("nonzero", "right"),
        ("acc %", "right"),
        ("drop", "right"),
    ]
    columns += [("ctrl %", "right")] if control else []
    columns += [("ms p50", "right")] if speed else []
    columns += [("decision", "left"), ("time", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        status = r.get("status") or "running"
        drop = r.get("drop")
        cells = [
            f"{r['round']}.{r['attempt']}",
            frac(r.get("step"), 1),
            frac(r.get("target_sparsity"), 1),
            frac(r.get("sparsity")),
            "—" if r.get("params") is None else f"{r['params']:,}",
            pct(r.get("val_accuracy")),
            "—" if drop is None else f"{drop:+.2f}",
        ]
        cells += [pct(r.get("control_accuracy"))] if control else []
        cells += [pct(r.get("latency_ms_p50"))] if speed else []
        table.add_row(
            *cells,
            Text(status.replace("_", " "), style=DECISION_STYLE.get(status, "")),
            "—" if r.get("duration_s") is None else f"{r['duration_s']:.1f}s",
        )
    return table


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = _table("runs")
    for name in ("run", "status", "rounds", "sparsity", "accuracy", "baseline", "disk", "updated"):
        table.add_column(name, justify="left" if name in ("run", "status", "updated") else "right")
    for r in runs:
        table.add_row(
            r["run"],
            Text(r["status"], style={"finished": "green", "failed": "red"}.get(r["status"], "")),
            str(r["rounds"]),
            frac(r["sparsity"]),
            pct(r["val_accuracy"]),
            pct(r["baseline_accuracy"]),
            _size(r.get("disk_bytes") or 0),
            (r["updated_at"] or "")[5:16].replace("T", " "),
        )
    return table


def history_view(doc: dict[str, Any]) -> Group:
    base = doc["baseline_accuracy"]
    head = Text.assemble(
        ("run ", "dim"),
        (doc["run"], "bold"),
        ("  status ", "dim"),
        doc["status"],
        ("  baseline ", "dim"),
        f"{pct(base)}%",
        ("  dense prunable weights ", "dim"),
        f"{doc['baseline_params'] or 0:,}",
    )
    parts: list[Any] = [head, rounds_table(doc["rounds"])]
    accepted = [r["val_accuracy"] for r in doc["rounds"] if r["status"] == "accepted"]
    if len(accepted) > 1:
        shown = accepted[-60:]
        label = "accuracy by accepted round" + (
            f" (last {len(shown)})" if len(shown) < len(accepted) else ""
        )
        parts.append(
            Text.assemble(
                (f"{label}  ", "dim"),
                sparkline(shown),
                ("  ", ""),
                f"{min(shown):.2f}–{max(shown):.2f}%",
            )
        )
    if doc.get("reason"):
        parts.append(Text(doc["reason"], style="dim"))
    return Group(*parts)


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the smallest and the largest."""
    blocks = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(blocks[min(7, int((v - lo) / span * 7 + 0.5))] for v in values)


def compare_table(docs: list[dict[str, Any]]) -> Table:
    table = _table("compare")
    table.add_column("")
    for d in docs:
        table.add_column(d["run"], justify="right")
    rows = [
        ("status", lambda d: d["status"]),
        ("model", lambda d: str(d["model"])),
        ("baseline accuracy", lambda d: pct(d["baseline_accuracy"])),
        ("final sparsity", lambda d: frac(d["sparsity"])),
        ("final accuracy", lambda d: pct(d["val_accuracy"])),
        ("control accuracy", lambda d: pct(d["control_accuracy"])),
        ("non-zero weights", lambda d: f"{d['params'] or 0:,}"),
        ("latency p50 ms", lambda d: pct(d["latency_ms_p50"])),
        ("accepted rounds", lambda d: str(d["accepted_rounds"])),
        ("attempts (rolled back)", lambda d: f"{d['attempts']} ({d['rolled_back']})"),
        ("time in rounds", lambda d: f"{d['duration_s']:.0f}s"),
        ("ended", lambda d: d["reason"] or "—"),
    ]
    for label, cell in rows:
        table.add_row(label, *[cell(d) for d in docs])
    return table


def layers_table(doc: dict[str, Any]) -> Table:
    table = _table(f"{doc['run']} round {doc['round']}")
    for name in ("layer", "params", "nonzero", "sparsity", ""):
        table.add_column(name, justify="left" if name in ("layer", "") else "right")
    for r in doc["layers"]:
        bar = "█" * round(r["sparsity"] * 20)
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
    table = _table("per layer")
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
    table = _table("status")
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
