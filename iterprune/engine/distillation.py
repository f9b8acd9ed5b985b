"""``finetune.distill``: fine-tuning with the dense model (or the last accepted round) as teacher.

The loss is ``(1 − weight) · task loss + weight · T² · KL(teacher ‖ student)`` on the logits at
temperature ``T`` (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015:
the ``T²`` keeps the soft term's gradients on the scale of the hard one's). For a classifier the
KL is the batch mean over samples; for a language model it is per predicted token, averaged over
the real (non-padding) tokens as the task loss is. With ``weight: 1`` the labels are not read: a
classifier's training batches may be inputs alone.

The teacher runs in eval mode under ``torch.no_grad`` inside the same autocast as the student,
so it costs one more forward per batch and one more copy of the weights — no gradients and no
optimizer state. It is built once per process; its weights change only when a round is accepted
(``teacher: last``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from iterprune.engine import tasks


class Distilled:
    """A task whose training loss also pulls the student towards ``teacher``'s outputs; every
    other use of the task (scores, exclusions, the metric) is the task's own."""

    def __init__(self, task: Any, teacher: nn.Module, weight: float, temperature: float) -> None:
        self.task, self.teacher = task, teacher
        self.weight, self.temperature = weight, temperature
        self.exclude = task.exclude
        self.higher_is_better = task.higher_is_better

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if isinstance(self.task, tasks.LanguageModel):
            return self._language(model, batch)
        return self._classification(model, batch)

    def _classification(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.weight >= 1:
            inputs, labels = _inputs(batch), None
        else:
            inputs, labels = tasks.split(batch)
        student = tasks.forward(model, inputs)
        soft = self._kl(student, self._teach(inputs)).mean()
        if labels is None:
            return soft
        hard = functional.cross_entropy(student, labels)
        return (1 - self.weight) * hard + self.weight * soft

    def _language(self, model: nn.Module, batch: Any) -> torch.Tensor:
        student, wanted, counts = self.task.predicted(model, batch)
        teacher = self._teach(self.task.inputs(batch))[:, :-1]
        counted = counts.to(student.dtype)
        tokens = counted.sum().clamp(min=1)
        soft = (self._kl(student, teacher) * counted).sum() / tokens
        if self.weight >= 1:
            return soft
        hard = self.task.token_nll(student, wanted, counted).sum() / tokens
        return (1 - self.weight) * hard + self.weight * soft

    def _teach(self, inputs: Any) -> torch.Tensor:
        with torch.no_grad():
            return tasks.forward(self.teacher, inputs)

    def _kl(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``T² · Σ p_t (log p_t − log p_s)`` over the last axis, at temperature T (float32).

        The teacher's side (``p_t`` and ``Σ p_t log p_t``) is computed without a graph, so the
        backward pass goes through the student's log-softmax and one product only (a third
        less time on a language model's ``[batch, tokens, vocabulary]`` logits)."""
        t = self.temperature
        with torch.no_grad():
            log_t = functional.log_softmax(teacher.float() / t, dim=-1)
            p_t = log_t.exp()
            own = (p_t * log_t).sum(dim=-1)
        log_s = functional.log_softmax(student.float() / t, dim=-1)
        return t * t * (own - (p_t * log_s).sum(dim=-1))


def _inputs(batch: Any) -> Any:
    """A training batch's inputs, with or without labels beside them."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def freeze(model: nn.Module) -> nn.Module:
    """A teacher: eval mode, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
