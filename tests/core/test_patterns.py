"""N:M sparsity in rounds: one weight out of every group per round (4:4 → 3:4 → 2:4), the lowest
score first, along a row's fan-in (GPT-2's transposed Conv1D too); a run that follows the
pattern, retries a rolled-back round as it was, and shows per layer whether it holds."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SPARSE_RUN, break_answers, make_runner, merged, parse, run_to_end, write

from iterprune.cli import table as cli
from iterprune.core import patterns, pruning
from iterprune.errors import ScheduleError


def test_each_round_removes_the_lowest_survivor_of_every_group() -> None:
    w = torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.5, 0.6, -0.7, 0.8]])
    mask = {"w": torch.ones_like(w, dtype=torch.bool)}
    scores = {"w": w.abs()}
    sizes = []
    for _ in range(3):
        sizes.append(patterns.room(mask, 2, 4, {"w"}, frozenset()))
        mask = patterns.tighten(scores, mask, 2, 4, {"w"}, frozenset())
    assert sizes == [2, 2, 0]  # two groups lose one each, twice; then the pattern holds
    assert mask["w"].tolist() == [[True, False, True, False, False, False, True, True]]
    assert patterns.holds(mask["w"], 2, 4, False)


def test_ties_go_to_the_earlier_weight_and_nothing_revives() -> None:
    mask = {"w": torch.tensor([[True, True, False, True]])}
    out = patterns.tighten({"w": torch.ones(1, 4)}, mask, 1, 4, {"w"}, frozenset())
    assert out["w"].tolist() == [[False, True, False, True]]


def test_a_transposed_weight_is_grouped_along_its_input_dimension() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 3)  # Conv1D: [in, out]
    mask = {"w": torch.ones(8, 3, dtype=torch.bool)}
    for _ in range(2):
        mask = patterns.tighten({"w": w.abs()}, mask, 2, 4, {"w"}, frozenset({"w"}))
    plain = w.t().abs().reshape(3, 2, 4)  # each output's 8 inputs, in groups of 4
    keep = torch.zeros_like(plain, dtype=torch.bool)
    keep.scatter_(-1, plain.topk(2, dim=-1).indices, True)
    assert torch.equal(mask["w"], keep.reshape(3, 8).t())
    assert patterns.fits(torch.Size([8, 3]), 4, True) and not patterns.fits((6, 3), 4, True)
    assert patterns.fits(torch.Size([5, 2, 2, 2]), 4, False)  # a conv row: 2 × 2 × 2


NM = merged(SPARSE_RUN, name="nm", prune={"pattern": "2:4", "step": None, "target_sparsity": None})


def test_a_run_follows_the_pattern_and_show_says_it_holds(tmp_path, capsys) -> None:
    assert cli.main(["validate", str(write(tmp_path / "nm.yaml", NM))]) == 0
    assert "3:4 → 2:4" in capsys.readouterr().out  # and that the step controller is not used
    state = str(tmp_path / "state")
    assert cli.main(["start", str(write(tmp_path / "nm.yaml", NM)), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "nm", "--json", "--state-dir", state]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["reason"] == "the 2:4 pattern holds in every layer it applies to"
    accepted = [r for r in history["rounds"] if r["status"] == "accepted"]
    assert [round(r["sparsity"], 6) for r in accepted] == [0.25, 0.5]
    assert cli.main(["show", "nm", "--json", "--state-dir", state]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pattern"] == "2:4" and {r["pattern"] for r in shown["layers"]} == {"holds"}
    assert cli.main(["show", "nm", "--state-dir", state]) == 0
    assert "2:4 holds" in capsys.readouterr().out


def test_a_rolled_back_round_is_retried_as_it_was(tmp_path, monkeypatch) -> None:
    doc = merged(NM, validate={"max_drop": 1.0}, rollback={"retries": 1, "recover_epochs": 0})
    runner = make_runner(tmp_path, doc)
    break_answers(monkeypatch)  # every attempt now loses everything
    run_to_end(runner)
    first = [r for r in runner.store.rounds("nm") if r["round"] == 1]
    assert [r["status"] for r in first] == ["rolled_back", "rolled_back"]
    assert first[0]["step"] == first[1]["step"] == 0.25  # no smaller step: the same round
    assert first[0]["sparsity"] == first[1]["sparsity"] == 0.25
    assert runner.store.run("nm")["reason"] == "frontier reached: round 1 failed 2 attempts"


def test_layers_that_cannot_hold_it_are_skipped_with_a_warning(tmp_path, capsys) -> None:
    doc = {**NM, "model": {"builtin": "digits_cnn", "kwargs": {"width": 4}}}
    runner = make_runner(tmp_path, doc)
    run_to_end(runner)
    warnings = [e["message"] for e in runner.store.events("nm") if e["kind"] == "pattern"]
    assert warnings and "skips 0:" in warnings[0]  # the first conv's fan-in is 1 × 3 × 3
    mask = runner.accepted.mask
    assert bool(mask["0.weight"].all())  # it stays dense
    assert all(patterns.holds(mask[k], 2, 4, False) for k in mask if k != "0.weight")
    strict = merged(doc, name="strict", prune={"strict": True})
    state = str(tmp_path / "s2")
    assert cli.main(["start", str(write(tmp_path / "s.yaml", strict)), "--state-dir", state]) != 0
    assert "is not a multiple of 4 (prune.strict: true)" in capsys.readouterr().err


def test_a_wanda_pattern_run_ends_at_two_of_four(tmp_path) -> None:
    doc = merged(NM, prune={"method": "wanda", "calibration": {"batches": 2}})
    runner = make_runner(tmp_path, doc)
    run_to_end(runner)
    assert pruning.sparsity(runner.accepted.mask) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pattern": "4:2"}, 'must be "N:M" with 0 < N < M'),
        ({"pattern": "2:4", "step": 0.3}, "prune.step"),
        ({"pattern": "2:4", "target_sparsity": 0.5}, "prune.target_sparsity"),
        ({"pattern": "2:4", "method": "random"}, "needs a magnitude or wanda method"),
        ({"strict": True}, "applies to prune.pattern only"),
    ],
)
def test_pattern_options_are_checked_with_the_schedule(change: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse(merged(SPARSE_RUN, prune=change))
