"""The "bring your own model" path end to end: a torchvision model from a state_dict file, real
image folders through torchvision's ImageFolder, the practitioners' fine-tuning options, and the
per-round latency benchmark — through the CLI, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import tiny, write, write_images

from iterprune.cli import table as cli
from iterprune.engine import sources
from iterprune.schedule.specs import ModelSpec

SCHEDULE = {
    "name": "byo",
    "threads": 1,
    "model": {"torchvision": "resnet18", "num_classes": 2, "weights": "resnet18.pt"},
    "data": {
        "imagefolder": {"train": "data/train", "val": "data/val", "image_size": 16},
        "batch_size": 4,
    },
    "pretrain": {"epochs": 0},
    "prune": {"step": 0.3, "target_sparsity": 0.5, "exclude": ["fc"]},
    "finetune": {
        "epochs": 2,
        "optimizer": "adam",
        "lr": 1.0e-4,
        "lr_schedule": "cosine",
        "amp": "auto",
        "patience": 1,
        "max_batches_per_epoch": 2,
    },
    "validate": {"max_drop": 100},
    "benchmark": {"batch_size": 2, "input_shape": [3, 16, 16], "iterations": 3, "warmup": 1},
}


def test_torchvision_model_on_image_folders_through_the_cli(tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "data" / "train", {"ants": 6, "bees": 6}, size=24)
    write_images(tmp_path / "data" / "val", {"ants": 3, "bees": 3}, size=24)
    model = sources.build_model(ModelSpec(torchvision="resnet18", num_classes=2), seed=5)
    torch.save(model.state_dict(), tmp_path / "resnet18.pt")
    path = write(tmp_path / "byo.yaml", SCHEDULE)
    state = str(tmp_path / "state")

    assert cli.main(["analyze", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weights"] == "resnet18.pt" and report["params"] > 11_000_000
    assert list(report["percentiles"]) == ["p10", "p25", "p50", "p75", "p90"]
    assert report["percentiles"]["p10"] <= report["percentiles"]["p90"]

    assert cli.main(["start", str(path), "--state-dir", state]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["history", "byo", "--json", "--state-dir", state]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "finished"
    accepted = [r for r in doc["rounds"] if r["status"] == "accepted"]
    assert accepted[-1]["sparsity"] >= 0.5 - 1e-6
    for r in accepted:
        assert r["latency_ms_p50"] > 0 and r["latency_ms_p99"] >= r["latency_ms_p50"]
        assert r["best_epoch"] in (0, 1)
    assert doc["baseline_latency_ms_p50"] > 0
    assert cli.main(["show", "byo", "--json", "--state-dir", state]) == 0
    layers = {x["layer"]: x for x in json.loads(capsys.readouterr().out)["layers"]}
    assert "fc" not in layers  # excluded from pruning


def test_amp_true_on_a_cpu_is_a_clear_error(tmp_path: Path, capsys, write_schedule) -> None:
    path = write_schedule(tiny(device="cpu", finetune={"amp": True}))
    assert cli.main(["start", str(path), "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "finetune.amp: true needs a CUDA device" in err and "Traceback" not in err
