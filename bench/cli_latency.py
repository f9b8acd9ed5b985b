"""How fast the commands people poll answer: each reading command's median wall time over fresh
processes, beside the floor of any Python command (``python -c pass``) and the cost of importing
torch, which these commands must not pay. Target: each <= 0.3 s on the project's 2-core machine.

The state directory is a copy of the run that iterprune 0.1.0 left in tests/fixtures/state-0.1
(migrated once before timing), so every command reads a real run.

    python bench/cli_latency.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "state-0.1"
TARGET_S = 0.3


def commands(state: str) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "iterprune"]
    s = ["--state-dir", state]
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
        ("iterprune --help", [*cli, "--help"]),
    ]
    for args in (
        ["runs"],
        ["status"],
        ["status", "upgrade"],
        ["history", "upgrade"],
        ["show", "upgrade"],
        ["queue"],
    ):
        rows.append((f"iterprune {' '.join(args)}", [*cli, *args, *s]))
        rows.append((f"iterprune {' '.join(args)} --json", [*cli, *args, "--json", *s]))
    rows.append(("iterprune logs upgrade", [*cli, "logs", "upgrade", *s]))
    return rows


def median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp()) / "state"
    shutil.copytree(FIXTURE, state, ignore=shutil.ignore_patterns("schedule.yaml"))
    subprocess.run(
        [sys.executable, "-m", "iterprune", "runs", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        check=True,
    )  # migrate it once, untimed
    rows = [(name, median_seconds(argv, args.repeats)) for name, argv in commands(str(state))]
    floor = rows[0][1]
    print(f"{'command':<32} {'median s':>9} {'x python':>9}  target <= {TARGET_S} s")
    for name, seconds in rows:
        verdict = (
            "" if not name.startswith("iterprune") else ("ok" if seconds <= TARGET_S else "over")
        )
        print(f"{name:<32} {seconds:>9.3f} {seconds / floor:>9.1f}  {verdict}")
    print(
        f"(median of {args.repeats} fresh processes each; {sys.platform}, python "
        f"{sys.version.split()[0]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
