"""N:M sparsity: in every group of M consecutive weights along the input dimension of an output
row, at most N survive (2:4 is what NVIDIA's sparse tensor cores run, through PyTorch's
``to_sparse_semi_structured``). Pure torch, no I/O.

A row is a weight as ``[output rows, fan-in]``: a Linear's row, a Conv's flattened
``in_channels × kernel`` row, GPT-2's transposed ``Conv1D`` read column-wise. A layer whose fan-in
is not a multiple of M cannot hold the pattern; it is left out (and stays dense).

In rounds, each round removes one more weight from every group that still has more than N
(4:4 → 3:4 → 2:4): the lowest-scoring survivor of the group, ties to the earlier position (the
last kept, as everywhere in iterprune). The pattern therefore holds after every accepted round
once N is reached, and a round never depends on a step size.
"""

from __future__ import annotations

import torch

Mask = dict[str, torch.Tensor]


def _groups(tensor: torch.Tensor, m: int, flipped: bool) -> torch.Tensor:
    """``[rows, groups, m]`` view (a copy for a transposed weight)."""
    rows = tensor.t() if flipped else tensor.reshape(tensor.shape[0], -1)
    return rows.reshape(rows.shape[0], -1, m)


def fits(shape: torch.Size, m: int, flipped: bool) -> bool:
    """Whether a weight's fan-in is a multiple of M."""
    fan_in = shape[0] if flipped else int(torch.Size(shape[1:]).numel())
    return fan_in % m == 0


def room(mask: Mask, n: int, m: int, eligible: set[str], flipped: frozenset[str]) -> int:
    """Weights the next round removes: one from every group with more than N survivors."""
    return sum(int(((_groups(mask[k], m, k in flipped).sum(dim=-1)) > n).sum()) for k in eligible)


def holds(mask: torch.Tensor, n: int, m: int, flipped: bool) -> bool:
    """Whether every group of one layer has at most N survivors."""
    return bool((_groups(mask, m, flipped).sum(dim=-1) <= n).all())


@torch.no_grad()
def tighten(
    scores: Mask, mask: Mask, n: int, m: int, eligible: set[str], flipped: frozenset[str]
) -> Mask:
    """The next mask: in every group of an eligible layer with more than N survivors, its
    lowest-scoring survivor goes; other layers are unchanged."""
    out = {k: v.clone() for k, v in mask.items()}
    for k in eligible:
        t = k in flipped
        alive = _groups(mask[k].to(scores[k].device), m, t)
        ranked = _groups(scores[k].float(), m, t).masked_fill(~alive, float("inf"))
        # the lowest score, ties to the earlier position: argmin returns the first minimum
        lowest = ranked.argmin(dim=-1, keepdim=True)
        drop = torch.zeros_like(alive).scatter_(-1, lowest, True) & (
            alive.sum(-1, keepdim=True) > n
        )
        keep = alive & ~drop
        rows = keep.reshape(keep.shape[0], -1)
        out[k] = (rows.t() if t else rows.reshape(mask[k].shape)).contiguous().cpu()
    return out
