"""How sure a drop is: the paired comparison of the dense and the pruned model on the same
validation samples, with a confidence interval for the difference of the two accuracies.

Both models answer the same samples, so the comparison is paired: what matters is how many samples
the pruned model *lost* (the dense model got them right, the pruned one wrong) and *gained* (the
reverse). The drop is ``100 * (lost - gained) / n`` accuracy points, and its interval is Newcombe's
hybrid score interval for the difference of paired proportions ("method 10" of R. G. Newcombe,
Improved confidence intervals for the difference between binomial proportions based on paired
data, Statistics in Medicine 17:2635-2650, 1998; the "square-and-add" interval of Fagerland,
Lydersen & Laake, Statistical Analysis of Contingency Tables, 2017, section 8.5), which keeps its
coverage near the nominal level for small samples and accuracies near 100%, where the simple Wald
interval does not. Pure Python: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Paired:
    """The 2x2 table of a paired comparison on ``n`` samples."""

    both: int  # right before and after
    lost: int  # right before, wrong after
    gained: int  # wrong before, right after
    neither: int  # wrong before and after

    @property
    def n(self) -> int:
        return self.both + self.lost + self.gained + self.neither

    @property
    def drop(self) -> float:
        """Accuracy points lost (negative: gained)."""
        return 100.0 * (self.lost - self.gained) / self.n if self.n else 0.0

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """(low, high) of the drop in accuracy points, at ``confidence`` (two-sided)."""
        low, high = newcombe(self.both, self.lost, self.gained, self.neither, confidence)
        return 100.0 * low, 100.0 * high


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a single proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(
    n11: int, n12: int, n21: int, n22: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for p1 - p2 (fractions), where p1 = (n11 + n12) / n is the proportion of
    successes before and p2 = (n11 + n21) / n after, from the paired 2x2 table."""
    n = n11 + n12 + n21 + n22
    if n == 0:
        return -1.0, 1.0
    z = z_value(confidence)
    row1, row2, col1, col2 = n11 + n12, n21 + n22, n11 + n21, n12 + n22
    p1, p2 = row1 / n, col1 / n
    l1, u1 = wilson(row1, n, z)
    l2, u2 = wilson(col1, n, z)
    phi = _correlation(n11, n12, n21, n22, (row1, row2, col1, col2))
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    high = d + math.sqrt(
        max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1))
    )
    return max(-1.0, low), min(1.0, high)


def _correlation(n11: int, n12: int, n21: int, n22: int, margins: tuple[int, ...]) -> float:
    """Newcombe's continuity-corrected estimate of the correlation between p1 and p2."""
    if 0 in margins:
        return 0.0
    n = n11 + n12 + n21 + n22
    a = n11 * n22 - n12 * n21
    scale = math.sqrt(math.prod(margins))
    if a > n / 2:
        return (a - n / 2) / scale
    if a >= 0:
        return 0.0
    return a / scale


@dataclass(frozen=True)
class Resolution:
    """Whether a drop of exactly the budget can be told from no drop on this validation set."""

    n: int
    budget: float  # max_drop, in points
    low: float  # the interval of such a drop in the most favourable case (nothing gained)
    high: float
    samples_needed: int  # validation samples that would resolve it (same accuracy)
    budget_needed: float  # the smallest budget this validation set resolves

    @property
    def resolved(self) -> bool:
        return self.low > 0

    def message(self, confidence: float) -> str:
        return (
            f"with {self.n} validation samples, a drop of exactly {self.budget:g} "
            f"point{'' if self.budget == 1 else 's'} "
            f"(validate.max_drop) cannot be told from no drop at {confidence:.0%} confidence: "
            f"even if every difference went one way, its interval would be "
            f"[{self.low:+.2f}, {self.high:+.2f}] points. Use more validation data (about "
            f"{self.samples_needed} samples resolve it) or a larger budget ({self.budget_needed:g} "
            "points resolves with this data)"
        )


def resolution(n: int, accuracy: float, budget: float, confidence: float) -> Resolution:
    """How an observed drop of ``budget`` points would look with ``n`` samples at ``accuracy``
    (the dense model's, in points), in the most favourable case: samples only lost."""

    def low_high(samples: int, points: float) -> tuple[float, float]:
        right = round(samples * accuracy / 100)
        lost = min(right, max(0, math.ceil(samples * points / 100 - 1e-9)))
        table = Paired(both=right - lost, lost=lost, gained=0, neither=samples - right)
        return table.interval(confidence)

    low, high = low_high(n, budget)
    needed = n
    while low_high(needed, budget)[0] <= 0 and needed < 10_000_000:
        needed *= 2
    if needed > n:  # the smallest that resolves, between needed / 2 and needed
        lo, hi = needed // 2, needed
        while hi - lo > max(1, lo // 100):
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if low_high(mid, budget)[0] > 0 else (mid, hi)
        needed = hi
    step = 100 / n if n else 1.0
    points = max(step, budget)
    while low_high(n, points)[0] <= 0 and points < 100:
        points += step
    return Resolution(n, budget, low, high, needed, round(min(points, 100.0), 2))
