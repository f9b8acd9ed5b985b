"""finetune.distill: the loss is (1 − w)·task + w·T²·KL(teacher ‖ student), per token for a
language model; the teacher is the dense model or the last accepted round, frozen; a run with a
teacher resumes to the same end; weight 1 trains on unlabelled batches."""

from __future__ import annotations

import pytest
import torch
from helpers import SPARSE_RUN, assert_resume_matches_uninterrupted, merged, parse, write
from torch import nn
from torch.nn import functional

from iterprune.cli import table as cli
from iterprune.engine import distillation, tasks, tinygpt
from iterprune.errors import ScheduleError


def kl(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    p = functional.softmax(teacher / t, dim=-1)
    return (p * (p.log() - functional.log_softmax(student / t, dim=-1))).sum(dim=-1)


def test_a_classifiers_loss_mixes_cross_entropy_and_the_teachers_kl() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 3), distillation.freeze(nn.Linear(5, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    found = distillation.Distilled(tasks.CLASSIFICATION, teacher, 0.25, 2.0).loss(student, (x, y))
    s, t = student(x), teacher(x)
    plain = 0.75 * functional.cross_entropy(s, y) + 0.25 * 4.0 * kl(t, s, 2.0).mean()
    assert torch.allclose(found, plain, atol=1e-6)
    only = distillation.Distilled(tasks.CLASSIFICATION, teacher, 1.0, 2.0).loss(student, x)
    assert torch.allclose(only, 4.0 * kl(t, s, 2.0).mean(), atol=1e-6)  # no labels needed


def test_a_language_models_kl_is_per_real_token() -> None:
    torch.manual_seed(0)
    student = tinygpt.tiny_gpt(width=16, depth=1, heads=2, context=8)
    teacher = distillation.freeze(tinygpt.tiny_gpt(width=16, depth=1, heads=2, context=8))
    ids = torch.randint(0, 256, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    found = distillation.Distilled(tasks.LANGUAGE_MODEL, teacher, 0.5, 1.0).loss(student, batch)
    s, t = student(ids)[:, :-1], teacher(ids)[:, :-1]
    real = mask[:, 1:].float()
    soft = (kl(t, s, 1.0) * real).sum() / real.sum()
    hard = tasks.LANGUAGE_MODEL.loss(student, batch)
    assert torch.allclose(found, 0.5 * hard + 0.5 * soft, atol=1e-5)


@pytest.mark.parametrize("block", [1 << 22, 40, 7])  # one block; rows of a sequence; spans
@pytest.mark.parametrize("shape", [(6, 11), (3, 5, 11)])
def test_the_soft_terms_value_and_gradient_are_autograds(monkeypatch, block, shape) -> None:
    """SoftTargets computes value and gradient itself, a block of rows at a time: both must be
    what autograd gets from the plain formula, whatever the blocks."""
    monkeypatch.setattr(distillation, "BLOCK", block)
    torch.manual_seed(1)
    student = (3 * torch.randn(shape)).requires_grad_()
    teacher = 3 * torch.randn(shape)
    weights = torch.rand(shape[:-1])
    weights.view(-1)[2] = 0.0  # a padding token: no value, no gradient
    found = distillation.SoftTargets.apply(student, teacher, weights, 2.0)
    (grad,) = torch.autograd.grad(found, student)
    plain = student.detach().clone().requires_grad_()
    want = 4.0 * (kl(teacher, plain, 2.0) * weights).sum()
    want.backward()
    assert torch.allclose(found, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad, plain.grad, rtol=1e-4, atol=1e-7)
    assert grad.view(-1, shape[-1])[2].abs().max() == 0


def test_the_soft_terms_gradient_comes_back_in_the_students_dtype() -> None:
    student = torch.randn(4, 9, dtype=torch.bfloat16, requires_grad=True)
    loss = distillation.SoftTargets.apply(student, torch.randn(4, 9), torch.full((4,), 0.25), 2.0)
    loss.backward()
    assert student.grad is not None and student.grad.dtype == torch.bfloat16


DISTILLED = merged(SPARSE_RUN, name="kd", finetune={"distill": {"weight": 0.5}})


@pytest.mark.parametrize("teacher", ["dense", "last"])
def test_a_run_with_a_teacher_resumes_to_the_same_end(tmp_path, teacher: str) -> None:
    doc = merged(DISTILLED, finetune={"distill": {"teacher": teacher}})
    whole, _ = assert_resume_matches_uninterrupted(tmp_path, doc)
    bench = whole.bench
    assert bench.teacher is not None and not bench.teacher.training
    assert not any(p.requires_grad for p in bench.teacher.parameters())
    dense = whole.snapshots.newest_valid(0)[1]["model"]
    last = whole.accepted.model
    held = bench.teacher.state_dict()
    want = dense if teacher == "dense" else last
    assert all(torch.equal(held[k], want[k]) for k in want)


UNLABELLED = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def loaders(batch_size):
    # training inputs without labels; validation with them
    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 10, (96,))
    train = DataLoader(TensorDataset(x[:64]), batch_size=batch_size, shuffle=True)
    return train, DataLoader(TensorDataset(x[64:], y[64:]), batch_size=batch_size)
"""


def test_weight_one_trains_on_unlabelled_batches(tmp_path, capsys) -> None:
    from iterprune.engine import examples

    (tmp_path / "unlabelled.py").write_text(UNLABELLED)
    torch.manual_seed(0)
    torch.save(examples.digits_mlp(hidden=256).state_dict(), tmp_path / "dense.pt")
    doc = merged(
        SPARSE_RUN,
        name="kd1",
        model={"weights": "dense.pt"},
        data={"factory": "unlabelled:loaders", "builtin": None, "kwargs": None},
        pretrain=None,
        finetune={"distill": {"weight": 1.0}},
    )
    state = str(tmp_path / "state")
    assert cli.main(["start", str(write(tmp_path / "kd1.yaml", doc)), "--state-dir", state]) == 0
    assert "target sparsity 90% reached" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finetune": {"distill": {"weight": 0}}}, "finetune.distill.weight"),
        ({"finetune": {"distill": {"teacher": "best"}}}, "finetune.distill.teacher"),
        ({"lottery": {"rewind": "init"}}, "not with lottery mode"),
    ],
)
def test_bad_distillation_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse(merged(DISTILLED, **change))
