"""What a sensitivity analysis costs beyond its evaluations, on a ResNet-50.

``iterprune analyze --sensitivity`` prunes each layer alone at each level, evaluates, and puts the
layer back. Its cost should be its evaluations: this prints the analysis' wall time against
(number of evaluations x one evaluation), where one evaluation is the median of separately timed
evaluations of the dense model, and against the sum of the evaluations timed inside the analysis
(the same figure without the machine's drift between the two). Target: ratio <= 1.1.

Randomly initialised torchvision ResNet-50 (no downloads), random validation images (accuracy is
meaningless here; the work is the same).

    python bench/sensitivity.py [--batches 2] [--batch-size 16] [--size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision

from iterprune.core import pruning, sensitivity
from iterprune.engine import evaluation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="0.5,0.75,0.9,0.95,0.98")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10).eval()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.size, args.size)
    data = [
        (torch.randn(shape, generator=g), torch.randint(0, 10, shape[:1], generator=g))
        for _ in range(args.batches)
    ]
    levels = [float(x) for x in args.levels.split(",")]
    params = pruning.prunable_parameters(model)
    evaluation.accuracy(model, data)  # warm-up
    alone = []
    for _ in range(7):
        start = time.perf_counter()
        evaluation.accuracy(model, data)
        alone.append(time.perf_counter() - start)
    one = statistics.median(alone)

    inside: list[float] = []

    def evaluate() -> float:
        start = time.perf_counter()
        accuracy = evaluation.accuracy(model, data)
        inside.append(time.perf_counter() - start)
        return accuracy

    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    sensitivity.analyse(params, evaluate, levels)
    total = time.perf_counter() - start
    same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    n = len(inside)
    ratio, ratio_inside = total / (n * one), total / sum(inside)
    print(
        f"ResNet-50, {len(params)} prunable layers x {len(levels)} levels + baseline = {n} "
        f"evaluations of {args.batches} x {args.batch_size} images {args.size}x{args.size}, "
        f"{args.threads} threads"
    )
    print(f"{'':<44}{'seconds':>10}{'ratio':>8}")
    print(f"{'evaluations x one evaluation (median of 7)':<44}{n * one:>10.2f}{1.0:>8.2f}")
    print(f"{'sum of the evaluations inside the analysis':<44}{sum(inside):>10.2f}")
    print(f"{'the whole analysis':<44}{total:>10.2f}{ratio:>8.2f}")
    print(f"ratio against the evaluations timed inside: {ratio_inside:.3f}")
    print(f"weights bit-identical afterwards: {same}")
    print(f"target ratio <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'}")
    print(
        json.dumps(
            {
                "evaluations": n,
                "one_evaluation_s": round(one, 4),
                "total_s": round(total, 3),
                "ratio": round(ratio, 4),
                "ratio_inside": round(ratio_inside, 4),
                "bit_identical": same,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
