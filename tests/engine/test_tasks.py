"""Batches and outputs in the shapes models take and give: tuples or dicts of tensors (a dict is
passed as keyword arguments), outputs as tensors, tuples or objects with ``.logits``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY, merged, write

from iterprune.cli import table as cli
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
