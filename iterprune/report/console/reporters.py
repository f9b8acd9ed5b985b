"""What a run shows while it is served: the live dashboard in a terminal, one timestamped line per
event otherwise (Rich's ``Live`` without a terminal prints nothing until it exits, which for a run
of days is useless, so CI and ``> run.log`` get plain lines)."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from iterprune.report.console.numbers import baseline, decimals, frac, measure, pct
from iterprune.report.console.tables import rounds_table
from iterprune.state import diagnosis, faults


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader of the output went away (``iterprune start x.yaml | head``). Rich exits
        the program here (``SystemExit(1)``), which would end a run at its next line; instead
        the console falls silent, stdout goes to /dev/null (Python's exit-time flush must not
        fail too), and the error is raised for whoever printed: a run's reporter goes on
        without its output, a reading command exits 0."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def make_console(**kwargs: Any) -> Console:
    """A console; without a terminal (a pipe, a file) tables get 120 columns instead of Rich's 80."""
    console = _Console(**kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = _Console(width=120, **kwargs)
    return console


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A bar on stderr (so ``--json`` output stays clean) that a long computation advances by
    calling what this yields; nothing without a terminal."""
    err = Console(stderr=True)
    if not err.is_terminal:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def emit(doc: Any, render: Callable[[Any], Any], as_json: bool) -> None:
    """A command's document: as JSON on stdout and nothing else, or rendered for a person."""
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        make_console().print(render(doc))


def say(*lines: str, stderr: bool = False) -> None:
    """Plain lines of text (no markup, no highlighting, never wrapped)."""
    out = sys.stderr if stderr else sys.stdout
    for line in lines:
        print(line, file=out, flush=True)


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
        baseline(info) if base is not None else "measuring…",
        ("   target ", "dim"),
        frac(info.get("target_sparsity")),
        ("   budget ", "dim"),
        str(info.get("budget") or f"{info.get('max_drop')} points"),
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
        rounds = rounds_table(
            self.rows[-15:], metric=self.info.get("metric"), d=decimals(self.info)
        )
        return Group(_header(self.info), rounds, self.progress, self.footer)


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
        self.measure = measure(None)  # the run's metric, once run_started says it
        self.d = 2  # and the decimals its numbers need beside its budget
        self.lost: OSError | None = None  # the output could not be written (a full disk)

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, message: str) -> None:
        """One line; when the log (or pipe) cannot take it, the run goes on without it: every
        event is also in the state database (``iterprune logs RUN``)."""
        if self.lost is not None:
            return
        try:
            faults.point("log_write")
            self.console.print(f"{_now()} {message}", markup=False, highlight=False, soft_wrap=True)
        except OSError as exc:
            self.lost = exc
            why = diagnosis.cause(exc)
            with contextlib.suppress(OSError):
                print(
                    f"warning: the run's output cannot be written ({why}); the run goes "
                    "on, and its events are in the state database: iterprune logs RUN",
                    file=sys.stderr,
                    flush=True,
                )

    def run_started(self, info: dict[str, Any]) -> None:
        self.measure, self.d = measure(info), decimals(info)
        base = info.get("baseline_accuracy")
        self._line(
            f"run {info['run']}: model {info['model']}, {info['params']:,} prunable weights, "
            f"method {info['method']}, target {frac(info['target_sparsity'])}, budget "
            f"{info.get('budget') or str(info['max_drop']) + ' points'}, device {info['device']}"
            + (f", baseline {baseline(info)}" if base is not None else "")
        )

    def phase(self, name: str, total: int, description: str) -> None:
        if name == "pretrain":
            self._line(description)

    def advance(self, done: float) -> None:
        pass

    def round_done(self, row: dict[str, Any]) -> None:
        (name, suffix, _), d = self.measure, self.d
        self._line(
            f"round {row['round']}.{row['attempt']} {row['status'].replace('_', ' ')}: "
            f"step {frac(row['step'])}, sparsity {frac(row.get('sparsity'))}, {name} "
            f"{pct(row.get('val_accuracy'), d)}{suffix} (drop {row.get('drop', 0):+.{d}f}"
            + _optional(
                row, "drop_low", lambda _: f" [{row['drop_low']:+.{d}f}, {row['drop_high']:+.{d}f}]"
            )
            + ")"
            + _optional(row, "test_accuracy", lambda v: f", test {v:.{d}f}{suffix}")
            + _optional(row, "control_accuracy", lambda v: f", control {v:.{d}f}{suffix}")
            + _optional(row, "control_std", lambda v: f" ± {v:.{d}f} over {row['control_n']} seeds")
            + _optional(row, "latency_ms_p50", lambda v: f", {v:.2f} ms")
            + f", {row.get('duration_s') or 0:.1f}s"
            + (f" ({row['note']})" if row.get("recovered") and row.get("note") else "")
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


def _optional(row: dict[str, Any], key: str, text: Any) -> str:
    return text(row[key]) if row.get(key) is not None else ""
