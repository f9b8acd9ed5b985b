"""Running under torchrun: the process group, sharded data, and rank 0 leading the other ranks.

Rank 0 serves the run exactly as a single process does: it alone owns the state database, the
checkpoints, the lease and the console, and it alone decides (prunes, accepts, rolls back,
stops). Before each piece of work that needs every rank it broadcasts an *order* — ``sync``
(weights, mask, optimizer state), ``pretrain``, ``finetune``, ``evaluate``, ``control``,
``verify``, ``done`` — and then does that work itself. The other ranks (:class:`Follower`) build the
same model and data, carry out the orders on their shard, and never open the state directory, so
on other machines it need not exist.

Fine-tuning wraps the model in DistributedDataParallel per call; every
``training.AGREE_EVERY`` batches one small all-reduce carries the mean loss and rank 0's stop /
mid-round-checkpoint decisions, so all ranks stop at the same batch. Validation sums correct and
seen counts over the ranks: the exact figure for the whole validation set. After every attempt
the ranks compare a sha256 of their weights and masks, and a mismatch fails the run.

Orders travel on their own gloo group with a long timeout, so ranks can wait out a closed time
window; training collectives use the default group (gloo on CPU, NCCL on CUDA). Without torchrun
(``WORLD_SIZE`` unset or 1) nothing here runs and no process group is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

from iterprune import channels, faults, pruning, recipe, rng, sources, training
from iterprune.errors import IterpruneError, UserError
from iterprune.schedule import from_canonical

ORDERS_TIMEOUT = dt.timedelta(days=30)  # a follower may wait this long for rank 0 (time windows)


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


class PeerLost(IterpruneError):
    """A collective operation failed: another rank exited, crashed or became unreachable."""


class RanksDisagree(IterpruneError):
    """After an attempt, some rank holds different weights or masks than rank 0."""


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where a tensor was in a broadcast object (tensors travel separately, as tensors)."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    cuda: bool


class Group:
    """This process's place among the ranks, and the collective operations iterprune uses."""

    def __init__(self) -> None:
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if cuda else "gloo",
            store=_store(),
            rank=self.rank,
            world_size=self.world,
        )
        self.orders = dist.new_group(backend="gloo", timeout=ORDERS_TIMEOUT)
        self.device = torch.device("cpu")  # the training device, once the schedule is known

    def device_for(self, wanted: str) -> torch.device:
        """The schedule's ``device`` for this rank: each rank takes the GPU of its local rank."""
        cuda = torch.cuda.is_available()
        if wanted == "cpu" or (wanted == "auto" and not cuda):
            return torch.device("cpu")
        if wanted in ("auto", "cuda"):
            if not cuda:
                raise UserError(f"device: {wanted} was asked for, but CUDA is not available here")
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        raise UserError(
            f"device: {wanted} names one device, but under torchrun every rank uses the GPU of "
            "its LOCAL_RANK; set device: cuda (or auto)"
        )

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:  # DistBackendError and gloo's connection errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise PeerLost(
                f"rank {self.rank} lost contact with the other ranks while {what} ({first}); "
                "another rank probably exited or crashed (see its output). Continue the run "
                "with: torchrun ... -m iterprune resume RUN"
            ) from None

    # --- orders and state, from rank 0 --------------------------------------------------------

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (rank 0 gets ``obj`` back). Tensors inside travel as one
        byte buffer, whatever their dtypes, and arrive on the CPU (or this rank's GPU when they
        were on rank 0's)."""
        with self._guard("exchanging orders"):
            leaves: list[torch.Tensor] = []
            box = [_strip(obj, leaves) if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0, group=self.orders)
            slots = _slots(box[0])
            if not slots:
                return obj if self.rank == 0 else box[0]
            sizes = [_numel(s.shape) * s.dtype.itemsize for s in slots]
            if self.rank == 0:
                wire = torch.cat([_as_bytes(leaves[s.index]) for s in slots])
            else:
                wire = torch.empty(sum(sizes), dtype=torch.uint8)
            dist.broadcast(wire, src=0, group=self.orders)
        if self.rank == 0:
            return obj
        received, offset = {}, 0
        for s, size in zip(slots, sizes, strict=True):
            # a copy of its own: some consumers (Generator.set_state) misread views
            t = wire[offset : offset + size].clone().view(s.dtype).view(s.shape)
            received[s.index] = t.to(self.device) if s.cuda else t
            offset += size
        return _fill(box[0], received)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, at rank 0 (None elsewhere)."""
        with self._guard("gathering"):
            out: list[Any] | None = [None] * self.world if self.rank == 0 else None
            dist.gather_object(obj, out, dst=0, group=self.orders)
        return out

    # --- training collectives ----------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model for forward and backward passes: DDP, which all-reduces gradients."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        with self._guard("wrapping the model in DistributedDataParallel"):
            return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def agree(
        self, loss: float, bad: bool, stop: bool, due: bool
    ) -> tuple[float, bool, bool, bool]:
        """The ranks' periodic all-reduce in training: the mean over ranks of their loss sums,
        whether any was not finite, and rank 0's decisions to stop and to write a mid-round
        checkpoint (the other ranks' votes do not count)."""
        lead = self.rank == 0
        t = torch.tensor(
            [0.0 if bad else loss, float(bad), float(stop and lead), float(due and lead)],
            dtype=torch.float64,
            device=self.device,
        )
        with self._guard("training"):
            dist.all_reduce(t)
        mean, any_bad, stop_, due_ = t.tolist()
        return (float("nan") if any_bad else mean / self.world), any_bad > 0, stop_ > 0, due_ > 0

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        with self._guard("summing counts"):
            dist.all_reduce(t)
        return t.tolist()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank: DDP broadcasts them before each
        forward pass, but the last batch leaves each rank with its own."""
        with self._guard("sharing BatchNorm statistics"), torch.no_grad():
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _store() -> dist.Store:
    """The rendezvous store, with a key prefix of its own for each elastic restart.

    Measured with torch 2.14: after torchrun restarts workers (``--max-restarts``) that were
    killed, the plain ``env://`` set-up reads the previous attempt's gloo addresses from the
    agent's store and fails ("connectFullMesh ... Connection refused").
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun serves it
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    base = dist.TCPStore(
        os.environ.get("MASTER_ADDR", "127.0.0.1"),
        int(os.environ.get("MASTER_PORT", "29500")),
        world,
        is_master=rank == 0 and not agent,
        timeout=dt.timedelta(minutes=30),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"iterprune/attempt-{attempt}", base)


# --- data ---------------------------------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``: disjoint, unpadded shards that together cover the
    data once (validation must count each sample exactly once)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = range(rank, n, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard(loader: Any, group: Group, train: bool) -> DataLoader:
    """The same loader over this rank's shard: a DistributedSampler for training (equal shards,
    padded, so every rank runs the same number of batches), a :class:`ShardSampler` for
    validation."""
    kind = "train" if train else "validation"
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise UserError(
            f"under torchrun the {kind} data must be a torch DataLoader over a map-style dataset "
            f"(got {type(loader).__name__}), so that iterprune can shard it across ranks"
        )
    if loader.batch_size is None:
        raise UserError(
            f"under torchrun the {kind} DataLoader cannot use a custom batch_sampler; give it a "
            "batch_size instead"
        )
    n = len(loader.dataset)  # type: ignore[arg-type]
    if train:
        sampler: Sampler[int] = DistributedSampler(
            loader.dataset,
            num_replicas=group.world,
            rank=group.rank,
            shuffle=isinstance(loader.sampler, RandomSampler),
            seed=0,
        )
    else:
        sampler = ShardSampler(n, group.rank, group.world)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        generator=torch.Generator() if train else None,
        persistent_workers=loader.persistent_workers,
    )


# --- what every rank checks and shares ----------------------------------------------------------


def digest(state: dict[str, torch.Tensor], mask: pruning.Mask | None) -> str:
    """sha256 of a model's state_dict (names, dtypes, shapes, bytes) and its mask."""
    h = hashlib.sha256()
    for part, tensors in (("model", state), ("mask", mask or {})):
        for key in sorted(tensors):
            t = tensors[key].detach().cpu().contiguous()
            h.update(f"{part}/{key}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(
                (t.to(torch.uint8) if t.dtype == torch.bool else t)
                .view(-1)
                .view(torch.uint8)
                .numpy()
                .tobytes()
            )
    return h.hexdigest()


def share_mid(group: Group, model: nn.Module, pos: training.Position) -> list[Any] | None:
    """Every rank's part of a mid-round checkpoint (its random state and its loader generator's
    state), at rank 0; rank 0's BatchNorm statistics go to all ranks first, so the checkpoint
    describes every rank."""
    group.sync_buffers(model)
    return group.gather({"rng": rng.capture(), "loader_state": pos.loader_state})


# --- rank 0 -------------------------------------------------------------------------------------


class Leader:
    """Rank 0's side: tells the other ranks what to do next, then does it too."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.broken = False  # an order failed half-way: the ranks no longer wait for orders

    def open(self, run: str, row: dict[str, Any]) -> None:
        self.group.broadcast(
            (
                "open",
                {
                    "run": run,
                    "schedule": row["schedule"],
                    "base_dir": row["base_dir"] or ".",
                    "threads": int(row["num_threads"]),
                },
            )
        )

    @contextlib.contextmanager
    def order(self, name: str, payload: Any = None) -> Iterator[None]:
        """Send an order, then do rank 0's part of it in the ``with`` block."""
        if self.broken:
            raise PeerLost("the ranks lost step with each other earlier in this run")
        try:
            self.group.broadcast((name, payload))
            yield
        except BaseException:
            self.broken = True
            raise

    def sync(
        self,
        model: nn.Module,
        mask: pruning.Mask | None,
        optimizer: torch.optim.Optimizer,
        architecture: dict | None,
    ) -> None:
        state = {
            "model": model.state_dict(),
            "mask": mask,
            "architecture": architecture,
            "optimizer": optimizer.state_dict(),
        }
        with self.order("sync", state):
            pass

    def verify(self, model: nn.Module, mask: pruning.Mask | None, label: str) -> str:
        """The digest every rank agrees on; raises :class:`RanksDisagree` when one differs."""
        with self.order("verify"):
            digests = self.group.gather(digest(model.state_dict(), mask)) or []
        odd = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise RanksDisagree(
                f"after {label}, rank(s) {', '.join(map(str, odd))} hold different weights or "
                "masks than rank 0; the run stops here (its accepted rounds are safe). This "
                "points to nondeterministic training across ranks; resume to redo the round."
            )
        return digests[0]

    def close(self, code: int) -> None:
        """Tell the other ranks to exit with ``code`` (when they are waiting for an order)."""
        if not self.broken:
            with contextlib.suppress(IterpruneError):
                self.group.broadcast(("done", code))


# --- the other ranks ----------------------------------------------------------------------------


def follow(group: Group) -> int:
    """A rank other than 0: wait for rank 0 to open the run, then carry out its orders until
    ``done``; the exit code rank 0 sends.

    Ctrl-C reaches every process of the terminal, and torchrun passes SIGTERM on to all ranks:
    rank 0 alone acts on them (it stops every rank after the same batch, with a checkpoint), so
    the other ranks ignore both and follow it to the end.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    kind, payload = group.broadcast()
    if kind == "done":
        return int(payload)
    follower = Follower(group, payload)
    with group._guard("following rank 0's orders"):  # DDP's own collectives raise too
        return follower.serve()


class Follower:
    """Holds this rank's copy of the model and does its part of each order, on its shard."""

    def __init__(self, group: Group, opening: dict[str, Any]) -> None:
        self.group = group
        s = self.schedule = from_canonical(json.loads(opening["schedule"]), opening["base_dir"])
        torch.set_num_threads(opening["threads"])
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = group.device = group.device_for(s.device)
        self.amp = self.device.type == "cuda" and s.finetune.amp != "off"
        self.model = self._fresh_model().to(self.device)
        train, val = sources.build_loaders(
            s.data, s.seed, s.base_dir, pin_memory=self.device.type == "cuda"
        )
        self.loaders = (shard(train, group, train=True), shard(val, group, train=False))
        self.mask: pruning.Mask | None = None
        self._new_state(None)

    def _fresh_model(self) -> nn.Module:
        s = self.schedule
        return sources.fresh_model(s.model, s.seed, s.base_dir)

    def _new_state(self, optimizer_state: dict | None) -> None:
        self.params = pruning.prunable_parameters(self.model, self.schedule.prune.exclude)
        self.optimizer = recipe.optimizer(self.schedule.finetune, self.model)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)

    def serve(self) -> int:
        while True:
            kind, payload = self.group.broadcast()
            if kind == "done":
                return int(payload)
            getattr(self, f"_{kind}")(payload)

    def _sync(self, p: dict[str, Any]) -> None:
        model = channels.fit(self.model, p["model"], p["architecture"], self._fresh_model)
        self.model = model.to(self.device)
        self.mask = p["mask"]
        self._new_state(p["optimizer"])

    def _pretrain(self, p: dict[str, Any]) -> None:
        train, _ = self.loaders
        rng.seed_everything(p["seed"], (train,), self.group.rank)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=p["lr"])
        training.train(
            self.model,
            train,
            optimizer,
            p["epochs"],
            training.Options(
                device=self.device, group=self.group, progress=_fault_point("pretrain_batch")
            ),
        )

    def _finetune(self, p: dict[str, Any]) -> None:
        train, _ = self.loaders
        position, on_resumed = None, None
        if p["position"] is None:
            rng.seed_everything(p["seed"], (train,), self.group.rank)
        else:
            rng.seed_sampler(train, p["seed"])
            mine = p["ranks"][self.group.rank]
            position = training.Position(**{**p["position"], "loader_state": mine["loader_state"]})
            on_resumed = lambda: rng.restore(mine["rng"])  # noqa: E731
        scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if scaler is not None and p["scaler"]:
            scaler.load_state_dict(p["scaler"])
        recipe.finetune(
            self.schedule.finetune,
            self.model,
            self.params,
            self.mask or {},
            self.optimizer,
            self.loaders,
            self.device,
            group=self.group,
            scaler=scaler,
            start=position,
            on_resumed=on_resumed,
            checkpoint=lambda pos: share_mid(self.group, self.model, pos),
            progress=_fault_point("finetune_batch"),
        )

    def _evaluate(self, p: None) -> None:
        training.evaluate(self.model, self.loaders[1], self.device, self.group)

    def _control(self, p: dict[str, Any]) -> None:
        train, val = self.loaders
        recipe.control_accuracy(
            self.schedule, p["mask"], train, val, self.device, p["seed"], group=self.group
        )

    def _verify(self, p: None) -> None:
        self.group.gather(digest(self.model.state_dict(), self.mask))


# --- helpers ------------------------------------------------------------------------------------


def _fault_point(name: str) -> training.Progress:
    """A progress callback that only passes a crash test's fault point (see faults.py)."""
    return lambda epoch, batch, batches: faults.point(name)


def _strip(obj: Any, leaves: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return _Slot(len(leaves) - 1, tuple(obj.shape), obj.dtype, obj.is_cuda)
    if isinstance(obj, dict):
        return {k: _strip(v, leaves) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(v, leaves) for v in obj)
    return obj


def _slots(obj: Any) -> list[_Slot]:
    if isinstance(obj, _Slot):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _slots(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _slots(v)]
    return []


def _fill(obj: Any, tensors: dict[int, torch.Tensor]) -> Any:
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
