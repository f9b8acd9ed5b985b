"""``data.text``: a language model's own text files, and which files each split names.

A split is a file, a directory (every file under it whose name ends in one of
:data:`TEXT_SUFFIXES`, recursively) or a glob (``corpus/*.md``, ``**`` allowed), relative to the
schedule's directory. Files are read in sorted path order, so a split's tokens never depend on
the order a file system lists them in. The checker refuses a split that names no file; the
loader (``engine/corpus.py``) refuses text that is not UTF-8 or too short for one sequence.
"""

from __future__ import annotations

import glob
from pathlib import Path

from iterprune.schedule.checker import Checker
from iterprune.schedule.specs import TextSpec

TEXT_SUFFIXES = (
    *(".txt", ".text", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tsv", ".html"),
    *(".xml", ".tex", ".yaml", ".yml", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs"),
)
SPLITS = ("train", "val", "test")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")


def files(pattern: str, base_dir: str | Path = ".") -> list[Path]:
    """The files a split names, sorted; empty when it names none."""
    where = (Path(base_dir) / pattern).expanduser()
    if any(ch in pattern for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(str(where), recursive=True) if Path(p).is_file())
    if where.is_dir():
        return sorted(p for p in where.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    return [where] if where.is_file() else []


def section(c: Checker, d: dict, base_dir: Path) -> TextSpec | None:
    """``data.text``: train and val are required; each split names at least one file."""
    if d.get("text") is None:
        return None
    t = c.section(d, "text", (*SPLITS, "seq_len", "tokenizer"), "data")
    if d.get("kwargs"):
        c.fail("data.kwargs", "not for data.text: its options are data.text.seq_len and .tokenizer")
    named = {split: c.text(t, split, "data.text", None) for split in SPLITS}
    for split in ("train", "val"):
        if named[split] is None:
            c.fail(f"data.text.{split}", "missing: a file, a directory or a glob of text")
    seq_len = c.count(t, "seq_len", "data.text", 128, minimum=2)
    tokenizer = c.text(t, "tokenizer", "data.text", "bytes") or "bytes"
    for split, pattern in named.items():
        found = files(pattern, base_dir) if pattern is not None else None
        if found is not None:
            problem = _problem(found, pattern, base_dir, seq_len if tokenizer == "bytes" else None)
            if problem:
                c.fail(f"data.text.{split}", problem)
    if tokenizer != "bytes":
        where = (base_dir / tokenizer).expanduser()
        if not any((where / name).is_file() for name in TOKENIZER_FILES):
            c.fail(
                "data.text.tokenizer",
                f"{tokenizer} is not a tokenizer directory (none of {', '.join(TOKENIZER_FILES)} "
                "in it): give `bytes` or a directory written by a tokenizer's save_pretrained",
            )
    return TextSpec(
        train=named["train"] or "",
        val=named["val"] or "",
        test=named["test"],
        seq_len=seq_len,
        tokenizer=tokenizer,
    )


def _problem(found: list[Path], pattern: str, base_dir: Path, seq_len: int | None) -> str | None:
    """What keeps a split's files from being read: none, one not UTF-8, or (bytes) too short."""
    if not found:
        return _nothing(pattern, base_dir)
    size = len(found) - 1  # the newlines that join them
    for path in found:
        try:
            size += len(path.read_bytes().decode("utf-8").encode())
        except UnicodeDecodeError as exc:
            return (
                f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, e.g. "
                "iconv -f latin1 -t utf-8, or leave it out of the split"
            )
        except OSError as exc:
            return f"{path} cannot be read: {exc.strerror or exc}"
    if seq_len is not None and size < seq_len:
        return f"{pattern} holds {size} tokens, fewer than one sequence of seq_len {seq_len}"
    return None


def _nothing(pattern: str, base_dir: Path) -> str:
    where = (base_dir / pattern).expanduser()
    if where.is_dir():
        return (
            f"no text files in the directory {pattern} (files ending in "
            f"{', '.join(TEXT_SUFFIXES[:5])}, …; name others with a glob like {pattern}/*)"
        )
    if Path(pattern).expanduser().is_absolute():
        return f"no file matches {pattern}"
    return f"no file matches {pattern} (paths are relative to the schedule's folder: {where})"
