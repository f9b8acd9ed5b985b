"""iterprune: an iterative pruning scheduler daemon for PyTorch models."""

__version__ = "0.1.0"
