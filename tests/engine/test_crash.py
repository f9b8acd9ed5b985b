"""Crash safety: the real CLI, killed with SIGKILL at named points and at random moments, resumed
each time, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import merged, write

from iterprune.state import checkpoints
from iterprune.state.store import Store

pytestmark = pytest.mark.slow

SCHEDULE = {
    "name": "crash",
    "seed": 11,
    "threads": 1,
    "model": {"builtin": "digits_mlp", "kwargs": {"hidden": 48}},
    "data": {"builtin": "digits", "kwargs": {"limit": 500}, "batch_size": 32},
    "pretrain": {"epochs": 4, "lr": 1.0e-2},
    "prune": {"method": "global_magnitude", "step": 0.5, "target_sparsity": 0.95},
    "finetune": {"epochs": 3, "optimizer": "sgd", "lr": 0.02, "momentum": 0.9},
    "validate": {"max_drop": 1.0},
    "rollback": {"retries": 2, "shrink": 0.5, "min_step": 0.05},
}

# named points (ITERPRUNE_KILL_AT), with "random" for a SIGKILL after a random delay
KILLS = [  # each named point fires in its process (asserted): the counts keep some run left
    "pretrain_batch:20",
    "random",
    "prune:1",
    "finetune_batch:20",
    "validate:1",
    "checkpoint_write:1",
    "checkpoint_renamed:1",
    "db_commit:4",
    "recover_batch:4",
    "random",
    "recover:1",
    "prune:2",
    "db_commit:6",
    "finetune_batch:30",
    "validate:2",
    "random",
]


def cli(state: Path, schedule: Path, kill_at: str = "") -> subprocess.Popen:
    env = {**os.environ, "ITERPRUNE_STATE_DIR": str(state), "ITERPRUNE_KILL_AT": kill_at}
    return subprocess.Popen(
        [sys.executable, "-m", "iterprune", "start", str(schedule)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rows_now(state: Path, sql: str) -> list:
    """Rows of the run's database, read without writing (None while the schema is made)."""
    db = state / "iterprune.db"
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:  # the schema is still being created
        return []


def attempts(state: Path) -> int:
    return len(rows_now(state, "select id from rounds where run = 'crash'"))


def kill_in_next_attempt(proc: subprocess.Popen, state: Path, before: int, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds into the first attempt it begins (a new row in
    ``rounds``, written after it resumed): an event, not a time from its start, so a slow or busy
    machine moves the moment but not where it lands."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and attempts(state) <= before:
        assert time.monotonic() < deadline, "no attempt began"
        time.sleep(0.01)
    time.sleep(delay)
    proc.kill()


def resumes(state: Path) -> int:
    return len(rows_now(state, "select id from events where kind = 'resume'"))


def has_baseline(state: Path) -> bool:
    return bool(rows_now(state, "select 1 from runs where baseline_accuracy is not null"))


def outcome(state: Path) -> tuple[list, str]:
    store = Store(state)
    rows = [
        (
            r["recovered"],
            r["round"],
            r["attempt"],
            r["status"],
            r["step"],
            r["sparsity"],
            r["val_accuracy"],
            r["params"],
        )
        for r in store.rounds("crash")
    ]
    run = store.run("crash")
    assert run["status"] == "finished", run
    ckpt = [c for c in store.checkpoints("crash") if c["round"] == run["accepted_round"]][-1]
    state_dict = checkpoints.load(state / ckpt["path"], ckpt["sha256"])
    digest = hashlib.sha256()
    for part in ("model", "mask"):
        for key in sorted(state_dict[part]):
            digest.update(key.encode())
            digest.update(
                state_dict[part][key].contiguous().view(torch.uint8).numpy().tobytes()
                if state_dict[part][key].dtype != torch.bool
                else state_dict[part][key].numpy().tobytes()
            )
    store.close()
    return rows, digest.hexdigest()


def test_kill_9_anywhere_then_resume_ends_identically(tmp_path: Path) -> None:
    schedule = write(tmp_path / "crash.yaml", SCHEDULE)

    reference = cli(tmp_path / "ref", schedule)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out
    expected_rows, expected_hash = outcome(tmp_path / "ref")
    statuses = [r[3] for r in expected_rows]
    assert "rolled_back" in statuses and "accepted" in statuses  # the schedule exercises both
    assert any(r[0] for r in expected_rows)  # and recoveries, which the kills also land in

    state = tmp_path / "killed"
    rng = random.Random(7)
    killed = []
    for point in KILLS:
        expected_resumes = resumes(state) + has_baseline(state)
        if point == "random":
            proc = cli(state, schedule)
            kill_in_next_attempt(proc, state, attempts(state), rng.uniform(0.0, 0.1))
        else:
            proc = cli(state, schedule, point)
        out, _ = proc.communicate(timeout=300)
        # a named point must fire (else removing it would pass); a random moment may come late
        assert proc.returncode == -9 or (point == "random" and proc.returncode == 0), (point, out)
        if proc.returncode == -9:
            killed.append(point)
        assert resumes(state) >= expected_resumes, (point, out)  # it continued the run
    final = cli(state, schedule)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out
    assert killed.count("random") >= 2, killed
    store = Store(state)
    resumed_from = {
        int(e["message"].split()[3])
        for e in store.events("crash")
        if e["message"].startswith("resumed from round")
    }
    store.close()
    assert len(resumed_from) >= 4 and max(resumed_from) >= 4, resumed_from  # resumes mid-run

    rows, digest = outcome(state)
    assert rows == expected_rows
    assert digest == expected_hash
    leftovers = [p.name for p in (state / "checkpoints" / "crash").iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


MID_KILLS = [
    "finetune_batch:60",
    "recover_batch:5",
    "checkpoint_write:3",
    "finetune_batch:17",
    "checkpoint_renamed:2",
    "random",
    "db_commit:40",
    "finetune_batch:25",
]


def test_kill_9_inside_long_epochs_continues_from_mid_round_checkpoints(tmp_path: Path) -> None:
    schedule = write(tmp_path / "crash.yaml", merged(SCHEDULE, when={"checkpoint_every": 3}))
    reference = cli(tmp_path / "ref", schedule)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out
    expected = outcome(tmp_path / "ref")

    state = tmp_path / "killed"
    rng = random.Random(3)
    killed = []
    for point in MID_KILLS:
        proc = cli(state, schedule, "" if point == "random" else point)
        if point == "random":
            kill_in_next_attempt(proc, state, attempts(state), rng.uniform(0.0, 0.1))
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == -9 or (point == "random" and proc.returncode == 0), (point, out)
        killed += [point] if proc.returncode == -9 else []
    final = cli(state, schedule)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out

    assert outcome(state) == expected
    store = Store(state)
    continued = [
        e["message"] for e in store.events("crash") if e["message"].startswith("continuing")
    ]
    assert [c for c in store.checkpoints("crash") if c["kind"] == "mid"] == []
    store.close()
    assert len(continued) >= 3, continued
    assert not list((state / "checkpoints" / "crash").glob("*mid*"))
