"""Batches and outputs in the shapes models take and give: tuples or dicts of tensors (a dict is
passed as keyword arguments), outputs as tensors, tuples or objects with ``.logits``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY, merged, write

from iterprune.cli import table as cli
from iterprune.core import decisions
from iterprune.engine import tasks
from iterprune.errors import UserError


def test_nested_batches_move_to_the_device_whole() -> None:
    batch = {"inputs": (torch.ones(2), [torch.zeros(1)]), "labels": torch.tensor([1, 0]), "n": 3}
    moved = tasks.to_device(batch, "meta")
    assert moved["inputs"][0].device.type == "meta" and moved["inputs"][1][0].is_meta
    assert moved["labels"].is_meta and moved["n"] == 3
    assert isinstance(moved["inputs"], tuple) and isinstance(moved["inputs"][1], list)


def test_a_batch_is_inputs_and_labels_or_a_dict_with_labels() -> None:
    x, y = torch.ones(2, 3), torch.tensor([0, 1])
    assert tasks.split((x, y))[1] is y and tasks.split([x, y])[0] is x
    inputs, labels = tasks.split({"pixel_values": x, "labels": y})
    assert labels is y and list(inputs) == ["pixel_values"]
    with pytest.raises(UserError, match="needs a 'labels' key; this one has \\['pixel_values'\\]"):
        tasks.split({"pixel_values": x})
    with pytest.raises(UserError, match="got tuple of 3 items"):
        tasks.split((x, y, y))


def test_logits_come_from_a_tensor_a_tuple_or_an_object_with_logits() -> None:
    t = torch.ones(2, 3)
    assert tasks.logits(t) is t
    assert tasks.logits((t, "aux")) is t
    assert tasks.logits(SimpleNamespace(logits=t, loss=None)) is t
    with pytest.raises(UserError, match="the model returned dict: expected a tensor of logits"):
        tasks.logits({"scores": t})


def test_a_dict_batch_is_passed_as_keyword_arguments() -> None:
    class Keywords(torch.nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=pixel_values * 2)

    batch = {"pixel_values": torch.tensor([[0.0, 1.0], [3.0, 1.0]]), "labels": torch.tensor([1, 1])}
    right, labels = tasks.CLASSIFICATION.correct(Keywords(), batch)
    assert right.tolist() == [True, False] and labels.tolist() == [1, 1]
    assert tasks.CLASSIFICATION.loss(Keywords(), batch).ndim == 0


FACTORIES = '''
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Dataset

from iterprune.engine import examples


class AsDicts(Dataset):
    """The digits as a Hugging Face style dataset: each sample a dict."""

    def __init__(self, subset):
        self.x, self.y = subset.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class KeywordNet(torch.nn.Module):
    """Takes keyword arguments and returns an object with .logits, as a transformer does."""

    def __init__(self):
        super().__init__()
        self.net = examples.digits_mlp(hidden=16)

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.net(pixel_values), hidden_states=None)


def model():
    return KeywordNet()


def loaders(batch_size):
    train, val, _ = examples.digits_loaders(batch_size, 0.25, 0, limit=300)
    g = torch.Generator().manual_seed(0)
    return (
        DataLoader(AsDicts(train.dataset), batch_size=batch_size, shuffle=True, generator=g),
        DataLoader(AsDicts(val.dataset), batch_size=64),
    )
'''


def test_a_run_on_dict_batches_and_a_model_that_returns_logits_in_an_object(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "hfstyle.py").write_text(FACTORIES)
    doc = merged(
        TINY,
        name="hf-style",
        model={"factory": "hfstyle:model", "builtin": None, "kwargs": None},
        data={"factory": "hfstyle:loaders", "builtin": None, "kwargs": None},
    )
    schedule = write(tmp_path / "hf.yaml", doc)
    state = str(tmp_path / "state")
    assert cli.main(["start", str(schedule), "--state-dir", state]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["history", "hf-style", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    accepted = [r for r in history["rounds"] if r["status"] == "accepted"]
    assert history["status"] == "finished" and accepted
    assert history["baseline_accuracy"] > 50  # it learned the digits through the dict batches


REGRESSION = '''
import torch
from torch.utils.data import DataLoader, TensorDataset


def loaders(batch_size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(600, generator=g)
    train = DataLoader(TensorDataset(x[:400], y[:400]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    return train, DataLoader(TensorDataset(x[400:], y[400:]), batch_size=64)


def model():
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


class MSE:
    """Mean squared error: per sample, the squared error; lower is better."""

    metric, higher_is_better = "mse", False

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)

    def scores(self, model, batch):
        x, y = batch
        return (model(x).squeeze(-1) - y) ** 2


class Small(MSE):
    """The same errors in units 10,000 times larger: an MSE near 1e-5."""

    def loss(self, model, batch):
        return super().loss(model, batch) * 1e-4

    def scores(self, model, batch):
        return super().scores(model, batch) * 1e-4


class Flat(MSE):
    def scores(self, model, batch):
        return super().scores(model, batch).sum().reshape(1, 1)


class NaNAfterBaseline(MSE):
    """Finite for the dense model (the baseline's two splits), NaN for every attempt after."""

    calls = 0

    def scores(self, model, batch):
        found = super().scores(model, batch)
        NaNAfterBaseline.calls += 1
        return found if NaNAfterBaseline.calls <= 4 else found * float("nan")


class NoScores:
    metric, higher_is_better = "mse", False

    def loss(self, model, batch):
        return model(batch[0]).sum()
'''


def regression(tmp_path: Path, task: str, **changes) -> Path:
    (tmp_path / "regress.py").write_text(REGRESSION)
    doc = merged(
        TINY,
        name="regress",
        model={"factory": "regress:model", "builtin": None, "kwargs": None},
        data={"factory": "regress:loaders", "builtin": None, "kwargs": None},
        task={"factory": f"regress:{task}"},
        prune={"step": 0.3, "target_sparsity": 0.5},
        validate={"max_drop": "20%"},
        **changes,
    )
    return write(tmp_path / "regress.yaml", doc)


def test_a_task_factory_judges_a_regressor_by_its_own_metric(tmp_path: Path, capsys) -> None:
    state = str(tmp_path / "state")
    assert cli.main(["start", str(regression(tmp_path, "MSE")), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "regress", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["metric"] == {"name": "mse", "unit": "", "higher_is_better": False}
    assert history["budget"] == "20% of the dense model's mse"
    base = history["baseline_accuracy"]  # the dense model's validation MSE
    assert 0 < base < 2 and history["max_drop"] == pytest.approx(0.2 * base)
    for r in history["rounds"]:  # lower is better: a worse model has a positive drop
        assert r["drop"] == pytest.approx(r["val_accuracy"] - base)
        assert r["drop_low"] <= r["drop"] <= r["drop_high"]
    assert cli.main(["history", "regress", "--state-dir", state]) == 0
    assert "baseline mse" in capsys.readouterr().out


def test_a_task_without_scores_is_refused_with_the_schedule(tmp_path: Path, capsys) -> None:
    schedule = regression(tmp_path, "NoScores")
    assert cli.main(["validate", str(schedule)]) == 2
    err = capsys.readouterr().err
    assert "task.factory" in err and "lacks scores" in err


def test_scores_that_are_not_one_float_per_sample_name_the_factory(tmp_path: Path, capsys) -> None:
    state = str(tmp_path / "state")
    assert cli.main(["start", str(regression(tmp_path, "Flat")), "--state-dir", state]) == 2
    err = capsys.readouterr().err
    assert "task.factory regress:Flat: scores() must return one float per sample" in err


def test_a_nan_score_fails_the_attempt_as_a_nan_loss_does(tmp_path: Path, capsys) -> None:
    schedule = regression(
        tmp_path, "NaNAfterBaseline", rollback={"retries": 1, "recover_epochs": 0}
    )
    state = str(tmp_path / "state")
    assert cli.main(["start", str(schedule), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "regress", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["rounds"] and all(r["status"] == "rolled_back" for r in history["rounds"])
    assert all(r["drop"] is None for r in history["rounds"])
    assert history["reason"].startswith("frontier reached")


def test_a_small_metric_is_written_with_the_decimals_its_budget_needs(tmp_path, capsys) -> None:
    """An MSE near 1e-5 with a 20% budget: every line that shows it has the digits to compare
    a drop with the budget (two decimals wrote ``mse 0.00 (drop +0.00)``), and the events name
    the metric (they said ``accuracy ...%`` for every task)."""
    state = str(tmp_path / "state")
    assert cli.main(["start", str(regression(tmp_path, "Small")), "--state-dir", state]) == 0
    log = capsys.readouterr().out
    assert cli.main(["history", "regress", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    d = decisions.decimals(history["max_drop"])
    assert history["baseline_accuracy"] < 1e-3 and d >= 6
    rounds = history["rounds"]
    shown = [f"mse {r['val_accuracy']:.{d}f} (drop {r['drop']:+.{d}f}" for r in rounds]
    assert all(line in log for line in shown), log
    assert f"dense baseline mse {history['baseline_accuracy']:.{d}f} on" in log
    assert cli.main(["history", "regress", "--state-dir", state]) == 0
    table = capsys.readouterr().out
    assert f"baseline mse {history['baseline_accuracy']:.{d}f}" in table
    assert all(f"{r['val_accuracy']:.{d}f}" in table for r in rounds)
    assert cli.main(["logs", "regress", "--state-dir", state]) == 0
    events = capsys.readouterr().out
    accepted = [line for line in events.splitlines() if " accepted: " in line]
    assert accepted and all(", mse 0.0" in line for line in accepted)
    assert "accuracy" not in events


def test_validate_says_the_budget_in_the_factorys_metric(tmp_path: Path, capsys) -> None:
    assert cli.main(["validate", str(regression(tmp_path, "MSE"))]) == 0
    assert "budget 20% of the dense model's mse" in capsys.readouterr().out


def test_the_shipped_regression_example_runs_as_the_readme_says(tmp_path: Path, capsys) -> None:
    """schedules/diabetes.yaml with its factories beside it, copied as a user would have them."""
    root = Path(__file__).resolve().parents[2] / "schedules"
    for name in ("diabetes.yaml", "diabetes.py"):
        shutil.copy(root / name, tmp_path / name)
    state = str(tmp_path / "state")
    assert cli.main(["start", str(tmp_path / "diabetes.yaml"), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "diabetes", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["metric"]["name"] == "mse" and history["val_samples"] == 88
    assert 0.3 < history["baseline_accuracy"] < 0.7  # it learned: predicting the mean scores 1
    assert history["baseline_test_accuracy"] is not None
    accepted = [r for r in history["rounds"] if r["status"] == "accepted"]
    assert accepted[-1]["sparsity"] == pytest.approx(0.98, abs=1e-3)
    assert all(r["drop"] <= history["max_drop"] for r in accepted)


def test_a_task_module_that_cannot_be_imported_is_one_problem(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.py").write_text("import torch\nraise ImportError('needs a package')\n")
    doc = merged(TINY, task={"factory": "broken:MSE"})
    assert cli.main(["validate", str(write(tmp_path / "b.yaml", doc))]) == 2
    err = capsys.readouterr().err
    assert err.count("task.factory") == 1 and "needs a package" in err, err


def test_a_traced_export_of_a_factory_task_asks_for_the_input_shape(tmp_path: Path, capsys) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    assert cli.main(["start", str(regression(tmp_path, "MSE")), *state]) == 0
    out = ["export", "regress", "--format", "pt2", "--out", str(tmp_path / "m.pt2"), *state]
    capsys.readouterr()
    assert cli.main(out) == 2
    assert "--input-shape 10 for ten features" in capsys.readouterr().err
    assert cli.main([*out, "--input-shape", "8"]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert program(torch.zeros(3, 8)).shape == (3, 1)
