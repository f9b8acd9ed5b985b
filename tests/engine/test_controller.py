"""How real runs decide: a test split that no decision reads, paired evidence for every attempt,
recovery before rollback, a step that grows back, and continuing a recovery after a stop."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import (
    Recorder,
    StopAfter,
    assert_same_tensors,
    final_state,
    make_runner,
    run_to_end,
    tiny,
    write,
)

from iterprune.cli import table as cli
from iterprune.engine import evaluation
from iterprune.engine.runner import Runner
from iterprune.state.store import Store

TESTED = tiny(data={"test_fraction": 0.25, "val_fraction": 0.25})


def test_the_baseline_and_every_accepted_round_are_measured_on_the_test_split(
    tmp_path: Path, capsys
) -> None:
    path = write(tmp_path / "tiny.yaml", TESTED)
    state = str(tmp_path / "s")
    assert cli.main(["start", str(path), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "tiny", "--json", "--state-dir", state]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert 0 <= doc["baseline_test_accuracy"] <= 100 and doc["val_samples"] == 100
    for r in doc["rounds"]:
        assert (r["test_accuracy"] is not None) == (r["status"] == "accepted")
    assert cli.main(["runs", "--json", "--state-dir", state]) == 0
    run = json.loads(capsys.readouterr().out)[0]
    accepted = [r for r in doc["rounds"] if r["status"] == "accepted"]
    assert run["test_accuracy"] == accepted[-1]["test_accuracy"]
    assert cli.main(["history", "tiny", "--state-dir", state]) == 0
    assert "test %" in capsys.readouterr().out
    assert cli.main(["compare", "tiny", "tiny", "--state-dir", state]) == 0
    assert "final test accuracy" in capsys.readouterr().out


DATA_FACTORY = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from iterprune.engine import examples

def loaders(batch_size, permute_test=False, shuffle_val=False):
    train, val, test = examples.digits_loaders(batch_size, 0.25, 3, limit=400, test_fraction=0.25)
    x, y = test.dataset.tensors
    if permute_test:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(9))]
    test = DataLoader(TensorDataset(x, y), batch_size=64)
    if shuffle_val:
        val = DataLoader(val.dataset, batch_size=64, shuffle=True)
    return train, val, test
"""


def factory_run(tmp_path: Path, name: str, **kwargs: object) -> Runner:
    (tmp_path / "mydata.py").write_text(textwrap.dedent(DATA_FACTORY))
    doc = tiny()
    doc["data"] = {"factory": "mydata:loaders", "kwargs": kwargs, "batch_size": 32}
    path = write(tmp_path / f"{name}.yaml", {**doc, "name": name})
    assert cli.main(["start", str(path), "--state-dir", str(tmp_path / "s")]) == 0
    runner = Runner(Store(tmp_path / "s"), name, Recorder())
    runner.prepare()  # the finished run, loaded: its weights are the last accepted round's
    return runner


def test_permuting_the_test_labels_changes_no_decision_and_no_weight(tmp_path: Path) -> None:
    plain = factory_run(tmp_path, "plain")
    permuted = factory_run(tmp_path, "permuted", permute_test=True)
    keys = ("round", "attempt", "status", "step", "sparsity", "val_accuracy", "drop", "lost")
    rounds = [
        [{k: r[k] for k in keys} for r in run.store.rounds(run.run_id)] for run in (plain, permuted)
    ]
    assert rounds[0] == rounds[1] and len(rounds[0]) >= 2
    assert_same_tensors(plain.model.state_dict(), permuted.model.state_dict())
    tests = [
        [r["test_accuracy"] for r in run.store.rounds(run.run_id)] for run in (plain, permuted)
    ]
    assert tests[0] != tests[1]  # the test split was measured, and differs


def test_a_shuffling_validation_loader_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(AssertionError):
        factory_run(tmp_path, "shuffled", shuffle_val=True)
    err = capsys.readouterr().err
    assert "error: the validation loader shuffles" in err and "shuffle=False" in err


def test_each_attempt_records_its_paired_evidence(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, TESTED)
    run_to_end(runner)
    row = runner.store.run("tiny")
    n = row["val_samples"]
    for r in runner.store.rounds("tiny"):
        assert r["drop"] == pytest.approx(100 * (r["lost"] - r["gained"]) / n)
        assert r["drop"] == pytest.approx(row["baseline_accuracy"] - r["val_accuracy"])
        assert r["drop_low"] <= r["drop"] <= r["drop_high"]
        assert r["epochs"] == 1 + (1 if r["recovered"] else 0)  # finetune.epochs (+ recovery)
    assert evaluation.Reference.from_row(row).correct.sum() == round(
        row["baseline_accuracy"] * n / 100
    )


class WrongOnce:
    """Makes chosen validations (by count, from the first attempt's) answer everything wrong."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wrong: set[int]) -> None:
        self.real, self.calls, self.wrong = evaluation.answers, 0, wrong
        monkeypatch.setattr(evaluation, "answers", self)

    def __call__(self, *args: object, **kwargs: object) -> evaluation.Answers:
        found = self.real(*args, **kwargs)
        self.calls += 1
        if self.calls in self.wrong:
            return dataclasses.replace(found, correct=torch.zeros_like(found.correct))
        return found


def test_a_failed_attempt_recovers_before_it_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, tiny(rollback={"recover_epochs": 2}))
    WrongOnce(monkeypatch, {1})  # the first judgement of round 1 fails; the recovered one passes
    assert runner.step()
    first = runner.store.rounds("tiny")[0]
    assert (first["status"], first["recovered"], first["epochs"]) == ("accepted", 1, 1 + 2)
    assert "recovered with 2 more epoch(s) from drop" in first["note"]


def test_a_second_failure_after_the_recovery_rolls_back_and_the_step_grows_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tiny(prune={"target_sparsity": 0.9}, rollback={"grow_after": 2, "grow": 2.0})
    runner = make_runner(tmp_path, doc)
    WrongOnce(monkeypatch, {1, 2})  # round 1.1 fails, and fails again after its recovery
    run_to_end(runner)
    rounds = runner.store.rounds("tiny")
    assert (rounds[0]["status"], rounds[0]["recovered"], rounds[0]["epochs"]) == (
        "rolled_back",
        1,
        2,
    )
    assert "drop" in rounds[0]["note"] and "recovered with 1 more epoch(s)" in rounds[0]["note"]
    steps = [(r["round"], r["attempt"], r["step"]) for r in rounds if r["status"] == "accepted"]
    # 0.3 failed: 0.15 for two accepted rounds in a row, then back to 0.3 (never beyond it)
    assert [s for *_, s in steps[:4]] == pytest.approx([0.15, 0.15, 0.3, 0.3])


def test_a_stop_during_the_recovery_continues_it_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tiny(finetune={"epochs": 2}, rollback={"recover_epochs": 2})
    WrongOnce(monkeypatch, {2})  # (1 is the baseline) round 1's first judgement fails
    whole = make_runner(tmp_path / "a", doc)
    run_to_end(whole)
    expected = final_state(whole)

    WrongOnce(monkeypatch, {2})
    stopper = StopAfter(20 + 13)  # round 1: 20 batches of fine-tuning, then 13 of the recovery
    first = make_runner(tmp_path / "b", doc, stopper)
    run_to_end(first)
    mid = [c for c in first.store.checkpoints("tiny") if c["kind"] == "mid"]
    assert len(mid) == 1 and first.store.rounds("tiny")[-1]["status"] == "interrupted"
    first.store.close()

    resumed = Runner(Store(tmp_path / "b"), "tiny", Recorder())
    resumed.prepare()
    run_to_end(resumed)
    rows, weights = final_state(resumed)
    assert rows == expected[0]
    assert_same_tensors(weights, expected[1])
    messages = [e["message"] for e in resumed.store.events("tiny")]
    assert any("continuing round 1.1 at epoch 2, batch 3" in m for m in messages), messages
    assert resumed.store.rounds("tiny")[0]["recovered"] == 1


def test_a_relative_budget_judges_every_round_against_a_share_of_the_baseline(
    tmp_path: Path, capsys
) -> None:
    doc = tiny(name="share", validate={"max_drop": "3%"})
    state = str(tmp_path / "state")
    assert cli.main(["start", str(write(tmp_path / "s.yaml", doc)), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "share", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["budget"] == "3% of the dense model's accuracy"
    assert history["max_drop"] == pytest.approx(0.03 * history["baseline_accuracy"])
    rounds = history["rounds"]
    assert all(r["drop"] <= history["max_drop"] + 1e-9 for r in rounds if r["status"] == "accepted")
    assert all(r["drop"] > history["max_drop"] for r in rounds if r["status"] == "rolled_back")
    assert cli.main(["history", "share", "--state-dir", state]) == 0
    assert "(3% of the dense)" in capsys.readouterr().out
