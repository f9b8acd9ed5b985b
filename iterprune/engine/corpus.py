"""``data.builtin: python_source``: real text every machine has — the running Python's standard
library, its top-level ``.py`` files — as byte-level token sequences for a language model.

Each file goes to train, validation or test by a stable hash of its name (80/10/10), so the
split never depends on the order a directory lists its files in, and a file is never cut between
splits. Its bytes are the tokens (a vocabulary of 256); each split is cut into sequences of
``seq_len`` tokens, after at most ``max_bytes`` of it (train) and a tenth of that (validation,
test). The digest of the validation tokens is kept with a run (as a classification run keeps its
labels'), so resuming on a machine whose standard library differs is an error, not a silent change.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from iterprune.errors import UserError

SPLITS = ("train", "val", "test")


def stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(name: str) -> str:
    """train, val or test for a file name, by a stable hash (80 / 10 / 10)."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def split_bytes(root: Path, max_bytes: int) -> dict[str, bytes]:
    """Each split's text: its files in name order, joined, cut at its share of ``max_bytes``."""
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise UserError(f"data.builtin python_source: no .py files in {root}")
    limits = {"train": max_bytes, "val": max(1, max_bytes // 10), "test": max(1, max_bytes // 10)}
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    for path in files:
        split = split_of(path.name)
        if sizes[split] >= limits[split]:
            continue
        data = path.read_bytes()
        parts[split].append(data)
        sizes[split] += len(data)
    return {s: b"\n".join(parts[s])[: limits[s]] for s in SPLITS}


def sequences(data: bytes, seq_len: int) -> torch.Tensor:
    """Non-overlapping sequences of ``seq_len`` byte tokens, ``[N, seq_len]`` (the tail dropped)."""
    n = len(data) // seq_len
    if n == 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    tokens = torch.frombuffer(bytearray(data[: n * seq_len]), dtype=torch.uint8)
    return tokens.to(torch.long).view(n, seq_len)


def python_source_loaders(
    batch_size: int, seed: int, seq_len: int = 128, max_bytes: int = 3_000_000
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled by ``seed``), validation and test loaders of byte-token sequences."""
    if seq_len < 2:
        raise UserError(f"data.kwargs.seq_len must be at least 2, got {seq_len}")
    found = split_bytes(stdlib(), max_bytes)
    loaders = []
    for split in SPLITS:
        x = sequences(found[split], seq_len)
        if len(x) == 0:
            raise UserError(
                f"data.builtin python_source: the {split} split has no full sequence of "
                f"{seq_len} tokens (max_bytes {max_bytes} is too small)"
            )
        shuffle = split == "train"
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        loaders.append(
            DataLoader(
                TensorDataset(x), batch_size=batch_size, shuffle=shuffle, generator=generator
            )
        )
    return loaders[0], loaders[1], loaders[2]
