"""Exports load back exactly without iterprune; the sparse one is really small."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import SPARSE_RUN, checkpoint_state, write
from safetensors.torch import load_file

import iterprune
from iterprune.cli import table as cli
from iterprune.report import console
from iterprune.state import paths
from iterprune.state.store import Store


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("export")
    path = write(state / "sparse.yaml", SPARSE_RUN)
    assert cli.main(["start", str(path), "--state-dir", str(state / "s")]) == 0
    return state / "s"


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "sparse"])
@pytest.mark.parametrize("which", ["last", "best", "1"])
def test_exports_load_back_exactly(finished: Path, tmp_path: Path, fmt: str, which: str) -> None:
    out = tmp_path / f"model.{fmt}"
    assert (
        cli.main(
            [
                "export",
                "sparse",
                "--round",
                which,
                "--format",
                fmt,
                "--out",
                str(out),
                "--state-dir",
                str(finished),
            ]
        )
        == 0
    )
    # readable as any new file is: safetensors 0.8 creates its files 0600 (safetensors#782)
    assert out.stat().st_mode & 0o777 == 0o666 & ~paths.umask()
    if fmt == "pt":
        loaded = torch.load(out, weights_only=True)
    elif fmt == "safetensors":
        loaded = load_file(str(out))
    else:
        loaded = iterprune.load_sparse(out)
    rounds = [r for r in Store(finished).rounds("sparse") if r["status"] == "accepted"]
    round_ = rounds[-1]["round"] if which in ("last", "best") else int(which)
    state = checkpoint_state(finished, "sparse", round_)
    assert loaded.keys() == state["model"].keys()
    for name, tensor in state["model"].items():
        expected = tensor * state["mask"][name] if name in state["mask"] else tensor
        assert torch.equal(loaded[name], expected), name
    fresh = iterprune.engine.sources.build_model(
        iterprune.schedule.specs.ModelSpec(builtin="digits_mlp", kwargs={"hidden": 256}), seed=0
    )
    fresh.load_state_dict(loaded)  # a plain state_dict for a fresh model of the architecture


def test_sparse_export_at_90_percent_is_at_most_a_quarter_of_the_dense_size(
    finished: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "m.sparse"
    cli.main(
        ["export", "sparse", "--format", "sparse", "--out", str(out), "--state-dir", str(finished)]
    )
    text = capsys.readouterr().out
    assert re.search(r"sparsity (89.99|90.00)%", text) and "the dense state_dict is" in text
    state = checkpoint_state(finished, "sparse", Store(finished).run("sparse")["accepted_round"])
    dense = sum(t.numel() * t.element_size() for t in state["model"].values())
    assert out.stat().st_size <= 0.25 * dense, (out.stat().st_size, dense)


def test_a_round_whose_checkpoint_was_not_kept_is_a_clear_error(
    tmp_path: Path, write_schedule, capsys
) -> None:
    state = str(tmp_path / "s")
    assert cli.main(["start", str(write_schedule()), "--state-dir", state]) == 0
    capsys.readouterr()
    code = cli.main(
        ["export", "tiny", "--round", "1", "--out", str(tmp_path / "x"), "--state-dir", state]
    )
    assert code == 2
    assert "was not kept" in capsys.readouterr().err


def test_compare_puts_two_runs_side_by_side(
    finished: Path, tmp_path: Path, write_schedule, capsys
) -> None:
    cli.main(["start", str(write_schedule()), "--state-dir", str(finished)])
    capsys.readouterr()
    assert cli.main(["compare", "sparse", "tiny", "--json", "--state-dir", str(finished)]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["run"] for d in docs] == ["sparse", "tiny"]
    assert docs[0]["sparsity"] == pytest.approx(0.9, abs=1e-3) and docs[0]["accepted_rounds"] >= 3
    assert cli.main(["compare", "sparse", "tiny", "--state-dir", str(finished)]) == 0
    assert "final sparsity" in capsys.readouterr().out


def test_sparkline_scales_between_min_and_max() -> None:
    assert console.sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert console.sparkline([5.0, 5.0]) == "▁▁"


class _TiedStore:
    """Two accepted rounds at one sparsity (impossible in a run today, so a table stands in)."""

    def __init__(self, higher_is_better: bool) -> None:
        name = "accuracy" if higher_is_better else "perplexity"
        self.metric = json.dumps({"name": name, "higher_is_better": higher_is_better})

    def run(self, run: str) -> dict:
        return {"run": run, "metric": self.metric}

    def rounds(self, run: str) -> list[dict]:
        return [
            {"round": 1, "status": "accepted", "sparsity": 0.5, "val_accuracy": 4.0},
            {"round": 2, "status": "accepted", "sparsity": 0.5, "val_accuracy": 5.0},
        ]

    def checkpoints(self, run: str) -> list[dict]:
        return [{"round": r, "kind": "accepted"} for r in (1, 2)]


@pytest.mark.parametrize(("higher", "expected"), [(True, 2), (False, 1)])
def test_best_breaks_a_tie_in_the_metrics_direction(higher: bool, expected: int) -> None:
    from iterprune.report import export

    assert export.choose_round(_TiedStore(higher), "r", "best")["round"] == expected
