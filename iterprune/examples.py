"""The built-in example: scikit-learn's digits (1,797 real 8x8 handwritten digits) and small nets.

scikit-learn is an optional extra (``pip install 'iterprune[examples]'``); it is imported only here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from iterprune.errors import UserError


def digits_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    """A small CNN for 1x8x8 digit images (about 160k prunable weights at width 32)."""
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(4 * w),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * w * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def digits_mlp(num_classes: int = 10, hidden: int = 128) -> nn.Module:
    """A two-layer perceptron on the flattened 8x8 digits: the smallest useful test model."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float images in [0, 1], shape (N, 1, 8, 8), and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(
            "the built-in digits data needs scikit-learn: pip install 'iterprune[examples]'"
        ) from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def split(
    labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified train/validation indices, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in labels.unique(sorted=True):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def digits_loaders(
    batch_size: int, val_fraction: float, seed: int, limit: int | None = None
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over the digits; ``limit`` keeps the first N samples (tests)."""
    x, y = digits_tensors()
    if limit is not None:
        x, y = x[:limit], y[:limit]
    train_idx, val_idx = split(y, val_fraction, seed)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(x[train_idx], y[train_idx]),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
    )
    val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=512, shuffle=False)
    return train, val
