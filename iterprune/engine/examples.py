"""The built-in example: scikit-learn's digits (1,797 real 8x8 handwritten digits) and small nets.

scikit-learn is an optional extra (``pip install 'iterprune[examples]'``); only this module reads it.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
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
    """All 1,797 digits as float images in [0, 1], shape (N, 1, 8, 8), and their labels.

    Read straight from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``,
    what ``load_digits`` reads) when it is there: importing scikit-learn took 1.1 s here, most
    of a small run's start. Otherwise through ``load_digits``; a test checks that both agree.
    """
    found = _shipped_digits()
    if found is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UserError(
                "the built-in digits data needs scikit-learn: pip install 'iterprune[examples]'"
            ) from None
        digits = load_digits()
        found = digits.images.reshape(-1, 64), digits.target
    pixels, labels = found
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return images, torch.tensor(labels, dtype=torch.long)


def _shipped_digits() -> tuple[np.ndarray, np.ndarray] | None:
    """(pixels, labels) from scikit-learn's own digits file, without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
    except (OSError, ValueError):
        return None
    if data.shape != (1797, 65):
        return None  # not the file load_digits reads: let it read what it reads
    return data[:, :-1], data[:, -1].astype(np.int64)


def split(
    labels: torch.Tensor, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified train / validation / test indices, fixed by ``seed``.

    Without a test share the split is the one earlier releases made (same draws), so their
    runs continue on the same data.
    """
    g = torch.Generator().manual_seed(seed)
    train, val, test = [], [], []
    for cls in labels.unique(sorted=True):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * val_fraction))
        n_test = max(1, round(len(idx) * test_fraction)) if test_fraction > 0 else 0
        val.append(idx[:n_val])
        test.append(idx[n_val : n_val + n_test])
        train.append(idx[n_val + n_test :])
    return tuple(torch.cat(part).sort().values for part in (train, val, test))  # type: ignore[return-value]


def digits_loaders(
    batch_size: int,
    val_fraction: float,
    seed: int,
    limit: int | None = None,
    test_fraction: float = 0.0,
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Train, validation and (with a test share) test loaders over the digits; ``limit`` keeps
    the first N samples (tests)."""
    x, y = digits_tensors()
    if limit is not None:
        x, y = x[:limit], y[:limit]
    train_idx, val_idx, test_idx = split(y, val_fraction, seed, test_fraction)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(x[train_idx], y[train_idx]),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
    )
    val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=512, shuffle=False)
    test = None
    if len(test_idx):
        test = DataLoader(TensorDataset(x[test_idx], y[test_idx]), batch_size=512, shuffle=False)
    return train, val, test
