"""What several test modules share: schedules built from dicts, a recording reporter, runners, and
comparisons of weights and rounds. Tests import from here, never from each other."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from iterprune.engine import evaluation
from iterprune.engine.runner import Runner
from iterprune.schedule import parsing as schedule
from iterprune.schedule.specs import Schedule
from iterprune.state import checkpoints
from iterprune.state.runs import open_run
from iterprune.state.store import Store

# The small schedule most tests run: an MLP on 400 digits, three rounds of 30% to 60%.
TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "threads": 1,
    "model": {"builtin": "digits_mlp", "kwargs": {"hidden": 32}},
    "data": {"builtin": "digits", "kwargs": {"limit": 400}, "batch_size": 32},
    "pretrain": {"epochs": 4, "lr": 1.0e-2},
    "prune": {"method": "global_magnitude", "step": 0.3, "target_sparsity": 0.6},
    "finetune": {"epochs": 1, "optimizer": "adam", "lr": 1.0e-3},
    "validate": {"max_drop": 5.0},
    "rollback": {"retries": 2, "shrink": 0.5, "min_step": 0.05},
}

# A run whose rounds all pass (budget 100 points), keeping every checkpoint, to 90%.
SPARSE_RUN: dict[str, Any] = {
    "name": "sparse",
    "seed": 1,
    "threads": 1,
    "model": {"builtin": "digits_mlp", "kwargs": {"hidden": 256}},
    "data": {"builtin": "digits", "kwargs": {"limit": 300}, "batch_size": 32},
    "pretrain": {"epochs": 2, "lr": 1.0e-2},
    "prune": {"step": 0.5, "target_sparsity": 0.9},
    "finetune": {"epochs": 1, "optimizer": "adam", "lr": 1.0e-3},
    "validate": {"max_drop": 100},
    "checkpoints": {"keep": "all"},
}


LM_RUN: dict[str, Any] = {  # a tiny language model on a slice of the standard library
    "name": "lm",
    "seed": 0,
    "threads": 1,
    "task": {"kind": "language_model"},
    "model": {
        "builtin": "tiny_gpt",
        "kwargs": {"width": 32, "depth": 1, "heads": 2, "context": 64},
    },
    "data": {
        "builtin": "python_source",
        "kwargs": {"seq_len": 64, "max_bytes": 60000},
        "batch_size": 16,
    },
    "pretrain": {"epochs": 2, "lr": 3.0e-3},
    "prune": {"step": 0.3, "target_sparsity": 0.5},
    "finetune": {"epochs": 1, "lr": 1.0e-3},
    "validate": {"max_drop": "5%"},
}


def merged(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, section by section (a deep copy; base is untouched).
    A change of None removes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], **value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny(**changes: Any) -> dict[str, Any]:
    return merged(TINY, **changes)


def yaml_text(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def write(path: Path, doc: dict[str, Any] | str) -> Path:
    """A schedule file from a dict (or YAML text, for tests of the text itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml_text(doc))
    return path


def parse(doc: dict[str, Any], source: str = "tiny.yaml") -> Schedule:
    return schedule.parse(yaml_text(doc), source)


class Recorder:
    """A reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.rounds: list[dict] = []
        self.events: list[tuple[str, str, str]] = []
        self.phases: list[str] = []
        self.done: tuple[str, str] | None = None
        self.info: dict = {}

    def run_started(self, info: dict) -> None:
        self.info = info

    def phase(self, name: str, total: int, description: str) -> None:
        self.phases.append(name)

    def advance(self, done: float) -> None:
        pass

    def round_done(self, row: dict) -> None:
        self.rounds.append(row)

    def event(self, level: str, kind: str, message: str) -> None:
        self.events.append((level, kind, message))

    def run_done(self, status: str, reason: str) -> None:
        self.done = (status, reason)


class StopAfter(Recorder):
    """Asks the runner to stop after ``n`` fine-tuning batches, recoveries included (as SIGTERM
    would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.batches = n, 0
        self.runner: Runner | None = None

    def advance(self, done: float) -> None:
        if self.phases and self.phases[-1] in ("finetune", "recover"):
            self.batches += 1
            if self.batches == self.n and self.runner is not None:
                self.runner.stop.set()


def open_runner(state: Path, doc: dict[str, Any], reporter: Recorder | None = None) -> Runner:
    """A runner for a new run of ``doc`` in ``state`` (not prepared)."""
    store = Store(state)
    run_id = open_run(store, parse(doc), "tiny.yaml")
    return Runner(store, run_id, reporter or Recorder())


def make_runner(state: Path, doc: dict[str, Any], reporter: Recorder | None = None) -> Runner:
    """A prepared runner (dense model trained and measured) for a new run of ``doc``."""
    runner = open_runner(state, doc, reporter)
    if isinstance(reporter, StopAfter):
        reporter.runner = runner
    runner.prepare()
    return runner


def break_answers(monkeypatch: Any) -> None:
    """From now on the model answers every sample wrong: each attempt loses all the dense
    model's accuracy, and is rolled back."""
    real = evaluation.answers

    def wrong(*args: Any, **kwargs: Any) -> evaluation.Answers | None:
        found = real(*args, **kwargs)
        if found is None:
            return None
        return dataclasses.replace(found, correct=torch.zeros_like(found.correct))

    monkeypatch.setattr(evaluation, "answers", wrong)


def run_to_end(runner: Runner) -> None:
    while runner.step():
        pass


def snapshot(runner: Runner) -> dict:
    return {
        "model": {k: v.clone() for k, v in runner.model.state_dict().items()},
        "optimizer": copy.deepcopy(runner.optimizer.state_dict()),
        "mask": {k: v.clone() for k, v in runner.accepted.mask.items()},
    }


def assert_same_tensors(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    else:
        assert a == b


def final_state(runner: Runner) -> tuple[list, dict]:
    rows = [
        (r["round"], r["attempt"], r["status"], r["sparsity"], r["val_accuracy"])
        for r in runner.store.rounds(runner.run_id)
    ]
    return rows, {k: v.clone() for k, v in runner.model.state_dict().items()}


def assert_resume_matches_uninterrupted(
    tmp_path: Path, doc: dict[str, Any]
) -> tuple[Runner, Runner]:
    """Run ``doc`` whole, and again stopped after one round and resumed by a new Runner; the
    rounds and the final weights must be identical. Returns (whole, resumed)."""
    whole = make_runner(tmp_path / "a", doc)
    run_to_end(whole)
    expected_rows, expected_weights = final_state(whole)
    first = make_runner(tmp_path / "b", doc)
    assert first.step()  # one accepted round, then the process "dies"
    first.store.close()
    resumed = Runner(Store(tmp_path / "b"), doc["name"], Recorder())
    resumed.prepare()
    run_to_end(resumed)
    rows, weights = final_state(resumed)
    assert rows == expected_rows
    assert_same_tensors(weights, expected_weights)
    return whole, resumed


def checkpoint_state(state: Path, run: str, round_: int) -> dict:
    """The dense or accepted checkpoint of ``round_``, verified and loaded."""
    store = Store(state)
    row = next(c for c in store.checkpoints(run) if c["round"] == round_ and c["kind"] != "mid")
    store.close()
    return checkpoints.load(state / row["path"], row["sha256"])


def write_images(root: Path, classes: dict[str, int], size: int = 20) -> None:
    """Random PNG images in one sub-folder per class (an ImageFolder)."""
    g = torch.Generator().manual_seed(0)
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def iterprune(*args: str, state: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, on the state directory ``state``."""
    return subprocess.run(
        [sys.executable, "-m", "iterprune", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
