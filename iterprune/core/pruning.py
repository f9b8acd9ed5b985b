"""Masks and unstructured pruning: pure torch, no I/O.

A mask is a dict ``{parameter name: bool tensor}`` kept *beside* a plain ``nn.Module``: the module
holds zeros where the mask is False, and nothing is hooked into it, so state_dicts, pickling and
deepcopy behave as for any model. Pruning is a function of (model, mask, amount) that returns the
next mask; applying it is a separate step, so a decision can be computed once and sent elsewhere.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

from iterprune.core import decisions, selection
from iterprune.errors import PruneError
from iterprune.schedule.specs import GLOBAL_METHODS

Mask = dict[str, torch.Tensor]
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_SAMPLE = 262_144  # sample size used to bracket the k-th value in large tensors
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def prunable_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of Conv and Linear modules, by parameter name; never biases or norm layers."""
    patterns = tuple(exclude)
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if not _prunable(module):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        out[f"{name}.weight" if name else "weight"] = module.weight
    return out


def _prunable(module: nn.Module) -> bool:
    """A Conv or Linear layer with a weight, or transformers' ``Conv1D`` (GPT-2's projections:
    a Linear whose weight is stored transposed), recognised without importing transformers."""
    if isinstance(module, PRUNABLE_TYPES):
        return module.weight is not None
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter) and weight.ndim == 2
    )


def dense_mask(params: dict[str, nn.Parameter]) -> Mask:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Booleans as bits, eight to a byte, first flag in the highest bit (padded with zeros)."""
    flat = flags.to(torch.uint8).reshape(-1)
    padded = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)]).view(-1, 8)
    return (padded * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` booleans packed by :func:`pack_bits`."""
    return ((bits.unsqueeze(1) & _BITS) > 0).reshape(-1)[:n]


def sparsity(mask: Mask) -> float:
    total = sum(m.numel() for m in mask.values())
    return 1.0 - count_alive(mask) / total if total else 0.0


def count_alive(mask: Mask) -> int:
    return sum(int(torch.count_nonzero(m)) for m in mask.values())


@torch.no_grad()
def apply(params: dict[str, nn.Parameter], mask: Mask) -> None:
    """Zero every masked-out weight in place."""
    for name, p in params.items():
        p.mul_(mask[name].to(p.device))


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th smallest (1-based) of a flat tensor.

    ``torch.kthvalue`` over tens of millions of values takes most of a second on a CPU; a sorted
    sample brackets the answer, and the exact selection runs only on the few values inside.
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for {n} values")
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(values, k).values
    stride = n // _SAMPLE
    sample = values[::stride].sort().values
    m = sample.numel()
    q = k / n
    margin = 6.0 * math.sqrt(m * q * (1 - q)) + 16
    lo = sample[max(0, int(q * m - margin))]
    hi = sample[min(m - 1, int(q * m + margin))]
    below = int(torch.count_nonzero(values < lo))
    inside = values[(values >= lo) & (values <= hi)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(values, k).values  # the sample missed: rare, still exact


def drop_lowest(scores: torch.Tensor, alive: torch.Tensor, n_prune: int) -> torch.Tensor:
    """New flat keep-mask: the ``n_prune`` lowest-scoring alive entries removed, ties by position."""
    if n_prune <= 0:
        return alive.clone()
    scores.masked_fill_(~alive, -math.inf)  # callers hand over a scratch tensor
    already = alive.numel() - int(torch.count_nonzero(alive))
    threshold = kth_smallest(scores, already + n_prune)
    keep = scores > threshold
    surplus = keep.numel() - int(torch.count_nonzero(keep)) - (already + n_prune)
    if surplus > 0:  # several weights tie at the threshold: keep the last ones, deterministically
        ties = (scores == threshold).nonzero().flatten()
        keep[ties[-surplus:]] = True
    return keep


def _random_scores(params: dict[str, nn.Parameter], generator: torch.Generator | None):
    return torch.cat([torch.rand(p.numel(), generator=generator) for p in params.values()])


def _layer_scores(p: nn.Parameter, alive: torch.Tensor) -> torch.Tensor:
    """|w| of one layer, flat, with already-pruned weights at -inf (always pruned first)."""
    return (
        p.detach()
        .abs()
        .reshape(-1)
        .float()
        .masked_fill_(~alive.reshape(-1).to(p.device), -math.inf)
    )


@torch.no_grad()
def _global_magnitude(params: dict[str, nn.Parameter], mask: Mask, n_prune: int) -> Mask:
    """One exact global threshold, computed layer by layer.

    Never concatenates the weights: a strided sample brackets the threshold, one pass counts the
    weights under the bracket and gathers the few inside it, and a last pass builds the masks.
    Peak extra memory is one layer's scores plus the new masks.
    """
    names = list(params)
    total = sum(p.numel() for p in params.values())
    k = total - count_alive(mask) + n_prune  # weights pruned after this step
    stride = max(1, total // _SAMPLE)
    # a strided view would keep every layer's scores alive until the cat: clone each sample
    sample = torch.cat([_layer_scores(params[n], mask[n])[::stride].clone() for n in names])
    sample = sample.sort().values
    m, q = sample.numel(), k / total
    margin = 6.0 * math.sqrt(m * q * (1 - q)) + 16
    lo, hi = sample[max(0, int(q * m - margin))], sample[min(m - 1, int(q * m + margin))]
    below, inside = 0, []
    for n in names:
        scores = _layer_scores(params[n], mask[n])
        below += int(torch.count_nonzero(scores < lo))
        inside.append(scores[(scores >= lo) & (scores <= hi)])
    candidates = torch.cat(inside)
    if below < k <= below + candidates.numel():
        threshold = torch.kthvalue(candidates, k - below).values
    else:  # the sample missed (rare): exact selection over everything
        threshold = kth_smallest(torch.cat([_layer_scores(params[n], mask[n]) for n in names]), k)
    out: Mask = {}
    kept = 0
    for n in names:
        keep = _layer_scores(params[n], mask[n]) > threshold
        kept += int(torch.count_nonzero(keep))
        out[n] = keep
    surplus = total - kept - k
    for n in reversed(names):  # ties at the threshold: keep the last ones, deterministically
        if surplus <= 0:
            break
        ties = (_layer_scores(params[n], mask[n]) == threshold).nonzero().flatten()[-surplus:]
        out[n][ties] = True
        surplus -= ties.numel()
    return {n: out[n].view_as(params[n]).cpu() for n in names}


def prune(
    params: dict[str, nn.Parameter],
    mask: Mask,
    n_prune: int,
    method: str = "global_magnitude",
    generator: torch.Generator | None = None,
    max_layer_sparsity: float = 1.0,
) -> Mask:
    """The next mask after removing ``n_prune`` more weights; the mask only ever shrinks.

    ``global_magnitude`` removes the smallest |w| over all layers under one exact threshold (what
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` does); ``lamp`` the
    lowest LAMP scores over all layers; both leave every layer at most ``max_layer_sparsity``
    sparse, taking what a capped layer cannot give from the others (never more than
    :func:`iterprune.core.selection.capacity`). ``layer_magnitude`` removes the same fraction of the
    remaining weights in every layer; ``random`` is the control.
    """
    names = list(params)
    if n_prune <= 0:
        return {n: mask[n].clone() for n in names}
    if method in GLOBAL_METHODS:
        floor = decisions.floors({n: p.numel() for n, p in params.items()}, max_layer_sparsity)
        if method == "global_magnitude":
            fast = _global_magnitude(params, mask, n_prune)
            if all(int(torch.count_nonzero(fast[n])) >= floor[n] for n in names):
                return fast  # no layer reaches its cap: the plain threshold is the answer
        return selection.select(params, mask, n_prune, method == "lamp", floor)
    if method == "layer_magnitude":
        fraction = n_prune / count_alive(mask)
        out = {}
        for name in names:
            p, m = params[name], mask[name].to(params[name].device)
            k = round(int(torch.count_nonzero(m)) * fraction)
            keep = drop_lowest(p.detach().abs().reshape(-1).float(), m.reshape(-1), k)
            out[name] = keep.view_as(m).cpu()
        return out
    if method != "random":
        raise ValueError(f"unknown pruning method {method!r}")
    flat_alive = torch.cat([mask[n].reshape(-1) for n in names])
    keep = drop_lowest(_random_scores(params, generator), flat_alive, n_prune)
    out, offset = {}, 0
    for name in names:
        n = params[name].numel()
        out[name] = keep[offset : offset + n].view_as(params[name])
        offset += n
    return out


def check_sparsity(mask: Mask, expected_alive: int, method: str) -> None:
    """Stop with an error when a prune missed its target by more than rounding."""
    alive = count_alive(mask)
    tolerance = len(mask) if method == "layer_magnitude" else 0
    if abs(alive - expected_alive) > tolerance:
        total = sum(m.numel() for m in mask.values())
        raise PruneError(
            f"{method} left {alive} of {total} weights, expected {expected_alive} "
            f"(sparsity {1 - alive / total:.4f} vs {1 - expected_alive / total:.4f})"
        )


def layer_stats(model: nn.Module, exclude: Iterable[str] = ()) -> list[dict]:
    """Per prunable layer: parameters, non-zero count and sparsity, measured on the weights."""
    rows = []
    for name, p in prunable_parameters(model, exclude).items():
        nonzero = int(torch.count_nonzero(p.detach()))
        rows.append(
            {
                "layer": name.removesuffix(".weight"),
                "params": p.numel(),
                "nonzero": nonzero,
                "sparsity": 1 - nonzero / p.numel(),
            }
        )
    return rows
