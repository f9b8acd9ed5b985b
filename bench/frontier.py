"""Pruning decisions, judged on data no decision saw: iterprune against a loop that never looks
at accuracy and against the by-hand recipe, with the same fine-tuning budget.

Digits CNN, a stratified 60/20/20 train/validation/test split, target 99.5% (so that no method is
capped by the target), budget 1 accuracy point. For each seed, `iterprune` (rule estimate) runs
first; its dense model is every method's starting point, and the fine-tuning epochs it used
(recoveries and rolled-back attempts included) are every baseline's budget:

- by hand: one-shot global magnitude pruning to 80/90/95/97/98/99%, each fine-tuned with early
  stopping (patience 3, the best epoch on validation kept) for at most the budget;
- fixed step: 10% of the remaining weights per round, no validation, the budget spread evenly
  over the rounds it takes to reach the target;
- iterprune: the schedule below (20% steps, rule estimate); iterprune confident: rule confident;
  iterprune lamp: rule estimate with ``prune.method: lamp``; iterprune wanda: rule estimate with
  ``prune.method: wanda`` (group row, 8 calibration batches); iterprune distill: rule estimate
  with ``finetune.distill: {weight: 0.5, temperature: 2.0}`` (the dense model as teacher).
  iterprune's runs keep the default ``prune.max_layer_sparsity`` (0.99); the baselines prune with
  one uncapped threshold.

Every method picks its final model on validation only — the sparsest model within the budget on
validation (for iterprune: its last accepted round) — and is scored on test: the chosen model's
sparsity and its test drop against the dense model's test accuracy. The same fine-tuning recipe
(Adam, lr 1e-3, batch 64) everywhere.

    python bench/frontier.py [--seeds 0 1 2 3 4] [--set rollback.grow_after=3 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import iterprune
from iterprune.core import decisions, pruning, rng
from iterprune.engine import evaluation, examples, training

TARGET, BUDGET, LEVELS = 0.995, 1.0, (0.80, 0.90, 0.95, 0.97, 0.98, 0.99)
SPLIT = {"val_fraction": 0.2, "test_fraction": 0.2}  # --split changes it
SCHEDULE: dict[str, Any] = {
    "threads": 2,
    "model": {"builtin": "digits_cnn"},
    "data": {"builtin": "digits", "batch_size": 64, **SPLIT},
    "pretrain": {"epochs": 15, "lr": 1.0e-3},
    "prune": {"method": "global_magnitude", "step": 0.2, "target_sparsity": TARGET},
    "finetune": {"epochs": 2, "optimizer": "adam", "lr": 1.0e-3},
    "validate": {"max_drop": BUDGET},
}
METHODS = (
    *("by hand", "fixed step", "iterprune", "iterprune confident", "iterprune lamp"),
    *("iterprune wanda", "iterprune distill"),
)
RUNS = {  # iterprune's rows: (validate.rule, prune.method, finetune.distill)
    "iterprune": ("estimate", "global_magnitude", None),
    "iterprune confident": ("confident", "global_magnitude", None),
    "iterprune lamp": ("estimate", "lamp", None),
    "iterprune wanda": ("estimate", "wanda", None),  # the default group: each output row
    "iterprune distill": ("estimate", "global_magnitude", {"weight": 0.5, "temperature": 2.0}),
}


def run_iterprune(seed: int, name: str, work: Path, changes: dict) -> dict[str, Any]:
    """One iterprune run; its choice, its budget in epochs, and its dense model."""
    rule, method, distill = RUNS[name]
    doc = {**SCHEDULE, "name": name.replace(" ", "-"), "seed": seed}
    doc["data"] = {**SCHEDULE["data"], **SPLIT}
    doc["validate"] = {**SCHEDULE["validate"], "rule": rule}
    doc["prune"] = {**SCHEDULE["prune"], "method": method}
    if distill:
        doc["finetune"] = {**SCHEDULE["finetune"], "distill": distill}
    for key, value in changes.items():
        section, field = key.split(".")
        doc[section] = {**doc.get(section, {}), field: value}
    run = iterprune.start(doc, state_dir=work / f"{doc['name']}-{seed}", quiet=True)
    history = run.history()
    rounds = history["rounds"]
    dense = run.model(round=0).state_dict()
    last = ([r for r in rounds if r["status"] == "accepted"] or [None])[-1]
    chosen = last or {"sparsity": 0.0, "val_accuracy": history["baseline_accuracy"]}
    test = last["test_accuracy"] if last else history["baseline_test_accuracy"]
    return {
        "sparsity": chosen["sparsity"],
        "val_drop": history["baseline_accuracy"] - chosen["val_accuracy"],
        "test_drop": history["baseline_test_accuracy"] - test,
        "epochs": sum(r["epochs"] or 0 for r in rounds),
        "attempts": len(rounds),
        "dense": dense,
        "reason": history["reason"],
    }


class Start:
    """The dense model of a seed and its split, for the baselines."""

    def __init__(self, seed: int, dense: dict) -> None:
        self.seed, self.dense = seed, dense
        val, test = SPLIT["val_fraction"], SPLIT["test_fraction"]
        self.train, self.val, self.test = examples.digits_loaders(64, val, seed, test_fraction=test)
        model = self.model()
        self.base_val = evaluation.accuracy(model, self.val)
        self.base_test = evaluation.accuracy(model, self.test)

    def model(self) -> torch.nn.Module:
        model = examples.digits_cnn()
        model.load_state_dict(self.dense)
        return model

    def scored(self, model: torch.nn.Module, sparsity: float) -> tuple[float, float, float]:
        """(sparsity, validation drop, test drop) of a model."""
        val, test = evaluation.accuracy(model, self.val), evaluation.accuracy(model, self.test)
        return sparsity, self.base_val - val, self.base_test - test


def one_shot(start: Start, level: float, budget: int) -> tuple[tuple[float, float, float], int]:
    model = start.model()
    params = pruning.prunable_parameters(model)
    mask = pruning.dense_mask(params)
    total = pruning.count_alive(mask)
    rng.seed_everything(rng.derive_seed(start.seed, 1000, int(level * 1000)), (start.train,))
    mask = pruning.prune(params, mask, total - decisions.target_alive(total, level))
    pruning.apply(params, mask)
    options = training.Options(
        enforcer=training.MaskEnforcer(params, mask),
        validate=lambda: evaluation.accuracy(model, start.val),
        patience=3,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    result = training.train(model, start.train, optimizer, budget, options)
    return start.scored(model, pruning.sparsity(mask)), result.epochs


def fixed_step(start: Start, budget: int) -> tuple[list[tuple[float, float, float]], int]:
    model = start.model()
    params = pruning.prunable_parameters(model)
    mask = pruning.dense_mask(params)
    total = pruning.count_alive(mask)
    n_rounds = math.ceil(math.log(1 - TARGET) / math.log(0.9))
    per_round = max(1, round(budget / n_rounds))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    curve, used = [], 0
    for round_ in range(1, n_rounds + 1):
        n = decisions.amount_to_prune(pruning.count_alive(mask), total, 0.1, TARGET)
        if n == 0:
            break
        rng.seed_everything(rng.derive_seed(start.seed, 2000, round_), (start.train,))
        mask = pruning.prune(params, mask, n)
        pruning.apply(params, mask)
        enforcer = training.Options(enforcer=training.MaskEnforcer(params, mask))
        used += training.train(model, start.train, optimizer, per_round, enforcer).epochs
        curve.append(start.scored(model, pruning.sparsity(mask)))
    return curve, used


def chosen(scored: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The sparsest model within the budget on validation (the dense model if none is)."""
    within = [s for s in scored if s[1] <= BUDGET + 1e-9]
    return max(within, key=lambda s: s[0]) if within else (0.0, 0.0, 0.0)


def one_seed(seed: int, work: Path, changes: dict) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in RUNS:
        out[name] = run_iterprune(seed, name, work, changes)
    budget = out["iterprune"]["epochs"]
    start = Start(seed, out["iterprune"]["dense"])
    curve, used = fixed_step(start, budget)
    sparsity, val_drop, test_drop = chosen(curve)
    out["fixed step"] = {
        "sparsity": sparsity,
        "val_drop": val_drop,
        "test_drop": test_drop,
        "epochs": used,
    }
    shots = [one_shot(start, level, budget) for level in LEVELS]
    sparsity, val_drop, test_drop = chosen([s for s, _ in shots])
    out["by hand"] = {
        "sparsity": sparsity,
        "val_drop": val_drop,
        "test_drop": test_drop,
        "epochs": sum(e for _, e in shots),
    }
    return out


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [scale * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def report(seeds: list[int], results: dict[str, dict[str, list]], changes: dict) -> None:
    val, test = SPLIT["val_fraction"], SPLIT["test_fraction"]
    split = "/".join(f"{100 * x:.0f}" for x in (1 - val - test, val, test))
    print(
        f"\ndigits CNN, {split} train/validation/test split, target {TARGET:.1%}, budget "
        f"{BUDGET} point, seeds {seeds}" + (f", iterprune with {changes}" if changes else "")
    )
    head = f"{'method':<22}{'chosen sparsity %':>20}{'test drop':>14}{'val drop':>14}{'epochs':>10}"
    print(head)
    for name in METHODS:
        r = results[name]
        print(
            f"{name:<22}{spread(r['sparsity'], 100):>20}{spread(r['test_drop']):>14}"
            f"{spread(r['val_drop']):>14}{statistics.mean(r['epochs']):>10.0f}"
        )
    for name in METHODS:
        cells = ", ".join(
            f"{100 * s:.2f}% / {t:+.2f}"
            for s, t in zip(results[name]["sparsity"], results[name]["test_drop"], strict=True)
        )
        print(f"  {name:<20} per seed (sparsity / test drop): {cells}")
    checks(results)


def checks(results: dict[str, dict[str, list]]) -> None:
    ours, fixed, sure = results["iterprune"], results["fixed step"], results["iterprune confident"]
    mean = statistics.mean
    seeds = len(ours["sparsity"])
    wins = sum(o >= f - 1e-9 for o, f in zip(ours["sparsity"], fixed["sparsity"], strict=True))
    sparser = mean(ours["sparsity"]) > mean(fixed["sparsity"])
    excess = mean(ours["test_drop"]) - mean(fixed["test_drop"])
    worst, sure_sparsity = max(sure["test_drop"]), 100 * mean(sure["sparsity"])
    print("targets:")
    print(
        f"  iterprune sparser than fixed step on the mean: {'yes' if sparser else 'NO'}; at "
        f"least as sparse on {wins}/{seeds} seeds (need {max(1, seeds - 1)}/{seeds})"
    )
    print(f"  iterprune mean test drop minus fixed step's: {excess:+.2f} (need <= +0.50)")
    print(
        f"  iterprune confident: worst test drop {worst:+.2f} (need <= 1.00), mean chosen "
        f"sparsity {sure_sparsity:.2f}% (need >= 95%)"
    )
    taught = results["iterprune distill"]
    as_sparse = mean(taught["sparsity"]) >= mean(ours["sparsity"]) - 1e-9
    no_worse = mean(taught["test_drop"]) <= mean(ours["test_drop"]) + 1e-9
    print(
        f"  iterprune distill vs iterprune, on the mean: as sparse {'yes' if as_sparse else 'NO'}"
        f" ({100 * mean(taught['sparsity']):.2f}% vs {100 * mean(ours['sparsity']):.2f}%), test "
        f"drop no higher {'yes' if no_worse else 'NO'} ({mean(taught['test_drop']):+.2f} vs "
        f"{mean(ours['test_drop']):+.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--split",
        type=float,
        nargs=2,
        metavar=("VAL", "TEST"),
        default=(0.2, 0.2),
        help="validation and test shares of the data (the rest trains); default 0.2 0.2",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change iterprune's schedule (both rules), e.g. rollback.grow_after=3",
    )
    args = ap.parse_args()
    changes = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    SPLIT.update(val_fraction=args.split[0], test_fraction=args.split[1])
    torch.set_num_threads(2)
    results = {m: {"sparsity": [], "test_drop": [], "val_drop": [], "epochs": []} for m in METHODS}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = one_seed(seed, Path(tmp), changes)
            for name in METHODS:
                for key in results[name]:
                    results[name][key].append(out[name][key])
            print(
                f"seed {seed}: budget {out['iterprune']['epochs']} epochs "
                f"({out['iterprune']['attempts']} attempts), {time.perf_counter() - started:.0f}s",
                flush=True,
            )
    report(args.seeds, results, changes)
    print(
        json.dumps(
            {
                "seeds": args.seeds,
                "budget": BUDGET,
                "target": TARGET,
                "split": SPLIT,
                "changes": changes,
                "methods": results,
            }
        )
    )


if __name__ == "__main__":
    main()
