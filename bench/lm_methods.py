"""Wanda against magnitude, one shot and in rounds, on the tiny language model — and on a model
whose inputs include a few features far larger than the rest, where Wanda should matter.

Per seed, the dense model of ``schedules/tiny-lm.yaml`` is trained once (its pretrain section)
and every method starts from it; the same calibration (8 training batches) and the same
fine-tuning (the schedule's: one epoch a round, lr 1e-3) for every method. Scores are test
perplexity, as the relative change against the dense model's (percent, positive: worse).

1. one shot, 50% of every output row, no fine-tuning: magnitude vs Wanda;
2. one shot to 2:4, no fine-tuning: magnitude vs Wanda; and 2:4 in rounds with fine-tuning
   (``prune.pattern: "2:4"``, iterprune): magnitude vs Wanda;
3. 50% unstructured in iterprune's rounds (20% steps, the 5% budget): global magnitude, LAMP,
   Wanda (row group);
4. uneven inputs: an MLP on synthetic data whose first 4 of 64 input features are 30× larger
   than the rest, 50% per row one shot: test loss increase (percent); twice — with the large
   features carrying most of the signal (the case Wanda is for: large language models' outlier
   features), and with the teacher's weights on them 30× smaller, so that they matter no more
   than any other feature;
5. cost: the Wanda and the global magnitude mask of a 50M-parameter Linear stack (three
   4096×4096 layers), calibration forwards timed apart.

    python bench/lm_methods.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn import functional

import iterprune
import iterprune.api
from iterprune.core import patterns, pruning, wanda
from iterprune.engine import calibration, evaluation, sources, tasks, training

HERE = Path(__file__).resolve().parent
SCHEDULE: dict[str, Any] = yaml.safe_load((HERE.parent / "schedules" / "tiny-lm.yaml").read_text())
LM = tasks.LANGUAGE_MODEL


class Dense:
    """A seed's trained dense model and its split."""

    def __init__(self, seed: int, work: Path) -> None:
        self.seed = seed
        self.schedule, _ = iterprune.api.load({**SCHEDULE, "seed": seed})
        s = self.schedule
        self.train, self.val, self.test = sources.build_loaders(s.data, seed, s.base_dir)
        model = sources.build_model(s.model, seed, s.base_dir)
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=s.pretrain.lr)
        training.train(model, self.train, optimizer, s.pretrain.epochs, training.Options(task=LM))
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.file = work / f"dense-{seed}.pt"
        torch.save(self.state, self.file)
        self.base = self.ppl(model)

    def model(self) -> nn.Module:
        model = sources.fresh_model(self.schedule.model, self.seed)
        model.load_state_dict(self.state)
        return model

    def ppl(self, model: nn.Module) -> float:
        return -evaluation.score(model, self.test, task=LM)

    def one_shot(self, method: str, pattern: bool) -> float:
        """Test perplexity change after pruning 50% per row (or to 2:4) at once."""
        model = self.model()
        params = pruning.prunable_parameters(model, LM.exclude)
        scales = {n: torch.ones(1) for n in params}  # magnitude: Wanda's rule without inputs
        if method == "wanda":
            scales, _ = calibration.input_scales(model, params, self.train, 8, self.seed, task=LM)
        mask = pruning.dense_mask(params)
        if pattern:
            scores = wanda.scores(params, scales)
            for _ in range(2):
                mask = patterns.tighten(scores, mask, 2, 4, set(params), frozenset())
        else:
            half = pruning.count_alive(mask) // 2
            mask = wanda.prune(params, mask, half, scales, "row")
        pruning.apply(params, mask)
        return change(self.ppl(model), self.base)

    def rounds(self, work: Path, name: str, prune: dict) -> dict[str, float]:
        doc = {**SCHEDULE, "name": name, "seed": self.seed, "prune": prune}
        doc["model"] = {**SCHEDULE["model"], "weights": str(self.file)}
        doc.pop("pretrain")
        run = iterprune.start(doc, state_dir=work / f"{name}-{self.seed}", quiet=True)
        history = run.history()
        last = ([r for r in history["rounds"] if r["status"] == "accepted"] or [None])[-1]
        test = last["test_accuracy"] if last else history["baseline_test_accuracy"]
        return {
            "sparsity": last["sparsity"] if last else 0.0,
            "test_ppl_increase": change(test, history["baseline_test_accuracy"]),
        }


def change(value: float, base: float) -> float:
    return 100.0 * (value / base - 1.0)


def uneven(seed: int, carry: bool) -> dict[str, float]:
    """50% per row, one shot, on an MLP whose inputs have a few huge features: ``carry``, they
    carry most of the signal (as the outlier features of large language models do); else the
    teacher's weights on them are 30× smaller, so they matter as much as any other feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6000, 64, generator=g)
    x[:, :4] *= 30.0
    teacher = torch.randn(64, 8, generator=g)
    if not carry:
        teacher[:4] /= 30.0
    y = (x @ teacher + 0.1 * torch.randn(6000, 8, generator=g)).argmax(dim=1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = torch.utils.data.DataLoader(list(zip(x[:5000], y[:5000], strict=True)), batch_size=64)
    training.train(model, train, optimizer, 15, training.Options())
    dense = {k: v.clone() for k, v in model.state_dict().items()}

    def loss() -> float:
        with torch.no_grad():
            return float(functional.cross_entropy(model(x[5000:]), y[5000:]))

    base, out = loss(), {}
    for method in ("magnitude", "wanda"):
        model.load_state_dict(dense)
        params = pruning.prunable_parameters(model)
        scales = {n: torch.ones(1) for n in params}
        if method == "wanda":
            scales, _ = calibration.input_scales(model, params, train, 8, seed)
        mask = wanda.prune(params, pruning.dense_mask(params), 4096 + 512, scales, "row")
        pruning.apply(params, mask)
        out[method] = change(loss(), base)
    return out


def cost() -> dict[str, float]:
    """Mask times for a 50M-parameter Linear stack (median of 3), calibration apart."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(4096, 4096) for _ in range(3)))
    params = pruning.prunable_parameters(model)
    data = [(torch.randn(64, 4096), torch.zeros(64, dtype=torch.long)) for _ in range(8)]
    start = time.perf_counter()
    scales, _ = calibration.input_scales(model, params, data, 8, 0)
    calibrate = time.perf_counter() - start
    half = sum(p.numel() for p in params.values()) // 2
    times: dict[str, list[float]] = {"magnitude": [], "wanda": []}
    for _ in range(3):
        for method in times:
            start = time.perf_counter()
            if method == "wanda":
                wanda.prune(params, pruning.dense_mask(params), half, scales, "row")
            else:
                pruning.prune(params, pruning.dense_mask(params), half)
            times[method].append(time.perf_counter() - start)
    m, w = (statistics.median(times[k]) for k in ("magnitude", "wanda"))
    return {"magnitude_s": m, "wanda_s": w, "ratio": w / m, "calibration_s": calibrate}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    rows: dict[str, list[float]] = {}
    sparsity: dict[str, list[float]] = {}

    def add(label: str, value: float, reached: float | None = None) -> None:
        rows.setdefault(label, []).append(value)
        if reached is not None:
            sparsity.setdefault(label, []).append(reached)

    step = {"step": 0.2, "target_sparsity": 0.5}
    runs = {
        "2:4 in rounds, magnitude": {"method": "global_magnitude", "pattern": "2:4"},
        "2:4 in rounds, wanda": {"method": "wanda", "pattern": "2:4"},
        "50% in rounds, global magnitude": {"method": "global_magnitude", **step},
        "50% in rounds, lamp": {"method": "lamp", **step},
        "50% in rounds, wanda (row)": {"method": "wanda", **step},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            dense = Dense(seed, Path(tmp))
            for method in ("magnitude", "wanda"):
                add(f"one shot 50% per row, {method}", dense.one_shot(method, pattern=False))
                add(f"one shot 2:4, {method}", dense.one_shot(method, pattern=True))
            for i, (label, prune) in enumerate(runs.items()):
                found = dense.rounds(Path(tmp), f"m{i}", prune)
                add(label, found["test_ppl_increase"], found["sparsity"])
            for carry, words in ((True, "large features carry the signal"), (False, "all alike")):
                for method, value in uneven(seed, carry).items():
                    add(f"uneven inputs ({words}), {method}", value)
            print(f"seed {seed}: {time.perf_counter() - started:.0f}s", flush=True)
        report(args.seeds, rows, sparsity, cost())
    print(f"wall time {time.perf_counter() - started:.0f}s")


def report(seeds: list[int], rows: dict, sparsity: dict, costs: dict) -> None:
    print(
        f"\ntest perplexity change against the dense model, percent (positive: worse), mean ± sd "
        f"over seeds {seeds}; the uneven-input rows: one shot 50% per row, test loss change, percent"
    )
    for label, values in rows.items():
        reached = (
            f"  (sparsity {100 * statistics.mean(sparsity[label]):.1f}%)"
            if label in sparsity
            else ""
        )
        cells = ", ".join(f"{v:+.2f}" for v in values)
        print(f"{label:<46}{mean_sd(values):>16}   per seed: {cells}{reached}")
    pairs = [
        ("one shot 50% per row", 2, "Wanda no worse than magnitude on >= 2 of 3 seeds"),
        (
            "uneven inputs (large features carry the signal)",
            None,
            "uneven inputs: Wanda's mean increase <= half of magnitude's",
        ),
    ]
    print("targets:")
    for head, _, words in pairs:
        mag, wan = rows[f"{head}, magnitude"], rows[f"{head}, wanda"]
        if head.startswith("uneven"):
            ok = statistics.mean(wan) <= 0.5 * statistics.mean(mag)
            print(f"  {words}: {'met' if ok else 'NOT met'} ({mean_sd(wan)} vs {mean_sd(mag)})")
        else:
            wins = sum(w <= m for w, m in zip(wan, mag, strict=True))
            gap = statistics.mean(wan) - statistics.mean(mag)
            print(f"  {words}: {wins}/{len(wan)} seeds, mean gap {gap:+.2f} points")
    print(
        f"cost, 50M-parameter Linear stack, 50% per row: Wanda mask {costs['wanda_s']:.2f}s, global "
        f"magnitude mask {costs['magnitude_s']:.2f}s ({costs['ratio']:.2f}x, target <= 2x); "
        f"calibration (8 batches of 64) {costs['calibration_s']:.2f}s"
    )
    print(json.dumps({"seeds": seeds, "rows": rows, "sparsity": sparsity, "cost": costs}))


if __name__ == "__main__":
    main()
