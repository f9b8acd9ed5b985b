"""Channel removal makes models really smaller, keeps them runnable, and round-trips through a
weights_only checkpoint."""

from __future__ import annotations

import io

import torch
import torchvision

from iterprune.core import channels
from iterprune.engine import examples


def test_removing_channels_shrinks_resnet_and_keeps_it_runnable() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    macs, params = channels.macs_and_params(model, example)
    channels.remove_channels(model, example, 0.25, scope="layer")
    small_macs, small_params = channels.macs_and_params(model, example)
    assert small_macs < 0.75 * macs and small_params < 0.75 * params
    assert model.fc.out_features == 10  # the classifier's outputs stay
    assert model(example).shape == (1, 10)


def test_a_pruned_architecture_round_trips_through_a_weights_only_checkpoint() -> None:
    torch.manual_seed(0)
    model = examples.digits_cnn().eval()
    example = torch.randn(1, 1, 8, 8)
    channels.remove_channels(model, example, 0.3)
    buffer = io.BytesIO()
    torch.save(channels.describe(model), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = examples.digits_cnn().eval()
    channels.rebuild(fresh, saved["architecture"], saved["model"])
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))
    assert channels.architecture(fresh) == channels.architecture(model)
