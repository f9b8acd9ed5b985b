"""The torchrun plumbing: the process group, sharded data, digests, and tensors on the wire.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here runs and no process group is created.
Under torchrun, :class:`Group` is this process's place among the ranks: orders travel on their own
gloo group with a long timeout (so ranks can wait out a closed time window), training collectives
on the default group (gloo on CPU, NCCL on CUDA). What the ranks say to each other, and who leads,
is ``orders.py``; this module knows nothing above it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

from iterprune.errors import PeerLost, UserError

ORDERS_TIMEOUT = dt.timedelta(days=30)  # a follower may wait this long for rank 0 (time windows)
Mask = dict[str, torch.Tensor]


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


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
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed collective into :class:`PeerLost`, naming what this rank was doing."""
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
        with self.guard("exchanging orders"):
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

    def collect(self, part: torch.Tensor) -> torch.Tensor | None:
        """At rank 0, every rank's part of a split sharded by :class:`ShardSampler` (rank r holds
        samples r, r + world, ...) back in the split's order, each sample once; None elsewhere."""
        parts = self.gather(part.detach().cpu())
        if parts is None:
            return None
        whole = torch.empty(sum(len(p) for p in parts), dtype=part.dtype)
        for rank, p in enumerate(parts):
            whole[rank :: self.world] = p
        return whole

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, at rank 0 (None elsewhere)."""
        with self.guard("gathering"):
            out: list[Any] | None = [None] * self.world if self.rank == 0 else None
            dist.gather_object(obj, out, dst=0, group=self.orders)
        return out

    # --- training collectives ----------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model for forward and backward passes: DDP, which all-reduces gradients."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        with self.guard("wrapping the model in DistributedDataParallel"):
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
        with self.guard("training"):
            dist.all_reduce(t)
        mean, any_bad, stop_, due_ = t.tolist()
        return (float("nan") if any_bad else mean / self.world), any_bad > 0, stop_ > 0, due_ > 0

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        with self.guard("summing counts"):
            dist.all_reduce(t)
        return t.tolist()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank: DDP broadcasts them before each
        forward pass, but the last batch leaves each rank with its own."""
        with self.guard("sharing BatchNorm statistics"), torch.no_grad():
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


def digest(state: dict[str, torch.Tensor], mask: Mask | None) -> str:
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


# --- tensors on the wire --------------------------------------------------------------------------


def _strip(obj: Any, leaves: list[torch.Tensor]) -> Any:
    """``obj`` with every tensor replaced by a :class:`_Slot` (the tensors go to ``leaves``)."""
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return _Slot(len(leaves) - 1, tuple(obj.shape), obj.dtype, obj.is_cuda)
    return _map(obj, lambda v: _strip(v, leaves))


def _slots(obj: Any) -> list[_Slot]:
    found: list[_Slot] = []

    def visit(v: Any) -> Any:
        if isinstance(v, _Slot):
            found.append(v)
            return v
        return _map(v, visit)

    visit(obj)
    return found


def _fill(obj: Any, tensors: dict[int, torch.Tensor]) -> Any:
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    return _map(obj, lambda v: _fill(v, tensors))


def _map(obj: Any, fn: Any) -> Any:
    """``fn`` applied to each item of a dict, list, tuple or dataclass (an order); else ``obj``."""
    if isinstance(obj, dict):
        return {k: fn(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(fn(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: fn(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **fields)
    return obj


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
