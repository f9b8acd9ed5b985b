"""Runs that differ in their seed alone, summarised as one setting (``compare --over-seeds``)."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
from helpers import TINY, merged

from iterprune import api
from iterprune.report import replicates, views


def test_a_setting_is_the_experiment_with_its_seed_and_name_aside() -> None:
    schedule, _ = api.load(merged(TINY, seed=1, name="a-seed1"))
    same = dataclasses.replace(schedule, seed=2, name="a-seed2")
    other = dataclasses.replace(schedule, prune=dataclasses.replace(schedule.prune, step=0.45))
    assert views.setting(schedule) == views.setting(same)
    assert views.setting(schedule) != views.setting(other)


def doc(run: str, setting: str, seed: int, val: float, test: float, sparsity: float = 0.5):
    return {
        "run": run,
        "setting": setting,
        "seed": seed,
        "status": "finished",
        "metric": None,
        "sparsity": sparsity,
        "val_accuracy": val,
        "test_accuracy": test,
        "epochs": 4,
        "duration_s": 10.0,
    }


def test_settings_rank_by_their_mean_over_seeds_never_by_one_lucky_seed_or_the_test_split():
    docs = [
        doc("lucky-seed0", "L", 0, 99.0, 99.5),  # the best single run, on both splits
        doc("lucky-seed1", "L", 1, 95.0, 99.0),
        doc("steady-seed0", "S", 0, 98.0, 96.0),
        doc("steady-seed1", "S", 1, 97.8, 96.2),
    ]
    settings = replicates.grouped(docs)
    assert [s["setting"] for s in settings] == ["steady", "lucky"]
    lucky = settings[1]
    assert lucky["runs"] == ["lucky-seed0", "lucky-seed1"] and lucky["seeds"] == [0, 1]
    assert lucky["val_accuracy"]["mean"] == pytest.approx(97.0)
    assert lucky["val_accuracy"]["sd"] == pytest.approx(statistics.stdev([99.0, 95.0]))
    assert (lucky["val_accuracy"]["min"], lucky["val_accuracy"]["max"]) == (95.0, 99.0)
    sparser = [*docs, doc("sparse-seed0", "X", 0, 90.0, 90.0, sparsity=0.6)]
    assert replicates.grouped(sparser)[0]["setting"] == "sparse"  # sparsity first, as runs rank


def test_one_seed_has_no_spread_and_a_missing_test_split_none() -> None:
    found = replicates.grouped([{**doc("a", "A", 0, 98.0, 0.0), "test_accuracy": None}])[0]
    assert found["val_accuracy"]["sd"] is None and found["test_accuracy"] is None
    assert found["setting"] == "a"
    mixed = replicates.grouped([doc("x-seed0", "A", 0, 9, 9), doc("y", "A", 1, 9, 9)])
    assert mixed[0]["setting"] == "x-seed0, y"  # names with nothing in common: all of them


def test_the_table_shows_a_sparsitys_spread_in_percent_as_its_mean() -> None:
    """0.980, 0.980 and 0.979 are 97.97 ± 0.06%; the sd was written as a fraction (± 0.00%)."""
    from rich.console import Console

    from iterprune.report.console import overview

    docs = [
        doc(f"a-seed{i}", "A", i, 98.0, 97.0, sparsity=v) for i, v in enumerate((0.98, 0.98, 0.979))
    ]
    console = Console(width=200, record=True)
    console.print(overview.settings_table(replicates.grouped(docs)))
    assert "97.97 ± 0.06%" in console.export_text()
