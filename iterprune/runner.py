"""The round state machine: prune -> fine-tune -> validate -> accept | roll back and retry smaller.

Each call of :meth:`Runner.step` does one attempt and commits its outcome before returning, so a
relaunch continues from the database: accepted rounds are never redone, and an interrupted attempt
is redone from its own start with the same seeds. Nothing but the runner talks to the store.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iterprune import checkpoints, faults, paths, pruning, rng, sources, training
from iterprune.errors import RunConflict, UnknownRun
from iterprune.reporter import NullReporter, Reporter
from iterprune.schedule import Schedule, differences, from_canonical
from iterprune.store import Store, dumps, now


@dataclass
class Accepted:
    """The last accepted state, kept in memory so a rollback restores it without disk reads."""

    round: int
    model: dict[str, torch.Tensor]
    mask: pruning.Mask
    optimizer: dict[str, Any] | None


def open_run(store: Store, schedule: Schedule, schedule_path: str, fresh: bool = False) -> str:
    """The run id for ``schedule``: a new run, or the existing one when the schedule is unchanged."""
    run_id = schedule.name
    existing = store.run(run_id)
    if existing is not None and fresh:
        n = 2
        while store.run(f"{schedule.name}-{n}") is not None:
            n += 1
        run_id = f"{schedule.name}-{n}"
        existing = None
    if existing is None:
        store.create_run(
            {
                "run": run_id, "status": "running", "phase": "pretrain", "round": 0, "attempt": 0,
                "step": schedule.prune.step, "schedule": dumps({**schedule.canonical(), "name": run_id}),
                "fingerprint": schedule.fingerprint(), "schedule_path": schedule_path,
                "base_dir": schedule.base_dir,
                "model": schedule.model.builtin or schedule.model.factory,
                "torch_version": torch.__version__,
                "num_threads": schedule.threads or torch.get_num_threads(),
            }
        )  # fmt: skip
        return run_id
    if existing["fingerprint"] != schedule.fingerprint():
        old = json.loads(existing["schedule"])
        changes = differences({**old, "name": schedule.name}, schedule.canonical())
        listing = "\n".join(f"  - {c}" for c in changes)
        raise RunConflict(
            f"run '{run_id}' exists and its schedule has changed:\n{listing}\n"
            f"Resume it with the original schedule (iterprune resume {run_id}), or start a new "
            f"run from the changed one with --fresh."
        )
    return run_id


def load_run_schedule(store: Store, run_id: str) -> Schedule:
    row = store.run(run_id)
    if row is None:
        raise UnknownRun(f"no run named '{run_id}' in {store.path}")
    return from_canonical(json.loads(row["schedule"]), row["base_dir"] or ".")


class Runner:
    """Drives one run through its rounds. Build it, then call :meth:`step` until it returns False."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        reporter: Reporter | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.schedule = load_run_schedule(store, run_id)
        self.reporter = reporter or NullReporter()
        self.stop = stop or threading.Event()
        self.state_dir = store.state_dir
        self.model: nn.Module | None = None
        self.accepted: Accepted | None = None
        self._phase_name = "pretrain"
        self._batches_done = 0
        self._last_mid = (0.0, 0)

    # --- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build model and data, pin threads, and load (or create) the last accepted state."""
        s = self.schedule
        row = self._row()
        torch.set_num_threads(int(row["num_threads"]))
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
        )
        self.store.update_run(self.run_id, status="running", error=None)
        self.model = sources.build_model(s.model, s.seed, s.base_dir).to(self.device)
        self.train_loader, self.val_loader = sources.build_loaders(s.data, s.seed, s.base_dir)
        self.params = pruning.prunable_parameters(self.model, s.prune.exclude)
        if not self.params:
            raise RunConflict(
                "the model has no prunable Conv or Linear weights (check prune.exclude)"
            )
        self.total = sum(p.numel() for p in self.params.values())
        self.optimizer = self._new_optimizer()
        self.reporter.run_started(self._info())
        if row["baseline_accuracy"] is None:
            self._pretrain()
        else:
            self._load_accepted()
        self._sweep()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        f = self.schedule.finetune
        assert self.model is not None
        return training.build_optimizer(
            f.optimizer, self.model.parameters(), f.lr, f.weight_decay, f.momentum
        )

    def _pretrain(self) -> None:
        s, model = self.schedule, self.model
        assert model is not None
        if s.pretrain.epochs and not s.model.weights:
            rng.seed_everything(rng.derive_seed(s.seed, 0, 0), (self.train_loader,))
            self._phase(
                "pretrain",
                s.pretrain.epochs,
                f"pretraining dense model, {s.pretrain.epochs} epochs",
            )
            optimizer = torch.optim.Adam(model.parameters(), lr=s.pretrain.lr)
            result = training.train(
                model, self.train_loader, optimizer, s.pretrain.epochs, device=self.device,
                progress=self._epoch_progress, should_stop=self.stop.is_set,
            )  # fmt: skip
            if self.stop.is_set():
                return
            if not result.finite:
                raise RunConflict(f"pretraining diverged (loss {result.loss}); lower pretrain.lr")
        self._phase("validate", 1, "measuring the dense baseline")
        baseline = training.evaluate(model, self.val_loader, self.device)
        mask = pruning.dense_mask(self.params)
        written = self._save(0, 0, mask)
        layers = pruning.layer_stats(model, s.prune.exclude)
        self.store.record_baseline(
            self.run_id,
            {
                "baseline_accuracy": baseline,
                "baseline_params": self.total,
                "total_params": self.total,
                "val_accuracy": baseline,
                "sparsity": 0.0,
                "accepted_round": 0,
                "phase": "prune",
            },  # fmt: skip
            layers,
            {"round": 0, "attempt": 0, "kind": "dense", **written},
        )
        self.accepted = Accepted(0, _clone(model.state_dict()), mask, None)
        self._event(
            "info",
            "baseline",
            f"dense baseline accuracy {baseline:.2f}% on {self.total:,} prunable weights",
        )
        self.reporter.run_started(self._info())

    def _load_accepted(self) -> None:
        """Load the newest valid accepted checkpoint into the model and optimizer.

        A checkpoint that fails its sha256 check (or is missing) is never used: the run falls back
        to the newest older one that verifies, forgets the rounds after it (they are redone), and
        says so in the event log. With none valid, it stops with CheckpointCorrupt.
        """
        assert self.model is not None
        row = self._row()
        candidates = [c for c in reversed(self.store.checkpoints(self.run_id))
                      if c["kind"] != "mid" and c["round"] <= row["accepted_round"]]  # fmt: skip
        for ckpt in candidates:
            try:
                state = checkpoints.load(self.state_dir / ckpt["path"], ckpt["sha256"])
                break
            except checkpoints.CheckpointCorrupt as exc:
                self._event("warning", "corrupt", f"{exc}; trying an older checkpoint")
        else:
            raise checkpoints.CheckpointCorrupt(
                f"run '{self.run_id}' has no valid checkpoint left in {self.state_dir}; start it "
                f"again with: iterprune start SCHEDULE.yaml --fresh"
            )
        if ckpt["round"] != row["accepted_round"]:
            self._fall_back(ckpt["round"], row)
        self.model.load_state_dict(state["model"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.accepted = Accepted(ckpt["round"], _clone(self.model.state_dict()),
                                 state["mask"], copy.deepcopy(state["optimizer"]))  # fmt: skip
        self._event("info", "resume", f"resumed from round {ckpt['round']} ({ckpt['path']})")

    def _fall_back(self, round_: int, row: dict[str, Any]) -> None:
        kept = next((r for r in self.store.rounds(self.run_id)
                     if r["round"] == round_ and r["status"] == "accepted"), None)  # fmt: skip
        fields = {
            "step": kept["step"] if kept else self.schedule.prune.step,
            "sparsity": kept["sparsity"] if kept else 0.0,
            "val_accuracy": kept["val_accuracy"] if kept else row["baseline_accuracy"],
            "round": round_, "attempt": kept["attempt"] if kept else 0,
        }  # fmt: skip
        self._forget(self.store.rewind_to(self.run_id, round_, fields))
        self._event(
            "warning", "fallback",
            f"fell back to round {round_}: rounds {round_ + 1}..{row['accepted_round']} will be redone",
        )  # fmt: skip

    def _save(self, round_: int, attempt: int, mask: pruning.Mask) -> dict[str, Any]:
        assert self.model is not None
        path = paths.checkpoint_file(self.state_dir, self.run_id, round_, attempt)
        state = {
            "model": self.model.state_dict(),
            "mask": mask,
            "optimizer": self.optimizer.state_dict() if round_ else None,
        }
        written = checkpoints.save(state, path)
        return {"path": str(path.relative_to(self.state_dir)), "sha256": written.sha256,
                "bytes": written.bytes}  # fmt: skip

    def _save_mid(
        self, round_: int, attempt: int, mask: pruning.Mask, pos: training.Position
    ) -> None:
        """A mid-round checkpoint: everything needed to continue this attempt from ``pos``."""
        assert self.model is not None
        path = paths.mid_checkpoint_file(self.state_dir, self.run_id, round_, attempt, pos.count)
        state = {
            "model": self.model.state_dict(), "mask": mask, "optimizer": self.optimizer.state_dict(),
            "rng": rng.capture(), "position": dataclasses.asdict(pos),
        }  # fmt: skip
        written = checkpoints.save(state, path)
        row = {"path": str(path.relative_to(self.state_dir)), "sha256": written.sha256,
               "bytes": written.bytes}  # fmt: skip
        self._forget(self.store.replace_mid(self.run_id, round_, attempt, row))
        self._last_mid = (time.monotonic(), pos.count)

    def _mid_due(self) -> bool:
        when = self.schedule.when
        since, batches_then = self._last_mid
        if when.checkpoint_every_batches is not None:
            return self._batches_done - batches_then >= when.checkpoint_every_batches
        if when.checkpoint_every_s is not None:
            return time.monotonic() - since >= when.checkpoint_every_s
        return False

    def _load_mid(self, round_: int, attempt: int):
        """Continue an attempt from its mid-round checkpoint, if it has a valid one."""
        assert self.model is not None
        row = self.store.mid_checkpoint(self.run_id, round_, attempt)
        if row is None:
            return None
        try:
            state = checkpoints.load(self.state_dir / row["path"], row["sha256"])
        except checkpoints.CheckpointCorrupt as exc:
            self._event(
                "warning", "corrupt", f"{exc}; redoing round {round_}.{attempt} from its start"
            )
            self._forget(self.store.drop_mids(self.run_id, round_, attempt))
            return None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        position = training.Position(**state["position"])
        self._event(
            "info", "resume",
            f"continuing round {round_}.{attempt} at epoch {position.epoch + 1}, batch "
            f"{position.batch} (mid-round checkpoint {row['path']})",
        )  # fmt: skip
        return state["mask"], position, state["rng"]

    def _sweep(self) -> None:
        keep = {self.state_dir / c["path"] for c in self.store.checkpoints(self.run_id)}
        directory = paths.checkpoint_dir(self.state_dir, self.run_id)
        for p in checkpoints.sweep(directory, keep):
            self._event("info", "sweep", f"removed unreferenced file {p.name}")

    # --- the rounds ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one attempt; return False when the run has finished (or was asked to stop)."""
        if self.stop.is_set():
            return False
        s, row = self.schedule, self._row()
        if row["status"] in ("finished", "failed"):
            return False
        assert self.accepted is not None and self.model is not None
        mask = self.accepted.mask
        alive = pruning.count_alive(mask)
        if alive <= pruning.target_alive(self.total, s.prune.target_sparsity):
            return self._finish(f"target sparsity {s.prune.target_sparsity:.0%} reached")
        step = float(row["step"])
        if step < s.rollback.min_step - 1e-12:
            return self._finish(
                f"frontier reached: the next step ({step:.4f}) would be under rollback.min_step"
            )
        round_ = self.accepted.round + 1
        # attempts that ended in a rollback count; one that was interrupted is redone as it was
        attempt = 1 + sum(
            1 for r in self.store.rounds(self.run_id)
            if r["round"] == round_ and r["status"] == "rolled_back"
        )  # fmt: skip
        n_prune = pruning.amount_to_prune(alive, self.total, step, s.prune.target_sparsity)
        if n_prune == 0:
            return self._finish(f"frontier reached: a step of {step:.4f} removes no weight")
        target = 1 - (alive - n_prune) / self.total
        started = time.perf_counter()
        self.store.begin_attempt(
            self.run_id, round_, attempt, {"step": step, "target_sparsity": target}
        )
        resumed = self._load_mid(round_, attempt)
        if resumed is None:
            rng.seed_everything(rng.derive_seed(s.seed, round_, attempt), (self.train_loader,))
            self._phase(
                "prune", 1, f"round {round_}.{attempt}: pruning {step:.1%} of the remaining weights"
            )
            generator = torch.Generator().manual_seed(rng.derive_seed(s.seed, round_, attempt))
            new_mask = pruning.prune(self.params, mask, n_prune, s.prune.method, generator)
            pruning.check_sparsity(new_mask, alive - n_prune, s.prune.method)
            pruning.apply(self.params, new_mask)
            position, rng_state = None, None
        else:
            new_mask, position, rng_state = resumed

        self._set_phase("finetune")
        self._phase("finetune", s.finetune.epochs, f"round {round_}.{attempt}: fine-tuning")
        self._batches_done = position.count if position else 0
        self._last_mid = (time.monotonic(), self._batches_done)
        result = training.train(
            self.model, self.train_loader, self.optimizer, s.finetune.epochs,
            training.MaskEnforcer(self.params, new_mask), self.device, self._epoch_progress,
            self.stop.is_set, start=position,
            on_resumed=None if rng_state is None else lambda: rng.restore(rng_state),
            checkpoint=lambda pos: self._save_mid(round_, attempt, new_mask, pos),
            checkpoint_due=self._mid_due,
        )  # fmt: skip
        if self.stop.is_set():
            self.store.interrupt_attempt(self.run_id, round_, attempt)
            self._restore()
            return False
        self._set_phase("validate")
        self._phase("validate", 1, f"round {round_}.{attempt}: validating")
        accuracy = training.evaluate(self.model, self.val_loader, self.device)
        drop = float(row["baseline_accuracy"]) - accuracy
        achieved = pruning.sparsity(new_mask)
        fields = {
            "sparsity": achieved, "params": alive - n_prune, "val_accuracy": accuracy,
            "drop": drop, "loss": result.loss, "finished_at": now(),
        }  # fmt: skip
        layers = pruning.layer_stats(self.model, s.prune.exclude)
        if result.finite and drop <= s.validate.max_drop + 1e-9:
            written = self._save(round_, attempt, new_mask)
            fields.update(status="accepted", duration_s=time.perf_counter() - started)
            self._forget(self.store.finish_attempt(
                self.run_id, round_, attempt, fields, layers,
                {"accepted_round": round_, "sparsity": achieved, "val_accuracy": accuracy,
                 "phase": "prune"},
                checkpoint={"round": round_, "attempt": attempt, "kind": "accepted", **written},
                event=("info", "accepted", f"round {round_}.{attempt} accepted: sparsity "
                       f"{achieved:.2%}, accuracy {accuracy:.2f}% (drop {drop:+.2f})"),
            ))  # fmt: skip
            self.accepted = Accepted(round_, _clone(self.model.state_dict()), new_mask,
                                     copy.deepcopy(self.optimizer.state_dict()))  # fmt: skip
            if s.checkpoints.keep == "last":
                self._forget(self.store.drop_superseded(self.run_id))
            self._round_done(round_, attempt, step, target, fields)
            return True
        why = (
            "loss was not finite"
            if not result.finite
            else f"drop {drop:.2f} > {s.validate.max_drop}"
        )
        fields.update(status="rolled_back", duration_s=time.perf_counter() - started, note=why)
        return self._roll_back(round_, attempt, step, target, fields, layers)

    def _roll_back(
        self, round_: int, attempt: int, step: float, target: float, fields: dict, layers: list
    ) -> bool:
        s = self.schedule
        self._restore()
        new_step = step * s.rollback.shrink
        run_fields: dict[str, Any] = {"step": new_step, "phase": "prune"}
        ended = None
        if attempt > s.rollback.retries:
            ended = f"frontier reached: round {round_} failed {attempt} attempts"
        elif new_step < s.rollback.min_step - 1e-12:
            ended = (f"frontier reached: the next step ({new_step:.4f}) would be under "
                     f"rollback.min_step ({s.rollback.min_step})")  # fmt: skip
        if ended:
            run_fields.update(status="finished", reason=ended, phase="done")
        self._forget(self.store.finish_attempt(
            self.run_id, round_, attempt, fields, layers, run_fields,
            event=("warning", "rolled_back",
                   f"round {round_}.{attempt} rolled back ({fields['note']}); next step {new_step:.4f}"),
        ))  # fmt: skip
        self._round_done(round_, attempt, step, target, fields)
        if ended:
            self._event("info", "finished", ended)
            self.reporter.run_done("finished", ended)
            return False
        return True

    def _forget(self, files: list[str]) -> None:
        """Delete checkpoint files whose rows are already gone (a crash first leaves them to sweep)."""
        for rel in files:
            (self.state_dir / rel).unlink(missing_ok=True)

    def _restore(self) -> None:
        """Put back the last accepted weights, mask and optimizer state, bit for bit."""
        assert self.accepted is not None and self.model is not None
        self.model.load_state_dict(self.accepted.model)
        if self.accepted.optimizer is None:
            self.optimizer = self._new_optimizer()
        else:
            self.optimizer.load_state_dict(copy.deepcopy(self.accepted.optimizer))

    def _finish(self, reason: str) -> bool:
        self.store.update_run(self.run_id, status="finished", reason=reason, phase="done")
        self._event("info", "finished", reason)
        self.reporter.run_done("finished", reason)
        return False

    # --- reporting ----------------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        row = self.store.run(self.run_id)
        if row is None:
            raise UnknownRun(f"no run named '{self.run_id}'")
        return row

    def _info(self) -> dict[str, Any]:
        row, s = self._row(), self.schedule
        return {
            "run": self.run_id, "model": row["model"], "baseline_accuracy": row["baseline_accuracy"],
            "target_sparsity": s.prune.target_sparsity, "max_drop": s.validate.max_drop,
            "method": s.prune.method, "params": self.total, "device": str(self.device),
        }  # fmt: skip

    def _phase(self, name: str, total: int, description: str) -> None:
        self._phase_name = name
        faults.point(name)
        self.reporter.phase(name, total, description)

    def _set_phase(self, name: str) -> None:
        self.store.update_run(self.run_id, phase=name, heartbeat_at=time.time())

    def _epoch_progress(self, epoch: int, batch: int, batches: int) -> None:
        self._batches_done += 1
        faults.point(f"{self._phase_name}_batch")
        self.reporter.advance(epoch + (batch / batches if batches else 1.0))

    def _event(self, level: str, kind: str, message: str) -> None:
        self.store.add_event(self.run_id, level, kind, message)
        self.reporter.event(level, kind, message)

    def _round_done(
        self, round_: int, attempt: int, step: float, target: float, fields: dict
    ) -> None:
        self.reporter.round_done(
            {"round": round_, "attempt": attempt, "step": step, "target_sparsity": target, **fields}
        )


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def checkpoint_path(state_dir: Path, row: dict[str, Any]) -> Path:
    return state_dir / row["path"]
