"""Per-layer sensitivity: each layer pruned alone, measured, and put back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_runner, tiny, write
from torch import nn

from iterprune.cli import table as cli
from iterprune.core import pruning, sensitivity
from iterprune.engine import evaluation, examples


def trained_with_a_layer_that_matters() -> tuple[nn.Module, object]:
    """Identity layers around a small classifier: the identities are mostly exact zeros (pruning
    up to 90% of them removes only zeros), every weight of the classifier carries information."""
    torch.manual_seed(0)
    train, val, _ = examples.digits_loaders(32, 0.3, 0, limit=800)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Linear(64, 10), nn.Linear(10, 10))
    with torch.no_grad():
        for i in (1, 3):
            model[i].weight.copy_(torch.eye(model[i].weight.shape[0]))
            model[i].bias.zero_()
    for i in (1, 3):
        model[i].requires_grad_(False)
    optimizer = torch.optim.Adam(model[2].parameters(), lr=1e-2)
    for _ in range(8):
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model, val


def test_the_layer_that_matters_is_the_most_sensitive_and_weights_come_back_exactly() -> None:
    model, val = trained_with_a_layer_that_matters()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = pruning.prunable_parameters(model)
    ticks = []
    doc = sensitivity.analyse(
        params,
        lambda: evaluation.accuracy(model, val),
        (0.9, 0.5, 0.75),
        tick=lambda: ticks.append(1),
    )
    assert doc["levels"] == [0.5, 0.75, 0.9] and len(ticks) == 1 + 3 * 3
    assert doc["baseline_accuracy"] > 85
    drops = {r["layer"]: r["drop"] for r in doc["layers"]}
    assert drops["1"] == [0.0, 0.0, 0.0] and drops["3"] == [0.0, 0.0, 0.0]
    assert drops["2"][-1] > 10  # the classifier at 90%
    worst = max(doc["layers"], key=lambda r: sum(r["drop"]))
    assert worst["layer"] == "2"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sensitivity.suggested_exclude(doc["layers"], 0.0) == (["2"] if drops["2"][0] > 0 else [])


def test_channel_levels_zero_whole_output_channels_and_keep_one() -> None:
    w = torch.randn(8, 3, 3, 3)
    masks = list(sensitivity.keep_masks(w, [0.5, 0.99], "channel"))
    for keep, kept in zip(masks, (4, 1), strict=True):
        per_channel = keep.reshape(8, -1)
        assert bool((per_channel.all(1) | ~per_channel.any(1)).all())  # whole channels
        assert int(per_channel.all(1).sum()) == kept
    norms = w.abs().reshape(8, -1).sum(1)
    assert set(masks[0].reshape(8, -1).all(1).nonzero().flatten().tolist()) == set(
        norms.topk(4).indices.tolist()
    )


def test_analyze_a_runs_dense_model_from_the_cli(tmp_path: Path, capsys) -> None:
    runner = make_runner(tmp_path / "s", tiny())
    runner.store.close()
    state = str(tmp_path / "s")
    args = ["analyze", "tiny", "--sensitivity", "--levels", "0.5,0.9", "--json"]
    assert cli.main([*args, "--batches", "1", "--state-dir", state]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["levels"] == [0.5, 0.9] and doc["val_samples"] == 100  # one batch holds them all
    assert [r["layer"] for r in doc["layers"]] == ["1", "3", "5"]
    assert all(len(r["accuracy"]) == len(r["drop"]) == 2 for r in doc["layers"])
    assert set(doc) >= {"model", "baseline_accuracy", "levels", "layers", "suggested_exclude"}
    assert cli.main(["analyze", "tiny", "--sensitivity", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "suggested prune.exclude" in out and "98%" in out


def test_analyze_a_schedule_with_a_heatmap_and_bad_arguments(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    path = write(tmp_path / "tiny.yaml", tiny())
    png = tmp_path / "s.png"
    args = ["analyze", str(path), "--sensitivity", "--levels", "0.5", "--plot", str(png)]
    assert cli.main(args) == 0
    assert png.stat().st_size > 1000
    assert "randomly initialised" in capsys.readouterr().err
    assert cli.main(["analyze", str(path), "--sensitivity", "--levels", "1.5"]) == 2
    assert "--levels" in capsys.readouterr().err
    assert cli.main(["analyze", str(path), "--sensitivity", "--batches", "0"]) == 2
    assert "--batches" in capsys.readouterr().err
    assert cli.main(["analyze", "nope", "--state-dir", str(tmp_path / "empty")]) == 2
    assert "neither a schedule file nor a run" in capsys.readouterr().err
