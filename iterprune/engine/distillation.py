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

The soft term is one autograd node (:class:`SoftTargets`) that computes its value and its
gradient together, a few million logits at a time: what it keeps for the backward pass is one
float32 tensor of the outputs' shape (the gradient), where autograd's chain of log-softmax,
product and sum kept three (the student's log-probabilities, the teacher's probabilities and its
logits) and made three more while it ran. A language model's outputs are ``[batch, tokens,
vocabulary]`` — 1.6 GB in float32 for GPT-2 at 8 × 1,024 tokens — so that is most of what a
teacher adds to memory beyond its weights.
"""

from __future__ import annotations

import math
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
        mean = torch.full(student.shape[:-1], 1 / max(len(student), 1), device=student.device)
        soft = self._soft(student, self._teach(inputs), mean)
        if labels is None:
            return soft
        hard = functional.cross_entropy(student, labels)
        return (1 - self.weight) * hard + self.weight * soft

    def _language(self, model: nn.Module, batch: Any) -> torch.Tensor:
        student, wanted, counts = self.task.predicted(model, batch)
        counted = counts.to(torch.float32)
        tokens = counted.sum().clamp(min=1)
        teacher = self._teach(self.task.inputs(batch))[:, :-1]
        soft = self._soft(student, teacher, counted / tokens)
        del teacher  # its logits are needed no longer
        if self.weight >= 1:
            return soft
        hard = self.task.token_nll(student, wanted, counted).sum() / tokens
        return (1 - self.weight) * hard + self.weight * soft

    def _teach(self, inputs: Any) -> torch.Tensor:
        with torch.no_grad():
            return tasks.forward(self.teacher, inputs)

    def _soft(
        self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """``T² · Σ weights · KL(teacher ‖ student)`` over the outputs' last axis."""
        return SoftTargets.apply(student, teacher, weights, self.temperature)


class SoftTargets(torch.autograd.Function):
    """``T² · Σᵢ wᵢ · KL(pᵢ ‖ qᵢ)``, with ``p = softmax(teacher / T)`` and ``q = softmax(student
    / T)`` along the last axis, ``w`` one weight per row; its gradient with respect to the
    student's logits is ``T · wᵢ · (qᵢ − pᵢ)``.

    Value and gradient are computed together in float32, a block of rows at a time (at most
    :data:`BLOCK` logits), and the gradient is the one tensor kept for the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, student, teacher, weights, temperature):  # type: ignore[override]
        t = float(temperature)
        blocks = _blocks(student.shape)
        grad = None  # one block (most batches): its own tensor, else written into one
        if len(blocks) > 1:
            grad = torch.empty(student.shape, dtype=torch.float32, device=student.device)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for rows in blocks:
            log_p = functional.log_softmax(teacher[rows].float() / t, dim=-1)
            p = log_p.exp()
            log_q = functional.log_softmax(student[rows].float() / t, dim=-1)
            w = weights[rows].float()
            total += (torch.linalg.vecdot(p, log_p.sub_(log_q)) * w).sum()
            if grad is None:
                grad = log_q.exp_().sub_(p).mul_(w.unsqueeze(-1) * t)
            else:
                torch.sub(log_q.exp_(), p, out=grad[rows]).mul_(w.unsqueeze(-1) * t)
        ctx.save_for_backward(grad)
        ctx.dtype = student.dtype
        return total * (t * t)

    @staticmethod
    def backward(ctx: Any, out: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * out).to(ctx.dtype), None, None, None


BLOCK = 1 << 22  # logits of one block of rows (16 MB in float32)


def _blocks(shape: torch.Size) -> list[tuple[Any, ...]]:
    """Index tuples that cover an ``[..., V]`` tensor's rows in blocks of at most :data:`BLOCK`
    logits (at least one row): entries of the first axis where they fit, else spans of the
    second axis within one entry."""
    if len(shape) < 2:
        return [()]
    whole = math.prod(shape[1:])  # the logits of one entry of the first axis
    if whole <= BLOCK or len(shape) == 2:
        per = max(BLOCK // whole, 1)
        return [(slice(i, i + per),) for i in range(0, shape[0], per)]
    span = max(BLOCK // math.prod(shape[2:]), 1)
    return [(i, slice(j, j + span)) for i in range(shape[0]) for j in range(0, shape[1], span)]


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
