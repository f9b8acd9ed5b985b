"""What the runner tells whoever watches it: a small protocol, so the loop never knows who listens.

The console implements it with Rich; tests use a recording fake; :class:`NullReporter` ignores all.
:class:`Narrator` is the runner's side: it says each thing once, to the run's event log and to the
reporter, and keeps the progress line that ``status`` shows.
"""

from __future__ import annotations

from typing import Any, Protocol

from iterprune.state import faults


class Reporter(Protocol):
    def run_started(self, info: dict[str, Any]) -> None:
        """Run id, model, baseline accuracy, target; called again when the baseline is known."""

    def phase(self, name: str, total: int, description: str) -> None:
        """A new phase (pretrain, prune, finetune, validate) with ``total`` units of work."""

    def advance(self, done: int) -> None:
        """``done`` units of the current phase are complete."""

    def round_done(self, row: dict[str, Any]) -> None:
        """An attempt finished: a row shaped like ``history --json``'s rounds."""

    def event(self, level: str, kind: str, message: str) -> None:
        """Something worth a line in the log."""

    def run_done(self, status: str, reason: str) -> None:
        """The run ended (finished, stopped, failed)."""


class Tee:
    """Tells several reporters the same things."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> None:
            for r in self.reporters:
                getattr(r, name)(*args)

        return call


class NullReporter:
    def run_started(self, info: dict[str, Any]) -> None:
        pass

    def phase(self, name: str, total: int, description: str) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def round_done(self, row: dict[str, Any]) -> None:
        pass

    def event(self, level: str, kind: str, message: str) -> None:
        pass

    def run_done(self, status: str, reason: str) -> None:
        pass


class Narrator:
    """What a run says: events (into the run's event log and to the reporter), phases and batch
    progress. It remembers where the current phase is, for ``status``, and passes crash tests'
    fault points (a phase's name, and ``<phase>_batch`` after each batch)."""

    def __init__(self, store: Any, run_id: str, reporter: Reporter) -> None:
        self.store = store
        self.run_id = run_id
        self.reporter = reporter
        self.phase_name = "pretrain"
        self.batches = 0  # batches trained in the current phase
        self.at = (0, 0, 0)  # (epoch, batch, batches per epoch)

    def event(self, level: str, kind: str, message: str) -> None:
        self.store.add_event(self.run_id, level, kind, message)
        self.reporter.event(level, kind, message)

    def phase(self, name: str, total: int, description: str) -> None:
        self.phase_name = name
        faults.point(name)
        self.reporter.phase(name, total, description)

    def batch(self, epoch: int, batch: int, batches: int) -> None:
        """A training progress callback (see ``training.Progress``)."""
        self.batches += 1
        self.at = (epoch, batch, batches)
        faults.point(f"{self.phase_name}_batch")
        self.reporter.advance(epoch + (batch / batches if batches else 1.0))

    def round_done(self, round_: int, attempt: int, fields: dict, layers: list) -> None:
        self.reporter.round_done({"round": round_, "attempt": attempt, **fields, "layers": layers})

    def progress_text(self) -> str:
        """Where the current phase is, for ``status`` (the heartbeat stores it)."""
        epoch, batch, batches = self.at
        if self.phase_name in ("pretrain", "finetune", "control"):
            return f"{self.phase_name} epoch {epoch + 1}, batch {batch}/{batches or '?'}"
        return self.phase_name


def outcome_text(fields: dict[str, Any], metric: dict[str, Any], d: int) -> str:
    """An attempt's result in words: sparsity, the metric, the drop and its interval, test —
    ``d`` decimals (:func:`decisions.decimals` of the budget)."""
    test, unit = fields.get("test_accuracy"), "%" if metric["name"] == "accuracy" else ""
    return (
        f"sparsity {fields['sparsity']:.2%}, {metric['name']} {fields['val_accuracy']:.{d}f}{unit}"
        f" (drop {fields['drop']:+.{d}f}, interval {fields['drop_low']:+.{d}f} to "
        f"{fields['drop_high']:+.{d}f})"
        + (f", test {test:.{d}f}{unit}" if test is not None else "")
    )


def recovery_note(first: dict[str, Any] | None, why: str, d: int) -> str:
    """What a recovery did, from its first judgement (``why``: why the attempt still failed)."""
    first = first or {}
    ends = f"{first['drop_low']:+.{d}f} to {first['drop_high']:+.{d}f}"
    before = f"drop {first['drop']:+.{d}f} ({ends})"
    recovered = f"recovered with {first.get('recover_epochs')} more epoch(s) from {before}"
    return f"{why}; {recovered}" if why else recovered
