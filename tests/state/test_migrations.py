"""A state directory written by an earlier release continues under this one.

tests/fixtures/state-0.1 was written by iterprune 0.1.0: a run of its schedule.yaml, stopped by a
stop request during round 3's fine-tuning, after two accepted rounds (with a mid-round checkpoint,
and the attempt stored as 'failed' as 0.1.0 did). Never edit the fixture: every release must
continue it, migrating the schema when it changes.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_state

from iterprune.cli import table as cli
from iterprune.state.store import Store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "state-0.1"
SCHEDULE = FIXTURE / "schedule.yaml"


def fixture_rows(status: str | None = None) -> list[dict]:
    """The rounds as 0.1.0 stored them (read straight from the fixture, without migrating it)."""
    conn = sqlite3.connect(
        f"file:{FIXTURE / 'iterprune.db'}?mode=ro&immutable=1", uri=True
    )  # writes nothing beside it
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("select * from rounds order by round, attempt")]
    conn.close()
    return [r for r in rows if status is None or r["status"] == status]


def copy_of_fixture(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state, ignore=shutil.ignore_patterns("schedule.yaml"))
    return state


def final_digest(state: Path) -> str:
    store = Store(state)
    accepted = store.run("upgrade")["accepted_round"]
    store.close()
    saved = checkpoint_state(state, "upgrade", accepted)
    h = hashlib.sha256()
    for part in ("model", "mask"):
        for key in sorted(saved[part]):
            h.update(key.encode() + saved[part][key].to(torch.float64).numpy().tobytes())
    return h.hexdigest()


def test_the_fixture_is_what_0_1_wrote() -> None:
    rows = fixture_rows()
    assert [(r["round"], r["attempt"], r["status"]) for r in rows] == [
        (1, 1, "accepted"),
        (2, 1, "accepted"),
        (3, 1, "failed"),  # 0.1.0's word for an attempt cut short by a stop
    ]


def test_opening_an_old_state_directory_migrates_it(tmp_path: Path) -> None:
    store = Store(copy_of_fixture(tmp_path))
    rows = store.rounds("upgrade")
    assert [r["status"] for r in rows] == ["accepted", "accepted", "interrupted"]
    assert store.run("upgrade")["status"] == "stopped"
    store.close()


@pytest.mark.parametrize("how", ["start", "resume"])
def test_a_run_of_0_1_continues_to_the_end(tmp_path: Path, how: str, capsys) -> None:
    state = copy_of_fixture(tmp_path)
    if how == "start":  # the unchanged schedule is recognised as the same run
        args = ["start", str(SCHEDULE), "--state-dir", str(state)]
    else:
        args = ["resume", "upgrade", "--state-dir", str(state)]
    assert cli.main(args) == 0, capsys.readouterr()
    store = Store(state)
    row = store.run("upgrade")
    assert row["status"] == "finished" and "target sparsity 85% reached" in row["reason"]
    rounds = store.rounds("upgrade")
    messages = [e["message"] for e in store.events("upgrade")]
    store.close()
    # the accepted rounds of 0.1.0 are kept as they were, not redone
    kept = [{k: r[k] for k in ("round", "attempt", "sparsity", "val_accuracy")} for r in rounds[:2]]
    old = [
        {k: r[k] for k in ("round", "attempt", "sparsity", "val_accuracy")}
        for r in fixture_rows("accepted")
    ]
    assert kept == old
    # the interrupted attempt continued from its mid-round checkpoint
    assert any(m.startswith("continuing round 3.1 at epoch 1, batch 5") for m in messages)
    # 0.1.0 kept only the dense accuracy: its per-sample answers were measured once, the same
    assert any("this run was started by an earlier release" in m for m in messages)
    assert any("accuracy 80.00% (recorded when the run started: 80.00%)" in m for m in messages)
    assert rounds[-1]["status"] == "accepted" and rounds[-1]["sparsity"] >= 0.85 - 1e-4


def test_start_and_resume_of_the_old_run_end_identically(tmp_path: Path) -> None:
    a, b = copy_of_fixture(tmp_path / "a"), copy_of_fixture(tmp_path / "b")
    assert cli.main(["start", str(SCHEDULE), "--state-dir", str(a)]) == 0
    assert cli.main(["resume", "upgrade", "--state-dir", str(b)]) == 0
    assert final_digest(a) == final_digest(b)
    # 0.1.0 stored the schedule's directory as given ("."): started again from its file, the run
    # records where that file is, so a serve or resume from any directory finds its files
    store = Store(a)
    assert store.run("upgrade")["base_dir"] == str(FIXTURE.resolve())
    events = [e["message"] for e in store.events("upgrade")]
    store.close()
    assert f"the schedule's directory is now {FIXTURE.resolve()}" in events


def test_the_old_run_continues_with_reporting_and_operating_settings_added(tmp_path: Path) -> None:
    """Reporting is not identity: the 0.1 run, started again with TensorBoard, a latency
    benchmark, mid-round checkpoints and a retention rule, continues (and ends as it would have)
    instead of being refused as a changed schedule."""
    plain, changed = copy_of_fixture(tmp_path / "plain"), copy_of_fixture(tmp_path / "changed")
    text = SCHEDULE.read_text() + (
        f"report: {{tensorboard: {tmp_path / 'tb'}}}\n"
        "benchmark: {input_shape: [64], batch_size: 4, iterations: 3}\n"
        "when: {checkpoint_every: 4}\n"
        "checkpoints: {keep: all}\n"
    )
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(text)
    assert cli.main(["resume", "upgrade", "--state-dir", str(plain)]) == 0
    assert cli.main(["start", str(schedule), "--state-dir", str(changed)]) == 0
    assert final_digest(plain) == final_digest(changed)
    store = Store(changed)
    events = [e["message"] for e in store.events("upgrade")]
    store.close()
    assert any(m.startswith("settings changed: benchmark:") for m in events), events
    assert list((tmp_path / "tb").iterdir()), "the TensorBoard log the new settings asked for"


def test_a_changed_experiment_is_still_refused(tmp_path: Path, capsys) -> None:
    state = copy_of_fixture(tmp_path)
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(SCHEDULE.read_text().replace("seed: 5", "seed: 6") + "report: {}\n")
    assert cli.main(["start", str(schedule), "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "seed: 5 -> 6" in err and "report" not in err
