"""What the daemon costs: a complete iterprune run against a plain PyTorch loop doing the same work.

Both run the same fixed schedule (the digits CNN, 5 dense epochs, then rounds of 20% global
magnitude pruning to 80% with 2 fine-tuning epochs each, no rollback: 7 rounds) with the same
seeds, in fresh processes with the same environment. They run in pairs, back to back, each order
equally often: on a shared machine the speed drifts by 10% or more within minutes, and the second
process of a pair can run at a different speed than the first, so the ratio is the geometric mean
over pairs of both orders. A few plain-vs-plain pairs show the machine's own noise. The plain loop
uses the same compute functions and nothing else: no CLI, no SQLite, no checkpoint files, no
console. Target: the geometric mean of the pair ratios <= 1.05. Then one instrumented in-process
run attributes iterprune's extra time to checkpoint writes, database transactions and the console.

    python bench/overhead.py [--repeats 6] [--controls 3]
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
import tempfile
import time
from pathlib import Path

SCHEDULE = """\
name: overhead
seed: 0
threads: 2
model: {{builtin: digits_cnn, kwargs: {{width: {width}}}}}
data: {{builtin: digits, batch_size: 64}}
pretrain: {{epochs: {pretrain}, lr: 1.0e-3}}
prune: {{method: global_magnitude, step: {step}, target_sparsity: {target}}}
finetune: {{epochs: {epochs}, optimizer: adam, lr: 1.0e-3}}
validate: {{max_drop: 100}}
"""

# The toy run (about 7 s, most of it start-up and small rounds) and one whose rounds take about
# 11 s each on 2 cores (a wider CNN, more epochs): the daemon's fixed cost, then its cost per round.
CONFIGS = {
    "toy": {"width": 32, "pretrain": 5, "step": 0.2, "target": 0.8, "epochs": 2},
    "long": {"width": 96, "pretrain": 2, "step": 0.5, "target": 0.75, "epochs": 12},
}
DESCRIBED = {
    "toy": "digits CNN, 5 dense epochs + 7 rounds x 2 epochs",
    "long": "digits CNN of width 96, 2 dense epochs + 2 rounds x 12 epochs (about 11 s a round)",
}

# The same work without the daemon (filled in with str.format, so its own braces are doubled).
PLAIN = r"""
import sys, time
import torch
from iterprune.core import decisions, pruning, rng
from iterprune.engine import evaluation, examples, heap, training
torch.set_num_threads(2)
heap.keep_freed_blocks()  # as the workbench does: the same C heap on both sides
rng.deterministic()  # as the workbench does: the same start-up work on both sides
seed = 0
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    model = examples.digits_cnn(width={width})
train, val, _ = examples.digits_loaders(64, 0.25, seed)
rng.seed_everything(rng.derive_seed(seed, 0, 0), (train,))
training.train(model, train, torch.optim.Adam(model.parameters(), lr=1e-3), {pretrain})
baseline = evaluation.accuracy(model, val)
params = pruning.prunable_parameters(model)
total = sum(p.numel() for p in params.values())
mask = pruning.dense_mask(params)
optimizer = training.build_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.9)
for round_ in range(1, 100):
    alive = pruning.count_alive(mask)
    n = decisions.amount_to_prune(alive, total, {step}, {target})
    if n == 0:
        break
    rng.seed_everything(rng.derive_seed(seed, round_, 1), (train,))
    mask = pruning.prune(params, mask, n, "global_magnitude", torch.Generator().manual_seed(rng.derive_seed(seed, round_, 1)))
    pruning.apply(params, mask)
    training.train(model, train, optimizer, {epochs}, training.Options(enforcer=training.MaskEnforcer(params, mask)))
    accuracy = evaluation.accuracy(model, val)
print(round_ - 1, "rounds", f"{{accuracy:.2f}}")
"""


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def attribute(work: Path) -> dict[str, float]:
    """One in-process run with timers around checkpoint writes, transactions and the console."""
    import contextlib

    from iterprune.cli import table as cli
    from iterprune.report import console
    from iterprune.state import checkpoints, store

    spent = {"checkpoint writes": 0.0, "database transactions": 0.0, "console": 0.0}

    def timer(key, fn):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return wrapped

    real_tx = store.Store.transaction

    @contextlib.contextmanager
    def tx(self):
        start = time.perf_counter()
        try:
            with real_tx(self) as db:
                yield db
        finally:
            spent["database transactions"] += time.perf_counter() - start

    store.Store.transaction = tx
    checkpoints.save = timer("checkpoint writes", checkpoints.save)
    for name in ("run_started", "phase", "advance", "round_done", "event", "run_done"):
        setattr(console.PlainReporter, name, timer("console", getattr(console.PlainReporter, name)))
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        start = time.perf_counter()
        cli.main(
            ["start", str(work / "overhead.yaml"), "--state-dir", str(work / "attr"), "--fresh"]
        )
        spent["whole run (in process)"] = time.perf_counter() - start
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="pairs (even: both orders equally)")
    ap.add_argument("--controls", type=int, default=3, help="plain-vs-plain pairs (noise floor)")
    ap.add_argument("--long", action="store_true", help="rounds of about 11 s: the per-round cost")
    args = ap.parse_args()
    config = "long" if args.long else "toy"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "overhead.yaml").write_text(SCHEDULE.format(**CONFIGS[config]))
        (work / "plain.py").write_text(PLAIN.format(**CONFIGS[config]))
        env = {**os.environ}
        plain_cmd = [sys.executable, "plain.py"]
        ours, plain, ratios = [], [], []
        for i in range(args.repeats):
            ours_cmd = [sys.executable, "-m", "iterprune", "start", "overhead.yaml"]
            ours_cmd += ["--state-dir", f"state{i}"]
            first_ours = i % 2 == 0  # alternate who goes first
            a = timed(ours_cmd if first_ours else plain_cmd, work, env)
            b = timed(plain_cmd if first_ours else ours_cmd, work, env)
            o, p = (a, b) if first_ours else (b, a)
            ours.append(o)
            plain.append(p)
            ratios.append(o[0] / p[0])
        controls = []
        for _ in range(args.controls):  # the same program twice: what the machine alone varies
            first, second = timed(plain_cmd, work, env), timed(plain_cmd, work, env)
            controls.append(second[0] / first[0])
        spent = attribute(work)
    report(config, ours, plain, ratios, controls, spent)


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def report(config: str, ours: list, plain: list, ratios: list, controls: list, spent: dict) -> None:
    ratio = geomean(ratios)
    o, p = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in plain)
    oc, pc = statistics.median(x[1] for x in ours), statistics.median(x[1] for x in plain)
    print(
        f"{DESCRIBED[config]}, 2 threads; {len(ratios)} pairs of "
        "fresh processes, back to back, each order equally often"
    )
    print(f"{'':<36}{'wall s':>10}{'CPU s':>10}")
    print(f"{'plain PyTorch loop':<36}{p:>10.2f}{pc:>10.2f}")
    print(f"{'iterprune start (CLI, SQLite, ckpt)':<36}{o:>10.2f}{oc:>10.2f}")
    print(
        f"iterprune / plain, per pair: geometric mean {ratio:.3f}, range {min(ratios):.3f} - "
        f"{max(ratios):.3f}; CPU seconds {oc / pc:.3f}"
    )
    if controls:
        print(
            f"noise floor, plain / plain (second run over first): {min(controls):.3f} - "
            f"{max(controls):.3f}"
        )
    target = 1.03 if config == "long" else 1.05
    met = "met" if ratio <= target else "NOT met"
    print(f"target <= {target} (geometric mean of the pairs): {met}")
    print(f"iterprune's time beyond the plain loop's (median): {o - p:+.2f} s")
    print("where iterprune's own time goes (one instrumented in-process run):")
    for key, value in spent.items():
        print(f"  {key:<32}{value:>8.3f} s")
    doc = {
        "config": config,
        "extra_s": round(o - p, 3),
        "ratio": round(ratio, 4),
        "ratios": [round(r, 4) for r in ratios],
        "controls": [round(c, 4) for c in controls],
        "cpu_ratio": round(oc / pc, 4),
        "iterprune_s": round(o, 3),
        "plain_s": round(p, 3),
        "breakdown_s": {k: round(v, 3) for k, v in spent.items()},
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
