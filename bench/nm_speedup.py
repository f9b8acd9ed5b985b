"""Does 2:4 sparsity make a Linear layer faster? Dense against 2:4 semi-structured sparse weights
(``torch.sparse.to_sparse_semi_structured``), float16, for a 4096×4096 layer and the tiny language
model's layers (width 64: qkv 64→192, proj 64→64, fc 64→256, out 256→64), at batch sizes
(rows of input) 1, 16 and 256; median latency of interleaved timed calls, dense / sparse.

Target: ≥ 1.2× at 4096×4096 and batch 256 on an A100/H100-class GPU. 2:4 kernels exist only on CUDA (compute
capability 8.0+); on a CPU the bench times what a CPU can run — the dense layer against the same
layer with its 2:4-masked weights, which is the dense kernel over zeros — and says so.

    python bench/nm_speedup.py [--device cuda] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

SHAPES = {"4096x4096": (4096, 4096), "qkv": (64, 192), "proj": (64, 64), "fc": (64, 256)}
SHAPES["out"] = (256, 64)
BATCHES = (1, 16, 256)


def two_of_four(weight: torch.Tensor) -> torch.Tensor:
    """The weight with the two smallest of every four consecutive inputs of a row zeroed."""
    groups = weight.reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    return (groups * keep).reshape(weight.shape)


def timed(layer: nn.Module, x: torch.Tensor, sync) -> float:
    sync()
    start = time.perf_counter()
    layer(x)
    sync()
    return time.perf_counter() - start


@torch.inference_mode()
def measure(shape: tuple[int, int], batch: int, device: torch.device, repeats: int) -> dict:
    n_in, n_out = shape
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    dense = nn.Linear(n_in, n_out).to(device, dtype)
    other = nn.Linear(n_in, n_out).to(device, dtype)
    other.load_state_dict(dense.state_dict())
    other.weight.copy_(two_of_four(other.weight))
    kind = "2:4 masked, dense kernel"
    if device.type == "cuda":
        from torch.sparse import to_sparse_semi_structured

        other.weight = nn.Parameter(to_sparse_semi_structured(other.weight))
        kind = "2:4 semi-structured"
    x = torch.randn(batch, n_in, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(5):  # warm-up
        dense(x), other(x)
    d, s = [], []
    for _ in range(repeats):
        d.append(timed(dense, x, sync))
        s.append(timed(other, x, sync))
    return {
        "dense_ms": 1e3 * statistics.median(d),
        "sparse_ms": 1e3 * statistics.median(s),
        "kind": kind,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        name, cap = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        print(f"{name} (compute capability {cap[0]}.{cap[1]}), float16")
    else:
        print(
            f"CPU, {args.threads} threads, float32: 2:4 kernels need CUDA (compute capability "
            "8.0+), so the sparse column is the dense kernel over 2:4-masked weights"
        )
    print(f"{'layer':<12}{'batch':>7}{'dense ms':>11}{'2:4 ms':>11}{'speedup':>10}")
    rows = []
    for label, shape in SHAPES.items():
        for batch in BATCHES:
            found = measure(shape, batch, device, args.repeats)
            ratio = found["dense_ms"] / found["sparse_ms"]
            rows.append({"layer": label, "batch": batch, **found, "speedup": ratio})
            print(
                f"{label:<12}{batch:>7}{found['dense_ms']:>11.4f}{found['sparse_ms']:>11.4f}"
                f"{ratio:>9.2f}x",
                flush=True,
            )
    big = next(r["speedup"] for r in rows if r["layer"] == "4096x4096" and r["batch"] == 256)
    verdict = "met" if big >= 1.2 else "NOT met"
    if device.type != "cuda":
        verdict = "not measurable without CUDA"
    print(f"target >= 1.2x at 4096x4096, batch 256 ({big:.2f}x): {verdict}")
    print(json.dumps({"device": str(device), "rows": rows}))


if __name__ == "__main__":
    main()
