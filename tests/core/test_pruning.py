from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from iterprune.core import decisions, pruning
from iterprune.errors import PruneError


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def test_prunable_weights_are_conv_and_linear_weights_only() -> None:
    params = pruning.prunable_parameters(small_net())
    assert list(params) == ["0.weight", "4.weight", "6.weight"]
    assert list(pruning.prunable_parameters(small_net(), exclude=["6", "0*"])) == ["4.weight"]


def test_global_magnitude_matches_torch_global_unstructured_l1() -> None:
    model = small_net()
    reference = copy.deepcopy(model)
    params = pruning.prunable_parameters(model)
    mask = pruning.prune(params, pruning.dense_mask(params), n_prune=500)
    ref_params = pruning.prunable_parameters(reference)
    modules = [(reference.get_submodule(n.removesuffix(".weight")), "weight") for n in ref_params]
    torch_prune.global_unstructured(modules, torch_prune.L1Unstructured, amount=500)
    for name, (module, _) in zip(ref_params, modules, strict=True):
        assert torch.equal(mask[name], module.weight_mask.bool()), name


def test_global_magnitude_prunes_exactly_and_only_shrinks() -> None:
    params = pruning.prunable_parameters(small_net())
    total = sum(p.numel() for p in params.values())
    mask = pruning.dense_mask(params)
    for _ in range(4):
        alive = pruning.count_alive(mask)
        n = decisions.amount_to_prune(alive, total, 0.3, 0.9)
        new = pruning.prune(params, mask, n)
        pruning.apply(params, new)
        assert pruning.count_alive(new) == alive - n
        for name in mask:
            assert not (new[name] & ~mask[name]).any(), "a pruned weight came back"
        mask = new
    assert all(torch.all(params[n][~mask[n]] == 0) for n in mask)


def test_ties_at_the_threshold_are_broken_to_the_exact_count() -> None:
    weight = nn.Parameter(torch.ones(10, 10))
    params = {"w": weight}
    mask = pruning.prune(params, pruning.dense_mask(params), n_prune=37)
    assert pruning.count_alive(mask) == 63


def test_layer_magnitude_removes_the_same_fraction_in_every_layer() -> None:
    params = pruning.prunable_parameters(small_net())
    mask = pruning.prune(params, pruning.dense_mask(params), n_prune=300, method="layer_magnitude")
    fractions = [1 - float(m.float().mean()) for m in mask.values()]
    assert max(fractions) - min(fractions) < 0.02
    for name, m in mask.items():  # within a layer, the smallest weights go
        w = params[name].detach().abs()
        if (~m).any() and m.any():
            assert w[~m].max() <= w[m].min()


def test_random_pruning_is_seeded_and_exact() -> None:
    params = pruning.prunable_parameters(small_net())
    dense = pruning.dense_mask(params)
    a = pruning.prune(params, dense, 400, "random", torch.Generator().manual_seed(1))
    b = pruning.prune(params, dense, 400, "random", torch.Generator().manual_seed(1))
    c = pruning.prune(params, dense, 400, "random", torch.Generator().manual_seed(2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert pruning.count_alive(a) == pruning.count_alive(dense) - 400


@pytest.mark.parametrize("k", [1, 7, 400_000, 1_234_567, 2_000_000])
def test_kth_smallest_is_exact_on_large_tensors(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    values = torch.randn(2_000_000, generator=g)
    values[:1000] = 0.5  # a block of ties
    assert pruning.kth_smallest(values, k) == torch.kthvalue(values, k).values


def test_check_sparsity_stops_on_a_missed_target() -> None:
    mask = {"w": torch.tensor([True, False, True, True])}
    pruning.check_sparsity(mask, 3, "global_magnitude")
    with pytest.raises(PruneError, match="left 3 of 4 weights, expected 2"):
        pruning.check_sparsity(mask, 2, "global_magnitude")


def test_masks_leave_plain_modules_behind() -> None:
    model = small_net()
    params = pruning.prunable_parameters(model)
    pruning.apply(params, pruning.prune(params, pruning.dense_mask(params), 100))
    keys = set(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert not any(m._forward_pre_hooks for m in model.modules())
    copy.deepcopy(model)  # no hooks or closures that break copying


def test_layer_stats_measure_the_weights() -> None:
    model = small_net()
    params = pruning.prunable_parameters(model)
    pruning.apply(params, pruning.prune(params, pruning.dense_mask(params), 200))
    rows = pruning.layer_stats(model)
    assert [r["layer"] for r in rows] == ["0", "4", "6"]
    assert sum(r["params"] - r["nonzero"] for r in rows) == 200
