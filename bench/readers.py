"""Many readers under load, and a queue of 200 runs.

1. **Readers.** A run fine-tunes (the digits CNN, 2 dense epochs, then rounds of 30% to 80%
   with 6 fine-tuning epochs each; about 15 s on 2 cores) while four processes each call
   ``iterprune status RUN --json`` ten times a second for its whole length — the command's own
   code in a loop (``cli.main``), so the database sees 40 status reads a second rather than 40
   interpreter start-ups. Runs with readers and without alternate in pairs, each order equally
   often; a few pairs without readers on both sides give the machine's own noise. Reported: the
   geometric mean of the with/without wall-time ratios (target <= 1.05), the readers' errors
   (target: no "database is locked", no failed call) and whether every run ended with the same
   rounds and weights.
2. **A queue of 200.** ``queue add`` of 200 tiny schedules (one command), ``queue --json``, then
   ``serve --until-empty``; the time of each, and a check that every run finished exactly once
   (one baseline, one attempt each, nothing left queued).

    python bench/readers.py [--pairs 4] [--controls 2] [--queue 200] [--skip-readers]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """\
name: load
seed: 0
threads: {threads}
model: {{builtin: digits_cnn}}
data: {{builtin: digits, batch_size: 64}}
pretrain: {{epochs: 2, lr: 1.0e-3}}
prune: {{method: global_magnitude, step: 0.3, target_sparsity: 0.8}}
finetune: {{epochs: 6, optimizer: adam, lr: 1.0e-3}}
validate: {{max_drop: 100}}
"""

TINY = """\
name: q{i:03d}
seed: {i}
threads: 1
model: {{builtin: digits_mlp, kwargs: {{hidden: 16}}}}
data: {{builtin: digits, kwargs: {{limit: 200}}, batch_size: 64}}
pretrain: {{epochs: 1, lr: 1.0e-2}}
prune: {{step: 0.3, target_sparsity: 0.3}}
finetune: {{epochs: 1, lr: 1.0e-3}}
validate: {{max_drop: 100}}
"""

# one reader: the status command's code ten times a second until the run's process is gone
READER = r"""
import contextlib, io, sys, time
from iterprune.cli import table as cli
state, pid = sys.argv[1], int(sys.argv[2])
calls = failed = locked = 0
while True:
    try:
        import os; os.kill(pid, 0)
    except ProcessLookupError:
        break
    started = time.monotonic()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["status", "load", "--json", "--state-dir", state])
        except Exception as exc:  # counted, not raised: the count is the measurement
            code, err = 1, io.StringIO(repr(exc))
    calls += 1
    failed += code != 0
    locked += "locked" in err.getvalue()
    time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
print(calls, failed, locked)
"""


def one_run(work: Path, name: str, readers: int) -> tuple[float, list[tuple[int, int, int]]]:
    """Wall seconds of ``iterprune start`` with ``readers`` polling it; what each reader saw."""
    state = work / name
    cmd = [sys.executable, "-m", "iterprune", "start", str(work / "load.yaml")]
    started = time.perf_counter()
    run = subprocess.Popen([*cmd, "--state-dir", str(state)], stdout=subprocess.DEVNULL)
    polls = []
    if readers:
        while not (state / "iterprune.db").exists() and run.poll() is None:
            time.sleep(0.01)
        reader = [sys.executable, "-c", READER, str(state), str(run.pid)]
        polls = [
            subprocess.Popen(reader, stdout=subprocess.PIPE, text=True) for _ in range(readers)
        ]
    assert run.wait() == 0, f"the run failed ({name})"
    wall = time.perf_counter() - started
    seen = [tuple(int(x) for x in p.communicate()[0].split()) for p in polls]
    return wall, seen  # type: ignore[return-value]


def ending(state: Path) -> tuple[list, str]:
    """The run's rounds and a digest of its last model: equal for equal runs."""
    import hashlib

    import iterprune

    run = iterprune.Run("load", state)
    keys = ("round", "attempt", "status", "sparsity", "val_accuracy")
    rows = [[r[k] for k in keys] for r in run.history()["rounds"]]
    digest = hashlib.sha256()
    for name, tensor in sorted(run.model().state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return rows, digest.hexdigest()


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def readers_part(work: Path, pairs: int, controls: int, threads: int) -> None:
    (work / "load.yaml").write_text(RUN.format(threads=threads))
    ratios, walls, seen, states = [], {"with": [], "without": []}, [], []
    for i in range(pairs):
        order = ("with", "without") if i % 2 == 0 else ("without", "with")
        got = {}
        for kind in order:
            wall, polls = one_run(work, f"{kind}-{i}", 4 if kind == "with" else 0)
            got[kind] = wall
            walls[kind].append(wall)
            seen += polls
            states.append(work / f"{kind}-{i}")
        ratios.append(got["with"] / got["without"])
    noise = []
    for i in range(controls):
        a, _ = one_run(work, f"control-a-{i}", 0)
        b, _ = one_run(work, f"control-b-{i}", 0)
        noise.append(b / a)
    endings = {json.dumps(ending(s)) for s in states}
    calls = sum(s[0] for s in seen)
    failed, locked = sum(s[1] for s in seen), sum(s[2] for s in seen)
    ratio = geomean(ratios)
    print(f"1. four readers x 10 status calls/s during a run ({pairs} pairs, {threads} threads)")
    print(f"{'':<34}{'wall s (median)':>16}")
    print(f"{'run alone':<34}{statistics.median(walls['without']):>16.2f}")
    print(f"{'run with 4 readers':<34}{statistics.median(walls['with']):>16.2f}")
    print(
        f"with / without, per pair: geometric mean {ratio:.3f}, range {min(ratios):.3f} - "
        f"{max(ratios):.3f}; target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}"
    )
    if noise:
        print(f"noise floor, alone / alone: {min(noise):.3f} - {max(noise):.3f}")
    print(
        f"status calls: {calls} ({calls / max(1, sum(walls['with'])):.0f}/s over the runs with "
        f"readers), failed {failed}, 'database is locked' {locked}"
    )
    print(f"every run ended the same (rounds and weights): {len(endings) == 1}")


def queue_part(work: Path, n: int) -> None:
    files = []
    for i in range(n):
        path = work / "queue" / f"q{i:03d}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TINY.format(i=i))
        files.append(str(path))
    state = ["--state-dir", str(work / "qstate")]
    env = {**os.environ}
    times = {}
    for label, args in (
        (f"queue add ({n} schedules)", ["queue", "add", *files]),
        ("queue --json", ["queue", "--json"]),
        ("serve --until-empty", ["serve", "--until-empty"]),
    ):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "iterprune", *args, *state],
            env=env,
            capture_output=True,
            text=True,
        )
        times[label] = time.perf_counter() - started
        assert done.returncode == 0, done.stderr[-2000:]
        if args[0:2] == ["queue", "--json"]:
            listed = json.loads(done.stdout)["runs"]
    import iterprune.api as api
    from iterprune.state.store import Store

    store = Store(work / "qstate", read_only=True)
    runs = api.runs(work / "qstate")
    finished = sum(r["status"] == "finished" for r in runs)
    baselines = [sum(e["kind"] == "baseline" for e in store.events(r["run"])) for r in runs]
    attempts = [len(store.rounds(r["run"])) for r in runs]
    print(f"\n2. a queue of {n} tiny runs (digits MLP, 1 round each), one serve")
    for label, seconds in times.items():
        print(f"{label:<34}{seconds:>10.2f} s")
    print(f"serve per run: {times['serve --until-empty'] / n:.2f} s")
    print(
        f"listed {len(listed)}, runs {len(runs)}, finished {finished}; served once each "
        f"(one baseline, one attempt): {baselines == [1] * n and attempts == [1] * n}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4, help="with/without pairs (even)")
    ap.add_argument("--controls", type=int, default=2, help="without/without pairs (noise)")
    ap.add_argument("--queue", type=int, default=200, help="runs in the queue (0: skip)")
    ap.add_argument("--threads", type=int, default=2, help="the run's torch threads (default 2)")
    ap.add_argument("--skip-readers", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_readers:
            readers_part(Path(tmp), args.pairs, args.controls, args.threads)
        if args.queue:
            queue_part(Path(tmp), args.queue)


if __name__ == "__main__":
    main()
