"""What keeping freed heap blocks is worth: fine-tuning steps with glibc's default malloc
thresholds against the ones a run's process sets (``iterprune/engine/heap.py``: freed blocks
under 32 MiB stay in the heap for the next step, up to 64 MiB of free memory is kept).

The setting belongs to a process and cannot be undone in it, so every measurement is a fresh
process: per repeat one with glibc's defaults (``ITERPRUNE_MALLOC=default``) and one with the
thresholds set, in alternating order (a machine that speeds up or slows down within a repeat
favours neither). Each process fine-tunes the model of ``schedules/tiny-lm.yaml`` (as built, 50%
pruned by global magnitude; ``--digits`` the digits CNN as well, 3 epochs a unit) for
``--batches`` batches, without and with the dense model as teacher, three times each in turn,
and reports the median milliseconds and page faults (minor: a fresh page zero-filled by the
kernel) per batch. The table is the median over repeats, and the ratio, set over default, is the
geometric mean of each repeat's ratio with its range. The arithmetic is the same either way;
only where memory comes from changes.

    python bench/heap.py [--repeats 4] [--batches 40] [--digits]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("default", "set")
MODELS = {"tiny LM": "tiny-lm.yaml", "digits CNN": "digits.yaml"}
DIGITS_EPOCHS = 3  # a digits unit: its epoch is 17 batches


def child(model: str, batches: int) -> dict[str, float]:
    """This process, in the mode its environment says: ms and page faults a batch."""
    import distill_cost
    import torch

    from iterprune.engine import heap

    torch.set_num_threads(2)
    heap.keep_freed_blocks()  # a no-op under ITERPRUNE_MALLOC=default
    pair = distill_cost.Pair(MODELS[model], {})
    pair.seconds(True, (1, 5))  # warm-up, not timed
    if model == "digits CNN":
        unit, batches = (DIGITS_EPOCHS, None), DIGITS_EPOCHS * len(pair.train)
    else:
        unit = (1, batches)
    found: dict[str, list[float]] = {}
    for _ in range(3):
        for taught in (False, True):
            key = "teacher" if taught else "plain"
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            pair.seconds(taught, unit)
            found.setdefault(f"{key}_ms", []).append((time.perf_counter() - start) * 1e3 / batches)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            found.setdefault(f"{key}_faults", []).append(faults / batches)
    return {key: statistics.median(values) for key, values in found.items()}


def run(mode: str, model: str, batches: int) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("ITERPRUNE_MALLOC", None)
    if mode == "default":
        env["ITERPRUNE_MALLOC"] = "default"
    args = ["--child", model, "--batches", str(batches)]
    done = subprocess.run(
        [sys.executable, __file__, *args],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def geometric(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def report(model: str, results: dict[str, list[dict[str, float]]]) -> dict:
    row: dict = {}
    for mode in MODES:
        row[mode] = {k: statistics.median(r[k] for r in results[mode]) for k in results[mode][0]}
    for key in ("plain_ms", "teacher_ms"):
        ratios = [s[key] / d[key] for d, s in zip(results["default"], results["set"], strict=True)]
        row[f"{key}_ratio"] = [geometric(ratios), min(ratios), max(ratios)]
    for mode in MODES:
        m = row[mode]
        print(
            f"{model:<12}{mode:<9}{m['plain_ms']:>10.2f}{m['plain_faults']:>11.0f}"
            f"{m['teacher_ms']:>12.2f}{m['teacher_faults']:>11.0f}"
            f"{m['teacher_ms'] / m['plain_ms']:>16.2f}x",
            flush=True,
        )
    for key, label in (("plain_ms", "plain"), ("teacher_ms", "with the teacher")):
        mean, low, high = row[f"{key}_ratio"]
        print(f"{'':<12}set / default, {label}: {mean:.3f} ({low:.3f}-{high:.3f})")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4, help="pairs of fresh processes per model")
    ap.add_argument("--batches", type=int, default=40, help="the LM's batches a unit")
    ap.add_argument("--digits", action="store_true", help="the digits CNN as well")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batches)))
        return
    models = ["tiny LM", "digits CNN"] if args.digits else ["tiny LM"]
    print(
        f"ms and page faults per batch, median over {args.repeats} pairs of fresh processes "
        "(alternating order); 2 threads (CPU); 'teacher / plain': distillation's cost"
    )
    print(
        f"{'model':<12}{'heap':<9}{'plain ms':>10}{'faults':>11}{'teacher ms':>12}{'faults':>11}"
        f"{'teacher / plain':>17}"
    )
    rows = {}
    for model in models:
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for i in range(args.repeats):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                results[mode].append(run(mode, model, args.batches))
        rows[model] = report(model, results)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
