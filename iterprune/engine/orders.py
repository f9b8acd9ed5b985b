"""Rank 0 leading the other ranks under torchrun: typed orders, the leader that sends them, and the
followers that carry them out.

Rank 0 serves the run exactly as a single process does: it alone owns the state database, the
checkpoints, the lease and the console, and it alone decides (prunes, accepts, rolls back, stops).
Before each piece of work that needs every rank it broadcasts an order — :class:`Sync` (weights,
mask, optimizer state), :class:`Teach` (a distillation's teacher), :class:`Pretrain`, :class:`Finetune`, :class:`Evaluate`, :class:`Control`,
:class:`Verify`, :class:`Done` — and then does that work itself. The other ranks
(:class:`Follower`) build the same workbench, carry out the orders on their shard, and never open
the state directory, so on other machines it need not exist. After every attempt the ranks compare
a sha256 of their weights and masks, and a mismatch fails the run.

A single process uses :class:`Ranks` itself, whose orders cost nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from iterprune.core import pruning, rng
from iterprune.engine import evaluation, recipe, training
from iterprune.engine.distributed import Group, digest
from iterprune.engine.workbench import Workbench
from iterprune.errors import IterpruneError, PeerLost, RanksDisagree
from iterprune.schedule.stored import from_canonical
from iterprune.state import faults


@dataclasses.dataclass(frozen=True)
class Open:
    """The run every rank works on (the schedule as stored with the run)."""

    run: str
    schedule: str
    base_dir: str
    threads: int


@dataclasses.dataclass(frozen=True)
class Sync:
    """Rank 0's weights, mask, layer shapes (channel mode) and optimizer state, for every rank."""

    model: dict[str, torch.Tensor]
    mask: pruning.Mask | None
    architecture: dict | None
    optimizer: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Teach:
    """The teacher of ``finetune.distill`` (the dense model, or the last accepted round): every
    rank holds it and distills its own shard."""

    model: dict[str, torch.Tensor]
    architecture: dict | None


@dataclasses.dataclass(frozen=True)
class Pretrain:
    seed: int
    lr: float
    epochs: int


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Fine-tune under the synced mask; a continued attempt carries its mid-round position and
    every rank's random state."""

    seed: int
    position: dict[str, Any] | None = None
    ranks: list[dict[str, Any]] | None = None
    scaler: dict[str, Any] | None = None
    epochs: int | None = None  # a recovery's extra epochs (default: the schedule's)


@dataclasses.dataclass(frozen=True)
class Evaluate:
    """Answer the validation (or test) split, each rank its shard."""

    split: str = "val"


@dataclasses.dataclass(frozen=True)
class Control:
    """The lottery control: train ``mask`` from a fresh initialisation drawn from ``seed``."""

    mask: pruning.Mask
    seed: int


@dataclasses.dataclass(frozen=True)
class Verify:
    pass


@dataclasses.dataclass(frozen=True)
class Done:
    code: int


Order = Sync | Teach | Pretrain | Finetune | Evaluate | Control | Verify | Done


class Ranks:
    """The ranks as the runner sees them. This class is a single process: there are no other
    ranks, so orders, syncs and checks cost nothing; under torchrun rank 0 has a :class:`Leader`."""

    group: Group | None = None
    world = 1

    def order(self, order: Order) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sync(self, bench: Workbench, mask: pruning.Mask | None) -> None:
        pass

    def teach(self, bench: Workbench, accepted: Any, dense: Callable[[], dict[str, Any]]) -> None:
        """Point the teacher at what the schedule says (see :meth:`Workbench.teach_from`); under
        torchrun every rank gets it."""
        taught = bench.teach_from(accepted, dense)
        if taught is not None:
            with self.order(Teach(*taught)):
                pass

    def verify(self, model: nn.Module, mask: pruning.Mask, label: str) -> str | None:
        return None

    def mid_state(self, model: nn.Module, pos: training.Position) -> dict[str, Any]:
        return {}

    def evaluate(
        self, bench: Workbench, split: str = "val"
    ) -> evaluation.Answers | evaluation.Scores:
        """The model's answers on a split, each rank answering its shard."""
        with self.order(Evaluate(split)):
            found = bench.answers(split)
        assert found is not None  # rank 0 holds the whole split
        return found


class Leader(Ranks):
    """Rank 0's side: tells the other ranks what to do next, then does it too."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.world = group.world
        self.broken = False  # an order failed half-way: the ranks no longer wait for orders

    def open(self, run: str, row: dict[str, Any]) -> None:
        opening = Open(run, row["schedule"], row["base_dir"] or ".", int(row["num_threads"]))
        self.group.broadcast(opening)

    @contextlib.contextmanager  # type: ignore[override]
    def order(self, order: Order) -> Iterator[None]:
        """Send ``order``, then do rank 0's part of it in the ``with`` block."""
        if self.broken:
            raise PeerLost("the ranks lost step with each other earlier in this run")
        try:
            self.group.broadcast(order)
            yield
        except BaseException:
            self.broken = True
            raise

    def sync(self, bench: Workbench, mask: pruning.Mask | None) -> None:
        state = Sync(
            bench.model.state_dict(), mask, bench.architecture(), bench.optimizer.state_dict()
        )
        with self.order(state):
            pass

    def verify(self, model: nn.Module, mask: pruning.Mask, label: str) -> str:
        """The digest every rank agrees on; raises :class:`RanksDisagree` when one differs."""
        with self.order(Verify()):
            digests = self.group.gather(digest(model.state_dict(), mask)) or []
        odd = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise RanksDisagree(
                f"after {label}, rank(s) {', '.join(map(str, odd))} hold different weights or "
                "masks than rank 0; the run stops here (its accepted rounds are safe). This "
                "points to nondeterministic training across ranks; resume to redo the round."
            )
        return digests[0]

    def mid_state(self, model: nn.Module, pos: training.Position) -> dict[str, Any]:
        """What a mid-round checkpoint adds under torchrun: every rank's random state."""
        return {"world": self.world, "ranks": share_mid(self.group, model, pos)}

    def close(self, code: int) -> None:
        """Tell the other ranks to exit with ``code`` (when they are waiting for an order)."""
        if not self.broken:
            with contextlib.suppress(IterpruneError):
                self.group.broadcast(Done(code))


def share_mid(group: Group, model: nn.Module, pos: training.Position) -> list[Any] | None:
    """Every rank's part of a mid-round checkpoint (its random state and its loader generator's
    state), at rank 0; rank 0's BatchNorm statistics go to all ranks first, so the checkpoint
    describes every rank."""
    group.sync_buffers(model)
    return group.gather({"rng": rng.capture(), "loader_state": pos.loader_state})


def follow(group: Group) -> int:
    """A rank other than 0: wait for rank 0 to open the run, then carry out its orders until
    :class:`Done`; the exit code rank 0 sends.

    Ctrl-C reaches every process of the terminal, and torchrun passes SIGTERM on to all ranks:
    rank 0 alone acts on them (it stops every rank after the same batch, with a checkpoint), so
    the other ranks ignore both and follow it to the end.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    opening = group.broadcast()
    if isinstance(opening, Done):
        return opening.code
    follower = Follower(group, opening)
    with group.guard("following rank 0's orders"):  # DDP's own collectives raise too
        return follower.serve()


class Follower:
    """Holds this rank's workbench and does its part of each order, on its shard."""

    def __init__(self, group: Group, opening: Open) -> None:
        self.group = group
        schedule = from_canonical(json.loads(opening.schedule), opening.base_dir)
        self.bench = Workbench(schedule, opening.threads, group, weights=False)
        self.mask: pruning.Mask | None = None

    def serve(self) -> int:
        while True:
            match self.group.broadcast():
                case Done(code=code):
                    return code
                case Sync() as state:
                    self.bench.load(state.model, state.architecture)
                    self.bench.new_optimizer().load_state_dict(state.optimizer)
                    self.mask = state.mask
                case Teach(model=model, architecture=architecture):
                    self.bench.teach(model, architecture)
                case Pretrain() as order:
                    self.pretrain(order)
                case Finetune() as order:
                    self.finetune(order)
                case Evaluate(split=split):
                    self.bench.answers(split)
                case Control(mask=mask, seed=seed):
                    b = self.bench
                    recipe.control_accuracy(
                        b.schedule,
                        mask,
                        b.train_loader,
                        b.val_loader,
                        b.device,
                        seed,
                        None,
                        b.group,
                        b.task,
                    )
                case Verify():
                    self.group.gather(digest(self.bench.model.state_dict(), self.mask))

    def pretrain(self, order: Pretrain) -> None:
        b = self.bench
        rng.seed_everything(order.seed, (b.train_loader,), self.group.rank)
        optimizer = torch.optim.Adam(b.model.parameters(), lr=order.lr)
        opts = training.Options(
            device=b.device, group=self.group, progress=_fault_point("pretrain_batch"), task=b.task
        )
        training.train(b.model, b.train_loader, optimizer, order.epochs, opts)

    def finetune(self, order: Finetune) -> None:
        b, rank = self.bench, self.group.rank
        position, on_resumed = None, None
        if order.position is None:
            rng.seed_everything(order.seed, (b.train_loader,), rank)
        else:
            rng.seed_sampler(b.train_loader, order.seed)
            mine = order.ranks[rank]  # type: ignore[index]  # sent with every position
            position = training.Position(**{**order.position, "loader_state": mine["loader_state"]})
            on_resumed = lambda: rng.restore(mine["rng"])  # noqa: E731
        b.finetune(
            self.mask or {},
            order.epochs,
            scaler=b.scaler(order.scaler),
            start=position,
            on_resumed=on_resumed,
            checkpoint=lambda pos: share_mid(self.group, b.model, pos),
            progress=_fault_point("finetune_batch"),
        )


def _fault_point(name: str) -> training.Progress:
    """A progress callback that only passes a crash test's fault point (see faults.py)."""
    return lambda epoch, batch, batches: faults.point(name)
