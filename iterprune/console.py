"""Everything the user sees in a terminal: the live dashboard, plain log lines, and tables.

The only module that imports Rich. A live display is used only when the console is interactive:
Rich's ``Live`` without a terminal prints nothing until it exits, which for a run of days is useless,
so CI and ``> run.log`` get one timestamped line per event instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

DECISION_STYLE = {"accepted": "green", "rolled_back": "yellow", "running": "cyan", "failed": "red"}


def make_console(**kwargs: Any) -> Console:
    """A console; without a terminal (a pipe, a file) tables get 120 columns instead of Rich's 80."""
    console = Console(**kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = Console(width=120, **kwargs)
    return console


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _frac(value: float | None, digits: int = 2) -> str:
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
            _frac(r.get("step"), 1),
            _frac(r.get("target_sparsity"), 1),
            _frac(r.get("sparsity")),
            "—" if r.get("params") is None else f"{r['params']:,}",
            _pct(r.get("val_accuracy")),
            "—" if drop is None else f"{drop:+.2f}",
        ]
        cells += [_pct(r.get("control_accuracy"))] if control else []
        cells += [_pct(r.get("latency_ms_p50"))] if speed else []
        table.add_row(
            *cells,
            Text(status.replace("_", " "), style=DECISION_STYLE.get(status, "")),
            "—" if r.get("duration_s") is None else f"{r['duration_s']:.1f}s",
        )
    return table


def _header(info: dict[str, Any]) -> Panel:
    base = info.get("baseline_accuracy")
    text = Text.assemble(
        ("run ", "dim"),
        (str(info.get("run")), "bold"),
        ("   model ", "dim"),
        str(info.get("model")),
        ("   method ", "dim"),
        str(info.get("method")),
        ("   device ", "dim"),
        str(info.get("device")),
        ("\nbaseline ", "dim"),
        f"{_pct(base)}%" if base is not None else "measuring…",
        ("   target ", "dim"),
        _frac(info.get("target_sparsity")),
        ("   budget ", "dim"),
        f"{info.get('max_drop')} points",
        ("   prunable weights ", "dim"),
        f"{info.get('params', 0):,}",
    )
    return Panel(text, title="iterprune", title_align="left")


class _Dashboard:
    """The live view: header, the last rounds, and a bar for the current phase."""

    def __init__(self, progress: Progress) -> None:
        self.info: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.progress = progress
        self.footer = Text("")

    def __rich__(self) -> Group:
        return Group(_header(self.info), rounds_table(self.rows[-15:]), self.progress, self.footer)


class LiveReporter:
    """Reporter for a terminal: redraws in place."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("starting", total=1)
        self.view = _Dashboard(self.progress)
        self.live = Live(self.view, console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveReporter:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def run_started(self, info: dict[str, Any]) -> None:
        self.view.info = info

    def phase(self, name: str, total: int, description: str) -> None:
        self.progress.reset(self.task, total=max(total, 1), description=description)

    def advance(self, done: float) -> None:
        self.progress.update(self.task, completed=done)

    def round_done(self, row: dict[str, Any]) -> None:
        self.view.rows.append(row)

    def event(self, level: str, kind: str, message: str) -> None:
        if level != "info" or kind in ("baseline", "resume", "finished"):
            self.live.console.print(f"[dim]{_now()}[/] {message}")

    def run_done(self, status: str, reason: str) -> None:
        self.progress.update(self.task, description=f"{status}: {reason}", completed=1, total=1)


class PlainReporter:
    """Reporter for logs and pipes: one timestamped line per event, nothing redrawn."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, message: str) -> None:
        self.console.print(f"{_now()} {message}", markup=False, highlight=False, soft_wrap=True)

    def run_started(self, info: dict[str, Any]) -> None:
        base = info.get("baseline_accuracy")
        self._line(
            f"run {info['run']}: model {info['model']}, {info['params']:,} prunable weights, "
            f"method {info['method']}, target {_frac(info['target_sparsity'])}, budget "
            f"{info['max_drop']} points, device {info['device']}"
            + (f", baseline {base:.2f}%" if base is not None else "")
        )

    def phase(self, name: str, total: int, description: str) -> None:
        if name == "pretrain":
            self._line(description)

    def advance(self, done: float) -> None:
        pass

    def round_done(self, row: dict[str, Any]) -> None:
        self._line(
            f"round {row['round']}.{row['attempt']} {row['status'].replace('_', ' ')}: "
            f"step {_frac(row['step'])}, sparsity {_frac(row.get('sparsity'))}, accuracy "
            f"{_pct(row.get('val_accuracy'))}% (drop {row.get('drop', 0):+.2f})"
            + (
                f", control {row['control_accuracy']:.2f}%"
                if row.get("control_accuracy") is not None
                else ""
            )
            + (f", {row['latency_ms_p50']:.2f} ms" if row.get("latency_ms_p50") is not None else "")
            + f", {row.get('duration_s', 0):.1f}s"
        )

    def event(self, level: str, kind: str, message: str) -> None:
        if kind not in ("accepted", "rolled_back"):
            self._line(f"{level.upper() + ': ' if level != 'info' else ''}{message}")

    def run_done(self, status: str, reason: str) -> None:
        self._line(f"{status}: {reason}")


def reporter_for(console: Console) -> LiveReporter | PlainReporter:
    return LiveReporter(console) if console.is_interactive else PlainReporter(console)


def _now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


# --- tables for the inspection commands --------------------------------------------------------


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = _table("runs")
    for name in ("run", "status", "rounds", "sparsity", "accuracy", "baseline", "disk", "updated"):
        table.add_column(name, justify="left" if name in ("run", "status", "updated") else "right")
    for r in runs:
        table.add_row(
            r["run"],
            Text(r["status"], style={"finished": "green", "failed": "red"}.get(r["status"], "")),
            str(r["rounds"]),
            _frac(r["sparsity"]),
            _pct(r["val_accuracy"]),
            _pct(r["baseline_accuracy"]),
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
        f"{_pct(base)}%",
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
        ("baseline accuracy", lambda d: _pct(d["baseline_accuracy"])),
        ("final sparsity", lambda d: _frac(d["sparsity"])),
        ("final accuracy", lambda d: _pct(d["val_accuracy"])),
        ("control accuracy", lambda d: _pct(d["control_accuracy"])),
        ("non-zero weights", lambda d: f"{d['params'] or 0:,}"),
        ("latency p50 ms", lambda d: _pct(d["latency_ms_p50"])),
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
        table.add_row(
            r["layer"], f"{r['params']:,}", f"{r['nonzero']:,}", _frac(r["sparsity"]), bar
        )
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
            _frac(r["near_zero"]),
        )
    return Group(head, table)


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
