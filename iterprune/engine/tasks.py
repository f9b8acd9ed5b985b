"""What a model is fed and judged by: batches in the shapes models take, outputs in the shapes
they give, and the tasks: classification (cross-entropy to train, top-1 accuracy to judge) and
language modelling (next-token cross-entropy, perplexity from per-sequence NLL sums).

A batch is ``(inputs, labels)`` (a tuple or list), or a dict whose ``labels`` key holds the labels
and whose other keys are the model's keyword arguments (``model(**inputs)``, as a Hugging Face
model takes them); inputs may nest tuples, lists and dicts of tensors, and are moved to the
device whole. An output is a tensor of logits, a tuple or list whose first item is, or an object
with ``.logits`` (a Hugging Face ``ModelOutput``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional

from iterprune.errors import UserError
from iterprune.schedule.factories import resolve_factory


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor in it on ``device`` (tuples, lists and dicts, nested)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def split(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) of a batch."""
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise UserError(
                f"a batch given as a dict needs a 'labels' key; this one has {sorted(batch)}"
            )
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise UserError(
        "a batch must be (inputs, labels) or a dict with a 'labels' key, got "
        f"{type(batch).__name__}{f' of {len(batch)} items' if isinstance(batch, (tuple, list)) else ''}"
    )


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The model's logits for ``inputs``: ``model(**inputs)`` for a dict, else ``model(inputs)``."""
    output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return logits(output)


def logits(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, a tuple's first item, ``.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    found = getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    raise UserError(
        f"the model returned {type(output).__name__}: expected a tensor of logits, a tuple whose "
        "first item is one, or an object with .logits"
    )


def samples(batch: Any) -> int:
    """How many samples a batch holds: its first tensor's first dimension (a classifier's
    inputs, a language model's ids, a dict's first entry)."""
    return _leading(batch) or 0


class Classification:
    """Cross-entropy to fine-tune; per sample, whether the top-1 class is the label."""

    exclude: tuple[str, ...] = ()
    higher_is_better = True

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, labels = split(batch)
        return functional.cross_entropy(forward(model, inputs), labels)

    def correct(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(right or wrong per sample, the labels), on the batch's device."""
        inputs, labels = split(batch)
        return forward(model, inputs).argmax(dim=1) == labels, labels


class LanguageModel:
    """Next-token cross-entropy over the real tokens to fine-tune; per sequence, its summed
    negative log-likelihood and its number of predicted tokens; perplexity to judge.

    A batch is token ids ``[B, T]`` (a tensor, or one in a tuple or list, as a TensorDataset
    gives it), or a dict with ``input_ids`` and optionally ``attention_mask`` (0: padding, never
    predicted) and ``labels`` (-100: not predicted; default: the ids). The output head is left
    out of pruning: every token's prediction goes through it, and in many models it shares its
    weights with the token embedding.
    """

    exclude: tuple[str, ...] = ("head", "lm_head")
    higher_is_better = False

    def _parts(self, batch: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(what the model is called with, the targets, where a target counts)."""
        if isinstance(batch, Mapping):
            if "input_ids" not in batch:
                raise UserError(f"a language model's batch needs input_ids; got {sorted(batch)}")
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            targets = batch.get("labels", batch["input_ids"])
            counts = targets != -100
            if batch.get("attention_mask") is not None:
                counts = counts & batch["attention_mask"].bool()
            return inputs, targets, counts
        ids = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 1 else batch
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise UserError(
                "a language model's batch must be token ids [batch, length], or a dict with "
                f"input_ids; got {type(ids).__name__}"
            )
        return ids, ids, torch.ones_like(ids, dtype=torch.bool)

    def predicted(
        self, model: nn.Module, batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the logits that predict each next token, those tokens, where a token counts)."""
        inputs, targets, counts = self._parts(batch)
        try:
            out = forward(model, inputs)[:, :-1]
        except IndexError as exc:  # an id past the embedding (CPU)
            raise _vocabulary(targets, exc) from None
        return out, targets[:, 1:], counts[:, 1:]

    def token_nll(
        self, out: torch.Tensor, wanted: torch.Tensor, counted: torch.Tensor
    ) -> torch.Tensor:
        """Each counted token's negative log-likelihood under ``out`` (0 where it does not count)."""
        try:
            nll = functional.cross_entropy(
                out.reshape(-1, out.shape[-1]).float(),
                wanted.clamp(min=0).reshape(-1),
                reduction="none",
            )
        except IndexError as exc:  # a target past the output head (CPU)
            raise _vocabulary(wanted, exc) from None
        return nll.view(wanted.shape) * counted

    def _token_nll(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out, wanted, counted = self.predicted(model, batch)
        return self.token_nll(out, wanted, counted), counted

    def inputs(self, batch: Any) -> Any:
        """What the model is called with: the ids, or the batch's dict without its labels."""
        return self._parts(batch)[0]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        nll, counted = self._token_nll(model, batch)
        return nll.sum() / counted.sum().clamp(min=1)

    def scores(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, predicted tokens) per sequence."""
        nll, counted = self._token_nll(model, batch)
        return nll.sum(dim=1), counted.sum(dim=1)

    def targets(self, batch: Any) -> torch.Tensor:
        return self._parts(batch)[1]


def _vocabulary(ids: torch.Tensor, exc: Exception) -> UserError:
    return UserError(
        f"token id {int(ids.max())} is outside the model's vocabulary ({exc}): the data's "
        "tokenizer and the model do not match (tiny_gpt's kwargs.vocab, or a Hugging Face "
        "model's vocab_size)"
    )


class Task(Protocol):
    """What a task factory (``task: {factory: mypkg.tasks:build}``) returns: how to fine-tune a
    model on a batch, and how good it is on each sample. The metric is the mean score.

    Example, a regressor judged by mean squared error::

        class MSE:
            metric, higher_is_better = "mse", False

            def loss(self, model, batch):
                x, y = batch
                return torch.nn.functional.mse_loss(model(x).squeeze(-1), y)

            def scores(self, model, batch):
                x, y = batch
                return (model(x).squeeze(-1) - y) ** 2  # one float per sample
    """

    metric: str  # its name, as documents and tables show it
    higher_is_better: bool

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """A scalar tensor to minimise."""
        ...

    def scores(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """One float per sample of the batch, in its order."""
        ...


class FactoryTask:
    """A user's task, checked where it can go wrong: a loss that is not a scalar, scores that
    are not one float per sample."""

    exclude: tuple[str, ...] = ()

    def __init__(self, task: Task, factory: str) -> None:
        self.task, self.factory = task, factory
        self.higher_is_better = bool(task.higher_is_better)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        loss = self.task.loss(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise UserError(f"task.factory {self.factory}: loss() must return a scalar tensor")
        return loss

    def scores(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(one float per sample, ones): the scores and their weights in the mean."""
        found = self.task.scores(model, batch)
        n = _leading(batch)
        if not (isinstance(found, torch.Tensor) and found.is_floating_point() and found.ndim == 1):
            what = type(found).__name__
            if isinstance(found, torch.Tensor):
                what = f"{found.dtype} of shape {tuple(found.shape)}"
            raise UserError(
                f"task.factory {self.factory}: scores() must return one float per sample (a "
                f"1-D floating tensor), got {what}"
            )
        if n is not None and found.numel() != n:
            raise UserError(
                f"task.factory {self.factory}: scores() gave {found.numel()} values for a batch "
                f"of {n} samples"
            )
        return found, torch.ones_like(found)

    def targets(self, batch: Any) -> torch.Tensor:
        """What identifies the split's content, for its digest: the batch's first tensor."""
        found = _first_tensor(batch)
        return found if found is not None else torch.zeros(0)


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a batch, depth first (tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if not isinstance(value, (tuple, list)):
        return None
    return next((t for t in map(_first_tensor, value) if t is not None), None)


def _leading(batch: Any) -> int | None:
    """The number of samples in a batch: its first tensor's first dimension."""
    found = _first_tensor(batch)
    return int(found.shape[0]) if found is not None and found.ndim else None


CLASSIFICATION = Classification()
LANGUAGE_MODEL = LanguageModel()


def task_for(spec: Any, base_dir: str = ".") -> Classification | LanguageModel | FactoryTask:
    """The task a schedule's ``task`` section names (a factory's is built here)."""
    if spec.kind == "factory":
        built = resolve_factory(str(spec.factory), base_dir)(**spec.kwargs)
        return FactoryTask(built, str(spec.factory))
    return LANGUAGE_MODEL if spec.kind == "language_model" else CLASSIFICATION


def metric_of(task: Any, spec: Any) -> dict[str, Any]:
    """The metric block of a run: the schedule's, or what a factory's task says of itself."""
    if isinstance(task, FactoryTask):
        return {
            "name": str(task.task.metric),
            "unit": str(getattr(task.task, "unit", "")),
            "higher_is_better": task.higher_is_better,
        }
    return spec.metric
