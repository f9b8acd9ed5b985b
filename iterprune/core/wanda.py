"""Wanda: a weight's score is ``|W_ij| · ‖X_j‖₂``, its magnitude times the norm of the input
feature it multiplies over calibration data (Sun, Liu, Bair and Kolter, "A Simple and Effective
Pruning Approach for Large Language Models", ICLR 2024). Pure torch: the caller runs the
calibration batches and hands each layer's inputs to :func:`add_squares`.

What "input feature" means per layer kind:

- ``Linear`` (weight ``[out, in]``): feature ``j`` is input column ``j``, its norm over every
  sample and position (a transformer's ``[batch, tokens, in]`` counts each token as a row).
- transformers' ``Conv1D`` (GPT-2; weight ``[in, out]``, a transposed Linear): the same, on the
  weight's first axis.
- ``Conv1d/2d/3d`` (weight ``[out, in / groups, *kernel]``): the feature of weight
  ``(o, c, u, v)`` is element ``(c, u, v)`` of the unfolded input patch, i.e. input channel ``c``
  shifted by the kernel offset ``(u, v)``: its norm is taken over every sample and every output
  position, after the layer's own padding (what ``F.unfold`` gives; the tests check against it).
  With ``groups`` a weight's channel ``c`` is channel ``g · in/groups + c`` of its output's group.

Groups: ``row`` removes the same share from every output row (the paper's comparison group),
``layer`` the same share from every layer, ``global`` compares scores over all layers (with
``prune.max_layer_sparsity`` as for global magnitude). Shares are split exactly (largest
remainders, ties to the earlier unit), so a round removes exactly the weights it asks for; within
a unit the lowest scores go, ties by position with the last kept.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional

from iterprune.core import pruning

Mask = dict[str, torch.Tensor]
GROUPS = ("row", "layer", "global")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def transposed(module: nn.Module) -> bool:
    """A weight stored ``[in, out]`` (transformers' Conv1D)."""
    return type(module).__name__ == "Conv1D"


@torch.no_grad()
def add_squares(module: nn.Module, x: torch.Tensor, into: torch.Tensor | None) -> torch.Tensor:
    """``into`` plus the squared inputs of one batch, summed per input feature (float64):
    ``[in]`` for a Linear or Conv1D, ``[in_channels, *kernel]`` for a Conv."""
    if isinstance(module, _CONV):
        found = _conv_squares(module, x)
    else:
        found = x.detach().double().reshape(-1, x.shape[-1]).square().sum(dim=0)
    return found if into is None else into + found


def _conv_squares(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per input channel and kernel offset: the sum of squares of the input that offset reads,
    over the batch and every output position."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = functional.pad(x.detach().double(), module._reversed_padding_repeated_twice, mode)
    squares = padded.square()
    spatial = squares.shape[2:]
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    sizes = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True)
    ]
    out = torch.empty(squares.shape[1], *kernel, dtype=torch.float64, device=x.device)
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = [
            slice(o * d, o * d + s * (m - 1) + 1, s)
            for o, d, s, m in zip(offset, dilation, stride, sizes, strict=True)
        ]
        part = squares[(slice(None), slice(None), *window)]
        out[(slice(None), *offset)] = part.sum(dim=[0, *range(2, part.dim())])
    return out


def scale(module: nn.Module, squares: torch.Tensor) -> torch.Tensor:
    """The input norms ``‖X_j‖₂`` shaped to broadcast against the module's weight."""
    norms = squares.sqrt().float()
    weight = module.weight
    if transposed(module):
        return norms.view(-1, 1)
    if isinstance(module, _CONV):
        groups = module.groups
        per_group = norms.view(groups, -1, *norms.shape[1:])
        return per_group.repeat_interleave(weight.shape[0] // groups, dim=0)
    return norms.view(1, -1)


def scores(params: dict[str, nn.Parameter], scales: dict[str, torch.Tensor]) -> Mask:
    """Wanda's score of every weight, shaped like it."""
    return {n: p.detach().abs().float() * scales[n].to(p.device) for n, p in params.items()}


def rows(tensor: torch.Tensor, is_transposed: bool) -> torch.Tensor:
    """A weight-shaped tensor as ``[output rows, fan-in]``."""
    return tensor.t() if is_transposed else tensor.reshape(tensor.shape[0], -1)


def quotas(alive: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` split over units in proportion to their surviving weights, exactly: the floors of
    the shares, then one more to the largest remainders (ties: the earlier unit)."""
    total = int(alive.sum())
    if total == 0 or n <= 0:
        return torch.zeros_like(alive)
    share = alive.double() * n / total
    base = share.floor().long()
    left = n - int(base.sum())
    if left:
        order = torch.sort(-(share - base), stable=True).indices[:left]
        base[order] += 1
    return torch.minimum(base, alive)


def prune(
    params: dict[str, nn.Parameter],
    mask: Mask,
    n_prune: int,
    scales: dict[str, torch.Tensor],
    group: str = "row",
    is_transposed: frozenset[str] = frozenset(),
    max_layer_sparsity: float = 1.0,
) -> Mask:
    """The next mask after removing the ``n_prune`` lowest Wanda scores within each unit of
    ``group``; the mask only ever shrinks."""
    if n_prune <= 0:
        return {n: m.clone() for n, m in mask.items()}
    found = scores(params, scales)
    if group == "global":  # scores are >= 0: global magnitude over them is global Wanda
        as_params = {n: nn.Parameter(s, requires_grad=False) for n, s in found.items()}
        return pruning.prune(as_params, mask, n_prune, "global_magnitude", None, max_layer_sparsity)
    if group not in GROUPS:
        raise ValueError(f"unknown Wanda group {group!r}")
    names = list(params)

    def units(n: str, tensor: torch.Tensor) -> torch.Tensor:  # one row per unit of the group
        return rows(tensor, n in is_transposed) if group == "row" else tensor.reshape(1, -1)

    alive = {n: torch.count_nonzero(units(n, mask[n]), dim=1) for n in names}
    flat = quotas(torch.cat([alive[n] for n in names]), n_prune)
    split = dict(zip(names, flat.split([len(alive[n]) for n in names]), strict=True))
    out = {}
    for n in names:
        keep = _drop_in_rows(units(n, found[n]), units(n, mask[n]), split[n], alive[n])
        if group == "row" and n in is_transposed:
            keep = keep.t()
        out[n] = keep.reshape(mask[n].shape).contiguous().cpu()
    return out


def _drop_in_rows(
    score: torch.Tensor, alive: torch.Tensor, k: torch.Tensor, survivors: torch.Tensor
) -> torch.Tensor:
    """Keep-mask after removing, in each row, its ``k`` lowest surviving scores (ties: the earlier
    positions go first); ``survivors`` counts each row's alive weights.

    Each row's cut is one order statistic — the score at ascending position dead + k − 1, the dead
    counted first at −inf — found with a partial sort from whichever end of the row is nearer;
    everything up to it goes. Only where the next position holds the same score (a tie across
    the cut, rare with real weights) is the row counted and just the first of the tied taken."""
    alive, k = alive.to(score.device), k.to(score.device)
    acting = k > 0
    if not bool(acting.any()):
        return alive.clone()
    ranked = score.masked_fill(~alive, -math.inf)
    cut = score.shape[1] - survivors.to(score.device) + k  # the row's lowest that are gone after
    threshold, following = _order_statistics(ranked, cut - 1, acting)
    threshold = threshold.masked_fill(~acting, -math.inf).view(-1, 1)  # nothing more goes
    gone = ranked <= threshold
    across = (following == threshold.view(-1)) & acting  # ties reach past the cut
    if bool(across.any()):
        rows = across.nonzero().flatten()
        part, line = ranked[rows], threshold[rows]
        owed = cut[rows].view(-1, 1) - torch.count_nonzero(part < line, dim=1).view(-1, 1)
        tied = part == line
        gone[rows] = (part < line) | (tied & (tied.cumsum(dim=1) <= owed))
    return alive & ~gone


def _order_statistics(
    ranked: torch.Tensor, position: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the values at ascending ``position`` and ``position + 1`` (+inf past the end;
    meaningful only where ``rows``): ``topk`` of the lowest ``max + 2`` or the highest
    ``n − min`` values of each row, whichever is fewer, sorted."""
    n = ranked.shape[1]
    lo, hi = int(position[rows].min()), int(position[rows].max())
    after = position + 1
    if hi + 2 <= n - lo:
        values = torch.topk(ranked, min(n, hi + 2), dim=1, largest=False, sorted=True).values
        at, next_at = position.clamp(0, values.shape[1] - 1), after.clamp(0, values.shape[1] - 1)
    else:
        values = torch.topk(ranked, n - lo, dim=1, largest=True, sorted=True).values
        at = (n - 1 - position).clamp(0, n - lo - 1)
        next_at = (n - 1 - after).clamp(0, n - lo - 1)
    found = values.gather(1, at.view(-1, 1)).view(-1)
    following = values.gather(1, next_at.view(-1, 1)).view(-1)
    return found, following.masked_fill(after >= n, math.inf)
