"""Carrying out one attempt: prune, fine-tune under the mask (writing mid-round checkpoints), and
measure what the decision needs.

An attempt interrupted earlier continues from its mid-round checkpoint with the random states it
had, so it ends as if it had never stopped. The runner decides which attempt to run and what to do
with its outcome; this module only does the work, on every rank (through ``orders``).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from iterprune.core import channels, decisions, pruning, rng
from iterprune.engine import evaluation, masks, orders, recipe, training
from iterprune.engine.reporter import Narrator
from iterprune.engine.workbench import Workbench
from iterprune.errors import IterpruneError
from iterprune.state.snapshots import Snapshots

State = dict[str, torch.Tensor]


@dataclass
class Accepted:
    """The last accepted state, kept in memory so a rollback restores it without disk reads."""

    round: int
    model: State
    mask: pruning.Mask
    optimizer: dict[str, Any] | None
    architecture: dict[str, dict[str, int]] | None = None  # channel mode: the smaller shapes

    @classmethod
    def of(
        cls, round_: int, bench: Workbench, mask: pruning.Mask, optimizer: bool = True
    ) -> Accepted:
        """A copy of the bench's current state (``optimizer=False``: a fresh optimizer)."""
        return cls(
            round_,
            _clone(bench.model.state_dict()),
            mask,
            copy.deepcopy(bench.optimizer.state_dict()) if optimizer else None,
            bench.architecture(),
        )


@dataclass
class Start:
    """Where a continued attempt resumes: its training position and its mid-round state."""

    position: training.Position
    state: dict[str, Any]

    def order(self) -> tuple[dict[str, Any], list | None, dict | None]:
        """(position, every rank's random state, scaler state) for the other ranks."""
        state = self.state
        return state["position"], state.get("ranks"), state.get("scaler")

    def restore_rng(self) -> None:
        rng.restore(self.state["rng"])


@dataclass
class Done:
    """What an attempt produced: its mask and its fine-tuning result (the model is the bench's).

    ``first`` is the judgement before a recovery (its drop and interval, and the epochs trained
    until then) once the attempt is recovering; ``epochs`` counts every epoch trained in it.
    """

    mask: pruning.Mask
    result: training.TrainResult
    epochs: int
    first: dict[str, Any] | None = None


class Attempts:
    """Runs attempts on a workbench. ``stop``/``pause`` end one after the current batch, with a
    mid-round checkpoint; ``set_phase`` records the phase with the run."""

    def __init__(
        self,
        bench: Workbench,
        ranks: orders.Ranks,
        narrator: Narrator,
        snapshots: Snapshots,
        flags: tuple[threading.Event, threading.Event],
        set_phase: Callable[[str], None],
    ) -> None:
        self.bench, self.ranks, self.narrator, self.snapshots = bench, ranks, narrator, snapshots
        self.stop, self.pause = flags
        self.set_phase = set_phase
        self.schedule = bench.schedule
        self.mask: pruning.Mask | None = None  # the current attempt's mask
        self._last_mid = (0.0, 0)  # (time, batches) of the last mid-round checkpoint

    def run(
        self,
        plan: decisions.Attempt,
        accepted: pruning.Mask,
        target_alive: int,
        rewind: State | None,
    ) -> Done:
        """Prune (or pick up the attempt's mid-round checkpoint), then fine-tune under the mask.
        An attempt interrupted during its recovery continues the recovery."""
        seed = rng.derive_seed(self.schedule.seed, plan.round, plan.attempt)
        mid = self.snapshots.mid(plan.round, plan.attempt, self.ranks.world)
        if mid is not None and mid[1].get("stage") == "recover":
            first = mid[1]["first"]
            seed = rng.derive_seed(self.schedule.seed, plan.round, plan.attempt, "recover")
            mask, start = self._continue(plan, seed, *mid)
            result = self._finetune(plan, seed, mask, start, first)
            return Done(mask, result, first["epochs"] + result.epochs, first)
        if mid is None:
            rng.seed_everything(seed, (self.bench.train_loader,))
            mask, start = self._prune(plan, accepted, target_alive, rewind), None
        else:
            mask, start = self._continue(plan, seed, *mid)
        result = self._finetune(plan, seed, mask, start)
        return Done(mask, result, result.epochs)

    def recover(self, plan: decisions.Attempt, done: Done, epochs: int, first: dict) -> Done:
        """Fine-tune a failed attempt ``epochs`` more (``first``: its judgement so far)."""
        seed = rng.derive_seed(self.schedule.seed, plan.round, plan.attempt, "recover")
        rng.seed_everything(seed, (self.bench.train_loader,))
        first = {**first, "epochs": done.epochs, "recover_epochs": epochs}
        result = self._finetune(plan, seed, done.mask, None, first)
        return Done(done.mask, result, done.epochs + result.epochs, first)

    def interrupted(self) -> bool:
        return self.stop.is_set() or self.pause.is_set()

    def _prune(
        self,
        plan: decisions.Attempt,
        accepted: pruning.Mask,
        target_alive: int,
        rewind: State | None,
    ) -> pruning.Mask:
        bench, s = self.bench, self.schedule
        what = f"round {plan.round}.{plan.attempt}: pruning {plan.step:.1%} of the remaining"
        self.narrator.phase("prune", 1, what + " weights")
        if bench.channel:
            fraction = channels.round_fraction(plan.step, bench.alive(accepted), target_alive)
            mask = bench.remove_channels(fraction)
        else:
            mask = masks.next_mask(bench, plan, accepted)
        if not bench.channel:
            expected = pruning.count_alive(accepted) - plan.n_prune
            pruning.check_sparsity(mask, expected, s.prune.method)
        if rewind is not None:  # lottery: surviving weights back to the rewind point
            bench.model.load_state_dict(rewind)
            bench.new_optimizer()  # the method resets the optimizer too
        pruning.apply(bench.params, mask)
        return mask

    def _continue(
        self, plan: decisions.Attempt, seed: int, row: dict[str, Any], state: dict[str, Any]
    ) -> tuple[pruning.Mask, Start]:
        """The attempt's mid-round checkpoint: its mask, weights and where training was."""
        bench = self.bench
        bench.load(state["model"], state.get("architecture"))
        bench.optimizer.load_state_dict(state["optimizer"])
        rng.seed_sampler(bench.train_loader, seed)
        position = training.Position(**state["position"])
        self.narrator.event(
            "info",
            "resume",
            f"continuing round {plan.round}.{plan.attempt} at epoch {position.epoch + 1}, batch "
            f"{position.batch} (mid-round checkpoint {row['path']})",
        )
        return state["mask"], Start(position, state)

    def _finetune(
        self,
        plan: decisions.Attempt,
        seed: int,
        mask: pruning.Mask,
        start: Start | None,
        first: dict | None = None,
    ) -> training.TrainResult:
        """Fine-tune under ``mask`` (``first``: this is the recovery, of its epochs)."""
        bench, narrator = self.bench, self.narrator
        scaler = bench.scaler(start.state.get("scaler") if start else None)
        epochs = first["recover_epochs"] if first else self.schedule.finetune.epochs
        phase = "recover" if first else "finetune"
        self.mask = mask  # the decision this attempt applies
        self.set_phase(phase)
        doing = f"recovering, {epochs} more epoch(s)" if first else "fine-tuning"
        narrator.phase(phase, epochs, f"round {plan.round}.{plan.attempt}: {doing}")
        narrator.batches = start.position.count if start else 0
        self._last_mid = (time.monotonic(), narrator.batches)

        def save_mid(pos: training.Position) -> None:
            state = {
                "model": bench.model.state_dict(),
                "mask": mask,
                "rng": rng.capture(),
                "architecture": bench.architecture(),
                "optimizer": bench.optimizer.state_dict(),
                "position": dataclasses.asdict(pos),
                "scaler": scaler.state_dict() if scaler is not None else None,
                **({"stage": "recover", "first": first} if first else {}),
            }
            state.update(self.ranks.mid_state(bench.model, pos))  # every rank's random state
            self.snapshots.save_mid(plan.round, plan.attempt, pos.count, state)
            self._last_mid = (time.monotonic(), pos.count)

        self.ranks.sync(bench, mask)
        sent = start.order() if start else (None, None, None)
        with self.ranks.order(orders.Finetune(seed, *sent, epochs=epochs if first else None)):
            return bench.finetune(
                mask,
                epochs,
                scaler=scaler,
                progress=narrator.batch,
                should_stop=self.interrupted,
                start=start.position if start else None,
                on_resumed=start.restore_rng if start else None,
                checkpoint=save_mid,
                checkpoint_due=self._mid_due,
            )

    def _mid_due(self) -> bool:
        when, (since, batches_then) = self.schedule.when, self._last_mid
        if when.checkpoint_every_batches is not None:
            return self.narrator.batches - batches_then >= when.checkpoint_every_batches
        if when.checkpoint_every_s is not None:
            return time.monotonic() - since >= when.checkpoint_every_s
        return False

    def measure(
        self, plan: decisions.Attempt, done: Done, dense: evaluation.Reference, total: int
    ) -> dict[str, Any]:
        """The attempt's row fields: its answers on the validation split paired with the dense
        model's (lost, gained, the drop and its interval), sparsity and the training summary."""
        bench, result = self.bench, done.result
        self.set_phase("validate")
        self.narrator.phase("validate", 1, f"round {plan.round}.{plan.attempt}: validating")
        found = self.ranks.evaluate(bench, "val")
        if found.labels_digest() != dense.labels:
            raise IterpruneError(
                "the validation split is not the one the dense model was measured on (its "
                "labels differ, in content or order), so the samples cannot be compared; keep "
                "the validation data and its order fixed for the whole run"
            )
        judged = found.judged(dense, self.schedule.validate.confidence)
        remaining = bench.alive(done.mask)
        return {
            "step": plan.step,
            "target_sparsity": plan.target_sparsity,
            "sparsity": 1 - remaining / total,
            "params": remaining,
            "val_accuracy": found.value,
            **judged,
            "loss": result.loss,
            "macs": bench.macs(),
            "best_epoch": result.best_epoch,
            "epochs": done.epochs,
            "recovered": 1 if done.first else None,
        }

    def control(self, plan: decisions.Attempt, mask: pruning.Mask) -> dict[str, Any]:
        """Lottery mode's control: the same mask trained from ``control_seeds`` fresh random
        initialisations; their mean accuracy, its standard deviation (two or more) and count."""
        s, bench = self.schedule, self.bench
        if s.lottery is None or s.lottery.control != "random_reinit":
            return {"control_accuracy": None, "control_std": None, "control_n": None}
        n, found = s.lottery.control_seeds, []
        for i in range(n):
            label = f"round {plan.round}.{plan.attempt}: control (random reinit)"
            self.narrator.phase(
                "control", s.finetune.epochs, label + (f" {i + 1}/{n}" if n > 1 else "")
            )
            # the first control keeps the seed of the single control of earlier releases
            seed = rng.derive_seed(
                s.seed + 1, plan.round, plan.attempt, f"control {i}" if i else ""
            )
            with self.ranks.order(orders.Control(mask, seed)):
                found.append(
                    recipe.control_accuracy(
                        s,
                        mask,
                        bench.train_loader,
                        bench.val_loader,
                        bench.device,
                        seed,
                        self.narrator.batch,
                        bench.group,
                        bench.task,
                    )
                )
        return {
            "control_accuracy": statistics.fmean(found),
            "control_std": statistics.stdev(found) if n > 1 else None,
            "control_n": n,
        }

    def verify(self, plan: decisions.Attempt, mask: pruning.Mask) -> None:
        """Under torchrun: every rank holds the same weights and mask (else the run fails)."""
        label = f"round {plan.round}.{plan.attempt}"
        digest = self.ranks.verify(self.bench.model, mask, label)
        if digest is not None:
            self.narrator.event(
                "info",
                "ranks",
                f"{label}: all {self.ranks.world} ranks hold identical weights and masks "
                f"(sha256 {digest[:16]})",
            )


def _clone(state: State) -> State:
    return {k: v.detach().clone() for k, v in state.items()}
