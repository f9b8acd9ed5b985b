"""One 40% global-magnitude prune of a randomly initialised ResNet-50: iterprune vs torch.

Baseline: ``torch.nn.utils.prune.global_unstructured(..., pruning_method=L1Unstructured)``
followed by ``prune.remove`` (what a by-hand script does). Both are timed in this process, on
fresh copies of the same weights, and the median of several runs is reported. Both must produce
the same mask, which is checked. Target: ratio (iterprune / torch) <= 0.15. A second row times
``prune.method: lamp`` (LAMP scores, one global ranking) the same way. Target: no slower than
torch's global magnitude (ratio <= 1).

Peak memory: in a fresh process each, the high-water mark above the resident size just before
the prune (Linux: reset through /proc/self/clear_refs, read as VmHWM), against the size of the
prunable weights. Target: iterprune holds at most one extra copy of them.

    python bench/prune_step.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune
import torchvision

from iterprune.core import pruning


def run_iterprune(
    model: torch.nn.Module, amount: float, method: str = "global_magnitude"
) -> tuple[float, dict]:
    params = pruning.prunable_parameters(model)
    start = time.perf_counter()
    mask = pruning.dense_mask(params)
    n = round(pruning.count_alive(mask) * amount)
    new = pruning.prune(params, mask, n, method)
    pruning.apply(params, new)
    return time.perf_counter() - start, new


def run_torch(model: torch.nn.Module, amount: float) -> tuple[float, dict]:
    params = pruning.prunable_parameters(model)
    modules = [(model.get_submodule(n.removesuffix(".weight")), "weight") for n in params]
    start = time.perf_counter()
    torch_prune.global_unstructured(modules, torch_prune.L1Unstructured, amount=amount)
    masks = {n: m.weight_mask.bool() for n, (m, _) in zip(params, modules, strict=True)}
    for m, name in modules:
        torch_prune.remove(m, name)
    return time.perf_counter() - start, masks


def _status_mb(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024


def peak_extra_mb(method: str, amount: float, threads: int) -> float:
    """Peak memory of one prune above the resident size before it, in a fresh process (MB):
    in this process, memory freed by the timing runs would be reused and hide the peak."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--peak-of",
            method,
            "--amount",
            str(amount),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _measure_peak(method: str, amount: float) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    params = pruning.prunable_parameters(model)
    mask = pruning.dense_mask(params)  # a run holds its current mask before every prune
    n = round(pruning.count_alive(mask) * amount)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    base = _status_mb("VmRSS")
    if method in ("iterprune", "lamp"):
        pruning.apply(params, pruning.prune(params, mask, n, pruning_method(method)))
    else:
        run_torch(model, amount)
    print(_status_mb("VmHWM") - base)


def pruning_method(row: str) -> str:
    return "lamp" if row == "lamp" else "global_magnitude"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amount", type=float, default=0.4)
    ap.add_argument("--peak-of", choices=["iterprune", "lamp", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        _measure_peak(args.peak_of, args.amount)
        return
    torch.manual_seed(0)
    base = torchvision.models.resnet50()
    n_weights = sum(p.numel() for p in pruning.prunable_parameters(base).values())

    ours, theirs, lamp = [], [], []
    for _ in range(args.repeats):
        t_ours, mask_ours = run_iterprune(copy.deepcopy(base), args.amount)
        t_torch, mask_torch = run_torch(copy.deepcopy(base), args.amount)
        t_lamp, mask_lamp = run_iterprune(copy.deepcopy(base), args.amount, "lamp")
        same = all(torch.equal(mask_ours[k], mask_torch[k]) for k in mask_ours)
        ours.append(t_ours)
        theirs.append(t_torch)
        lamp.append(t_lamp)
    it_s, torch_s, lamp_s = (statistics.median(t) for t in (ours, theirs, lamp))
    ratio, lamp_ratio = it_s / torch_s, lamp_s / torch_s
    lamp_sparsity = 1 - pruning.count_alive(mask_lamp) / n_weights
    weights_mb = n_weights * 4 / 2**20
    mem_ours = peak_extra_mb("iterprune", args.amount, args.threads)
    mem_lamp = peak_extra_mb("lamp", args.amount, args.threads)
    mem_torch = peak_extra_mb("torch", args.amount, args.threads)

    print(
        f"ResNet-50, {n_weights:,} prunable weights, {args.amount:.0%} global magnitude, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    print(f"{'method':<44}{'median s':>10}{'ratio':>8}")
    print(f"{'torch global_unstructured(L1) + remove':<44}{torch_s:>10.3f}{1.0:>8.2f}")
    print(f"{'iterprune pruning.prune + apply':<44}{it_s:>10.3f}{ratio:>8.2f}")
    print(f"{'iterprune pruning.prune(method=lamp) + apply':<44}{lamp_s:>10.3f}{lamp_ratio:>8.2f}")
    print(f"masks identical: {same}; target ratio <= 0.15: {'met' if ratio <= 0.15 else 'NOT met'}")
    print(
        f"lamp sparsity {lamp_sparsity:.4f}; target ratio <= 1: "
        f"{'met' if lamp_ratio <= 1 else 'NOT met'}"
    )
    print(
        f"{'peak extra memory':<44}{'MB':>10}{'copies':>8}   (prunable weights: {weights_mb:.0f} MB)"
    )
    print(
        f"{'torch global_unstructured(L1) + remove':<44}{mem_torch:>10.0f}{mem_torch / weights_mb:>8.2f}"
    )
    print(f"{'iterprune pruning.prune + apply':<44}{mem_ours:>10.0f}{mem_ours / weights_mb:>8.2f}")
    print(f"{'iterprune lamp + apply':<44}{mem_lamp:>10.0f}{mem_lamp / weights_mb:>8.2f}")
    worst = max(mem_ours, mem_lamp)
    print(f"target at most one extra copy (both): {'met' if worst <= weights_mb else 'NOT met'}")
    print(
        json.dumps(
            {
                "ratio": round(ratio, 4),
                "iterprune_s": round(it_s, 4),
                "torch_s": round(torch_s, 4),
                "masks_identical": same,
                "peak_extra_mb": round(mem_ours, 1),
                "torch_peak_extra_mb": round(mem_torch, 1),
                "lamp_ratio": round(lamp_ratio, 4),
                "lamp_s": round(lamp_s, 4),
                "lamp_peak_extra_mb": round(mem_lamp, 1),
                "weights_mb": round(weights_mb, 1),
                "weights": n_weights,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
