"""What the daemon costs: a complete iterprune run against a plain PyTorch loop doing the same work.

Both run the same fixed schedule (the digits CNN, 5 dense epochs, then 8 rounds of 20% global
magnitude pruning with 2 fine-tuning epochs each, no rollback) with the same seeds, in fresh
processes with the same environment, alternated, median of several. The plain loop uses the same
compute functions and nothing else: no CLI, no SQLite, no checkpoint files, no console.
Target: iterprune <= 1.05x the plain loop. Then one instrumented in-process run attributes
iterprune's extra time to checkpoint writes, database transactions and the console.

    python bench/overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
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
model: {builtin: digits_cnn}
data: {builtin: digits, batch_size: 64}
pretrain: {epochs: 5, lr: 1.0e-3}
prune: {method: global_magnitude, step: 0.2, target_sparsity: 0.8}
finetune: {epochs: 2, optimizer: adam, lr: 1.0e-3}
validate: {max_drop: 100}
"""

PLAIN = r"""
import sys, time
import torch
from iterprune import examples, pruning, rng, training
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True, warn_only=True)
seed = 0
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    model = examples.digits_cnn()
train, val = examples.digits_loaders(64, 0.25, seed)
rng.seed_everything(rng.derive_seed(seed, 0, 0), (train,))
training.train(model, train, torch.optim.Adam(model.parameters(), lr=1e-3), 5)
baseline = training.evaluate(model, val)
params = pruning.prunable_parameters(model)
total = sum(p.numel() for p in params.values())
mask = pruning.dense_mask(params)
optimizer = training.build_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.9)
for round_ in range(1, 100):
    alive = pruning.count_alive(mask)
    n = pruning.amount_to_prune(alive, total, 0.2, 0.8)
    if n == 0:
        break
    rng.seed_everything(rng.derive_seed(seed, round_, 1), (train,))
    mask = pruning.prune(params, mask, n, "global_magnitude", torch.Generator().manual_seed(rng.derive_seed(seed, round_, 1)))
    pruning.apply(params, mask)
    training.train(model, train, optimizer, 2, training.Options(enforcer=training.MaskEnforcer(params, mask)))
    accuracy = training.evaluate(model, val)
print(round_ - 1, "rounds", f"{accuracy:.2f}")
"""


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def attribute(work: Path) -> dict[str, float]:
    """One in-process run with timers around checkpoint writes, transactions and the console."""
    import contextlib

    from iterprune import checkpoints, cli, console, store

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
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "overhead.yaml").write_text(SCHEDULE)
        (work / "plain.py").write_text(PLAIN)
        env = {**os.environ}
        ours, plain = [], []
        for i in range(args.repeats):
            ours.append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "iterprune",
                        "start",
                        "overhead.yaml",
                        "--state-dir",
                        f"state{i}",
                    ],
                    work,
                    env,
                )
            )
            plain.append(timed([sys.executable, "plain.py"], work, env))
        spent = attribute(work)
    o, p = statistics.median(ours), statistics.median(plain)
    print(
        f"digits CNN, 5 dense epochs + 8 rounds x 2 epochs, 2 threads, median of {args.repeats} "
        "fresh processes each"
    )
    print(f"{'':<36}{'wall s':>10}{'ratio':>8}")
    print(f"{'plain PyTorch loop':<36}{p:>10.2f}{1.0:>8.2f}")
    print(f"{'iterprune start (CLI, SQLite, ckpt)':<36}{o:>10.2f}{o / p:>8.3f}")
    print(f"target <= 1.05: {'met' if o / p <= 1.05 else 'NOT met'}")
    print("where iterprune's own time goes (one instrumented in-process run):")
    for key, value in spent.items():
        print(f"  {key:<32}{value:>8.3f} s")
    print(
        json.dumps(
            {
                "ratio": round(o / p, 4),
                "iterprune_s": round(o, 3),
                "plain_s": round(p, 3),
                "breakdown_s": {k: round(v, 3) for k, v in spent.items()},
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
