from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from iterprune import pruning, schedule, training
from iterprune.runner import Runner
from iterprune.runs import open_run
from iterprune.store import Store


class Recorder:
    """A reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.rounds: list[dict] = []
        self.events: list[tuple[str, str, str]] = []
        self.phases: list[str] = []
        self.done: tuple[str, str] | None = None

    def run_started(self, info: dict) -> None:
        self.info = info

    def phase(self, name: str, total: int, description: str) -> None:
        self.phases.append(name)

    def advance(self, done: float) -> None:
        pass

    def round_done(self, row: dict) -> None:
        self.rounds.append(row)

    def event(self, level: str, kind: str, message: str) -> None:
        self.events.append((level, kind, message))

    def run_done(self, status: str, reason: str) -> None:
        self.done = (status, reason)


def make_runner(state: Path, text: str, reporter: Recorder | None = None) -> Runner:
    store = Store(state)
    s = schedule.parse(text, "tiny.yaml")
    run_id = open_run(store, s, "tiny.yaml")
    runner = Runner(store, run_id, reporter or Recorder())
    runner.prepare()
    return runner


def snapshot(runner: Runner) -> dict:
    return {
        "model": {k: v.clone() for k, v in runner.model.state_dict().items()},
        "optimizer": copy.deepcopy(runner.optimizer.state_dict()),
        "mask": {k: v.clone() for k, v in runner.accepted.mask.items()},
    }


def assert_same_tensors(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    else:
        assert a == b


def test_run_reaches_the_target_and_records_every_round(tmp_path: Path, tiny_text: str) -> None:
    rec = Recorder()
    runner = make_runner(tmp_path, tiny_text, rec)
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
    tmp_path: Path, tiny_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, tiny_text)
    assert runner.step()  # round 1 accepted: optimizer state now exists
    before = snapshot(runner)
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: 0.0)
    assert runner.step()  # round 2.1 loses everything and is rolled back
    last = runner.store.rounds("tiny")[-1]
    assert (last["round"], last["attempt"], last["status"]) == (2, 1, "rolled_back")
    assert_same_tensors(snapshot(runner), before)
    assert runner.store.run("tiny")["step"] == pytest.approx(0.15)  # 0.3 x shrink 0.5


def test_retries_exhausted_finishes_at_the_frontier(
    tmp_path: Path, tiny_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, tiny_text)
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: 0.0)
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
    tmp_path: Path, tiny_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tiny_text.replace("retries: 2", "retries: 9").replace("min_step: 0.05", "min_step: 0.1")
    runner = make_runner(tmp_path, text)
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: 0.0)
    while runner.step():
        pass
    assert len(runner.store.rounds("tiny")) == 2  # 0.3, then 0.15; 0.075 < min_step
    assert "under rollback.min_step" in runner.store.run("tiny")["reason"]


def final_state(runner: Runner) -> tuple[list, dict]:
    rows = [
        (r["round"], r["attempt"], r["status"], r["sparsity"], r["val_accuracy"])
        for r in runner.store.rounds(runner.run_id)
    ]
    return rows, {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_resumed_run_ends_exactly_where_an_uninterrupted_run_ends(
    tmp_path: Path, tiny_text: str
) -> None:
    assert_resume_matches_uninterrupted(tmp_path, tiny_text)


def assert_resume_matches_uninterrupted(tmp_path: Path, text: str) -> tuple[Runner, Runner]:
    """Run ``text`` whole, and again stopped after one round and resumed by a new Runner; the
    rounds and the final weights must be identical. Returns (whole, resumed)."""
    whole = make_runner(tmp_path / "a", text)
    while whole.step():
        pass
    expected_rows, expected_weights = final_state(whole)
    first = make_runner(tmp_path / "b", text)
    assert first.step()  # one accepted round, then the process "dies"
    first.store.close()
    resumed = Runner(Store(tmp_path / "b"), "tiny", Recorder())
    resumed.prepare()
    while resumed.step():
        pass
    rows, weights = final_state(resumed)
    assert rows == expected_rows
    assert_same_tensors(weights, expected_weights)
    return whole, resumed


def test_superseded_checkpoints_are_removed_but_dense_and_last_kept(
    tmp_path: Path, tiny_text: str
) -> None:
    runner = make_runner(tmp_path, tiny_text)
    while runner.step():
        pass
    kinds = [c["kind"] for c in runner.store.checkpoints("tiny")]
    assert kinds == ["dense", "accepted"]
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "tiny").iterdir())
    assert len(files) == 2 and "dense.pt" in files


def test_keep_all_keeps_every_accepted_checkpoint(tmp_path: Path, tiny_text: str) -> None:
    runner = make_runner(tmp_path, tiny_text + "checkpoints: {keep: all}\n")
    while runner.step():
        pass
    accepted = [r for r in runner.store.rounds("tiny") if r["status"] == "accepted"]
    assert len(runner.store.checkpoints("tiny")) == 1 + len(accepted)
