"""The round state machine: prune -> fine-tune -> validate -> accept | roll back and retry smaller.

Each call of :meth:`Runner.step` does one attempt and commits its outcome before returning, so a
relaunch continues from the database: accepted rounds are never redone, and an interrupted attempt
continues from its mid-round checkpoint or is redone from its own start, with the same seeds.
Nothing but the runner talks to the store.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from iterprune import channels, latency, paths, pruning, recipe, rng, sources, training
from iterprune.errors import RunConflict, UnknownRun, UserError
from iterprune.reporter import Narrator, NullReporter, Reporter, Tee
from iterprune.runs import load_schedule
from iterprune.snapshots import Snapshots
from iterprune.store import Store, now

if TYPE_CHECKING:
    from iterprune.distributed import Group, Leader


@dataclass
class Accepted:
    """The last accepted state, kept in memory so a rollback restores it without disk reads."""

    round: int
    model: dict[str, torch.Tensor]
    mask: pruning.Mask
    optimizer: dict[str, Any] | None
    architecture: dict[str, dict[str, int]] | None = None  # channel mode: the smaller shapes


class Runner:
    """Drives one run through its rounds. Call :meth:`prepare`, then :meth:`step` until False."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        reporter: Reporter | None = None,
        stop: threading.Event | None = None,
        leader: Leader | None = None,
    ) -> None:
        self.store = store
        self.leader = leader  # under torchrun: the other ranks, who do what this runner orders
        self.run_id = run_id
        self.schedule = load_schedule(store, run_id)
        self.reporter = reporter or NullReporter()
        self.narrator = Narrator(store, run_id, self.reporter)
        self.stop = stop or threading.Event()
        self.pause = threading.Event()  # the time window closed: checkpoint and wait for it
        self.state_dir = store.state_dir
        self.snapshots = Snapshots(
            store, run_id, lambda kind, msg: self.narrator.event("warning", kind, msg)
        )
        self.model: nn.Module | None = None
        self.accepted: Accepted | None = None
        self.rewind: dict[str, torch.Tensor] | None = None  # lottery mode's rewind weights
        self.mask: pruning.Mask | None = None
        self._last_mid = (0.0, 0)

    # --- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build model and data, pin threads, and load (or create) the last accepted state."""
        s, row = self.schedule, self._row()
        self.pin_threads()
        torch.use_deterministic_algorithms(True, warn_only=True)
        if self.group is not None:
            self.device = self.group.device = self.group.device_for(s.device)
        else:
            self.device = torch.device(
                ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
            )
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device: {s.device} was asked for, but CUDA is not available here")
        if s.finetune.amp == "on" and self.device.type != "cuda":
            raise UserError(
                f"finetune.amp: true needs a CUDA device, and this run is on {self.device}; "
                "use amp: auto (mixed precision on CUDA only) or false"
            )
        self.amp = self.device.type == "cuda" and s.finetune.amp != "off"
        self.store.update_run(self.run_id, status="running", error=None)
        self.model = sources.build_model(s.model, s.seed, s.base_dir).to(self.device)
        self.train_loader, self.val_loader = sources.build_loaders(
            s.data, s.seed, s.base_dir, pin_memory=self.device.type == "cuda"
        )
        if self.group is not None:
            from iterprune.distributed import shard

            self.train_loader = shard(self.train_loader, self.group, train=True)
            self.val_loader = shard(self.val_loader, self.group, train=False)
        self.params = pruning.prunable_parameters(self.model, s.prune.exclude)
        if not self.params:
            raise UserError(
                "the model has no prunable Conv or Linear weights (check prune.exclude)"
            )
        self.total = row["baseline_params"] or sum(p.numel() for p in self.params.values())
        self.channel = s.prune.method == "channel"
        self.example = (
            sources.example_input(self.train_loader, self.device) if self.channel else None
        )
        self.optimizer = self._new_optimizer()
        if s.report.tensorboard:
            from iterprune.board import TensorBoardReporter

            logdir = Path(s.base_dir) / s.report.tensorboard
            self.reporter = Tee(self.reporter, TensorBoardReporter(logdir / self.run_id))
            self.narrator.reporter = self.reporter
        self.reporter.run_started(self._info())
        if row["baseline_accuracy"] is None:
            self._pretrain()
        else:
            self._load_accepted()
        for path in self.snapshots.sweep():
            self.narrator.event("info", "sweep", f"removed unreferenced file {path.name}")

    def pin_threads(self) -> None:
        """Use the run's recorded thread count (it changes float results); call it in every thread
        that trains, since OpenMP keeps the setting per thread."""
        torch.set_num_threads(int(self._row()["num_threads"]))

    def _new_optimizer(self) -> torch.optim.Optimizer:
        assert self.model is not None
        return recipe.optimizer(self.schedule.finetune, self.model)

    def _pretrain(self) -> None:
        s, model = self.schedule, self.model
        assert model is not None
        lottery = s.lottery
        if lottery is not None and lottery.rewind == "init":
            self.rewind = _clone(model.state_dict())
        self._sync(None)
        if s.pretrain.epochs and not s.model.weights:
            seed = rng.derive_seed(s.seed, 0, 0)
            rng.seed_everything(seed, (self.train_loader,))
            self.narrator.phase(
                "pretrain",
                s.pretrain.epochs,
                f"pretraining dense model, {s.pretrain.epochs} epochs",
            )
            optimizer = torch.optim.Adam(model.parameters(), lr=s.pretrain.lr)
            self.narrator.batches = 0

            def progress(epoch: int, batch: int, batches: int) -> None:
                self.narrator.batch(epoch, batch, batches)
                if (
                    lottery is not None
                    and self.rewind is None
                    and (
                        (lottery.rewind == "step" and self.narrator.batches == lottery.at)
                        or (
                            lottery.rewind == "epoch"
                            and epoch + 1 == lottery.at
                            and batch == batches
                        )
                    )
                ):
                    self.rewind = _clone(model.state_dict())

            with self._order(
                "pretrain", {"seed": seed, "lr": s.pretrain.lr, "epochs": s.pretrain.epochs}
            ):
                result = training.train(
                    model,
                    self.train_loader,
                    optimizer,
                    s.pretrain.epochs,
                    training.Options(
                        device=self.device,
                        progress=progress,
                        should_stop=self.stop.is_set,
                        group=self.group,
                    ),
                )
            if self.stop.is_set():
                return
            if not result.finite:
                raise RunConflict(f"pretraining diverged (loss {result.loss}); lower pretrain.lr")
        if lottery is not None and self.rewind is None:
            raise UserError(
                f"lottery.rewind.{lottery.rewind}: {lottery.at} is past the end of pretraining "
                f"({self.narrator.batches} steps in {s.pretrain.epochs} epochs)"
            )
        self.narrator.phase("validate", 1, "measuring the dense baseline")
        baseline = self._evaluate()
        speed = self._latency()
        mask = pruning.dense_mask(self.params)
        written = [
            {
                "round": 0,
                "attempt": 0,
                "kind": "dense",
                **self.snapshots.write(
                    paths.checkpoint_file(self.state_dir, self.run_id, 0, 0),
                    {"model": model.state_dict(), "mask": mask, "optimizer": None},
                ),
            }
        ]
        if self.rewind is not None:
            written.append(
                {
                    "round": 0,
                    "attempt": 0,
                    "kind": "rewind",
                    **self.snapshots.write(
                        paths.rewind_file(self.state_dir, self.run_id), {"model": self.rewind}
                    ),
                }
            )
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
                **{f"baseline_{k}": v for k, v in speed.items()},
            },
            pruning.layer_stats(model, s.prune.exclude),
            written,
        )
        self.accepted = Accepted(0, _clone(model.state_dict()), mask, None)
        latency_note = f", {speed['latency_ms_p50']:.2f} ms/batch" if speed else ""
        self.narrator.event(
            "info",
            "baseline",
            f"dense baseline accuracy {baseline:.2f}% on "
            f"{self.total:,} prunable weights{latency_note}",
        )
        self.reporter.run_started(self._info())

    def _load_accepted(self) -> None:
        """Load the newest accepted checkpoint that verifies; fall back past damaged ones."""
        assert self.model is not None
        row = self._row()
        ckpt, state = self.snapshots.newest_valid(row["accepted_round"])
        if ckpt["round"] != row["accepted_round"]:
            self._fall_back(ckpt["round"], row)
        self._load_model(state["model"], state.get("architecture"))
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.accepted = Accepted(
            ckpt["round"],
            _clone(self.model.state_dict()),
            state["mask"],
            copy.deepcopy(state["optimizer"]),
            state.get("architecture"),
        )
        if self.schedule.lottery is not None:
            self.rewind = self.snapshots.rewind_point()
        self._sync(self.accepted.mask)
        self.narrator.event(
            "info", "resume", f"resumed from round {ckpt['round']} ({ckpt['path']})"
        )

    def _fall_back(self, round_: int, row: dict[str, Any]) -> None:
        """Forget the rounds after ``round_`` (their checkpoints are lost): they will be redone."""
        kept = next(
            (
                r
                for r in self.store.rounds(self.run_id)
                if r["round"] == round_ and r["status"] == "accepted"
            ),
            None,
        )
        fields = {
            "step": kept["step"] if kept else self.schedule.prune.step,
            "sparsity": kept["sparsity"] if kept else 0.0,
            "val_accuracy": kept["val_accuracy"] if kept else row["baseline_accuracy"],
            "round": round_,
            "attempt": kept["attempt"] if kept else 0,
        }
        self.snapshots.forget(self.store.rewind_to(self.run_id, round_, fields))
        self.narrator.event(
            "warning",
            "fallback",
            f"fell back to round {round_}: rounds "
            f"{round_ + 1}..{row['accepted_round']} will be redone",
        )

    # --- the rounds ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one attempt; return False when the run has finished (or was asked to stop)."""
        if self.stop.is_set():
            return False
        s, row = self.schedule, self._row()
        if row["status"] in ("finished", "failed"):
            return False
        assert self.accepted is not None and self.model is not None
        alive = self._alive()
        if alive <= pruning.target_alive(self.total, s.prune.target_sparsity):
            return self._finish(f"target sparsity {s.prune.target_sparsity:.0%} reached")
        step = float(row["step"])
        if step < s.rollback.min_step - 1e-12:
            return self._finish(
                f"frontier reached: the next step ({step:.4f}) would be under rollback.min_step"
            )
        n_prune = pruning.amount_to_prune(alive, self.total, step, s.prune.target_sparsity)
        if n_prune == 0:
            return self._finish(f"frontier reached: a step of {step:.4f} removes no weight")
        round_ = self.accepted.round + 1
        # attempts that ended in a rollback count; one that was interrupted is continued or redone
        attempt = 1 + sum(
            1
            for r in self.store.rounds(self.run_id)
            if r["round"] == round_ and r["status"] == "rolled_back"
        )
        target = 1 - (alive - n_prune) / self.total  # channel mode: roughly, channels are coarse
        started = time.perf_counter()
        self.store.begin_attempt(
            self.run_id, round_, attempt, {"step": step, "target_sparsity": target}
        )
        new_mask, result = self._prune_and_finetune(round_, attempt, step, n_prune)
        if self.stop.is_set() or self.pause.is_set():
            self.store.interrupt_attempt(self.run_id, round_, attempt)
            self._restore()
            if not self.stop.is_set():
                self.narrator.event(
                    "info",
                    "paused",
                    f"the time window closed: round {round_}.{attempt} "
                    "checkpointed, to be continued when it opens",
                )
            return not self.stop.is_set()

        self._set_phase("validate")
        self.narrator.phase("validate", 1, f"round {round_}.{attempt}: validating")
        accuracy = result.best_accuracy
        if accuracy is None:
            accuracy = self._evaluate()
        drop = float(row["baseline_accuracy"]) - accuracy
        remaining = self._alive(new_mask)
        achieved = 1 - remaining / self.total
        control = None
        if s.lottery is not None and s.lottery.control == "random_reinit":
            self.narrator.phase(
                "control", s.finetune.epochs, f"round {round_}.{attempt}: control (random reinit)"
            )
            seed = rng.derive_seed(s.seed + 1, round_, attempt)
            with self._order("control", {"mask": new_mask, "seed": seed}):
                control = recipe.control_accuracy(
                    s,
                    new_mask,
                    self.train_loader,
                    self.val_loader,
                    self.device,
                    seed,
                    self.narrator.batch,
                    self.group,
                )
        self._verify_ranks(round_, attempt, new_mask)
        fields = {
            "step": step,
            "target_sparsity": target,
            "sparsity": achieved,
            "params": remaining,
            "val_accuracy": accuracy,
            "drop": drop,
            "loss": result.loss,
            "macs": channels.macs_and_params(self.model, self.example)[0] if self.channel else None,
            "best_epoch": result.best_epoch,
            "control_accuracy": control,
            "finished_at": now(),
        }
        layers = pruning.layer_stats(self.model, s.prune.exclude)
        if result.finite and drop <= s.validate.max_drop + 1e-9:
            fields.update(self._latency())
            fields.update(status="accepted", duration_s=time.perf_counter() - started)
            return self._accept(round_, attempt, new_mask, fields, layers)
        why = (
            "loss was not finite"
            if not result.finite
            else f"drop {drop:.2f} > {s.validate.max_drop}"
        )
        fields.update(status="rolled_back", duration_s=time.perf_counter() - started, note=why)
        return self._roll_back(round_, attempt, fields, layers)

    def _prune_and_finetune(
        self, round_: int, attempt: int, step: float, n_prune: int
    ) -> tuple[pruning.Mask, training.TrainResult]:
        """Prune (or pick up the attempt's mid-round checkpoint), then fine-tune under the mask."""
        s = self.schedule
        assert self.accepted is not None and self.model is not None
        position, rng_state = None, None
        seed = rng.derive_seed(s.seed, round_, attempt)
        mid = self.snapshots.mid(round_, attempt, self.group.world if self.group else 1)
        if mid is None:
            rng.seed_everything(seed, (self.train_loader,))
            self.narrator.phase(
                "prune", 1, f"round {round_}.{attempt}: pruning {step:.1%} of the remaining weights"
            )
            if self.channel:
                mask = self._remove_channels(step)
            else:
                generator = torch.Generator().manual_seed(rng.derive_seed(s.seed, round_, attempt))
                mask = pruning.prune(
                    self.params, self.accepted.mask, n_prune, s.prune.method, generator
                )
                pruning.check_sparsity(
                    mask, pruning.count_alive(self.accepted.mask) - n_prune, s.prune.method
                )
            if self.rewind is not None:  # lottery: surviving weights back to the rewind point
                self.model.load_state_dict(self.rewind)
                self.optimizer = self._new_optimizer()  # the method resets the optimizer too
            pruning.apply(self.params, mask)
        else:
            row, state = mid
            mask, rng_state = state["mask"], state["rng"]
            self._load_model(state["model"], state.get("architecture"))
            self.optimizer.load_state_dict(state["optimizer"])
            position = training.Position(**state["position"])
            rng.seed_sampler(self.train_loader, seed)
            self.narrator.event(
                "info",
                "resume",
                f"continuing round {round_}.{attempt} at epoch "
                f"{position.epoch + 1}, batch {position.batch} (mid-round checkpoint "
                f"{row['path']})",
            )
        self.mask = mask  # the attempt's mask: the decision this round applies
        scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if scaler is not None and mid is not None and mid[1].get("scaler"):
            scaler.load_state_dict(mid[1]["scaler"])

        def save_mid(pos: training.Position) -> None:
            state = {
                "model": self.model.state_dict(),
                "mask": mask,
                "rng": rng.capture(),
                "architecture": channels.architecture(self.model) if self.channel else None,
                "optimizer": self.optimizer.state_dict(),
                "position": dataclasses.asdict(pos),
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            if self.group is not None:  # every rank's random state, to continue each exactly
                from iterprune.distributed import share_mid

                state.update(world=self.group.world, ranks=share_mid(self.group, self.model, pos))
            self.snapshots.save_mid(round_, attempt, pos.count, state)
            self._last_mid = (time.monotonic(), pos.count)

        f = s.finetune
        self._set_phase("finetune")
        self.narrator.phase("finetune", f.epochs, f"round {round_}.{attempt}: fine-tuning")
        self.narrator.batches = position.count if position else 0
        self._last_mid = (time.monotonic(), self.narrator.batches)
        self._sync(mask)
        order = {
            "seed": seed,
            "position": None if mid is None else mid[1]["position"],
            "ranks": None if mid is None else mid[1].get("ranks"),
            "scaler": None if mid is None else mid[1].get("scaler"),
        }
        with self._order("finetune", order):
            result = recipe.finetune(
                f,
                self.model,
                self.params,
                mask,
                self.optimizer,
                (self.train_loader, self.val_loader),
                self.device,
                group=self.group,
                scaler=scaler,
                progress=self.narrator.batch,
                should_stop=lambda: self.stop.is_set() or self.pause.is_set(),
                start=position,
                on_resumed=None if rng_state is None else lambda: rng.restore(rng_state),
                checkpoint=save_mid,
                checkpoint_due=self._mid_due,
            )
        return mask, result

    def _alive(self, mask: pruning.Mask | None = None) -> int:
        """Prunable weights left: the mask's survivors, or (channel mode) the model's weights."""
        if self.channel:
            return sum(p.numel() for p in self.params.values())
        return pruning.count_alive(mask if mask is not None else self.accepted.mask)

    def _remove_channels(self, step: float) -> pruning.Mask:
        """Channel mode: physically remove ``step`` of the remaining channels, then rebuild the
        parameter list and the optimizer (the old state refers to removed parameters)."""
        s = self.schedule
        target = pruning.target_alive(self.total, s.prune.target_sparsity)
        fraction = channels.round_fraction(step, self._alive(), target)
        channels.remove_channels(self.model, self.example, fraction, s.prune.scope, s.prune.exclude)
        self.params = pruning.prunable_parameters(self.model, s.prune.exclude)
        self.optimizer = self._new_optimizer()
        return pruning.dense_mask(self.params)

    def _load_model(self, state: dict[str, torch.Tensor], architecture: dict | None) -> None:
        """Load weights; a channel-pruned architecture is rebuilt from a fresh model first."""
        s = self.schedule
        model = channels.fit(
            self.model,
            state,
            architecture,
            lambda: sources.fresh_model(s.model, s.seed, s.base_dir),
        )
        if model is not self.model:
            self.model = model.to(self.device)
            self.params = pruning.prunable_parameters(self.model, s.prune.exclude)
            self.optimizer = self._new_optimizer()

    def _mid_due(self) -> bool:
        when = self.schedule.when
        since, batches_then = self._last_mid
        if when.checkpoint_every_batches is not None:
            return self.narrator.batches - batches_then >= when.checkpoint_every_batches
        if when.checkpoint_every_s is not None:
            return time.monotonic() - since >= when.checkpoint_every_s
        return False

    def _accept(
        self, round_: int, attempt: int, mask: pruning.Mask, fields: dict, layers: list
    ) -> bool:
        assert self.model is not None
        written = self.snapshots.write(
            paths.checkpoint_file(self.state_dir, self.run_id, round_, attempt),
            {
                "model": self.model.state_dict(),
                "mask": mask,
                "optimizer": self.optimizer.state_dict(),
                "architecture": channels.architecture(self.model) if self.channel else None,
            },
        )
        message = (
            f"round {round_}.{attempt} accepted: sparsity {fields['sparsity']:.2%}, "
            f"accuracy {fields['val_accuracy']:.2f}% (drop {fields['drop']:+.2f})"
        )
        self.snapshots.forget(
            self.store.finish_attempt(
                self.run_id,
                round_,
                attempt,
                fields,
                layers,
                {
                    "accepted_round": round_,
                    "sparsity": fields["sparsity"],
                    "val_accuracy": fields["val_accuracy"],
                    "phase": "prune",
                },
                checkpoint={"round": round_, "attempt": attempt, "kind": "accepted", **written},
                event=("info", "accepted", message),
            )
        )
        self.accepted = Accepted(
            round_,
            _clone(self.model.state_dict()),
            mask,
            copy.deepcopy(self.optimizer.state_dict()),
            channels.architecture(self.model) if self.channel else None,
        )
        if self.schedule.checkpoints.keep == "last":
            self.snapshots.forget(self.store.drop_superseded(self.run_id))
        self.narrator.round_done(round_, attempt, fields, layers)
        return True

    def _roll_back(self, round_: int, attempt: int, fields: dict, layers: list) -> bool:
        s = self.schedule
        self._restore()
        new_step = fields["step"] * s.rollback.shrink
        run_fields: dict[str, Any] = {"step": new_step, "phase": "prune"}
        ended = None
        if attempt > s.rollback.retries:
            ended = f"frontier reached: round {round_} failed {attempt} attempts"
        elif new_step < s.rollback.min_step - 1e-12:
            ended = (
                f"frontier reached: the next step ({new_step:.4f}) would be under "
                f"rollback.min_step ({s.rollback.min_step})"
            )
        if ended:
            run_fields.update(status="finished", reason=ended, phase="done")
        self.snapshots.forget(
            self.store.finish_attempt(
                self.run_id,
                round_,
                attempt,
                fields,
                layers,
                run_fields,
                event=(
                    "warning",
                    "rolled_back",
                    f"round {round_}.{attempt} rolled back ({fields['note']}); next step {new_step:.4f}",
                ),
            )
        )
        self.narrator.round_done(round_, attempt, fields, layers)
        if not ended:
            self._sync(self.accepted.mask)  # every rank back to the accepted state
        if ended:
            self.narrator.event("info", "finished", ended)
            self.reporter.run_done("finished", ended)
            return False
        return True

    def _restore(self) -> None:
        """Put back the last accepted weights, mask and optimizer state, bit for bit."""
        assert self.accepted is not None and self.model is not None
        self._load_model(self.accepted.model, self.accepted.architecture)
        if self.accepted.optimizer is None:
            self.optimizer = self._new_optimizer()
        else:
            self.optimizer.load_state_dict(copy.deepcopy(self.accepted.optimizer))

    # --- the other ranks (under torchrun) ----------------------------------------------------

    @property
    def group(self) -> Group | None:
        return self.leader.group if self.leader is not None else None

    def _order(self, name: str, payload: Any = None) -> contextlib.AbstractContextManager:
        """Under torchrun: tell the other ranks to do ``name`` with us; else nothing."""
        if self.leader is None:
            return contextlib.nullcontext()
        return self.leader.order(name, payload)

    def _sync(self, mask: pruning.Mask | None) -> None:
        """Under torchrun: send this rank's weights, mask and optimizer state to the others."""
        if self.leader is not None:
            architecture = channels.architecture(self.model) if self.channel else None
            self.leader.sync(self.model, mask, self.optimizer, architecture)

    def _evaluate(self) -> float:
        with self._order("evaluate"):
            return training.evaluate(self.model, self.val_loader, self.device, self.group)

    def _verify_ranks(self, round_: int, attempt: int, mask: pruning.Mask) -> None:
        if self.leader is not None:
            digest = self.leader.verify(self.model, mask, f"round {round_}.{attempt}")
            self.narrator.event(
                "info",
                "ranks",
                f"round {round_}.{attempt}: all {self.group.world} ranks "
                f"hold identical weights and masks (sha256 {digest[:16]})",
            )

    def _finish(self, reason: str) -> bool:
        self.store.update_run(self.run_id, status="finished", reason=reason, phase="done")
        self.narrator.event("info", "finished", reason)
        self.reporter.run_done("finished", reason)
        return False

    def _latency(self) -> dict[str, float]:
        """Inference latency of the current model, when the schedule has a benchmark section."""
        b = self.schedule.benchmark
        if b is None:
            return {}
        assert self.model is not None
        self.narrator.phase("benchmark", 1, "measuring inference latency")
        ms = latency.measure(
            self.model, b.input_shape, b.batch_size, b.iterations, b.warmup, self.device
        )
        return {"latency_ms_p50": ms["p50"], "latency_ms_p99": ms["p99"]}

    # --- reporting ----------------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        row = self.store.run(self.run_id)
        if row is None:
            raise UnknownRun(f"no run named '{self.run_id}'")
        return row

    def _info(self) -> dict[str, Any]:
        row, s = self._row(), self.schedule
        return {
            "run": self.run_id,
            "model": row["model"],
            "baseline_accuracy": row["baseline_accuracy"],
            "target_sparsity": s.prune.target_sparsity,
            "max_drop": s.validate.max_drop,
            "method": s.prune.method,
            "params": self.total,
            "device": str(self.device) + (f" × {self.group.world} ranks" if self.group else ""),
        }

    def _set_phase(self, name: str) -> None:
        self.store.update_run(self.run_id, phase=name, heartbeat_at=time.time())


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}
