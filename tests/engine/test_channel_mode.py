"""prune.method: channel — rounds that physically remove channels, under the accuracy guard."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_resume_matches_uninterrupted,
    assert_same_tensors,
    break_answers,
    make_runner,
    merged,
    run_to_end,
    write,
)

from iterprune.core import channels

CHANNEL = {
    "name": "tiny",
    "seed": 3,
    "threads": 1,
    "model": {"builtin": "digits_cnn", "kwargs": {"width": 8}},
    "data": {"builtin": "digits", "kwargs": {"limit": 400}, "batch_size": 32},
    "pretrain": {"epochs": 3, "lr": 3.0e-3},
    "prune": {"method": "channel", "step": 0.3, "target_sparsity": 0.6},
    "finetune": {"epochs": 1, "optimizer": "adam", "lr": 1.0e-3},
    "validate": {"max_drop": 100},
}


def test_channel_rounds_make_the_model_smaller_and_cheaper(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, CHANNEL)
    dense_arch = channels.architecture(runner.model)
    run_to_end(runner)
    rounds = [r for r in runner.store.rounds("tiny") if r["status"] == "accepted"]
    assert len(rounds) >= 2
    assert [r["params"] for r in rounds] == sorted((r["params"] for r in rounds), reverse=True)
    assert all(a["macs"] > b["macs"] for a, b in zip(rounds, rounds[1:], strict=False))
    assert rounds[-1]["sparsity"] >= 0.6 - 0.05
    arch = channels.architecture(runner.model)
    assert arch["0"]["out_channels"] < dense_arch["0"]["out_channels"]
    assert arch["14"]["out_features"] == 10  # the classifier keeps its outputs
    assert runner.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_rolled_back_channel_round_restores_the_exact_smaller_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make_runner(tmp_path, CHANNEL)
    assert runner.step()  # round 1 removes channels and is accepted
    arch = channels.architecture(runner.model)
    weights = {k: v.clone() for k, v in runner.model.state_dict().items()}
    optimizer = copy.deepcopy(runner.optimizer.state_dict())
    break_answers(monkeypatch)
    runner.rules = dataclasses.replace(runner.rules, max_drop=0.0)
    assert runner.step()
    assert runner.store.rounds("tiny")[-1]["status"] == "rolled_back"
    assert channels.architecture(runner.model) == arch
    assert_same_tensors(dict(runner.model.state_dict()), weights)
    assert_same_tensors(runner.optimizer.state_dict(), optimizer)


def test_a_resumed_channel_run_rebuilds_the_smaller_model_and_ends_identically(
    tmp_path: Path,
) -> None:
    _, resumed = assert_resume_matches_uninterrupted(tmp_path, CHANNEL)
    assert channels.architecture(resumed.model)["0"]["out_channels"] < 8


@pytest.mark.parametrize("method", ["channel", "global_magnitude"])
def test_pt2_export_runs_without_iterprune_or_the_model_code(
    tmp_path: Path, method: str, capfd
) -> None:
    from iterprune.cli import table as cli

    path = write(tmp_path / "tiny.yaml", merged(CHANNEL, prune={"method": method}))
    state = str(tmp_path / "s")
    assert cli.main(["start", str(path), "--state-dir", state]) == 0
    out = tmp_path / "model.pt2"
    assert (
        cli.main(["export", "tiny", "--format", "pt2", "--out", str(out), "--state-dir", state])
        == 0
    )
    # written under a temporary name that keeps the suffix: torch warns of any other name
    assert "Expect archive file" not in capfd.readouterr().err
    program = torch.export.load(str(out))
    x = torch.randn(1, 1, 8, 8)
    y = program.module()(x)
    assert y.shape == (1, 10)
    whole = tmp_path / "model.pt"
    assert (
        cli.main(["export", "tiny", "--format", "pt", "--out", str(whole), "--state-dir", state])
        == 0
    )
    if method == "channel":  # the smaller nn.Module itself
        module = torch.load(whole, weights_only=False)
        assert torch.allclose(module(x), y, atol=1e-5)
        assert module[0].out_channels < 8
    else:  # a plain state_dict with the masks baked in
        assert isinstance(torch.load(whole, weights_only=True), dict)


def test_channel_rounds_record_latency_with_a_benchmark_section(tmp_path: Path) -> None:
    benchmark = {"batch_size": 4, "input_shape": [1, 8, 8], "iterations": 3, "warmup": 1}
    runner = make_runner(tmp_path, merged(CHANNEL, benchmark=benchmark))
    run_to_end(runner)
    rounds = [r for r in runner.store.rounds("tiny") if r["status"] == "accepted"]
    assert rounds and all(r["latency_ms_p50"] > 0 and r["latency_ms_p99"] > 0 for r in rounds)
    assert runner.store.run("tiny")["baseline_latency_ms_p50"] > 0


@pytest.mark.parametrize("method", ["channel", "global_magnitude"])
def test_pt2_and_onnx_exports_serve_any_batch(tmp_path: Path, method: str) -> None:
    import onnxruntime

    from iterprune.cli import table as cli
    from iterprune.report import export
    from iterprune.state.store import Store

    path = write(tmp_path / "tiny.yaml", merged(CHANNEL, prune={"method": method}))
    state = tmp_path / "s"
    assert cli.main(["start", str(path), "--state-dir", str(state)]) == 0
    store = Store(state)
    pruned, _ = export.round_model(store, "tiny", "last")
    store.close()
    files = {fmt: tmp_path / f"model.{fmt}" for fmt in ("pt2", "onnx")}
    for fmt, out in files.items():
        args = ["export", "tiny", "--format", fmt, "--out", str(out), "--state-dir", str(state)]
        assert cli.main(args) == 0
    program = torch.export.load(str(files["pt2"])).module()
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert isinstance(graph_input.shape[0], str)  # a named, free batch dimension
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            want = pruned(x)
        assert torch.allclose(program(x), want, atol=1e-5)
        (got,) = session.run(None, {graph_input.name: x.numpy()})
        assert got.shape == (batch, 10)
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)
