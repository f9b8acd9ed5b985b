"""Hugging Face models from a local save_pretrained directory: a tiny GPT-2 built from a config,
saved, and pruned from there (its Conv1D projections, transposed weights and all), with the
perplexity iterprune reports equal to the one from the model's own loss. Nothing is downloaded."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from helpers import write
from transformers import GPT2Config, GPT2LMHeadModel

from iterprune.cli import table as cli
from iterprune.core import pruning
from iterprune.engine import corpus, evaluation, huggingface, tasks
from iterprune.errors import ScheduleError
from iterprune.schedule import parsing
from iterprune.schedule.specs import HuggingFaceSpec

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with a byte vocabulary, saved the way a user's model is."""
    root = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    config = GPT2Config(
        vocab_size=256,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root)
    return root


def schedule(gpt2: Path, **changes) -> dict:
    return {
        "name": "hf",
        "seed": 0,
        "threads": 1,
        "task": {"kind": "language_model"},
        "model": {"huggingface": {"path": str(gpt2), "class": "causal_lm"}},
        "data": {
            "builtin": "python_source",
            "kwargs": {"seq_len": 64, "max_bytes": 40000},
            "batch_size": 16,
        },
        "pretrain": {"epochs": 1, "lr": 3.0e-3},
        "prune": {"step": 0.4, "target_sparsity": 0.6},
        "finetune": {"epochs": 1, "lr": 1.0e-3},
        "validate": {"max_drop": "10%"},
        **changes,
    }


def test_gpt2s_conv1d_projections_are_prunable_and_the_head_is_not(gpt2: Path) -> None:
    model = huggingface.load(HuggingFaceSpec(str(gpt2), "causal_lm"))
    params = pruning.prunable_parameters(model, tasks.LANGUAGE_MODEL.exclude)
    assert "transformer.h.0.attn.c_attn.weight" in params  # a Conv1D: [in, out] = [32, 96]
    assert params["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    assert not any(name.startswith("lm_head") for name in params)  # tied to the embedding


def test_its_perplexity_equals_the_one_from_its_own_loss(gpt2: Path) -> None:
    model = huggingface.load(HuggingFaceSpec(str(gpt2), "causal_lm")).eval()
    _, val, _ = corpus.python_source_loaders(8, 0, seq_len=64, max_bytes=20000)
    found = evaluation.answers(model, val, "cpu", None, tasks.LANGUAGE_MODEL)
    nll = tokens = 0.0
    model.eval()  # scoring put it back in training mode: no dropout for the reference either
    with torch.no_grad():
        for (ids,) in val:  # the model's own mean loss over predicted tokens, per batch
            n = ids.shape[0] * (ids.shape[1] - 1)
            nll += float(model(input_ids=ids, labels=ids).loss) * n
            tokens += n
    assert math.isclose(found.value, math.exp(nll / tokens), rel_tol=1e-4)


@pytest.mark.slow
def test_a_gpt2_is_pruned_from_its_directory_through_the_cli(
    gpt2: Path, tmp_path: Path, capsys
) -> None:
    state = str(tmp_path / "state")
    path = write(tmp_path / "hf.yaml", schedule(gpt2))
    assert cli.main(["start", str(path), "--state-dir", state]) == 0, capsys.readouterr()
    said = capsys.readouterr()
    assert "model huggingface " in said.out and "(causal_lm)" in said.out  # not "model None"
    assert "Loading weights" not in said.err + said.out  # transformers' own bar stays quiet
    assert cli.main(["show", "hf", "--state-dir", state, "--json"]) == 0
    layers = {r["layer"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["transformer.h.0.attn.c_attn"]["sparsity"] > 0.3
    assert not any(name.startswith("lm_head") for name in layers)


def test_a_directory_that_is_not_a_model_or_of_the_wrong_class_is_refused(
    gpt2: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for doc, message in (
        (schedule(empty), "no config.json in"),
        (
            schedule(
                gpt2, model={"huggingface": {"path": str(gpt2), "class": "sequence_classification"}}
            ),
            "holds GPT2LMHeadModel, not a model of class sequence_classification",
        ),
        (schedule(gpt2, task={"kind": "classification"}), "a causal_lm model needs task"),
    ):
        with pytest.raises(ScheduleError, match=message):
            parsing.parse(json.dumps(doc), "hf.yaml", ".")
