"""A language model's text as token sequences: ``data.builtin: python_source`` — real text every
machine has, the running Python's standard library, its top-level ``.py`` files, as bytes — and
``data.text``, the user's own files, as bytes or through a local Hugging Face tokenizer.

Each file goes to train, validation or test by a stable hash of its name (80/10/10), so the
split never depends on the order a directory lists its files in, and a file is never cut between
splits. Its bytes are the tokens (a vocabulary of 256); each split is cut into sequences of
``seq_len`` tokens, after at most ``max_bytes`` of it (train) and a tenth of that (validation,
test). The digest of the validation tokens is kept with a run (as a classification run keeps its
labels'), so resuming on a machine whose standard library differs is an error, not a silent change.

``data.text`` splits are named by the user (``schedule/text.py`` says which files): each split's
files, in path order, are decoded as UTF-8 (anything else is an error naming the file), tokenized
file by file and joined (bytes: by a newline; a tokenizer: by its end-of-text token, if it has
one), then cut like the built-in text.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from iterprune.errors import UserError
from iterprune.schedule import text
from iterprune.schedule.specs import TextSpec

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


def sequences(data: bytes | torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping sequences of ``seq_len`` tokens, ``[N, seq_len]`` (the tail dropped), of
    bytes or of a 1-D tensor of token ids."""
    n = len(data) // seq_len
    if n == 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    if isinstance(data, torch.Tensor):
        return data[: n * seq_len].to(torch.long).view(n, seq_len)
    tokens = torch.frombuffer(bytearray(data[: n * seq_len]), dtype=torch.uint8)
    return tokens.to(torch.long).view(n, seq_len)


def _loader(x: torch.Tensor, batch_size: int, seed: int, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=shuffle, generator=generator)


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
        loaders.append(_loader(x, batch_size, seed, shuffle=split == "train"))
    return loaders[0], loaders[1], loaders[2]


def text_loaders(
    spec: TextSpec, batch_size: int, seed: int, base_dir: str = "."
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Train (shuffled by ``seed``), validation and (when named) test loaders of ``data.text``."""
    encode = _bytes if spec.tokenizer == "bytes" else _tokenizer(spec.tokenizer, base_dir)
    loaders: list[DataLoader | None] = []
    for split in SPLITS:
        pattern = getattr(spec, split)
        if pattern is None:
            loaders.append(None)
            continue
        ids = encode([_read(path) for path in _files(split, pattern, base_dir)])
        x = sequences(ids, spec.seq_len)
        if len(x) == 0:
            raise UserError(
                f"data.text.{split}: {pattern} holds {len(ids)} tokens, fewer than one sequence "
                f"of seq_len {spec.seq_len}"
            )
        loaders.append(_loader(x, batch_size, seed, shuffle=split == "train"))
    assert loaders[0] is not None and loaders[1] is not None
    return loaders[0], loaders[1], loaders[2]


def _files(split: str, pattern: str, base_dir: str) -> list[Path]:
    found = text.files(pattern, base_dir)
    if not found:  # checked with the schedule; the files may have gone since
        raise UserError(f"data.text.{split}: no file matches {pattern}")
    return found


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"data.text: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, "
            "e.g. iconv -f latin1 -t utf-8, or leave it out of the split"
        ) from None
    except OSError as exc:
        raise UserError(f"data.text: {path} cannot be read: {exc.strerror or exc}") from None


def _bytes(texts: list[str]) -> torch.Tensor:
    data = b"\n".join(t.encode("utf-8") for t in texts)
    if not data:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)


def _tokenizer(path: str, base_dir: str) -> Callable[[list[str]], torch.Tensor]:
    from iterprune.engine import huggingface

    return huggingface.tokenizer(Path(base_dir) / path)
