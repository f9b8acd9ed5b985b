"""Global pruning by per-layer scores, with a floor under every layer: LAMP, and global magnitude
when one threshold would empty a layer past ``prune.max_layer_sparsity``. Pure torch, no I/O.

Both scores keep a layer's order by magnitude: within a layer a weight with a larger |w| never
scores lower. Global magnitude scores |w|; LAMP (Lee et al., "Layer-adaptive sparsity for the
magnitude-based pruning", ICLR 2021) scores w² divided by the sum of the squares of w and of
every surviving weight after it in its layer's order by (|w|, position), so a layer's largest
weight scores 1. Pruning removes the ``n`` lowest scores over all layers, ties by (layer,
position) with the last kept, except that no layer goes below its *floor* of surviving weights.

Nothing is sorted in full. Each layer's surviving magnitudes are put into ~256 buckets at the
quantiles of a sample; a bucket's count and sum of squares bound the scores inside it. The
bounds split the buckets into surely pruned, surely kept and the few that hold the global cut;
only those are gathered, sorted and scored exactly. One layer's scratch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

Mask = dict[str, torch.Tensor]
BUCKETS = 256
_CHUNK = 1 << 20  # weights summarised at a time
_SLACK = 1e-9  # relative widening of LAMP's bounds against rounding in the sums


def capacity(mask: Mask, floor: Mapping[str, int]) -> int:
    """How many more weights the floors let a global method remove."""
    return sum(max(0, int(torch.count_nonzero(m)) - floor[n]) for n, m in mask.items())


@dataclass
class _Layer:
    """One layer's surviving weights, summarised by bucket (bucket b: edges[b-1] < |w| <=
    edges[b]; the first has no lower edge, the last no upper one)."""

    edges: torch.Tensor
    counts: list[int]
    lo: list[float]  # lower bound of the scores in each bucket
    hi: list[float]  # upper bound
    before: list[int]  # surviving weights in the buckets below
    above: list[float]  # sum of their squares in the buckets above (LAMP)
    avail: int  # weights this layer may still give up

    def usable(self, b: int) -> int:
        return max(0, min(self.counts[b], self.avail - self.before[b]))

    def lower_edge(self, b: int) -> float:
        return -math.inf if b == 0 else float(self.edges[b - 1])

    def upper_edge(self, b: int) -> float:
        return math.inf if b == len(self.counts) - 1 else float(self.edges[b])


def _magnitudes(p: torch.Tensor) -> torch.Tensor:
    return p.detach().abs().reshape(-1).float()


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def _summarise(p: torch.Tensor, alive: torch.Tensor, lamp: bool, floor: int) -> _Layer:
    flat, keep = p.detach().reshape(-1), alive.reshape(-1).to(p.device)
    n = int(torch.count_nonzero(keep))
    stride = max(1, flat.numel() // (8 * BUCKETS))
    sample = flat[::stride][keep[::stride]].abs().float().cpu().sort().values
    picks = torch.linspace(0, max(0, sample.numel() - 1), BUCKETS + 1).long()[1:-1]
    edges = sample[picks].unique() if sample.numel() else sample.new_zeros(0)
    counts = torch.zeros(edges.numel() + 1, dtype=torch.int64)
    sums = torch.zeros(edges.numel() + 1, dtype=torch.float64)
    top = 0.0
    for part, live in zip(flat.split(_CHUNK), keep.split(_CHUNK), strict=True):  # bounded scratch
        mags = part[live].abs().float().cpu()
        if not mags.numel():
            continue
        idx = torch.bucketize(mags, edges, out_int32=True)
        counts += torch.bincount(idx, minlength=counts.numel())
        if lamp:
            sums.index_add_(0, idx, mags.double().square())
        top = max(top, float(mags.max()))
    counts_l, sums_l = counts.tolist(), sums.tolist()
    before, above, run_c, run_s = [], [0.0] * len(counts_l), 0, 0.0
    for c in counts_l:
        before.append(run_c)
        run_c += c
    for b in range(len(sums_l) - 1, -1, -1):
        above[b] = run_s
        run_s += sums_l[b]
    layer = _Layer(edges, counts_l, [], [], before, above, max(0, n - floor))
    for b in range(len(counts_l)):
        v_lo = max(0.0, layer.lower_edge(b))
        v_hi = min(top, layer.upper_edge(b))
        if lamp:
            layer.lo.append(_ratio(v_lo**2, sums_l[b] + above[b]) * (1 - _SLACK))
            layer.hi.append(_ratio(v_hi**2, v_hi**2 + above[b]) * (1 + _SLACK))
        else:
            layer.lo.append(v_lo)
            layer.hi.append(v_hi)
    return layer


def _bracket(layers: list[_Layer], k: int) -> tuple[float, float]:
    """(low, high) around the k-th lowest score: fewer than k scores are under low, at least k
    are at or under high."""
    items = [
        (layer.lo[b], layer.hi[b], layer.usable(b))
        for layer in layers
        for b in range(len(layer.counts))
        if layer.usable(b)
    ]
    total, high = 0, math.inf
    for _, hi, count in sorted(items, key=lambda t: t[1]):
        total += count
        if total >= k:
            high = hi
            break
    total, low = 0, -math.inf
    for lo, _, count in sorted(items, key=lambda t: t[0]):
        total += count
        if total >= k:
            low = lo
            break
    return low, high


def _exact(p: torch.Tensor, alive: torch.Tensor, layer: _Layer, first: int, last: int, lamp: bool):
    """Positions and exact scores of the surviving weights in buckets first..last, in the
    layer's order, without the ones its floor protects."""
    mags = _magnitudes(p).cpu()
    lo, hi = layer.lower_edge(first), layer.upper_edge(last)
    inside = alive.reshape(-1).cpu() & (mags > lo) & (mags <= hi)
    where = inside.nonzero().flatten()
    values, order = mags[where].sort(stable=True)
    keep = max(0, layer.avail - layer.before[first])
    if not lamp:
        return where[order][:keep], values[:keep].double()
    squares = values.double().square()  # exact: a float32's square fits a float64
    me_and_after = squares.flip(0).cumsum(0).flip(0) + layer.above[last]
    scores = torch.where(me_and_after > 0, squares / me_and_after, torch.zeros_like(squares))
    return where[order][:keep], scores[:keep]


def select(
    params: Mapping[str, torch.Tensor],
    mask: Mask,
    n_prune: int,
    lamp: bool,
    floor: Mapping[str, int],
) -> Mask:
    """The next mask: ``n_prune`` more weights removed by lowest score (LAMP when ``lamp``, else
    magnitude) over all layers, none below its floor; fewer when the floors leave fewer."""
    names = list(params)
    layers = [_summarise(params[n], mask[n], lamp, floor[n]) for n in names]
    k = min(n_prune, sum(layer.avail for layer in layers))
    if k <= 0:
        return {n: mask[n].clone() for n in names}
    low, high = _bracket(layers, k)
    plans, below, pieces = [], 0, []
    for n, layer in zip(names, layers, strict=True):
        used = [b for b in range(len(layer.counts)) if layer.usable(b)]
        partial = used[-1] if used and layer.usable(used[-1]) < layer.counts[used[-1]] else None
        sure = [b for b in used if layer.hi[b] < low and b != partial]
        rest = [b for b in used if b not in sure and layer.lo[b] <= high]
        below += sum(layer.counts[b] for b in sure)
        cut = layer.upper_edge(sure[-1]) if sure else -math.inf
        where, scores = (
            _exact(params[n], mask[n], layer, rest[0], rest[-1], lamp) if rest else (None, None)
        )
        plans.append((cut, where))
        if scores is not None:
            pieces.append(scores)
    scores = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
    need = k - below
    if not 0 <= need <= scores.numel():  # the bounds are wrong: a bug, never a silent miss
        raise RuntimeError(f"selection bracket holds {scores.numel()} scores, needs {need}")
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[scores.sort(stable=True).indices[:need]] = True
    out, offset = {}, 0
    for n, (cut, where) in zip(names, plans, strict=True):
        keep = mask[n].reshape(-1).cpu() & (_magnitudes(params[n]).cpu() > cut)
        if where is not None:
            keep[where[chosen[offset : offset + where.numel()]]] = False
            offset += where.numel()
        out[n] = keep.view(mask[n].shape)
    return out
