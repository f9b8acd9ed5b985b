"""LAMP and capped global magnitude against a plain reference that sorts everything."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import assert_resume_matches_uninterrupted, make_runner, parse, run_to_end, tiny

from iterprune.core import decisions, pruning, selection
from iterprune.errors import ScheduleError
from iterprune.report import views


def reference(params, mask, n_prune, lamp, floor):
    """Every surviving weight scored after a full sort; the lowest removed, ties by (layer,
    position) with the last kept, none under its layer's floor."""
    entries = []
    for li, (name, p) in enumerate(params.items()):
        alive = mask[name].reshape(-1).nonzero().flatten()
        values, order = p.detach().abs().reshape(-1).float()[alive].sort(stable=True)
        where = alive[order]
        squares = values.double().square()
        after = squares.flip(0).cumsum(0).flip(0)
        scores = squares / after if lamp else values.double()
        if lamp:
            scores = torch.nan_to_num(scores, nan=0.0)
        for rank in range(max(0, where.numel() - floor[name])):
            entries.append((float(scores[rank]), li, rank, name, int(where[rank])))
    entries.sort(key=lambda e: e[:3])
    out = {n: m.clone().reshape(-1) for n, m in mask.items()}
    for *_, name, pos in entries[:n_prune]:
        out[name][pos] = False
    return {n: out[n].view(mask[n].shape) for n in mask}


def layers(seed: int, ties: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (10, 512), (7,), (300, 40)]
    out = {}
    for i, shape in enumerate(shapes):
        w = torch.randn(shape, generator=g) * (0.1 + i)
        out[f"l{i}.weight"] = w.round(decimals=1) if ties else w
    return out


@pytest.mark.parametrize("lamp", [True, False])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("cap", [1.0, 0.99, 0.9])
def test_select_equals_a_full_sort_over_rounds(lamp: bool, ties: bool, cap: float) -> None:
    params = layers(3, ties)
    floor = decisions.floors({n: p.numel() for n, p in params.items()}, cap)
    mask = pruning.dense_mask(params)
    for fraction in (0.4, 0.5, 0.7, 0.9, 0.95):  # rounds, each pruning what is still alive
        n = round(pruning.count_alive(mask) * fraction)
        got = selection.select(params, mask, n, lamp, floor)
        want = reference(params, mask, n, lamp, floor)
        assert {k: torch.equal(got[k], want[k]) for k in got} == {k: True for k in got}
        mask = got
        for name, p in params.items():
            p.mul_(mask[name])


def test_lamp_keeps_each_layers_largest_weight_and_differs_from_magnitude() -> None:
    params = layers(5)
    floor = decisions.floors({n: p.numel() for n, p in params.items()}, 1.0)
    mask = pruning.dense_mask(params)
    n = round(pruning.count_alive(mask) * 0.97)
    lamp = selection.select(params, mask, n, True, floor)
    magnitude = selection.select(params, mask, n, False, floor)
    assert (
        pruning.count_alive(lamp) == pruning.count_alive(magnitude) == pruning.count_alive(mask) - n
    )
    for name, p in params.items():
        assert lamp[name].reshape(-1)[p.abs().reshape(-1).argmax()]  # score 1: last to go
    # magnitude empties the small-scale first layer; LAMP does not
    assert not magnitude["l0.weight"].any() and lamp["l0.weight"].any()


def test_floors_stop_at_capacity_and_mark_layers() -> None:
    params = layers(7)
    sizes = {n: p.numel() for n, p in params.items()}
    floor = decisions.floors(sizes, 0.9)
    mask = pruning.dense_mask(params)
    room = selection.capacity(mask, floor)
    assert room == sum(sizes[n] - floor[n] for n in sizes)
    full = selection.select(params, mask, room + 1000, False, floor)
    assert {n: int(m.sum()) for n, m in full.items()} == floor
    assert selection.capacity(full, floor) == 0
    capped = {n for n, m in full.items() if decisions.capped(int(m.sum()), floor[n])}
    assert capped == {n for n in sizes if floor[n] > 0}


CNN = {
    "name": "capped",
    "seed": 0,
    "threads": 2,
    "model": {"builtin": "digits_cnn"},
    "data": {"builtin": "digits", "batch_size": 64, "val_fraction": 0.2},
    "pretrain": {"epochs": 8, "lr": 1.0e-3},
    "prune": {"step": 0.6, "target_sparsity": 0.985},
    "finetune": {"epochs": 2, "lr": 1.0e-3},
    "validate": {"max_drop": 100},
}


def test_no_layer_of_the_digits_cnn_goes_past_the_cap_at_98_5_percent(tmp_path) -> None:
    runner = make_runner(tmp_path, CNN)
    # global magnitude alone takes the largest conv layer past 99% here
    params = runner.bench.params
    uncapped = pruning.prune(params, runner.accepted.mask, round(0.985 * runner.total))
    assert 1 - uncapped["7.weight"].float().mean() > 0.99
    run_to_end(runner)
    rows = [r for r in runner.store.rounds(runner.run_id) if r["status"] == "accepted"]
    assert rows[-1]["sparsity"] == pytest.approx(0.985, abs=1e-4)
    layers = {n: 1 - m.float().mean().item() for n, m in runner.accepted.mask.items()}
    assert max(layers.values()) <= 0.99 + 1e-9
    assert layers["7.weight"] == pytest.approx(0.99, abs=1e-4)  # capped, not emptied
    assert rows[-1]["val_accuracy"] > 80  # chance is 10%


def test_a_target_beyond_the_caps_ends_at_the_caps_and_says_so(tmp_path) -> None:
    doc = tiny(prune={"step": 0.5, "target_sparsity": 0.95, "max_layer_sparsity": 0.8})
    doc["validate"] = {"max_drop": 100}
    runner = make_runner(tmp_path, doc)
    run_to_end(runner)
    row = runner.store.run(runner.run_id)
    assert row["status"] == "finished"
    assert "max_layer_sparsity" in row["reason"]
    layers = [1 - m.float().mean().item() for m in runner.accepted.mask.values()]
    assert max(layers) <= 0.8 + 1e-9 and min(layers) >= 0.8 - 0.01
    shown = views.show(runner.store, runner.run_id)
    assert shown["max_layer_sparsity"] == 0.8
    assert [r["capped"] for r in shown["layers"]] == [True] * len(layers)


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"max_layer_sparsity": 0}, "must be in (0, 1]"),
        ({"max_layer_sparsity": 1.5}, "must be in (0, 1]"),
        ({"method": "random", "max_layer_sparsity": 0.9}, "caps the global methods"),
    ],
)
def test_bad_caps_are_schedule_errors(prune: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        parse(tiny(prune=prune))


def test_a_lamp_run_resumes_exactly(tmp_path) -> None:
    assert_resume_matches_uninterrupted(
        tmp_path, tiny(prune={"method": "lamp", "step": 0.3, "target_sparsity": 0.8})
    )
