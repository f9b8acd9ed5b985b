"""What the runner tells whoever watches it: a small protocol, so the loop never knows who listens.

The console implements it with Rich; tests use a recording fake; :class:`NullReporter` ignores all.
"""

from __future__ import annotations

from typing import Any, Protocol


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
