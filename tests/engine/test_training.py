from __future__ import annotations

import pytest
import torch
from torch import nn

from iterprune.core import pruning
from iterprune.engine import evaluation, training


def toy_loader(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


@pytest.mark.parametrize(
    "name, weight_decay",
    [("sgd", 0.0), ("sgd", 1e-2), ("adam", 0.0), ("adam", 1e-2), ("adamw", 1e-2)],
)
def test_pruned_weights_stay_exactly_zero_through_fine_tuning(
    name: str, weight_decay: float
) -> None:
    model = toy_model()
    params = pruning.prunable_parameters(model)
    optimizer = training.build_optimizer(name, model.parameters(), 0.05, weight_decay, 0.9)
    # dense training first, so momentum / Adam moments are non-zero everywhere
    training.train(model, toy_loader(), optimizer, epochs=2)
    mask = pruning.prune(params, pruning.dense_mask(params), 200)
    pruning.apply(params, mask)
    seen = []

    def check(epoch: int, batch: int, batches: int) -> None:  # after every single step
        seen.append(all(torch.all(p[~mask[n]] == 0) for n, p in params.items()))

    enforcer = training.MaskEnforcer(params, mask)
    training.train(
        model, toy_loader(seed=1), optimizer, 3, training.Options(enforcer, progress=check)
    )
    assert len(seen) == 12 and all(seen), f"{name}: a pruned weight revived"


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_without_the_enforcer_the_optimizer_revives_pruned_weights(name: str) -> None:
    """The trap the enforcer exists for: momentum / Adam moments move zeroed weights."""
    model = toy_model()
    params = pruning.prunable_parameters(model)
    optimizer = training.build_optimizer(name, model.parameters(), 0.05, 0.0, 0.9)
    training.train(model, toy_loader(), optimizer, epochs=2)
    mask = pruning.prune(params, pruning.dense_mask(params), 200)
    pruning.apply(params, mask)
    training.train(model, toy_loader(seed=1), optimizer, epochs=1)
    assert any(torch.any(p[~mask[n]] != 0) for n, p in params.items())


def test_dense_model_pays_nothing_for_the_enforcer() -> None:
    params = pruning.prunable_parameters(toy_model())
    assert training.MaskEnforcer(params, pruning.dense_mask(params)).params == []


def test_non_finite_loss_ends_training_as_not_finite() -> None:
    model = toy_model()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    optimizer = training.build_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.9)
    result = training.train(model, toy_loader(), optimizer, epochs=1)
    assert not result.finite


def test_evaluate_does_not_touch_the_global_rng() -> None:
    model = toy_model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    accuracy = evaluation.accuracy(model, toy_loader())
    assert 0 <= accuracy <= 100
    assert torch.equal(torch.rand(3), expected)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience() -> None:
    model = toy_model()
    optimizer = training.build_optimizer("adam", model.parameters(), 0.05, 0.0, 0.9)
    scripted = iter([50.0, 60.0, 55.0, 40.0, 99.0])
    snapshots = []

    def validate() -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    result = training.train(
        model, toy_loader(), optimizer, 10, training.Options(validate=validate, patience=2)
    )
    assert len(snapshots) == 4  # epochs 3 and 4 did not improve on epoch 2: stop
    assert (result.best_epoch, result.best_accuracy) == (1, 60.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])


def test_cosine_schedule_decays_the_learning_rate_over_the_call() -> None:
    model = toy_model()
    optimizer = training.build_optimizer("sgd", model.parameters(), 0.1, 0.0, 0.9, nesterov=True)
    seen = []
    training.train(
        model,
        toy_loader(),
        optimizer,
        2,
        training.Options(
            cosine_lr=0.1, progress=lambda *a: seen.append(optimizer.param_groups[0]["lr"])
        ),
    )
    assert seen[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1] < 0.01
    assert optimizer.param_groups[0]["nesterov"]


def test_max_batches_per_epoch_bounds_each_epoch() -> None:
    model = toy_model()
    optimizer = training.build_optimizer("adam", model.parameters(), 1e-3, 0.0, 0.9)
    result = training.train(model, toy_loader(), optimizer, 3, training.Options(max_batches=2))
    assert result.batches == 6
