"""Cost of keeping pruned weights at zero during fine-tuning: masked step vs the same dense step.

One training step (forward, backward, Adam step) with iterprune's MaskEnforcer (weights re-masked
after the optimizer step) against the identical step without it, interleaved so both see the same machine
state; median over many steps. Target: overhead <= 3%.

    python bench/mask_overhead.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torchvision
from torch import nn

from iterprune.core import pruning
from iterprune.engine import examples, training


def one_step(model, optimizer, enforcer, x, y) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    if enforcer is not None:
        enforcer.mask_weights()
    return time.perf_counter() - start


def measure(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    dense = copy.deepcopy(model)
    masked = copy.deepcopy(model)
    params = pruning.prunable_parameters(masked)
    mask = pruning.prune(
        params, pruning.dense_mask(params), pruning.count_alive(pruning.dense_mask(params)) // 2
    )
    pruning.apply(params, mask)
    enforcer = training.MaskEnforcer(params, mask)
    opt_dense = torch.optim.Adam(dense.parameters(), lr=1e-4)
    opt_masked = torch.optim.Adam(masked.parameters(), lr=1e-4)
    for _ in range(3):  # warm-up
        one_step(dense, opt_dense, None, x, y)
        one_step(masked, opt_masked, enforcer, x, y)
    t_dense, t_masked = [], []
    for _ in range(steps):
        t_dense.append(one_step(dense, opt_dense, None, x, y))
        t_masked.append(one_step(masked, opt_masked, enforcer, x, y))
    d, m = statistics.median(t_dense), statistics.median(t_masked)
    return {"model": name, "dense_ms": d * 1e3, "masked_ms": m * 1e3, "overhead": m / d - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        (
            "resnet18, batch 32, 3x64x64",
            torchvision.models.resnet18(num_classes=10),
            torch.randn(32, 3, 64, 64),
            torch.randint(0, 10, (32,)),
        ),
        (
            "digits_cnn, batch 64, 1x8x8",
            examples.digits_cnn(),
            torch.randn(64, 1, 8, 8),
            torch.randint(0, 10, (64,)),
        ),
    ]
    rows = [measure(name, model, x, y, args.steps) for name, model, x, y in cases]
    print(
        f"Adam fine-tuning step, 50% sparse masks, {args.threads} threads, median of {args.steps}"
    )
    print(f"{'model':<32}{'dense ms':>10}{'masked ms':>11}{'overhead':>10}")
    for r in rows:
        print(
            f"{r['model']:<32}{r['dense_ms']:>10.2f}{r['masked_ms']:>11.2f}{r['overhead']:>+10.1%}"
        )
    worst = max(r["overhead"] for r in rows)
    print(f"target overhead <= 3%: {'met' if worst <= 0.03 else 'NOT met'} (worst {worst:+.1%})")
    print(
        json.dumps(
            {
                "overhead": {r["model"].split(",")[0]: round(r["overhead"], 4) for r in rows},
                "dense_ms": {r["model"].split(",")[0]: round(r["dense_ms"], 3) for r in rows},
                "masked_ms": {r["model"].split(",")[0]: round(r["masked_ms"], 3) for r in rows},
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
