"""Language models: the tiny causal transformer, the standard library as text, next-token loss
and per-sequence scores, and a run judged by perplexity, end to end through the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import LM_RUN, checkpoint_state, write
from torch.nn import functional

import iterprune
from iterprune.cli import table as cli
from iterprune.engine import corpus, tasks, tinygpt
from iterprune.errors import ScheduleError, UserError
from iterprune.schedule import parsing

LM = LM_RUN


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tinygpt.tiny_gpt(width=16, depth=1, heads=2, context=16)


def test_the_loss_is_the_mean_next_token_nll_and_scores_add_up_to_it() -> None:
    ids = torch.randint(0, 256, (3, 10))
    net = model()
    loss = tasks.LANGUAGE_MODEL.loss(net, ids)
    logits = net(ids)[:, :-1]
    plain = functional.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1))
    assert torch.allclose(loss, plain)
    with torch.no_grad():  # as evaluation calls it
        nll, count = tasks.LANGUAGE_MODEL.scores(net, [ids])  # a TensorDataset's one-tuple
    assert count.tolist() == [9, 9, 9]
    assert math.isclose(float(nll.sum() / count.sum()), plain.item(), rel_tol=1e-5)


def test_padding_and_ignored_labels_are_not_predicted() -> None:
    ids = torch.randint(0, 256, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # the second sequence has 5 real tokens
    labels = ids.clone()
    labels[0, 3] = -100
    _, count = tasks.LANGUAGE_MODEL.scores(
        model(), {"input_ids": ids, "attention_mask": mask, "labels": labels}
    )
    assert count.tolist() == [6, 4]  # 7 predicted, one ignored; 4 predicted among 5 real
    with pytest.raises(UserError, match="needs input_ids"):
        tasks.LANGUAGE_MODEL.loss(model(), {"ids": ids})


def test_a_sequence_longer_than_the_context_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="longer than the context, 16"):
        model()(torch.zeros(1, 17, dtype=torch.long))


def test_the_standard_library_splits_by_file_name_stably() -> None:
    assert {corpus.split_of(f"m{i}.py") for i in range(200)} == {"train", "val", "test"}
    assert corpus.split_of("os.py") == corpus.split_of("os.py")
    found = corpus.split_bytes(corpus.stdlib(), 50_000)
    assert len(found["train"]) == 50_000 and len(found["val"]) == 5_000
    x = corpus.sequences(found["val"], 64)
    assert x.shape == (5_000 // 64, 64) and x.dtype == torch.long and int(x.max()) < 256
    with pytest.raises(UserError, match="no full sequence of 4096 tokens"):
        corpus.python_source_loaders(8, 0, seq_len=4096, max_bytes=20_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {**LM["model"], "num_classes": 3}}, "model.num_classes"),
        ({"prune": {"method": "channel"}}, "channel mode is for classification"),
        ({"data": {"builtin": "digits"}}, "digits is a classification built-in"),
        ({"task": {"kind": "regression"}}, "task.kind"),
        (
            {"model": {"builtin": "tiny_gpt", "kwargs": {"context": 32}}},
            "data.kwargs.seq_len.*64 tokens is longer than the model's context, 32",
        ),
        ({"benchmark": {"batch_size": 2}}, "input is token ids: give \\[sequence length\\]"),
        ({"task": None}, "tiny_gpt is a language model's: add task"),
    ],
)
def test_what_a_language_model_run_cannot_take_is_refused(change: dict, message: str) -> None:
    doc = {k: v for k, v in {**LM, **change}.items() if v is not None}
    with pytest.raises(ScheduleError, match=message):
        parsing.parse(json.dumps(doc), "lm.yaml", ".")


@pytest.mark.slow
def test_a_language_model_run_is_judged_by_perplexity(tmp_path: Path, capsys) -> None:
    state = str(tmp_path / "state")
    timed = {**LM, "benchmark": {"input_shape": [64], "batch_size": 2, "iterations": 2}}
    assert cli.main(["start", str(write(tmp_path / "lm.yaml", timed)), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "lm", "--state-dir", state, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["baseline_latency_ms_p50"] > 0  # token ids [2, 64]
    assert history["metric"] == {"name": "perplexity", "unit": "", "higher_is_better": False}
    assert history["budget"] == "5% of the dense model's perplexity"
    base = history["baseline_accuracy"]  # the dense model's validation perplexity
    assert 1 < base < 256 and history["max_drop"] == pytest.approx(0.05 * base)
    for r in history["rounds"]:
        assert r["drop"] == pytest.approx(r["val_accuracy"] - base)  # worse: positive
        assert r["drop_low"] <= r["drop"] <= r["drop_high"] and r["lost"] is None
    assert history["status"] == "finished"
    # the head is left out: every Linear but it is pruned
    assert cli.main(["show", "lm", "--state-dir", state, "--json"]) == 0
    layers = {r["layer"] for r in json.loads(capsys.readouterr().out)["layers"]}
    assert "head" not in {name.removesuffix(".weight") for name in layers} and layers
    assert_exports_trace_token_ids(tmp_path, state)
    capsys.readouterr()
    args = ["analyze", "lm", "--sensitivity", "--levels", "0.5,0.9", "--state-dir", state]
    assert cli.main([*args, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["metric"]["name"] == "perplexity"
    assert found["baseline_accuracy"] == pytest.approx(base, rel=1e-6)  # the dense model's
    assert "head" not in {r["layer"] for r in found["layers"]}
    for r in found["layers"]:  # worse is a positive drop, and more pruning is worse
        assert r["drop"] == pytest.approx([a - base for a in r["accuracy"]], rel=1e-6)
        assert r["drop"][1] >= r["drop"][0] - 1e-6
    assert cli.main(args) == 0  # the table shows the budget as the history does: 3 digits
    shown = re.search(r"budget (\S+)", capsys.readouterr().out)
    assert shown is not None and shown.group(1) == f"{found['max_drop']:.3g}"
    assert cli.main([*args, "--batches", "1", "--json"]) == 0  # sequences counted by their ids
    assert 0 < json.loads(capsys.readouterr().out)["val_samples"] < found["val_samples"]
    plot = tmp_path / "lm.png"
    assert cli.main(["plot", "lm", "--out", str(plot), "--state-dir", state]) == 0
    assert plot.stat().st_size > 10_000  # perplexity against sparsity, the budget above it


def assert_exports_trace_token_ids(tmp_path: Path, state: str) -> None:
    """pt2 and ONNX are traced with two validation sequences; both give the round's logits."""
    import onnxruntime

    ids = torch.randint(0, 256, (3, 64))  # another batch size than the example's
    args = ["export", "lm", "--state-dir", state, "--out"]
    assert cli.main([*args, str(tmp_path / "m.pt2"), "--format", "pt2"]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    model = iterprune.Run("lm", state).model()
    with torch.no_grad():
        expected = model.eval()(ids)
    assert torch.allclose(program(ids), expected, atol=1e-5)
    assert cli.main([*args, str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {"input": ids.numpy()})
    assert torch.allclose(torch.from_numpy(out), expected, atol=1e-4)


@pytest.mark.slow
def test_a_language_model_run_killed_mid_round_resumes_to_the_same_end(tmp_path: Path) -> None:
    schedule = write(tmp_path / "lm.yaml", LM)

    def start(state: Path, kill_at: str = "") -> int:
        env = {**os.environ, "ITERPRUNE_STATE_DIR": str(state), "ITERPRUNE_KILL_AT": kill_at}
        argv = [sys.executable, "-m", "iterprune", "start", str(schedule)]
        return subprocess.run(argv, env=env, capture_output=True, timeout=300).returncode

    assert start(tmp_path / "ref") == 0
    assert start(tmp_path / "cut", "finetune_batch:5") == -9
    assert start(tmp_path / "cut", "validate:1") == -9
    assert start(tmp_path / "cut") == 0
    for state in ("ref", "cut"):
        history = tmp_path / state
        assert history.exists()
    ref, cut = (checkpoint_state(tmp_path / s, "lm", 2) for s in ("ref", "cut"))
    for part in ("model", "mask"):
        assert all(torch.equal(ref[part][k], cut[part][k]) for k in ref[part])


def test_lottery_mode_rewinds_a_language_model_and_its_control_is_a_perplexity(
    tmp_path: Path, capsys
) -> None:
    doc = {**LM, "lottery": {"rewind": {"epoch": 1}, "control": "random_reinit"}}
    doc["prune"] = {"step": 0.5, "target_sparsity": 0.5}
    state = str(tmp_path / "state")
    assert cli.main(["start", str(write(tmp_path / "lm.yaml", doc)), "--state-dir", state]) == 0
    assert ", control " in capsys.readouterr().out
    assert cli.main(["history", "lm", "--state-dir", state]) == 0
    assert "ctrl ppl" in capsys.readouterr().out
    assert cli.main(["history", "lm", "--state-dir", state, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rounds"]
    # a byte model trained one round from random weights: between the dense model and chance
    assert row["val_accuracy"] < row["control_accuracy"] < 256


@pytest.mark.slow
def test_tensorboard_and_mlflow_name_the_metric_perplexity(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = {"tensorboard": "tb", "mlflow": {"tracking_uri": uri, "experiment": "lm"}}
    doc = {**LM, "report": report, "prune": {"step": 0.5, "target_sparsity": 0.5}}
    state = str(tmp_path / "state")
    assert cli.main(["start", str(write(tmp_path / "lm.yaml", doc)), "--state-dir", state]) == 0
    history = iterprune.Run("lm", state).history()
    (events,) = (tmp_path / "tb" / "lm").iterdir()
    board = EventAccumulator(str(events))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"round/val_perplexity", "round/test_perplexity"} <= tags
    assert not any("accuracy" in tag for tag in tags)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lm").experiment_id])
    assert run.data.tags["iterprune.metric"] == "perplexity"
    assert run.data.tags["iterprune.higher_is_better"] == "false"
    steps = [
        (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_perplexity")
    ]
    assert steps == [(0, history["baseline_accuracy"]), (1, history["rounds"][0]["val_accuracy"])]
    assert not any("accuracy" in key for key in run.data.metrics)
