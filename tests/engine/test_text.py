"""``data.text``: a language model's own files — which files a split names, bytes or a local
tokenizer, and the errors a user meets (no files, not UTF-8, too short, a tokenizer that does not
fit the model) before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write

from iterprune.cli import table as cli
from iterprune.engine import corpus, tasks, tinygpt
from iterprune.errors import ScheduleError, UserError
from iterprune.schedule import parsing, text
from iterprune.schedule.specs import TextSpec

WORDS = "the quick brown fox jumps over the lazy dog while a parser reads its tokens\n"


def corpus_dir(root: Path) -> Path:
    """train/ (two files, one nested, one binary), val.txt, test/*.md."""
    (root / "train" / "deeper").mkdir(parents=True)
    (root / "train" / "a.txt").write_text(WORDS * 40)
    (root / "train" / "deeper" / "b.py").write_text("def f(x):\n    return x\n" * 60)
    (root / "train" / "image.png").write_bytes(b"\x89PNG\xff\xfe")  # not a text suffix
    (root / "val.txt").write_text(WORDS * 12)
    (root / "test").mkdir()
    (root / "test" / "one.md").write_text("# notes\n" + WORDS * 10)
    return root


def lm(**data: object) -> dict:
    text_section = {"train": "train", "val": "val.txt", "test": "test/*.md", "seq_len": 32}
    return {
        "name": "text-lm",
        "seed": 0,
        "threads": 1,
        "task": {"kind": "language_model"},
        "model": {"builtin": "tiny_gpt", "kwargs": {"width": 16, "depth": 1, "heads": 2}},
        "data": {"text": {**text_section, **data}, "batch_size": 8},
        "pretrain": {"epochs": 1, "lr": 3.0e-3},
        "prune": {"step": 0.3, "target_sparsity": 0.5},
        "finetune": {"epochs": 1},
        "validate": {"max_drop": "20%"},
    }


def test_a_split_is_a_file_a_directory_or_a_glob(tmp_path: Path) -> None:
    root = corpus_dir(tmp_path)
    assert text.files("val.txt", root) == [root / "val.txt"]
    assert text.files("train", root) == [root / "train" / "a.txt", root / "train/deeper/b.py"]
    assert text.files("train/**/*", root)[-1] == root / "train" / "image.png"  # a glob: any file
    assert text.files("test/*.md", root) == [root / "test" / "one.md"]
    assert text.files("nothing/*.txt", root) == []


def test_bytes_are_the_files_in_path_order_joined_by_a_newline(tmp_path: Path) -> None:
    root = corpus_dir(tmp_path)
    spec = TextSpec(train="train", val="val.txt", test=None, seq_len=16)
    train, val, test = corpus.text_loaders(spec, 4, 0, str(root))
    assert test is None
    joined = (root / "train/a.txt").read_bytes() + b"\n" + (root / "train/deeper/b.py").read_bytes()
    whole = torch.cat([batch[0] for batch in torch.utils.data.DataLoader(train.dataset)])
    assert len(train.dataset) == len(joined) // 16
    assert sorted(bytes(row.tolist()) for row in whole) == sorted(
        joined[i * 16 : (i + 1) * 16] for i in range(len(joined) // 16)
    )
    first = next(iter(val))[0][0]
    assert bytes(first.tolist()) == WORDS.encode()[:16]  # validation keeps its order


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"val": None}, "data.text.val", "missing"),
        ({"val": "nowhere/*.txt"}, "data.text.val", "relative to the schedule's folder"),
        ({"test": "empty"}, "data.text.test", "no text files in the directory empty"),
        ({"tokenizer": "train"}, "data.text.tokenizer", "not a tokenizer directory"),
        ({"seq_len": 1}, "data.text.seq_len", ""),
        ({"seq_len": 100000}, "data.text.train", "fewer than one sequence of seq_len 100000"),
    ],
)
def test_a_split_that_names_nothing_is_refused_with_the_schedule(
    tmp_path: Path, change: dict, where: str, says: str
) -> None:
    root = corpus_dir(tmp_path)
    (root / "empty").mkdir()
    doc = lm(**change)
    doc["data"]["text"] = {k: v for k, v in doc["data"]["text"].items() if v is not None}
    with pytest.raises(ScheduleError, match=where) as caught:
        parsing.load(write(root / "s.yaml", doc))
    assert says in str(caught.value)
    if "nowhere" in str(change.get("val")):  # where it looked, in full
        assert str(root / "nowhere") in str(caught.value)


def test_text_needs_a_language_model_task(tmp_path: Path) -> None:
    root = corpus_dir(tmp_path)
    doc = lm()
    doc.pop("task")
    doc["model"] = {"builtin": "digits_mlp"}
    with pytest.raises(ScheduleError, match="text is a language model's data"):
        parsing.load(write(root / "s.yaml", doc))


def test_text_that_is_not_utf8_or_too_short_is_a_clear_error(tmp_path: Path) -> None:
    root = corpus_dir(tmp_path)
    (root / "latin.txt").write_bytes("café au lait\n".encode("latin-1") * 20)
    spec = TextSpec(train="latin.txt", val="val.txt")
    with pytest.raises(UserError, match=r"latin.txt is not UTF-8 text \(byte 3"):
        corpus.text_loaders(spec, 4, 0, str(root))
    (root / "short.txt").write_text("tiny")
    with pytest.raises(UserError, match="data.text.val: short.txt holds 4 tokens, fewer than"):
        corpus.text_loaders(TextSpec(train="train", val="short.txt"), 4, 0, str(root))


def test_a_token_past_the_models_vocabulary_is_named() -> None:
    model = tinygpt.tiny_gpt(width=16, depth=1, heads=2, context=16, vocab=100)
    with pytest.raises(UserError, match="token id 200 is outside the model's vocabulary"):
        tasks.LANGUAGE_MODEL.loss(model, torch.full((2, 8), 200))


def test_a_run_on_text_files_reports_test_perplexity(tmp_path: Path, capsys) -> None:
    root = corpus_dir(tmp_path)
    state = str(root / "state")
    assert cli.main(["start", str(write(root / "s.yaml", lm())), "--state-dir", state]) == 0
    capsys.readouterr()
    assert cli.main(["history", "text-lm", "--state-dir", state, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"]["name"] == "perplexity"
    assert doc["baseline_test_accuracy"] > 1.0
    accepted = [r for r in doc["rounds"] if r["status"] == "accepted"]
    assert accepted and all(r["test_accuracy"] > 1.0 for r in accepted)


def test_a_bad_file_at_start_writes_no_run(tmp_path: Path, capsys) -> None:
    root = corpus_dir(tmp_path)
    (root / "train" / "broken.txt").write_bytes(b"\xff\xfe\x00 not text")
    state = root / "state"
    assert cli.main(["start", str(write(root / "s.yaml", lm())), "--state-dir", str(state)]) == 2
    assert "broken.txt is not UTF-8 text" in capsys.readouterr().err
    capsys.readouterr()
    cli.main(["runs", "--state-dir", str(state), "--json"])
    assert json.loads(capsys.readouterr().out or "[]") == []


def test_a_local_tokenizer_encodes_file_by_file_joined_by_its_end_token(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = corpus_dir(tmp_path)
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"])
    raw.train([str(p) for p in text.files("train", root)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(root / "tok")
    spec = TextSpec(train="train", val="val.txt", seq_len=8, tokenizer="tok")
    train, val, _ = corpus.text_loaders(spec, 4, 0, str(root))
    a, b = (p.read_text() for p in text.files("train", root))
    want = fast(a)["input_ids"] + [fast.eos_token_id] + fast(b)["input_ids"]
    got = sorted(tuple(row.tolist()) for (batch,) in train for row in batch)
    assert got == sorted(tuple(want[i : i + 8]) for i in range(0, len(want) - 7, 8))
    assert max(max(row) for row in got) < len(fast)
