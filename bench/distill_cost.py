"""What a teacher costs: fine-tuning time with and without ``finetune.distill``, on the digits
CNN of ``schedules/digits.yaml`` and the tiny language model of ``schedules/tiny-lm.yaml`` (their
models as built, untrained — this times, it does not judge — as teachers, 50% of the weights
pruned by global magnitude). A timed unit is ``--digits-epochs`` epochs of the digits (one is
17 batches, ~0.2 s: too short to time alone on a shared machine) or ``--lm-batches`` batches of
the language model (whose epoch is 489 batches). A repeat times four units back to back, plain,
teacher, teacher, plain, and its ratio is the teacher's two over the plain two: the order cancels
a machine speeding up or slowing down across the repeat (a shared machine does: the same epoch
took 18 s in one run, 27 s in the next), and the ratio is the median over ``--repeats``, with
their range. Target: ≤ 1.5× on a CPU. Beside it, the teacher's forward passes
alone (no_grad, eval mode) as a fraction of a plain unit — the least a teacher can add — and its
memory: one more copy of the weights (no gradients, no optimizer state). Both time the C heap as
a run's process sets it (``iterprune/engine/heap.py``: freed activations are kept for the next step).

``--wide`` adds the same language model four times as wide and twice as deep (width 256, depth
4: 3.1M prunable weights against 98K), ``--wide-batches`` batches a unit: whether the ratio
belongs to the 64-wide model, or to distillation itself (a teacher's forward pass is a quarter to a
third of a training step at any size, so no model gets far under 1.25-1.33x on a CPU).

``--memory`` adds what the loss holds at its peak, where a language model's outputs are large:
one training step of an output layer over GPT-2's vocabulary (50,257) on 4 × 512 tokens, with
and without the teacher, each in a fresh process (its peak resident memory above where it
started), in units of one ``[tokens, vocabulary]`` float32 tensor (392 MB here).

    python bench/distill_cost.py [--repeats 5] [--digits-epochs 5] [--lm-batches 120]
                                 [--wide] [--wide-batches 40] [--memory]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import iterprune.api
from iterprune.core import decisions, pruning
from iterprune.engine import distillation, heap, sources, tasks, training

HERE = Path(__file__).resolve().parent
WIDE = {"width": 256, "depth": 4}  # --wide: the tiny LM 4x as wide, 2x as deep


def setting(name: str, sizes: dict[str, int]) -> tuple[Any, torch.nn.Module, Any, Any]:
    doc = yaml.safe_load((HERE.parent / "schedules" / name).read_text())
    doc["model"].setdefault("kwargs", {}).update(sizes)
    schedule, _ = iterprune.api.load(doc)
    task = tasks.task_for(schedule.task, schedule.base_dir)
    model = sources.build_model(schedule.model, schedule.seed, schedule.base_dir)
    train, _, _ = sources.build_loaders(schedule.data, schedule.seed, schedule.base_dir)
    return schedule, model, train, task


Unit = tuple[int, int | None]  # epochs, and batches an epoch (None: all of them)


def unit_seconds(model, train, task, mask, params, unit: Unit) -> float:
    epochs, batches = unit
    enforcer = training.MaskEnforcer(params, mask)
    options = training.Options(enforcer=enforcer, task=task, max_batches=batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    training.train(model, train, optimizer, epochs, options)
    return time.perf_counter() - start


def forward_seconds(teacher, train, task, unit: Unit) -> float:
    """The teacher's share alone: its forward passes over a timed unit, under no_grad."""
    epochs, batches = unit
    language = isinstance(task, tasks.LanguageModel)
    start = time.perf_counter()
    for _ in range(epochs):
        for i, batch in enumerate(train):
            if batches is not None and i >= batches:
                break
            inputs = task.inputs(batch) if language else tasks.split(batch)[0]
            with torch.no_grad():
                tasks.forward(teacher, inputs)
    return time.perf_counter() - start


class Pair:
    """A schedule's model as built, as teacher, and a copy with 50% of its weights pruned by
    global magnitude, as student; its training data, its task and the task distilled."""

    def __init__(self, name: str, sizes: dict[str, int]) -> None:
        _, dense, self.train, self.task = setting(name, sizes)
        self.teacher = distillation.freeze(copy.deepcopy(dense))
        self.student = student = copy.deepcopy(dense)
        self.params = pruning.prunable_parameters(student, self.task.exclude)
        mask = pruning.dense_mask(self.params)
        total = pruning.count_alive(mask)
        self.mask = pruning.prune(self.params, mask, total - decisions.target_alive(total, 0.5))
        pruning.apply(self.params, self.mask)
        self.distilled = distillation.Distilled(self.task, self.teacher, 0.5, 2.0)

    def seconds(self, taught: bool, unit: Unit) -> float:
        """One timed unit of fine-tuning the student, with the teacher or without."""
        task = self.distilled if taught else self.task
        return unit_seconds(self.student, self.train, task, self.mask, self.params, unit)


def measure(name: str, sizes: dict[str, int], repeats: int, unit: Unit) -> dict[str, Any]:
    pair = Pair(name, sizes)
    teacher, train, task = pair.teacher, pair.train, pair.task
    pair.seconds(True, (1, 2))  # warm-up, not timed
    plain_s, taught_s, forward_s = [], [], []
    ratios = []
    for _ in range(repeats):
        first = pair.seconds(False, unit)
        taught = [pair.seconds(True, unit) for _ in range(2)]
        plain = [first, pair.seconds(False, unit)]
        ratios.append(sum(taught) / sum(plain))
        plain_s += plain
        taught_s += taught
        forward_s.append(forward_seconds(teacher, train, task, unit))
    weights = sum(p.numel() * p.element_size() for p in teacher.parameters())
    return {
        "plain_s": statistics.median(plain_s),
        "distill_s": statistics.median(taught_s),
        "teacher_forward_s": statistics.median(forward_s),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "teacher_mb": weights / 2**20,
    }


VOCABULARY, TOKENS = 50_257, (4, 512)  # --memory: GPT-2's vocabulary


def loss_peak_mb(taught: bool) -> float:
    """One step of an output layer over VOCABULARY (this process: run it in a fresh one)."""
    heap.keep_freed_blocks()  # as a run's process does
    torch.manual_seed(0)
    head = torch.nn.Linear(64, VOCABULARY, bias=False)
    hidden = torch.randn(*TOKENS, 64)
    ids = torch.randint(0, VOCABULARY, TOKENS)

    class Head(torch.nn.Module):
        def __init__(self, layer: torch.nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.layer(hidden)

    task = tasks.LanguageModel()
    if taught:
        teacher = distillation.freeze(Head(torch.nn.Linear(64, VOCABULARY, bias=False)))
        task = distillation.Distilled(task, teacher, 0.5, 2.0)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    task.loss(Head(head), ids).backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024


def memory() -> None:
    one = TOKENS[0] * (TOKENS[1] - 1) * VOCABULARY * 4 / 2**20
    peaks = {}
    for taught in (False, True):
        code = f"import distill_cost; print(distill_cost.loss_peak_mb({taught}))"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, check=True
        )
        peaks[taught] = float(done.stdout.split()[-1])
    print(
        f"loss memory, {TOKENS[0]}x{TOKENS[1]} tokens over {VOCABULARY:,} outputs (one "
        f"[tokens, vocabulary] float32 = {one:.0f} MB): plain {peaks[False]:.0f} MB "
        f"({peaks[False] / one:.1f}x), with the teacher {peaks[True]:.0f} MB "
        f"({peaks[True] / one:.1f}x): the teacher adds {(peaks[True] - peaks[False]) / one:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="plain-teacher-teacher-plain repeats per model (default 5)",
    )
    ap.add_argument("--digits-epochs", type=int, default=5, help="digits epochs per unit")
    ap.add_argument("--lm-batches", type=int, default=120, help="the LM's batches per unit")
    ap.add_argument("--wide", action="store_true", help="add a 4x wider, 2x deeper LM row")
    ap.add_argument("--wide-batches", type=int, default=40, help="the wide LM's batches per unit")
    ap.add_argument("--memory", action="store_true", help="add the loss's peak memory")
    args = ap.parse_args()
    torch.set_num_threads(2)
    heap.keep_freed_blocks()  # the C heap as a run's process sets it (iterprune/engine/heap.py)
    if args.memory:
        memory()
    also = f"; LM 256x4: {args.wide_batches} batches" if args.wide else ""
    print(
        f"fine-tuning seconds per unit (digits: {args.digits_epochs} epochs; LM: "
        f"{args.lm_batches} batches{also}); ratio: median over {args.repeats} repeats of "
        "plain, teacher, teacher, plain; 2 threads (CPU)"
    )
    print(
        f"{'model':<14}{'plain s':>9}{'distill s':>11}{'ratio':>8}{'range':>14}"
        f"{'teacher fwd s':>15}{'fwd / plain':>13}{'teacher MB':>12}"
    )
    rows = {}
    units = [
        ("digits CNN", "digits.yaml", {}, (args.digits_epochs, None)),
        ("tiny LM", "tiny-lm.yaml", {}, (1, args.lm_batches)),
    ]
    if args.wide:
        units.append(("LM 256x4", "tiny-lm.yaml", WIDE, (1, args.wide_batches)))
    for label, name, sizes, unit in units:
        found = measure(name, sizes, args.repeats, unit)
        rows[label] = found
        low, high = found["ratio_range"]
        print(
            f"{label:<14}{found['plain_s']:>9.2f}{found['distill_s']:>11.2f}"
            f"{found['ratio']:>7.2f}x{f'{low:.2f}-{high:.2f}x':>14}"
            f"{found['teacher_forward_s']:>15.2f}"
            f"{found['teacher_forward_s'] / found['plain_s']:>13.2f}{found['teacher_mb']:>12.2f}",
            flush=True,
        )
    worst = max(rows[label]["ratio"] for label in ("digits CNN", "tiny LM"))
    print(
        f"target <= 1.5x (digits CNN, tiny LM): {'met' if worst <= 1.5 else 'NOT met'} "
        f"(worst median {worst:.2f}x)"
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
