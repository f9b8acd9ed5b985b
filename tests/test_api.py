"""The Python API: the same runs and documents as the CLI, and the API page's example as written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny, write

import iterprune
from iterprune.cli import table as cli
from iterprune.errors import ScheduleError, UnknownRun

ROOT = Path(__file__).resolve().parent.parent


def cli_json(capsys, *args: str) -> object:
    capsys.readouterr()
    assert cli.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_dict_run_gives_the_clis_documents_and_its_pruned_model(tmp_path: Path, capsys) -> None:
    state = str(tmp_path / "s")
    run = iterprune.start(tiny(), state_dir=state, quiet=True)
    assert capsys.readouterr().out == ""  # quiet
    assert run.id == "tiny" and run.status()["status"] == "finished"
    assert run.history() == cli_json(capsys, "history", "tiny", "--state-dir", state)
    assert run.show() == cli_json(capsys, "show", "tiny", "--state-dir", state)
    assert iterprune.list_runs(state) == cli_json(capsys, "runs", "--state-dir", state)
    model = run.model()
    last = run.history()["rounds"][-1]
    zeros = sum(int((p == 0).sum()) for name, p in model.named_parameters() if "weight" in name)
    total = sum(p.numel() for name, p in model.named_parameters() if "weight" in name)
    assert zeros / total == pytest.approx(last["sparsity"], abs=0.01)
    assert not model.training
    dense = run.model(round=0)
    assert sum(int((p == 0).sum()) for p in dense.parameters()) < zeros
    again = iterprune.start(tiny(), state_dir=state, quiet=True)  # finished: nothing more to do
    assert again.history() == run.history()


def test_a_detached_run_can_be_stopped_and_resumed(tmp_path: Path, capsys) -> None:
    state = tmp_path / "s"
    doc = tiny(prune={"step": 0.05, "target_sparsity": 0.8}, finetune={"epochs": 3})
    run = iterprune.start(write(tmp_path / "tiny.yaml", doc), state_dir=state, detach=True)
    assert "started in the background" in capsys.readouterr().out
    deadline = time.monotonic() + 120
    while not [r for r in run.history()["rounds"] if r["status"] == "accepted"]:  # an event
        assert time.monotonic() < deadline and run.status()["status"] == "running"
        time.sleep(0.02)
    run.stop()  # about 30 rounds are left: the stop lands in one of them
    assert run.wait(timeout=120)["status"] == "stopped"
    done = iterprune.resume("tiny", state_dir=state, quiet=True)
    finished = done.wait(timeout=5)
    assert finished["status"] == "finished" and finished["reason"] == "target sparsity 80% reached"


def test_errors_are_the_clis_exceptions(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="prune.step"):
        iterprune.start(tiny(prune={"step": 2}), state_dir=tmp_path)
    assert not (tmp_path / "iterprune.db").exists()  # nothing written for a bad schedule
    iterprune.start(tiny(), state_dir=tmp_path, quiet=True)
    with pytest.raises(UnknownRun):
        iterprune.run("nope", tmp_path)
    assert iterprune.list_runs(tmp_path / "empty") == []


@pytest.mark.slow
def test_the_api_pages_example_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    shutil.copytree(ROOT / "schedules", tmp_path / "schedules")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ITERPRUNE_STATE_DIR", raising=False)
    exec(compile(example, "docs/api.md", "exec"), {})  # noqa: S102 (our own docs)
    out = capsys.readouterr().out
    assert out.startswith("finished 0.9499") and "['digits-cnn', 'digits-quick']" in out
    assert iterprune.run("digits-quick", "state").status()["status"] == "finished"
    assert torch.is_tensor(next(iter(iterprune.run("digits-cnn", "state").model().parameters())))
