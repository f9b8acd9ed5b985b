"""How sure a drop is when each sample's score is a number, not right or wrong: an interval for
the mean paired difference of two models' per-sample scores on the same samples (a language
model's per-sequence negative log-likelihood, a regressor's squared error), and for a ratio of
sums (perplexity's relative change comes from per-sequence NLL sums over token counts).

The method is the Student interval with Hall's skewness-removing transformation (P. Hall, On the
removal of skewness by transformation, JRSS B 54:221-228, 1992; in the form of X.-H. Zhou and
P. Dinh, Nonparametric confidence intervals for the one- and two-sample problems, Biostatistics
6:187-200, 2005): with a = g / (3 sqrt(n)), the statistic T(t) = ((1 + a t)^3 - 1) / (3a) +
g / (6 sqrt(n)) of the studentized mean t is normal to second order, and inverting it moves both
ends towards the long tail. Per-sequence score differences are skewed (a few sequences get much
worse), where the plain t interval covers too rarely; but on symmetric heavy-tailed data the
sample skewness g is mostly noise, so it is shrunk by its jackknife variance v first:
g * max(0, 1 - v / g^2) (a positive-part James-Stein factor). Student's quantile with n - 1
degrees of freedom replaces the normal one. tests/core/test_continuous.py measures the coverage
of this interval and of Newcombe's (core/evidence.py) over thousands of simulated data sets.

A ratio of sums, sum(d) / sum(w) with known weights w (tokens per sequence), is linearised: its
standard error is that of the residuals d - theta w (the delta method; W. G. Cochran, Sampling
Techniques, 3rd ed., Wiley 1977, section 6.4), whose skewness corrects it the same way.
:func:`bounds` works elementwise on NumPy arrays of moments, so a simulation runs thousands at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any


@dataclass(frozen=True)
class Moments:
    """What the interval needs from n paired differences (or ratio residuals)."""

    n: int
    estimate: float  # mean difference, or sum(d) / sum(w)
    sd: float  # standard deviation of the differences (or residuals), n - 1 denominator
    skew: float  # their sample skewness (third central moment / sd^3)
    skew_var: float  # the jackknife variance of that skewness
    scale: float = 1.0  # mean weight: the residuals' mean is divided by it

    @classmethod
    def of(cls, diffs: Sequence[float], weights: Sequence[float] | None = None) -> Moments:
        """The moments of paired differences ``diffs`` (after minus before, per sample); with
        ``weights``, of the ratio sum(diffs) / sum(weights)."""
        n = len(diffs)
        w = [1.0] * n if weights is None else [float(x) for x in weights]
        if len(w) != n:
            raise ValueError(f"{n} differences but {len(w)} weights")
        total = math.fsum(w)
        estimate = math.fsum(diffs) / total if total else 0.0
        residuals = [d - estimate * x for d, x in zip(diffs, w, strict=True)]
        mean_w = total / n if n else 1.0
        if n < 3:
            return cls(n, estimate, 0.0, 0.0, 0.0, mean_w)
        m = math.fsum(residuals) / n
        x = [r - m for r in residuals]
        s2, s3 = math.fsum(v * v for v in x), math.fsum(v**3 for v in x)
        sd = math.sqrt(s2 / (n - 1))
        skew = _skewness(0.0, s2 / n, s3 / n)
        s1, k = math.fsum(x), n - 1  # leave each sample out in turn, from the power sums
        alone = [_skewness((s1 - v) / k, (s2 - v * v) / k, (s3 - v**3) / k) for v in x]
        mean_alone = math.fsum(alone) / n
        skew_var = (n - 1) / n * math.fsum((g - mean_alone) ** 2 for g in alone)
        return cls(n, estimate, sd, skew, skew_var, mean_w)


def _skewness(a1: float, a2: float, a3: float) -> float:
    """Skewness from the raw moments a1, a2, a3 of (nearly) centred values."""
    m2 = a2 - a1 * a1
    m3 = a3 - 3 * a1 * a2 + 2 * a1**3
    return m3 / m2**1.5 if m2 > 1e-300 else 0.0


def student_quantile(p: float, df: Any) -> Any:
    """Student's t quantile by its Cornish-Fisher expansion in 1/df (Hill, Algorithm 396,
    CACM 13:617, 1970): within 1e-4 of the exact value for df >= 10; elementwise on arrays."""
    z = NormalDist().inv_cdf(p)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def interval(found: Moments, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the true mean difference (or ratio) at ``confidence``, two-sided."""
    low, high = bounds(
        found.n, found.estimate, found.sd, found.skew, found.skew_var, found.scale, confidence
    )
    return float(low), float(high)


def bounds(
    n: Any, estimate: Any, sd: Any, skew: Any, skew_var: Any, scale: Any, confidence: float
) -> tuple[Any, Any]:
    """:func:`interval` from the moments themselves (NumPy arrays work elementwise)."""
    q = student_quantile(1 - (1 - confidence) / 2, n - 1)
    se = sd / (scale * n**0.5)
    squared = skew * skew
    kept = 1 - skew_var / (squared + (squared == 0))  # 0/0 -> kept = 1 - 0: nothing to shrink
    g = skew * (kept * (kept > 0))
    a, b = g / (3 * n**0.5), g / (6 * n**0.5)
    return estimate - _untransform(q, a, b) * se, estimate - _untransform(-q, a, b) * se


def _untransform(x: Any, a: Any, b: Any) -> Any:
    """The t with T(t) = x, where T(t) = ((1 + a t)^3 - 1) / (3a) + b (t - ... as a -> 0)."""
    small = abs(a) < 1e-12
    a_safe = a + small  # a is replaced where it is ~0, whose result is x - b
    y = 1 + 3 * a_safe * (x - b)
    cube_root = abs(y) ** (1 / 3) * ((y > 0) * 2 - 1)
    return (cube_root - 1) / a_safe * (1 - small) + (x - b) * small
