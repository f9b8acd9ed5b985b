from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import (
    Recorder,
    assert_resume_matches_uninterrupted,
    assert_same_tensors,
    break_answers,
    make_runner,
    snapshot,
    tiny,
)

from iterprune.core import pruning


def test_run_reaches_the_target_and_records_every_round(tmp_path: Path) -> None:
    rec = Recorder()
    runner = make_runner(tmp_path, tiny(), rec)
    while runner.step():
        pass
    row = runner.store.run("tiny")
    assert row["status"] == "finished"
    assert "target sparsity 60% reached" in row["reason"]
    rounds = runner.store.rounds("tiny")
    accepted = [r for r in rounds if r["status"] == "accepted"]
    assert accepted and accepted[-1]["sparsity"] == pytest.approx(0.6, abs=1e-4)
    for r in accepted:
        assert row["baseline_accuracy"] - r["val_accuracy"] <= 5.0
    assert [r["round"] for r in rec.rounds] == [r["round"] for r in rounds]
    assert "pretrain" in rec.phases and "finetune" in rec.phases
    # the model holds zeros exactly where the final mask says
    params = pruning.prunable_parameters(runner.model)
    assert all(torch.all(params[n][~m] == 0) for n, m in runner.accepted.mask.items())


def test_forced_accuracy_drop_is_rolled_back_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, tiny())
    assert runner.step()  # round 1 accepted: optimizer state now exists
    before = snapshot(runner)
    break_answers(monkeypatch)
    assert runner.step()  # round 2.1 loses everything and is rolled back
    last = runner.store.rounds("tiny")[-1]
    assert (last["round"], last["attempt"], last["status"]) == (2, 1, "rolled_back")
    assert_same_tensors(snapshot(runner), before)
    assert runner.store.run("tiny")["step"] == pytest.approx(0.15)  # 0.3 x shrink 0.5


def test_retries_exhausted_finishes_at_the_frontier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, tiny())
    break_answers(monkeypatch)
    while runner.step():
        pass
    rounds = runner.store.rounds("tiny")
    assert [(r["round"], r["attempt"], r["status"]) for r in rounds] == [
        (1, 1, "rolled_back"),
        (1, 2, "rolled_back"),
        (1, 3, "rolled_back"),
    ]
    assert [r["step"] for r in rounds] == pytest.approx([0.3, 0.15, 0.075])
    row = runner.store.run("tiny")
    assert row["status"] == "finished" and "frontier reached" in row["reason"]


def test_step_under_min_step_finishes_at_the_frontier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, tiny(rollback={"retries": 9, "min_step": 0.1}))
    break_answers(monkeypatch)
    while runner.step():
        pass
    assert len(runner.store.rounds("tiny")) == 2  # 0.3, then 0.15; 0.075 < min_step
    assert "under rollback.min_step" in runner.store.run("tiny")["reason"]


def test_resumed_run_ends_exactly_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    assert_resume_matches_uninterrupted(tmp_path, tiny())


def test_superseded_checkpoints_are_removed_but_dense_and_last_kept(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, tiny())
    while runner.step():
        pass
    kinds = [c["kind"] for c in runner.store.checkpoints("tiny")]
    assert kinds == ["dense", "accepted"]
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "tiny").iterdir())
    assert len(files) == 2 and "dense.pt" in files


def test_keep_all_keeps_every_accepted_checkpoint(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, tiny(checkpoints={"keep": "all"}))
    while runner.step():
        pass
    accepted = [r for r in runner.store.rounds("tiny") if r["status"] == "accepted"]
    assert len(runner.store.checkpoints("tiny")) == 1 + len(accepted)
