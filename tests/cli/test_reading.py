"""The commands that only read answer without loading torch (they are the ones people poll)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parents[1] / "fixtures" / "state-0.1"

# Runs the command in a fresh interpreter, then says which heavy packages it had loaded.
PROBE = """
import json, sys
from iterprune.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "torchvision", "apscheduler", "torch_pruning") if m in sys.modules)
print("PROBE" + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""

READING = [
    ["--help"],
    ["runs"],
    ["runs", "--json"],
    ["status"],
    ["status", "upgrade", "--json"],
    ["history", "upgrade"],
    ["history", "upgrade", "--json"],
    ["show", "upgrade"],
    ["show", "upgrade", "--json"],
    ["queue"],
    ["queue", "--json"],
    ["logs", "upgrade"],
    ["history", "no-such-run"],
]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("reading") / "state"
    shutil.copytree(FIXTURE, state, ignore=shutil.ignore_patterns("schedule.yaml"))
    return state


@pytest.mark.parametrize("argv", READING, ids=" ".join)
def test_a_reading_command_loads_no_torch(state: Path, argv: list[str]) -> None:
    argv = argv if argv == ["--help"] else [*argv, "--state-dir", str(state)]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    probe = json.loads(done.stderr.split("PROBE", 1)[1])
    assert probe["heavy"] == [], probe
    assert probe["code"] == (2 if "no-such-run" in argv else 0), done.stderr
