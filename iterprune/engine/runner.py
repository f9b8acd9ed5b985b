"""The rounds of a run: decide -> prune -> fine-tune -> judge -> commit, one attempt per step.

Each call of :meth:`Runner.step` does one attempt and commits its outcome before returning, so a
relaunch continues from the database: accepted rounds are never redone, and an interrupted attempt
continues from its mid-round checkpoint or is redone from its own start, with the same seeds. What
happens next is decided by ``decisions.py`` (pure functions); the runner carries it out. After a
run is created, the runner is the only module that changes its state in the store.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iterprune.core import decisions, pruning
from iterprune.engine import attempts, baseline, evaluation, orders, resumption
from iterprune.engine.reporter import Narrator, NullReporter, Reporter, outcome_text, recovery_note
from iterprune.engine.workbench import Workbench
from iterprune.errors import UnknownRun
from iterprune.schedule.specs import WhenSpec
from iterprune.state.runs import load_schedule
from iterprune.state.snapshots import Snapshots
from iterprune.state.store import Store, now

State = dict[str, torch.Tensor]


class Runner:
    """Drives one run through its rounds: :meth:`prepare`, then :meth:`step` until it is False.

    ``stop`` (set by signals, ``iterprune stop``, a lost lease) ends the current attempt after its
    batch with a mid-round checkpoint; ``pause`` (the time window closed) does the same and the
    attempt continues when the window opens.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        reporter: Reporter | None = None,
        ranks: orders.Ranks | None = None,
    ) -> None:
        self.store, self.run_id = store, run_id
        self.schedule = load_schedule(store, run_id)
        self.rules: decisions.Rules | None = None  # set by prepare(), once the baseline is known
        self.reporter = reporter or NullReporter()
        self.narrator = Narrator(store, run_id, self.reporter)
        self.ranks = ranks or orders.Ranks()
        self.stop, self.pause = threading.Event(), threading.Event()
        self.snapshots = Snapshots(store, run_id, self._warn)
        self.bench: Workbench | None = None  # set up by prepare(), with self.attempts
        self.attempts: attempts.Attempts | None = None
        self.accepted: attempts.Accepted | None = None
        self.rewind: State | None = None  # lottery mode's rewind weights
        self.dense: evaluation.Reference | None = None  # its answers: each attempt's pair
        self.total = 0  # prunable weights of the dense model

    @property
    def model(self) -> nn.Module:
        assert self.bench is not None
        return self.bench.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        assert self.bench is not None
        return self.bench.optimizer

    @property
    def mask(self) -> pruning.Mask | None:
        """The current (or last) attempt's mask."""
        return self.attempts.mask if self.attempts is not None else None

    # --- what the daemon uses ---------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.store.state_dir

    @property
    def when(self) -> WhenSpec:
        return self.schedule.when

    @property
    def leads_ranks(self) -> bool:
        return self.ranks.group is not None

    def prepare(self) -> None:
        """Build the workbench and load (or create) the last accepted state."""
        row = self._row()
        self.bench = Workbench(self.schedule, int(row["num_threads"]), self.ranks.group)
        flags = (self.stop, self.pause)
        self.attempts = attempts.Attempts(
            self.bench, self.ranks, self.narrator, self.snapshots, flags, self._set_phase
        )
        self.store.update_run(self.run_id, status="running", error=None)
        for warning in self.bench.warnings:
            self._warn("pattern", warning)
        self.total = row["baseline_params"] or sum(p.numel() for p in self.bench.params.values())
        self.reporter.run_started(self._info())
        fresh = row["baseline_accuracy"] is None
        if fresh:
            begun = baseline.start(self.bench, self.snapshots, self.narrator, self.ranks, self.stop)
        else:
            begun = resumption.resume(self.bench, self.snapshots, self.narrator, self.ranks)
        if begun is not None:  # None: stopped during pretraining, nothing to keep
            self.accepted, self.rewind = begun
            self.ranks.teach(self.bench, self.accepted, lambda: self.snapshots.newest_valid(0)[1])
            row = self._row()
            self.dense = evaluation.Reference.from_row(row)
            self.rules = decisions.Rules.of(self.schedule, row["baseline_accuracy"])
            if fresh:
                self.reporter.run_started(self._info())  # now with the baseline
        for path in self.snapshots.sweep():
            self.narrator.event("info", "sweep", f"removed unreferenced file {path.name}")

    def pin_threads(self) -> None:
        if self.bench is not None:
            self.bench.pin_threads()

    def progress(self) -> str:
        return self.narrator.progress_text()

    def waiting(self, opens: dt.datetime, expression: str) -> None:
        """Outside the time window: paused until ``opens``."""
        self.store.update_run(
            self.run_id, status="paused", phase="waiting", next_window_at=opens.isoformat()
        )
        said = f"outside the time window '{expression}'; waiting until {opens:%Y-%m-%d %H:%M %Z}"
        self.narrator.event("info", "waiting", said)

    def event(self, level: str, kind: str, message: str) -> None:
        self.narrator.event(level, kind, message)

    def window_open(self) -> None:
        self.pause.clear()
        self.store.update_run(self.run_id, status="running", next_window_at=None)

    def close(self, error: str | None = None) -> str:
        """Record how serving ended — failed (with ``error``), finished or stopped — and return
        that status."""
        run = self.run_id
        if error is not None:
            self.store.fail_run(run, error)
            self.reporter.run_done("failed", error)
            return "failed"
        if self._row()["status"] == "finished":
            self.store.update_run(run, pid=None, next_window_at=None)
            return "finished"
        self.store.update_run(run, status="stopped", pid=None, next_window_at=None)
        self.narrator.event("info", "stopped", f"stopped; continue with: iterprune resume {run}")
        self.reporter.run_done("stopped", f"continue with: iterprune resume {run}")
        return "stopped"

    # --- the rounds ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one attempt; return False when the run has finished (or was asked to stop)."""
        if self.stop.is_set() or self._row()["status"] in ("finished", "failed"):
            return False
        position = self._position()
        plan = decisions.next_attempt(self.rules, position)
        if isinstance(plan, decisions.Finish):
            return self._finish(plan.reason)
        started = time.perf_counter()
        begun = {"step": plan.step, "target_sparsity": plan.target_sparsity}
        self.store.begin_attempt(self.run_id, plan.round, plan.attempt, begun)
        target = decisions.target_alive(self.total, self.rules.target_sparsity)
        done = self.attempts.run(plan, self.accepted.mask, target, self.rewind)
        verdict, fields = self._judge(position, plan, done)
        if isinstance(verdict, decisions.Recover):
            first = {k: fields[k] for k in ("drop", "drop_low", "drop_high", "val_accuracy")}
            done = self.attempts.recover(plan, done, verdict.epochs, first)
            verdict, fields = self._judge(position, plan, done)
        if verdict is None or isinstance(verdict, decisions.Recover):  # a recovery never recovers
            return self._interrupted(plan)
        fields.update(self.attempts.control(plan, done.mask), finished_at=now())
        self.attempts.verify(plan, done.mask)
        layers = self.bench.layer_stats()
        fields["duration_s"] = time.perf_counter() - started
        if isinstance(verdict, decisions.Accept):
            return self._accept(plan, verdict, done, fields, layers)
        return self._roll_back(plan, verdict, done, fields, layers)

    def _judge(
        self, position: decisions.Position, plan: decisions.Attempt, done: attempts.Done
    ) -> tuple[decisions.Accept | decisions.Recover | decisions.RollBack | None, dict]:
        """Measure the attempt and decide; (None, {}) when a stop or the window ended it."""
        if self.attempts.interrupted():
            return None, {}
        fields = self.attempts.measure(plan, done, self.dense, self.total)
        scored = math.isfinite(fields["drop"])  # a NaN score fails the attempt as a NaN loss does
        outcome = decisions.Outcome(
            drop=fields["drop"] if scored else 0.0,
            finite=done.result.finite and scored,
            drop_high=fields["drop_high"],
            recovered=done.first is not None,
        )
        return decisions.judge(self.rules, position, plan, outcome), fields

    def _position(self) -> decisions.Position:
        assert self.accepted is not None and self.bench is not None
        row, following = self._row(), self.accepted.round + 1
        rolled_back = sum(
            1
            for r in self.store.rounds(self.run_id)
            if r["round"] == following and r["status"] == "rolled_back"
        )
        return decisions.Position(
            accepted_round=self.accepted.round,
            step=float(row["step"]),
            alive=self.bench.alive(self.accepted.mask),
            total=self.total,
            rolled_back=rolled_back,
            streak=row["streak"] or 0,
            room=self.bench.room(self.accepted.mask),
            pattern_room=self.bench.pattern_room(self.accepted.mask),
        )

    def _accept(
        self,
        plan: decisions.Attempt,
        verdict: decisions.Accept,
        done: attempts.Done,
        fields: dict,
        layers: list,
    ) -> bool:
        bench, r, a = self.bench, plan.round, plan.attempt
        assert bench is not None
        fields.update(baseline.measure_latency(bench, self.narrator), status="accepted")
        if bench.test_loader is not None:  # reported, never decides
            fields["test_accuracy"] = self.ranks.evaluate(bench, "test").value
        if done.first:
            fields["note"] = recovery_note(done.first, "", self.rules.decimals)
        checkpoint = self.snapshots.write_accepted(r, a, bench.state(done.mask))
        run_fields = {
            "accepted_round": r,
            "phase": "prune",
            "sparsity": fields["sparsity"],
            "val_accuracy": fields["val_accuracy"],
            "test_accuracy": fields.get("test_accuracy"),
            "step": verdict.next_step,
            "streak": verdict.streak,
        }
        said = outcome_text(fields, bench.metric, self.rules.decimals)
        event = ("info", "accepted", f"round {r}.{a} accepted: {said}")
        self.snapshots.forget(
            self.store.finish_attempt(
                self.run_id, r, a, fields, layers, run_fields, checkpoint, event
            )
        )
        self.accepted = attempts.Accepted.of(r, bench, done.mask)
        self.ranks.teach(bench, self.accepted, lambda: {})  # teacher: last follows the round
        if self.schedule.checkpoints.keep == "last":
            self.snapshots.forget(self.store.drop_superseded(self.run_id))
        self.narrator.round_done(r, a, fields, layers)
        return True

    def _roll_back(
        self,
        plan: decisions.Attempt,
        verdict: decisions.RollBack,
        done: attempts.Done,
        fields: dict,
        layers: list,
    ) -> bool:
        r, a = plan.round, plan.attempt
        why = verdict.why
        note = recovery_note(done.first, why, self.rules.decimals) if done.first else why
        fields.update(status="rolled_back", note=note)
        self._restore()
        run_fields: dict[str, Any] = {"step": verdict.next_step, "streak": 0, "phase": "prune"}
        if verdict.finish:
            run_fields.update(status="finished", reason=verdict.finish, phase="done")
        message = f"round {r}.{a} rolled back ({note}); next step {verdict.next_step:.4f}"
        event = ("warning", "rolled_back", message)
        self.snapshots.forget(
            self.store.finish_attempt(self.run_id, r, a, fields, layers, run_fields, event=event)
        )
        self.narrator.round_done(r, a, fields, layers)
        if verdict.finish:
            self.narrator.event("info", "finished", verdict.finish)
            self.reporter.run_done("finished", verdict.finish)
            return False
        self.ranks.sync(self.bench, self.accepted.mask)  # every rank back to the accepted state
        return True

    def _interrupted(self, plan: decisions.Attempt) -> bool:
        """A stop or a closed window ended the attempt (its mid-round checkpoint is written)."""
        self.store.interrupt_attempt(self.run_id, plan.round, plan.attempt)
        self._restore()
        if self.stop.is_set():
            return False
        self.narrator.event(
            "info",
            "paused",
            f"the time window closed: round {plan.round}.{plan.attempt} checkpointed, to be "
            "continued when it opens",
        )
        return True

    def _restore(self) -> None:
        """Put back the last accepted weights, mask and optimizer state, bit for bit."""
        a = self.accepted
        assert a is not None and self.bench is not None
        self.bench.restore(a.model, a.architecture, a.optimizer)

    def _finish(self, reason: str) -> bool:
        self.store.update_run(self.run_id, status="finished", reason=reason, phase="done")
        self.narrator.event("info", "finished", reason)
        self.reporter.run_done("finished", reason)
        return False

    # --- small helpers ----------------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        row = self.store.run(self.run_id)
        if row is None:
            raise UnknownRun(f"no run named '{self.run_id}'")
        return row

    def _info(self) -> dict[str, Any]:
        row, s = self._row(), self.schedule
        device = str(self.bench.device) if self.bench else "?"
        metric = self.bench.metric if self.bench else s.task.metric  # a factory's: its own
        return {
            "run": self.run_id,
            "model": row["model"],
            "baseline_accuracy": row["baseline_accuracy"],
            "baseline_test_accuracy": row["baseline_test_accuracy"],
            "target_sparsity": s.prune.target_sparsity,
            "max_drop": self.rules.max_drop if self.rules else s.validate.max_drop,
            "budget": s.validate.describe(metric["name"]),
            "metric": metric,
            "method": s.prune.method,
            "params": self.total,
            "device": device + (f" × {self.ranks.world} ranks" if self.ranks.world > 1 else ""),
        }

    def _set_phase(self, name: str) -> None:
        self.store.update_run(self.run_id, phase=name, heartbeat_at=time.time())

    def _warn(self, kind: str, message: str) -> None:
        self.narrator.event("warning", kind, message)
