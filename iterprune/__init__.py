"""iterprune: an iterative pruning scheduler daemon for PyTorch models."""

__version__ = "0.1.0"


def load_sparse(path):  # noqa: ANN001, ANN201
    """The exact state_dict of a ``iterprune export --format sparse`` file."""
    from iterprune.export import load_sparse as _load

    return _load(path)
