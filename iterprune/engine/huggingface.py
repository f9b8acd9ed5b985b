"""``model.huggingface``: a Hugging Face model from a local ``save_pretrained`` directory (the hf
extra, ``pip install 'iterprune[hf]'``; transformers is imported only here). Always
``local_files_only`` with ``HF_HUB_OFFLINE=1``: nothing is ever fetched from the hub.

Their layers are ``nn.Linear`` or, in GPT-2 and its relatives, transformers' ``Conv1D``, whose
weight is ``[in_features, out_features]`` (transposed): ``core/pruning.py`` prunes both as
plain weights. Outputs are ``ModelOutput`` objects, whose ``.logits`` the tasks read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iterprune.errors import UserError
from iterprune.schedule.specs import HuggingFaceSpec

AUTO = {
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
}


def _transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers reads it
    try:
        import transformers
    except ImportError:
        raise UserError(
            "Hugging Face models and tokenizers need: pip install 'iterprune[hf]'"
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No tqdm bar of transformers' own while a local directory loads: iterprune draws the
    console (a bar on stderr would tear its live dashboard); the caller's setting comes back."""
    hf = transformers.utils.logging
    was = hf.is_progress_bar_enabled()
    hf.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf.enable_progress_bar()


def tokenizer(path: Path) -> Callable[[list[str]], torch.Tensor]:
    """A function from texts to one 1-D tensor of their token ids, joined by the tokenizer's
    end-of-text token when it has one (``data.text.tokenizer``: a local directory)."""
    transformers = _transformers()
    try:
        with _quiet(transformers):
            found = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"data.text.tokenizer: {path} cannot be loaded: {first}") from None
    eos = found.eos_token_id

    def encode(texts: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for i, text in enumerate(texts):
            if i and eos is not None:
                ids.append(eos)
            ids.extend(found(text, add_special_tokens=False, verbose=False)["input_ids"])
        return torch.tensor(ids, dtype=torch.long)

    return encode


def load(spec: HuggingFaceSpec, base_dir: str = ".") -> nn.Module:
    """The model in ``spec.path`` (relative to the schedule), as its class."""
    transformers = _transformers()
    path = (Path(base_dir) / spec.path).expanduser()
    auto = getattr(transformers, AUTO[spec.kind])
    try:
        with _quiet(transformers):
            model = auto.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(
            f"model.huggingface: {path} cannot be loaded as {spec.kind}: {first}"
        ) from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # training and scoring need no key/value cache
    return model
