"""Intervals for paired continuous scores (core/continuous.py), and how often the 95% intervals
of both kinds of evidence cover the truth, over 2,000 simulated data sets per case with a known
difference: skewed, heavy-tailed and near-constant differences, n from 30 to 5,000 (for 0/1
answers, Newcombe's interval of core/evidence.py). Fixed seeds: the figures are reproducible.

What the cases show, and the tests pin: the continuous interval covers 93.5-96.5% for normal,
moderately skewed (exponential, skewness 2), heavy-tailed (Student t with 3 degrees of freedom,
Laplace), strongly skewed (gamma 0.5, skewness 2.8; lognormal, 2.9) and near-constant
differences from n = 30; when a tenth of the samples carry the whole change (much worse, the
rest unchanged) from n = 100: at 30 it covers 81.5%, Student's interval alone 78.5%. Newcombe's interval covers
93.5-96.5% once about 20 discordant pairs are expected; with fewer it is conservative (up to
100% coverage: wider intervals, so the confident rule accepts less, never more)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iterprune.core import continuous, evidence

DATASETS = 2000
LOW, HIGH = 0.935, 0.965  # coverage band of the 95% interval (the issue's)
SIZES = (30, 100, *(pytest.param(n, marks=pytest.mark.slow) for n in (1000, 5000)))


def differences(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> tuple:
    """(paired differences, their true mean) of one kind."""
    if kind == "normal":
        return rng.normal(0.3, 1.0, shape), 0.3
    if kind == "exponential":  # skewness 2: a few samples get much worse
        return rng.exponential(1.0, shape) - 0.5, 0.5
    if kind == "gamma":  # skewness 2.8
        return rng.gamma(0.5, 1.0, shape), 0.5
    if kind == "mostly_unchanged":  # 90% barely move, 10% get much worse (skewness ~3)
        worse = rng.random(shape) < 0.1
        return np.where(worse, rng.exponential(2.0, shape), rng.normal(0, 0.1, shape)), 0.2
    if kind == "heavy_tailed":  # Student t, 3 degrees of freedom
        return rng.standard_t(3, shape) + 0.2, 0.2
    if kind == "near_constant":  # every sample shifts by the same amount, give or take 1e-6
        return 0.01 + rng.normal(0, 1e-6, shape), 0.01
    if kind == "laplace":
        return rng.laplace(0.2, 1.0, shape), 0.2
    if kind == "lognormal":  # skewness 2.9
        return rng.lognormal(0.0, 0.75, shape), math.exp(0.75**2 / 2)
    raise ValueError(kind)


def moments(d: np.ndarray) -> tuple:
    """Row-wise (n, mean, sd, skewness, jackknife variance of the skewness), as Moments.of
    computes them for one sample."""
    n = d.shape[1]
    mean = d.mean(axis=1)
    x = d - mean[:, None]
    s1, s2, s3 = (x.sum(axis=1), (x**2).sum(axis=1), (x**3).sum(axis=1))
    skew = skewness(np.zeros_like(s1), s2 / n, s3 / n)
    k = n - 1
    alone = skewness((s1[:, None] - x) / k, (s2[:, None] - x**2) / k, (s3[:, None] - x**3) / k)
    skew_var = k / n * ((alone - alone.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    return n, mean, np.sqrt(s2 / k), skew, skew_var


def skewness(a1: np.ndarray, a2: np.ndarray, a3: np.ndarray) -> np.ndarray:
    m2 = a2 - a1 * a1
    m3 = a3 - 3 * a1 * a2 + 2 * a1**3
    ok = m2 > 1e-300
    return np.where(ok, m3 / np.where(ok, m2, 1.0) ** 1.5, 0.0)


def coverage(kind: str, n: int, student_only: bool = False) -> float:
    rng = np.random.default_rng([0, n, len(kind)])
    d, truth = differences(kind, rng, (DATASETS, n))
    n_, mean, sd, skew, skew_var = moments(d)
    if student_only:  # no skewness correction at all
        skew = np.zeros_like(skew)
    low, high = continuous.bounds(n_, mean, sd, skew, skew_var, 1.0, 0.95)
    return float(((low <= truth) & (truth <= high)).mean())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(
    "kind",
    ["normal", "exponential", "gamma", "lognormal", "heavy_tailed", "laplace", "near_constant"],
)
def test_the_continuous_interval_covers_the_true_mean_difference(kind: str, n: int) -> None:
    covered = coverage(kind, n)
    assert LOW <= covered <= HIGH, f"{kind}, n={n}: {covered:.3f}"


@pytest.mark.parametrize("n", SIZES[1:])
def test_when_a_tenth_of_the_samples_carry_the_change_it_covers_from_100(n: int) -> None:
    covered = coverage("mostly_unchanged", n)
    assert LOW <= covered <= HIGH, f"n={n}: {covered:.3f}"


def test_at_30_samples_with_a_tenth_carrying_the_change_it_still_beats_students() -> None:
    """Three samples or so carry the whole difference: no interval from 30 samples holds 95%
    here. This one covers 82%, Student's alone 78%: the known limit, stated in the docs."""
    covered = coverage("mostly_unchanged", 30)
    student = coverage("mostly_unchanged", 30, student_only=True)
    assert 0.80 <= covered < LOW and covered > student, (covered, student)


@pytest.mark.parametrize("n", SIZES)
def test_the_ratio_interval_covers_the_true_ratio(n: int) -> None:
    """Per-sequence NLL differences over token counts: the ratio perplexity's change comes from.
    From 100 sequences in the band; at 30, 92%."""
    rng = np.random.default_rng([7, n])
    tokens = rng.integers(16, 129, (DATASETS, n)).astype(float)
    per_token = 0.02 + 0.05 * (rng.exponential(1.0, (DATASETS, n)) - 1.0)  # skewed, mean 0.02
    d = tokens * per_token
    estimate = d.sum(axis=1) / tokens.sum(axis=1)
    residuals = d - estimate[:, None] * tokens
    n_, _, sd, skew, skew_var = moments(residuals)
    low, high = continuous.bounds(n_, estimate, sd, skew, skew_var, tokens.mean(axis=1), 0.95)
    covered = float(((low <= 0.02) & (0.02 <= high)).mean())
    assert (LOW if n >= 100 else 0.915) <= covered <= HIGH, f"n={n}: {covered:.3f}"


NEWCOMBE_CASES = [  # (accuracy before, P(lost | right before), P(gained | wrong before))
    (0.90, 0.03, 0.10),
    (0.97, 0.01, 0.20),
    (0.75, 0.06, 0.06),
    (0.99, 0.005, 0.30),
]


@pytest.mark.parametrize("n", (100, 359, 1000, 5000))
@pytest.mark.parametrize("case", NEWCOMBE_CASES, ids=str)
def test_newcombes_interval_covers_the_true_difference_of_accuracies(case: tuple, n: int) -> None:
    p1, lost, gained = case
    cells = [p1 * (1 - lost), p1 * lost, (1 - p1) * gained, (1 - p1) * (1 - gained)]
    truth = 100 * (p1 * lost - (1 - p1) * gained)  # the drop in points
    tables = np.random.default_rng([3, n, int(p1 * 100)]).multinomial(n, cells, DATASETS)
    hits = 0
    for both, lo, ga, neither in tables.tolist():
        low, high = evidence.Paired(both, lo, ga, neither).interval(0.95)
        hits += low <= truth <= high
    covered = hits / DATASETS
    discordant = n * (cells[1] + cells[2])  # expected samples lost or gained
    assert covered >= LOW, f"{case}, n={n}: {covered:.3f}"
    if discordant >= 20:
        assert covered <= HIGH, f"{case}, n={n}: {covered:.3f}"


def test_moments_of_one_sample_give_the_same_interval_as_the_arrays() -> None:
    rng = np.random.default_rng(11)
    d = rng.exponential(1.0, 200) - 0.5
    found = continuous.Moments.of(d.tolist())
    n, mean, sd, skew, skew_var = moments(d[None, :])
    assert math.isclose(found.skew_var, float(skew_var[0]), rel_tol=1e-6)
    expected = continuous.bounds(n, mean, sd, skew, skew_var, 1.0, 0.95)
    got = continuous.interval(found)
    assert math.isclose(got[0], float(expected[0][0]), rel_tol=1e-9)
    assert math.isclose(got[1], float(expected[1][0]), rel_tol=1e-9)
    assert found.skew > 1  # the sample is skewed, and the interval leans towards its tail
    assert got[1] - found.estimate > found.estimate - got[0]


def test_student_quantiles_match_the_tables() -> None:
    # t_{0.975} for 29, 99 and 4999 degrees of freedom (any statistics table)
    for df, exact in ((29, 2.045230), (99, 1.984217), (4999, 1.960439)):
        assert abs(continuous.student_quantile(0.975, df) - exact) < 1e-4
