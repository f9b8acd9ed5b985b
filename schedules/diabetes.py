"""A task of your own, run end to end: a regressor judged by mean squared error.

The data is scikit-learn's diabetes set, which ships inside the package (442 patients, ten
measurements each; the target is a measure of the disease's progress a year later). The
schedule beside this file names the three factories::

    task: {factory: diabetes:MSE}
    model: {factory: diabetes:model}
    data: {factory: diabetes:loaders}

and iterprune imports them from this directory. Run it with
``iterprune start schedules/diabetes.yaml`` (a few seconds; needs ``pip install -e '.[examples]'``).
"""

import torch
from torch.utils.data import DataLoader, TensorDataset

try:
    from sklearn.datasets import load_diabetes
except ImportError as exc:
    raise ImportError(
        "this example reads scikit-learn's diabetes data: pip install -e '.[examples]'"
    ) from exc


def loaders(batch_size):
    """(train, validation, test) DataLoaders of (x, y): 60/20/20 of the patients in a fixed
    random order; features and target standardised with the training split's mean and spread,
    so an MSE of 1 is as good as always predicting the training mean."""
    x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    x = (x - x[:a].mean(0)) / x[:a].std(0)
    y = (y - y[:a].mean()) / y[:a].std()
    shuffle = torch.Generator().manual_seed(1)
    train = DataLoader(TensorDataset(x[:a], y[:a]), batch_size, shuffle=True, generator=shuffle)
    val = DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=256)
    test = DataLoader(TensorDataset(x[b:], y[b:]), batch_size=256)
    return train, val, test


def model(hidden=64):
    """A two-layer perceptron: 10 → 64 → 64 → 1, 4,800 prunable weights."""
    return torch.nn.Sequential(
        torch.nn.Linear(10, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )


class MSE:
    """The task (the ``iterprune.Task`` protocol): how to fine-tune, and how good each sample is.
    A patient's score is its squared error; the metric is their mean, lower is better."""

    metric, higher_is_better = "mse", False

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)

    def scores(self, model, batch):  # one float per sample, in the batch's order
        x, y = batch
        return (model(x).squeeze(-1) - y) ** 2
