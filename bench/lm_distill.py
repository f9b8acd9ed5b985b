"""Does a teacher help a pruned language model recover? The same pruning curve fine-tuned with and
without ``finetune.distill``, compared at the same sparsity on text no decision saw.

The tiny language model of ``schedules/tiny-lm.yaml`` (tiny_gpt on the standard library as bytes,
split by file name into train/validation/test). For each seed the dense model is trained as the
example trains it (iterprune's own pretraining, 8 epochs), then pruned by global magnitude in
fixed steps of 20% of the remaining weights up to ``--target`` (default 90%: 11 rounds), each round
followed by one fine-tuning epoch of ``--batches`` batches (the same batches, in the same order,
for every method). No round is judged or rolled back, so every method passes through exactly the
same sparsities with exactly the same fine-tuning tokens, and the only difference is the loss:

- labels only: next-token cross-entropy (iterprune's default fine-tune);
- distill w 0.5: ``finetune.distill: {weight: 0.5, temperature: 2.0}``, the dense model as teacher;
- distill w 1: ``weight: 1`` — the teacher alone, no labels read.

Every round is scored on validation and on test: the relative change of perplexity against the
dense model's, in percent (positive: worse; lower is better). The table gives mean ± sd over seeds
at each sparsity, and a line per method says at how many (sparsity, seed) points it beat labels
only on test.

    python bench/lm_distill.py [--seeds 0 1 2] [--target 0.9] [--batches 160] [--jobs 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import seedpool
import torch
import yaml

import iterprune
import iterprune.api
from iterprune.core import decisions, pruning, rng
from iterprune.engine import distillation, evaluation, sources, tasks, training

HERE = Path(__file__).resolve().parent
SCHEDULE: dict[str, Any] = yaml.safe_load((HERE.parent / "schedules" / "tiny-lm.yaml").read_text())
LM = tasks.LANGUAGE_MODEL
STEP = SCHEDULE["prune"]["step"]
LR = SCHEDULE["finetune"]["lr"]
METHODS = {"labels only": None, "distill w 0.5": 0.5, "distill w 1": 1.0}
TEMPERATURE = 2.0
SETTINGS = {"target": 0.9, "batches": 160}  # --target, --batches


def dense_weights(seed: int, work: Path) -> dict[str, torch.Tensor]:
    """The example's dense model for ``seed``: iterprune's pretraining, then one round (the
    shortest run that records round 0)."""
    doc = {**SCHEDULE, "name": "lm-dense", "seed": seed}
    doc["prune"] = {**SCHEDULE["prune"], "target_sparsity": STEP}
    run = iterprune.start(doc, state_dir=work / f"dense-{seed}", quiet=True)
    return run.model(round=0).state_dict()


def curve(seed: int, dense: dict, weight: float | None) -> list[dict[str, float]]:
    """Every round of the fixed-step curve, scored; ``weight`` None: labels only."""
    schedule, _ = iterprune.api.load({**SCHEDULE, "seed": seed})
    train, val, test = sources.build_loaders(schedule.data, seed, schedule.base_dir)
    model = sources.fresh_model(schedule.model, seed)
    model.load_state_dict(dense)
    task: Any = LM
    if weight is not None:
        teacher = distillation.freeze(copy.deepcopy(model))
        task = distillation.Distilled(LM, teacher, weight, TEMPERATURE)
    base_val, base_test = ppl(model, val), ppl(model, test)
    params = pruning.prunable_parameters(model, LM.exclude)
    mask = pruning.dense_mask(params)
    total = pruning.count_alive(mask)
    points, round_ = [], 0
    while (
        n := decisions.amount_to_prune(pruning.count_alive(mask), total, STEP, SETTINGS["target"])
    ) > 0:
        round_ += 1
        rng.seed_everything(rng.derive_seed(seed, 4000, round_), (train,))
        mask = pruning.prune(params, mask, n)
        pruning.apply(params, mask)
        options = training.Options(
            enforcer=training.MaskEnforcer(params, mask), task=task, max_batches=SETTINGS["batches"]
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)  # a fresh one a round, as iterprune
        training.train(model, train, optimizer, 1, options)
        points.append(
            {
                "sparsity": pruning.sparsity(mask),
                "val_ppl_increase": 100.0 * (ppl(model, val) / base_val - 1.0),
                "test_ppl_increase": 100.0 * (ppl(model, test) / base_test - 1.0),
            }
        )
    return points


def ppl(model: torch.nn.Module, loader: Any) -> float:
    return -evaluation.score(model, loader, task=LM)


def one_seed(seed: int, work: Path) -> dict[str, list[dict[str, float]]]:
    dense = dense_weights(seed, work)
    return {name: curve(seed, dense, weight) for name, weight in METHODS.items()}


def _worker(settings: dict, threads: int) -> None:
    SETTINGS.update(settings)
    SCHEDULE["threads"] = threads
    torch.set_num_threads(threads)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {sd:.2f}"


def report(seeds: list[int], results: dict[int, dict[str, list[dict[str, float]]]]) -> None:
    print(
        f"\ntiny_gpt on python_source, fixed 20% steps to {SETTINGS['target']:.0%}, one fine-tuning "
        f"epoch of {SETTINGS['batches']} batches a round, seeds {seeds}; test perplexity increase "
        "in percent of the dense model's (lower is better), mean ± sd over seeds; then each "
        "teacher's difference from labels only, paired by seed (points; negative: the teacher "
        "helped), and on how many seeds it was lower"
    )
    names = list(METHODS)
    taught = names[1:]
    print(
        f"{'sparsity %':>11}"
        + "".join(f"{n:>17}" for n in names)
        + "".join(f"{n + ' − labels':>26}" for n in taught)
    )
    levels = len(results[seeds[0]]["labels only"])

    def at(name: str, i: int) -> list[float]:
        return [results[s][name][i]["test_ppl_increase"] for s in seeds]

    for i in range(levels):
        sparsity = results[seeds[0]]["labels only"][i]["sparsity"]
        cells = [spread(at(n, i)) for n in names]
        for name in taught:
            diffs = [t - b for t, b in zip(at(name, i), at("labels only", i), strict=True)]
            lower = sum(d < 0 for d in diffs)
            cells.append(f"{spread(diffs)} ({lower}/{len(seeds)})")
        widths = [17] * len(names) + [26] * len(taught)
        print(
            f"{100 * sparsity:>11.1f}"
            + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    for name in taught:
        diffs = [
            t - b
            for i in range(levels)
            for t, b in zip(at(name, i), at("labels only", i), strict=True)
        ]
        print(
            f"  {name} vs labels only: lower test increase at {sum(d < 0 for d in diffs)}/"
            f"{len(diffs)} (sparsity, seed) points; mean difference {statistics.mean(diffs):+.2f} "
            "points"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.9, help="last sparsity (default 0.9)")
    ap.add_argument("--batches", type=int, default=160, help="fine-tuning batches a round")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1)")
    args = ap.parse_args()
    SETTINGS.update(target=args.target, batches=args.batches)
    torch.set_num_threads(2)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, out in seedpool.by_seed(
            one_seed, args.seeds, args.jobs, Path(tmp), _worker, (SETTINGS,)
        ):
            results[seed] = out
            for name, points in out.items():
                print(json.dumps({"seed": seed, "method": name, "curve": points}), flush=True)
            print(f"seed {seed}: {time.perf_counter() - started:.0f}s", flush=True)
    report(args.seeds, results)
    print(f"wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
