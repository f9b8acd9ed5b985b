"""Crash-safe checkpoint writes and resume latency, on a randomly initialised ResNet-50.

1. ``checkpoints.save`` (temp file, sha256 while writing, fsync, rename, directory fsync) of
   ResNet-50 weights + masks + Adam state, against a bare ``torch.save`` of the same objects to the
   same directory; interleaved, median of several. Target: ratio <= 1.3.
2. The time from launching ``iterprune resume`` to the end of the first fine-tuning step of that
   model (process start, imports, state database, model build, verified checkpoint load, one
   batch), measured by letting the resumed process kill itself after its first batch.

    python bench/checkpoint.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torchvision

from iterprune.core import pruning
from iterprune.state import checkpoints

FACTORIES = """
import torch, torchvision
from torch.utils.data import DataLoader, TensorDataset

def resnet50():
    return torchvision.models.resnet50(num_classes=10)

def loaders(batch_size):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
    ds = TensorDataset(x, y)
    return (DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator()),
            DataLoader(ds, batch_size=batch_size))
"""

SCHEDULE = """
name: r50
threads: {threads}
model: {{factory: "bench_factories:resnet50"}}
data: {{factory: "bench_factories:loaders", batch_size: 8}}
pretrain: {{epochs: 0}}
prune: {{step: 0.2, target_sparsity: 0.9}}
finetune: {{epochs: 1, optimizer: adam, lr: 1.0e-4}}
validate: {{max_drop: 100}}
"""


def write_times(obj: dict, directory: Path, repeats: int) -> tuple[float, float, int]:
    safe, bare = [], []
    for i in range(repeats):
        start = time.perf_counter()
        written = checkpoints.save(obj, directory / f"safe-{i}.pt")
        safe.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.save(obj, directory / f"bare-{i}.pt")
        bare.append(time.perf_counter() - start)
        (directory / f"safe-{i}.pt").unlink()
        (directory / f"bare-{i}.pt").unlink()
    return statistics.median(safe), statistics.median(bare), written.bytes


def resume_latency(workdir: Path, threads: int, repeats: int) -> float:
    (workdir / "bench_factories.py").write_text(textwrap.dedent(FACTORIES))
    schedule = workdir / "r50.yaml"
    schedule.write_text(SCHEDULE.format(threads=threads))
    env = {**os.environ, "ITERPRUNE_STATE_DIR": str(workdir / "state")}
    cmd = [sys.executable, "-m", "iterprune"]
    # round 1 accepted (2 batches), then killed at round 2's first batch: a run to resume
    first = subprocess.run(
        [*cmd, "start", str(schedule)],
        env={**env, "ITERPRUNE_KILL_AT": "finetune_batch:3"},
        capture_output=True,
        text=True,
    )
    if first.returncode != -9:
        raise SystemExit(f"setting up the run failed:\n{first.stdout}\n{first.stderr}")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(
            [*cmd, "resume", "r50"],
            env={**env, "ITERPRUNE_KILL_AT": "finetune_batch:1"},
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - start)
        if proc.returncode != -9:
            raise SystemExit(f"resume did not reach its first step:\n{proc.stdout}\n{proc.stderr}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10)
    params = pruning.prunable_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    obj = {
        "model": model.state_dict(),
        "mask": pruning.dense_mask(params),
        "optimizer": optimizer.state_dict(),
    }
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        safe_s, bare_s, size = write_times(obj, Path(tmp), args.repeats)
        resume_s = resume_latency(Path(tmp), args.threads, max(1, args.repeats // 2))
    ratio = safe_s / bare_s
    print(
        f"ResNet-50 + masks + Adam state ({size / 2**20:.0f} MiB), {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print(f"{'write':<52}{'median s':>10}{'ratio':>8}")
    print(f"{'bare torch.save':<52}{bare_s:>10.3f}{1.0:>8.2f}")
    print(
        f"{'checkpoints.save (sha256, fsync, rename, dir fsync)':<52}{safe_s:>10.3f}{ratio:>8.2f}"
    )
    print(f"target ratio <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'}")
    print(f"iterprune resume -> end of first fine-tuning step: {resume_s:.2f} s")
    print(
        json.dumps(
            {
                "ratio": round(ratio, 3),
                "safe_s": round(safe_s, 4),
                "bare_s": round(bare_s, 4),
                "bytes": size,
                "resume_to_first_step_s": round(resume_s, 3),
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
