"""Lottery-ticket mode: after every prune the surviving weights are exactly the rewind weights,
the mask only shrinks, the rewind point survives resume, and the random-reinit control runs."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import torch
from helpers import (
    Recorder,
    assert_resume_matches_uninterrupted,
    make_runner,
    parse,
    run_to_end,
    tiny,
    write,
)

from iterprune.cli import table as cli
from iterprune.core import pruning, rng
from iterprune.engine import recipe
from iterprune.engine.runner import Runner
from iterprune.errors import ScheduleError
from iterprune.state.store import Store


class AtTrainingStart(Recorder):
    """Captures weights, the attempt's mask and the accepted mask when each training starts."""

    def __init__(self) -> None:
        super().__init__()
        self.runner: Runner | None = None
        self.starts: list[tuple[dict, dict, dict]] = []

    def phase(self, name: str, total: int, description: str) -> None:
        super().phase(name, total, description)
        if name == "finetune" and self.runner is not None:
            params = pruning.prunable_parameters(self.runner.model)
            weights = {n: p.detach().clone() for n, p in params.items()}
            self.starts.append((weights, self.runner.mask, self.runner.accepted.mask))


def lottery(rewind: str | dict, control: object = None) -> dict:
    section = {"rewind": rewind} if control is None else {"rewind": rewind, "control": control}
    return tiny(pretrain={"epochs": 3}, lottery=section)


@pytest.mark.parametrize("rewind", ["init", {"epoch": 1}, {"step": 5}], ids=str)
def test_training_starts_from_rewind_weights_times_the_mask_every_round(
    tmp_path: Path, rewind: str | dict
) -> None:
    rec = AtTrainingStart()
    runner = make_runner(tmp_path, lottery(rewind), rec)
    rec.runner = runner
    run_to_end(runner)
    rewind_state = runner.snapshots.rewind_point()
    assert len(rec.starts) >= 2
    for weights, mask, accepted in rec.starts:
        for name, w in weights.items():
            assert torch.equal(w, rewind_state[name] * mask[name]), name
            assert not (mask[name] & ~accepted[name]).any(), "the mask grew"
    assert runner.store.run("tiny")["status"] == "finished"


def test_rewind_points_differ_as_asked(tmp_path: Path) -> None:
    points = {}
    for name, rewind in (("init", "init"), ("epoch", {"epoch": 1})):
        runner = make_runner(tmp_path / name, lottery(rewind))
        points[name] = runner.snapshots.rewind_point()
        trained = runner.accepted.model
    assert not torch.equal(points["init"]["1.weight"], points["epoch"]["1.weight"])
    assert not torch.equal(points["epoch"]["1.weight"], trained["1.weight"])


def test_control_accuracy_is_recorded_and_shown(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "tiny.yaml", lottery("init", "random_reinit"))
    state = str(tmp_path / "s")
    assert cli.main(["start", str(path), "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "control " in out
    cli.main(["history", "tiny", "--json", "--state-dir", state])
    rounds = json.loads(capsys.readouterr().out)["rounds"]
    assert rounds and all(0 <= r["control_accuracy"] <= 100 for r in rounds)
    cli.main(["history", "tiny", "--state-dir", state])
    assert "ctrl %" in capsys.readouterr().out


def test_rewind_point_survives_resume_and_the_run_ends_identically(tmp_path: Path) -> None:
    doc = lottery({"epoch": 1}, "random_reinit")
    whole, resumed = assert_resume_matches_uninterrupted(tmp_path, doc)
    controls = [r["control_accuracy"] for r in resumed.store.rounds("tiny")]
    assert controls == [r["control_accuracy"] for r in whole.store.rounds("tiny")]


def test_a_corrupt_rewind_point_stops_the_run_with_exit_code_5(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "tiny.yaml", lottery("init"))
    state = tmp_path / "s"
    assert cli.main(["start", str(path), "--state-dir", str(state)]) == 0
    store = Store(state)
    store.update_run("tiny", status="stopped")
    (state / "checkpoints" / "tiny" / "rewind.pt").write_bytes(b"oops")
    capsys.readouterr()
    assert cli.main(["resume", "tiny", "--state-dir", str(state)]) == 5
    assert "rewind point" in capsys.readouterr().err


def test_a_control_over_several_seeds_records_mean_spread_and_count(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    trained: list[int] = []

    def fake_control(schedule, mask, train, val, device, seed, batch, group, task) -> float:
        trained.append(seed)
        return float(seed % 97)

    monkeypatch.setattr(recipe, "control_accuracy", fake_control)
    doc = lottery("init", {"kind": "random_reinit", "seeds": 3})
    path = write(tmp_path / "tiny.yaml", doc)
    state = str(tmp_path / "s")
    assert cli.main(["start", str(path), "--state-dir", state]) == 0
    assert "over 3 seeds" in capsys.readouterr().out
    cli.main(["history", "tiny", "--json", "--state-dir", state])
    rounds = json.loads(capsys.readouterr().out)["rounds"]
    assert len(trained) == 3 * len(rounds) and len(set(trained)) == len(trained)
    for i, r in enumerate(rounds):
        values = [float(s % 97) for s in trained[3 * i : 3 * i + 3]]
        assert r["control_n"] == 3
        assert r["control_accuracy"] == pytest.approx(statistics.fmean(values))
        assert r["control_std"] == pytest.approx(statistics.stdev(values))
        # the first of them is the seed a single control uses
        assert trained[3 * i] == rng.derive_seed(doc["seed"] + 1, r["round"], r["attempt"])
    cli.main(["history", "tiny", "--state-dir", state])
    assert "±" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ({"kind": "random_reinit", "seeds": 0}, "lottery.control.seeds"),
        ({"kind": "shuffle"}, "lottery.control.kind"),
        ({"kind": "random_reinit", "n": 2}, "lottery.control.n"),
        ("random", "lottery.control"),
    ],
)
def test_bad_controls_are_schedule_errors(control: object, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        parse(lottery("init", control))


def test_the_plain_control_and_one_seed_are_the_same_run() -> None:
    plain = parse(lottery("init", "random_reinit"))
    one = parse(lottery("init", {"kind": "random_reinit", "seeds": 1}))
    assert plain.lottery == one.lottery and plain.fingerprint() == one.fingerprint()
