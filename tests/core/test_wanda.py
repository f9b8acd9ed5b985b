"""Wanda: input norms per layer kind (Linear, Conv against unfold, GPT-2's transposed Conv1D),
masks equal to an independent plain-torch Wanda, exact counts in every group, and a run that
prunes with it, is rolled back and resumes to the same end."""

from __future__ import annotations

import pytest
import torch
from helpers import SPARSE_RUN, assert_resume_matches_uninterrupted, merged, parse
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from iterprune.core import pruning, wanda
from iterprune.engine import calibration, tasks
from iterprune.errors import ScheduleError, UserError


class Conv1D(nn.Module):
    """transformers' Conv1D, re-stated: a Linear whose weight is stored [in, out]."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), Conv1D(16, 8), nn.ReLU(), nn.Linear(8, 3))


def loader(n: int = 64) -> DataLoader:
    torch.manual_seed(1)
    x = torch.randn(n, 12) * torch.linspace(0.1, 5.0, 12)  # uneven input scales
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (n,))), batch_size=16)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), padding=(2, 0)),
        nn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="reflect"),
    ],
    ids=["plain", "strided-dilated", "grouped-reflect"],
)
def test_a_convs_input_norms_are_those_of_its_unfolded_patches(conv: nn.Conv2d) -> None:
    x = torch.randn(2, conv.in_channels, 9, 8)
    squares = wanda.add_squares(conv, x, None)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = functional.pad(x, conv._reversed_padding_repeated_twice, mode)
    cols = functional.unfold(padded, conv.kernel_size, conv.dilation, 0, conv.stride)
    plain = cols.double().square().sum(dim=(0, 2)).view(conv.in_channels, *conv.kernel_size)
    assert torch.allclose(squares, plain)
    scale = wanda.scale(conv, squares)
    assert scale.shape == conv.weight.shape
    group_size = conv.in_channels // conv.groups
    for o in range(conv.out_channels):  # output o reads the channels of its group
        g = o // (conv.out_channels // conv.groups)
        want = plain[g * group_size : (g + 1) * group_size].sqrt().float()
        assert torch.allclose(scale[o], want)


def plain_wanda(model: nn.Module, data: DataLoader, share: float) -> dict[str, torch.Tensor]:
    """The paper's recipe, written independently: per layer |W| * ||X_j||, per output row the
    lowest share removed (ties: stable sort)."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):

            def grab(mod, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)

            hooks.append(module.register_forward_pre_hook(grab))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for h in hooks:
        h.remove()
    masks = {}
    for name, norm in sums.items():
        module = model.get_submodule(name)
        w = module.weight.detach()
        w = w.t() if isinstance(module, Conv1D) else w  # [out, in]
        metric = w.abs() * norm.sqrt().float().view(1, -1)
        k = int(w.shape[1] * share)
        order = torch.sort(metric, dim=1, stable=True).indices[:, :k]
        keep = torch.ones_like(w, dtype=torch.bool).scatter_(1, order, False)
        masks[f"{name}.weight"] = keep.t() if isinstance(module, Conv1D) else keep
    return masks


def test_row_masks_equal_an_independent_wanda_on_linear_and_conv1d_layers() -> None:
    model = mlp()
    params = pruning.prunable_parameters(model)
    data = loader()
    scales, flipped = calibration.input_scales(model, params, data, 4, 0)
    assert flipped == {"2.weight"}
    total = sum(p.numel() for p in params.values())
    mask = wanda.prune(params, pruning.dense_mask(params), total // 2, scales, "row", flipped)
    expected = plain_wanda(model, data, 0.5)
    assert mask.keys() == expected.keys()
    for name in mask:
        assert torch.equal(mask[name], expected[name]), name


def test_every_group_removes_exactly_what_it_asks_and_never_revives() -> None:
    model = mlp()
    params = pruning.prunable_parameters(model)
    scales, flipped = calibration.input_scales(model, params, loader(), 2, 0)
    total = sum(p.numel() for p in params.values())
    for group in wanda.GROUPS:
        mask = pruning.dense_mask(params)
        for n in (37, 51, 20):
            before = mask
            mask = wanda.prune(params, mask, n, scales, group, flipped)
            assert pruning.count_alive(mask) == pruning.count_alive(before) - n, group
            assert all(not (m & ~before[k]).any() for k, m in mask.items()), group
        assert pruning.count_alive(mask) == total - 108
    row = wanda.prune(params, pruning.dense_mask(params), total // 2, scales, "row", flipped)
    for name, m in row.items():  # each output row keeps (about) half
        per_row = wanda.rows(m, name in flipped).sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1, name


def test_calibration_uses_the_seeded_order_and_leaves_the_runs_random_state() -> None:
    model = mlp()
    params = pruning.prunable_parameters(model)
    data = DataLoader(loader().dataset, batch_size=8, shuffle=True, generator=torch.Generator())
    data.generator.manual_seed(3)
    torch.manual_seed(11)
    first, _ = calibration.input_scales(model, params, data, 2, seed=5)
    after = torch.rand(1), data.generator.get_state()
    again, _ = calibration.input_scales(model, params, data, 2, seed=5)
    other, _ = calibration.input_scales(model, params, data, 2, seed=6)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # another order, other batches
    torch.manual_seed(11)
    assert torch.equal(torch.rand(1), after[0])
    assert torch.equal(data.generator.get_state(), after[1])


class WithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(12, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)  # spare is never called


def test_an_unused_layer_is_named() -> None:
    model = WithSpare()
    params = pruning.prunable_parameters(model)
    with pytest.raises(UserError, match="spare.weight: a layer the forward pass does not use"):
        calibration.input_scales(model, params, loader(), 1, 0, task=tasks.CLASSIFICATION)


WANDA = merged(SPARSE_RUN, name="wanda", prune={"method": "wanda", "calibration": {"batches": 2}})


def test_a_wanda_run_rolls_back_and_resumes_to_the_same_end(tmp_path) -> None:
    doc = merged(WANDA, validate={"max_drop": 2.0}, rollback={"retries": 1})
    whole, _ = assert_resume_matches_uninterrupted(tmp_path, doc)
    rows = whole.store.rounds("wanda")
    assert {"accepted", "rolled_back"} <= {r["status"] for r in rows}
    last = [r for r in rows if r["status"] == "accepted"][-1]
    total = sum(m.numel() for m in whole.accepted.mask.values())
    assert last["params"] == pruning.count_alive(whole.accepted.mask) < total


def test_wanda_options_are_checked_with_the_schedule() -> None:
    assert parse(merged(WANDA, prune={"group": "global", "max_layer_sparsity": 0.9}))
    with pytest.raises(ScheduleError, match="prune.group"):
        parse(merged(WANDA, prune={"group": "column"}))
    with pytest.raises(ScheduleError, match="applies to method wanda only"):
        parse(merged(SPARSE_RUN, prune={"calibration": {"batches": 2}}))
    with pytest.raises(ScheduleError, match="prune.max_layer_sparsity"):
        parse(merged(WANDA, prune={"max_layer_sparsity": 0.9}))  # row groups are uniform


def lowest_in_rows(score: torch.Tensor, alive: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Plain reference: in each row, the k lowest alive scores go, the earlier of equal ones
    first (a stable sort)."""
    keep = alive.clone()
    for r in range(score.shape[0]):
        where = alive[r].nonzero().flatten()
        order = torch.sort(score[r, where], stable=True).indices
        keep[r, where[order[: int(k[r])]]] = False
    return keep


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_rows_with_ties_across_the_cut_lose_their_earlier_weights(share: float) -> None:
    g = torch.Generator().manual_seed(int(share * 10))
    weight = torch.randint(-4, 5, (40, 24), generator=g).float()  # few values: many ties
    params = {"w": nn.Parameter(weight)}
    scales = {"w": torch.ones(1, 24)}
    mask = {"w": torch.rand(40, 24, generator=g) > 0.3}  # rows with different survivors
    mask["w"][0] = False  # a row with nothing left
    alive = int(mask["w"].sum())
    n = int(share * alive)
    found = wanda.prune(params, mask, n, scales, "row")["w"]
    quota = wanda.quotas(mask["w"].sum(dim=1), n)
    expected = lowest_in_rows(weight.abs(), mask["w"], quota)
    assert torch.equal(found, expected)
    assert int(found.sum()) == alive - n
