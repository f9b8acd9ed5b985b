"""Pruning quality on the digits example: iterprune's accuracy-guarded schedule against the
by-hand recipe and fixed-step iterative pruning, with the same fine-tuning budget.

For each seed, iterprune runs first (dense training, then rounds of 20% with rollback and a
shrinking step under a 1-point budget, to 98%); its dense model is the starting point of the other
two, and the number of fine-tuning epochs it used is every method's budget:
- by hand: one-shot global magnitude pruning to each sparsity, then Adam at 1e-4 with early
  stopping (patience 3), at most the budget;
- fixed step: 10% of the remaining weights per round, no rollback, the budget spread evenly over
  the rounds it takes to reach 98%.
Accuracy at 80/90/95/97/98% (the first round at or past each level), and the highest sparsity each
method reaches within 1 point of the dense baseline; mean and spread over the seeds.

    python bench/frontier.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from iterprune import decisions, examples, pruning, rng, schedule, training
from iterprune.runner import Runner
from iterprune.runs import open_run
from iterprune.store import Store

LEVELS = (0.80, 0.90, 0.95, 0.97, 0.98)
TARGET, BUDGET_POINTS = 0.98, 1.0
GUARDED = """\
name: frontier
seed: {seed}
threads: 2
model: {{builtin: digits_cnn}}
data: {{builtin: digits, batch_size: 64}}
pretrain: {{epochs: 15, lr: 1.0e-3}}
prune: {{method: global_magnitude, step: 0.2, target_sparsity: {target}}}
finetune: {{epochs: 2, optimizer: adam, lr: 1.0e-3}}
validate: {{max_drop: {budget}}}
rollback: {{retries: 3, shrink: 0.5, min_step: 0.01}}
"""


def guarded(seed: int, work: Path) -> tuple[list[tuple[float, float]], float, int, dict]:
    store = Store(work / f"state{seed}")
    s = schedule.parse(
        GUARDED.format(seed=seed, target=TARGET, budget=BUDGET_POINTS), "frontier.yaml"
    )
    runner = Runner(store, open_run(store, s, "frontier.yaml"))
    runner.prepare()
    dense = {k: v.clone() for k, v in runner.model.state_dict().items()}
    while runner.step():
        pass
    rounds = store.rounds("frontier")
    curve = [(r["sparsity"], r["val_accuracy"]) for r in rounds if r["status"] == "accepted"]
    epochs = 2 * len(rounds)
    return curve, store.run("frontier")["baseline_accuracy"], epochs, dense


def fresh(seed: int, dense: dict) -> tuple[torch.nn.Module, object, object]:
    model = examples.digits_cnn()
    model.load_state_dict(dense)
    train, val = examples.digits_loaders(64, 0.25, seed)
    return model, train, val


def one_shot(seed: int, dense: dict, level: float, budget: int) -> float:
    model, train, val = fresh(seed, dense)
    params = pruning.prunable_parameters(model)
    mask = pruning.dense_mask(params)
    total = pruning.count_alive(mask)
    rng.seed_everything(rng.derive_seed(seed, 1000, int(level * 1000)), (train,))
    mask = pruning.prune(params, mask, total - decisions.target_alive(total, level))
    pruning.apply(params, mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    opts = training.Options(
        enforcer=training.MaskEnforcer(params, mask),
        validate=lambda: training.evaluate(model, val),
        patience=3,
    )
    result = training.train(model, train, optimizer, budget, opts)
    return (
        result.best_accuracy if result.best_accuracy is not None else training.evaluate(model, val)
    )


def fixed_step(seed: int, dense: dict, budget: int) -> tuple[list[tuple[float, float]], int]:
    model, train, val = fresh(seed, dense)
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
        rng.seed_everything(rng.derive_seed(seed, 2000, round_), (train,))
        mask = pruning.prune(params, mask, n)
        pruning.apply(params, mask)
        training.train(
            model,
            train,
            optimizer,
            per_round,
            training.Options(enforcer=training.MaskEnforcer(params, mask)),
        )
        used += per_round
        curve.append((pruning.sparsity(mask), training.evaluate(model, val)))
    return curve, used


def at_level(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((acc for sp, acc in curve if sp >= level - 1e-4), None)


def frontier(curve: list[tuple[float, float]], baseline: float) -> float:
    return max([sp for sp, acc in curve if baseline - acc <= BUDGET_POINTS + 1e-9], default=0.0)


def fmt(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    spread = statistics.stdev(got) if len(got) > 1 else 0.0
    missing = "" if len(got) == len(values) else f" ({len(got)}/{len(values)})"
    return f"{statistics.mean(got):6.2f} ± {spread:4.2f}{missing}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    results: dict[str, dict] = {
        m: {"levels": {lv: [] for lv in LEVELS}, "frontier": [], "epochs": []}
        for m in ("by hand", "fixed step", "iterprune")
    }
    baselines = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            curve, baseline, budget, dense = guarded(seed, Path(tmp))
            baselines.append(baseline)
            fixed, used = fixed_step(seed, dense, budget)
            hand = [(lv, one_shot(seed, dense, lv, budget)) for lv in LEVELS]
            for name, c, epochs in (
                ("iterprune", curve, budget),
                ("fixed step", fixed, used),
                ("by hand", hand, budget),
            ):
                for lv in LEVELS:
                    results[name]["levels"][lv].append(at_level(c, lv))
                results[name]["frontier"].append(frontier(c, baseline))
                results[name]["epochs"].append(epochs)
            print(
                f"seed {seed}: baseline {baseline:.2f}%, budget {budget} fine-tuning epochs",
                flush=True,
            )
    print(
        f"\ndigits CNN, dense baseline {fmt(baselines)}%, seeds {args.seeds}; accuracy (%) "
        "at each sparsity, mean ± std over seeds"
    )
    print(f"{'method':<12}" + "".join(f"{lv:>17.0%}" for lv in LEVELS) + f"{'within 1 pt':>17}")
    for name, r in results.items():
        cells = "".join(f"{fmt(r['levels'][lv]):>17}" for lv in LEVELS)
        front = [100 * f for f in r["frontier"]]
        print(f"{name:<12}{cells}{fmt(front):>16}%")
    print(
        "fine-tuning epochs used: "
        + ", ".join(f"{n} {statistics.mean(r['epochs']):.0f}" for n, r in results.items())
    )
    print(
        json.dumps(
            {
                "seeds": args.seeds,
                "baseline": baselines,
                "methods": {
                    n: {
                        "accuracy_at": {f"{lv:.2f}": r["levels"][lv] for lv in LEVELS},
                        "frontier": r["frontier"],
                        "epochs": r["epochs"],
                    }
                    for n, r in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
