"""What running under torchrun costs iterprune itself, on two CPU ranks (gloo, 1 thread each).

1. Fine-tuning: one round of ``training.train`` with a Group (wrapping the model in DDP, the
   all-reduce every few batches that carries the loss and rank 0's stop / checkpoint decisions,
   set_epoch, the BatchNorm sync at the end) against a hand-written DDP loop doing the same work
   (same shards, same weight masking after each step, the loss read back); interleaved, median.
2. Sending state: rank 0's ResNet-50 weights, mask and Adam state (what a ``sync`` order carries
   after each prune or rollback) with ``Group.broadcast`` against ``broadcast_object_list`` of the
   same dict (the obvious way); median of a few.

    python bench/distributed.py [--epochs 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from iterprune.core import pruning, rng
from iterprune.engine import distributed, examples, training
from iterprune.engine.training import AGREE_EVERY


def plain_round(model: nn.Module, loader, optimizer, enforcer, epochs: int) -> None:
    ddp = nn.parallel.DistributedDataParallel(model)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(ddp(x), y)
            float(loss.detach())
            loss.backward()
            optimizer.step()
            enforcer.mask_weights()


def worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    group = distributed.Group()
    results: dict = {}
    try:
        train, _, _ = examples.digits_loaders(32, 0.25, seed=0)
        loader = distributed.shard(train, group, train=True)
        rng.seed_sampler(loader, 0)
        torch.manual_seed(0)
        ours_model, plain_model = examples.digits_cnn(), examples.digits_cnn()
        plain_model.load_state_dict(ours_model.state_dict())
        ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.01, momentum=0.9)
        plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9)
        params = pruning.prunable_parameters(ours_model)
        mask = pruning.prune(
            params, pruning.dense_mask(params), pruning.count_alive(pruning.dense_mask(params)) // 2
        )
        pruning.apply(params, mask)
        plain_params = pruning.prunable_parameters(plain_model)
        pruning.apply(plain_params, mask)
        opts = training.Options(
            enforcer=training.MaskEnforcer(params, mask),
            group=group,
            should_stop=lambda: False,
            checkpoint_due=lambda: False,
        )
        plain_enforcer = training.MaskEnforcer(plain_params, mask)
        t_ours, t_plain = [], []
        for repeat in range(args.repeats + 1):  # the first pair is a warm-up
            dist.barrier()
            start = time.perf_counter()
            training.train(ours_model, loader, ours_opt, args.epochs, opts)
            dist.barrier()
            middle = time.perf_counter()
            plain_round(plain_model, loader, plain_opt, plain_enforcer, args.epochs)
            dist.barrier()
            if repeat:
                t_ours.append(middle - start)
                t_plain.append(time.perf_counter() - middle)
        flags = []
        for _ in range(200):
            start = time.perf_counter()
            group.agree(1.0, False, False, False)
            flags.append(time.perf_counter() - start)
        results["finetune"] = {
            "batches": len(loader),
            "ours_s": statistics.median(t_ours),
            "plain_s": statistics.median(t_plain),
            "agree_ms": statistics.median(flags) * 1e3,
        }

        big = torchvision.models.resnet50()
        big_opt = torch.optim.Adam(big.parameters(), lr=1e-4)
        nn.functional.cross_entropy(big(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
        big_opt.step()  # Adam state exists now
        big_params = pruning.prunable_parameters(big)
        state = {
            "model": big.state_dict(),
            "mask": pruning.dense_mask(big_params),
            "optimizer": big_opt.state_dict(),
            "architecture": None,
        }
        t_group, t_objects = [], []
        for _ in range(args.repeats):
            dist.barrier()
            start = time.perf_counter()
            group.broadcast(state if rank == 0 else None)
            dist.barrier()
            middle = time.perf_counter()
            box = [state if rank == 0 else None]
            dist.broadcast_object_list(box, src=0, group=group.orders)
            dist.barrier()
            t_group.append(middle - start)
            t_objects.append(time.perf_counter() - middle)
        nbytes = sum(t.numel() * t.element_size() for t in _tensors(state))
        results["sync"] = {
            "mib": nbytes / 2**20,
            "ours_s": statistics.median(t_group),
            "objects_s": statistics.median(t_objects),
        }
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        group.close()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"/tmp/iterprune-bench-distributed-{os.getpid()}.json"
    mp.spawn(worker, args=(port, args, out), nprocs=2, join=True)
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    ft, sy = r["finetune"], r["sync"]
    print(
        f"2 CPU ranks (gloo), 1 thread each; a round of {args.epochs} epochs of the digits CNN at "
        f"50% sparsity, {ft['batches']} batches of 32 per rank per epoch; median of "
        f"{args.repeats} interleaved rounds"
    )
    print(f"{'':44}{'s':>8}{'ratio':>8}")
    print(f"{'plain DDP loop (by hand)':44}{ft['plain_s']:8.3f}{1.0:8.2f}")
    ratio = ft["ours_s"] / ft["plain_s"]
    print(f"{'iterprune training.train under torchrun':44}{ft['ours_s']:8.3f}{ratio:8.3f}")
    print(
        f"  (one all-reduce of loss and decisions, made every {AGREE_EVERY} batches: {ft['agree_ms']:.3f} ms)"
    )
    print(
        f"sending ResNet-50 weights + mask + Adam state ({sy['mib']:.0f} MiB) rank 0 -> rank 1, "
        f"median of {args.repeats}"
    )
    print(f"{'broadcast_object_list (pickled)':44}{sy['objects_s']:8.3f}{1.0:8.2f}")
    sync_ratio = sy["ours_s"] / sy["objects_s"]
    print(f"{'Group.broadcast (one byte buffer)':44}{sy['ours_s']:8.3f}{sync_ratio:8.3f}")
    print(json.dumps({"finetune_ratio": round(ratio, 4), "sync_ratio": round(sync_ratio, 4), **r}))


if __name__ == "__main__":
    main()
