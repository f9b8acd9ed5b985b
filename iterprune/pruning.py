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

from iterprune.errors import PruneError

Mask = dict[str, torch.Tensor]
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_SAMPLE = 262_144  # sample size used to bracket the k-th value in large tensors


def prunable_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of Conv and Linear modules, by parameter name; never biases or norm layers."""
    patterns = tuple(exclude)
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or module.weight is None:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        out[f"{name}.weight" if name else "weight"] = module.weight
    return out


def dense_mask(params: dict[str, nn.Parameter]) -> Mask:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}


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


def target_alive(total: int, target_sparsity: float) -> int:
    """Weights left at the target sparsity (the target is met once ``alive <= target_alive``)."""
    return total - math.floor(target_sparsity * total + 1e-9)


def amount_to_prune(alive: int, total: int, step: float, target_sparsity: float) -> int:
    """How many of the ``alive`` weights to remove: ``step`` of them, never past the target."""
    want = round(alive * step)
    return max(0, min(want, alive - target_alive(total, target_sparsity)))


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


def _select(scores: torch.Tensor, alive: torch.Tensor, n_prune: int) -> torch.Tensor:
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


def _flat_scores(params: dict[str, nn.Parameter], method: str, generator: torch.Generator | None):
    total = sum(p.numel() for p in params.values())
    first = next(iter(params.values()))
    flat = torch.empty(total, dtype=torch.float32, device=first.device)
    offset = 0
    with torch.no_grad():
        for p in params.values():
            n = p.numel()
            if method == "random":
                flat[offset : offset + n] = torch.rand(n, generator=generator).to(flat.device)
            else:
                torch.abs(p.detach().reshape(-1), out=flat[offset : offset + n])
            offset += n
    return flat


def prune(
    params: dict[str, nn.Parameter],
    mask: Mask,
    n_prune: int,
    method: str = "global_magnitude",
    generator: torch.Generator | None = None,
) -> Mask:
    """The next mask after removing ``n_prune`` more weights; the mask only ever shrinks.

    ``global_magnitude`` removes the smallest |w| over all layers under one exact threshold (what
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` does); ``layer_magnitude``
    removes the same fraction of the remaining weights in every layer; ``random`` is the control.
    """
    names = list(params)
    flat_alive = torch.cat([mask[n].reshape(-1).to(params[n].device) for n in names])
    if method == "layer_magnitude":
        alive_total = int(torch.count_nonzero(flat_alive))
        fraction = n_prune / alive_total if alive_total else 0.0
        out = {}
        for name in names:
            p, m = params[name], mask[name].to(params[name].device)
            k = round(int(torch.count_nonzero(m)) * fraction)
            keep = _select(p.detach().abs().reshape(-1).float(), m.reshape(-1), k)
            out[name] = keep.view_as(m).cpu()
        return out
    if method not in ("global_magnitude", "random"):
        raise ValueError(f"unknown pruning method {method!r}")
    scores = _flat_scores(params, method, generator)
    keep = _select(scores, flat_alive, n_prune)
    out, offset = {}, 0
    for name in names:
        n = params[name].numel()
        out[name] = keep[offset : offset + n].view_as(params[name]).cpu()
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
