"""The paired evidence behind every decision: the interval of a drop, and whether a validation
split can resolve the budget at all."""

from __future__ import annotations

import pytest

from iterprune.cli import table as cli
from iterprune.core.evidence import Paired, newcombe, resolution, wilson, z_value


def test_newcombe_matches_the_published_worked_example() -> None:
    """Cavo et al. (2012), complete response before and after consolidation therapy, as worked
    in Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8:
    59 both, 6 only before, 16 only after, 80 neither; the Newcombe square-and-add interval of
    the difference is -0.0621 (95% CI -0.1186 to -0.0046)."""
    low, high = newcombe(59, 6, 16, 80)
    assert round(low, 4) == -0.1186 and round(high, 4) == -0.0046
    assert round(Paired(59, 6, 16, 80).drop / 100, 4) == -0.0621


def test_wilson_interval_of_a_single_proportion() -> None:
    low, high = wilson(0, 10, z_value(0.95))  # 0 of 10: 0 to 0.2775 (Wilson 1927)
    assert low == pytest.approx(0.0, abs=1e-12) and round(high, 4) == 0.2775
    assert round(z_value(0.95), 3) == 1.960


def test_the_drop_is_lost_minus_gained_and_lies_inside_its_interval() -> None:
    table = Paired(both=430, lost=9, gained=3, neither=8)
    assert table.n == 450 and table.drop == pytest.approx(100 * 6 / 450)
    low, high = table.interval(0.95)
    assert low < table.drop < high
    wide_low, wide_high = table.interval(0.99)
    assert wide_low < low and high < wide_high


def test_no_difference_gives_an_interval_around_zero_that_shrinks_with_more_samples() -> None:
    small = Paired(both=98, lost=1, gained=1, neither=0).interval()
    large = Paired(both=9800, lost=100, gained=100, neither=0).interval()
    assert small[0] < 0 < small[1] and large[0] < 0 < large[1]
    assert large[1] - large[0] < small[1] - small[0]


@pytest.mark.parametrize(
    "n, accuracy, budget, resolved",
    [
        (359, 99.7, 1.0, False),
        (359, 99.7, 2.0, True),
        (5000, 99.7, 1.0, True),
        (50, 90.0, 1.0, False),
    ],
)
def test_resolution_tells_whether_the_budget_can_be_seen_at_all(
    n: int, accuracy: float, budget: float, resolved: bool
) -> None:
    seen = resolution(n, accuracy, budget, 0.95)
    assert seen.resolved is resolved
    if not resolved:
        assert seen.low <= 0 < seen.high
        assert seen.samples_needed > n and seen.budget_needed > budget
        assert resolution(seen.samples_needed, accuracy, budget, 0.95).resolved
        assert resolution(n, accuracy, seen.budget_needed, 0.95).resolved
        text = seen.message(0.95)
        assert f"with {n} validation samples" in text and "more validation data" in text


def test_validate_warns_when_the_validation_split_is_too_small(write_schedule, capsys) -> None:
    doc = {
        "model": {"builtin": "digits_mlp"},
        "data": {"builtin": "digits", "kwargs": {"limit": 200}},  # 50 validation samples
        "validate": {"max_drop": 1.0},
    }
    assert cli.main(["validate", str(write_schedule(doc))]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "warning: with 50 validation samples, a drop of exactly 1 point" in err
    doc["validate"] = {"max_drop": 20.0}
    assert cli.main(["validate", str(write_schedule(doc))]) == 0
    assert "warning" not in capsys.readouterr().err
