"""The round decision, rule by rule: pure functions, so each behaviour is a row of a table."""

from __future__ import annotations

import pytest

from iterprune.decisions import (
    Accept,
    Attempt,
    Finish,
    Outcome,
    Position,
    RollBack,
    Rules,
    amount_to_prune,
    judge,
    next_attempt,
    target_alive,
)

RULES = Rules(target_sparsity=0.9, max_drop=1.0, retries=2, shrink=0.5, min_step=0.05)
TOTAL = 1000  # at 90% sparsity, 100 weights are left


def pos(alive: int = 1000, step: float = 0.2, accepted: int = 0, rolled_back: int = 0) -> Position:
    return Position(
        accepted_round=accepted, step=step, alive=alive, total=TOTAL, rolled_back=rolled_back
    )


# (what it shows, position, what comes next)
BEFORE_AN_ATTEMPT = [
    ("a first round removes step of the weights", pos(), Attempt(1, 1, 0.2, 200, 0.2)),
    ("step is of the remaining weights", pos(alive=500, accepted=3), Attempt(4, 1, 0.2, 100, 0.6)),
    ("a retried round counts its rolled-back attempts", pos(alive=500, accepted=3, rolled_back=2),
     Attempt(4, 3, 0.2, 100, 0.6)),
    ("the last round stops at the target, not past it", pos(alive=110, step=0.5),
     Attempt(1, 1, 0.5, 10, 0.9)),
    ("target reached", pos(alive=100), Finish("target sparsity 90% reached")),
    ("past the target counts as reached", pos(alive=90), Finish("target sparsity 90% reached")),
    ("a step under min_step is the frontier", pos(step=0.04),
     Finish("frontier reached: the next step (0.0400) would be under rollback.min_step")),
]  # fmt: skip # a table: one case per line

# (what it shows, attempt, outcome, decision)
AFTER_AN_ATTEMPT = [
    ("within the budget: accepted", Attempt(3, 1, 0.2, 10, 0.5), Outcome(0.6), Accept()),
    ("exactly the budget: accepted", Attempt(3, 1, 0.2, 10, 0.5), Outcome(1.0), Accept()),
    ("a gain: accepted", Attempt(3, 1, 0.2, 10, 0.5), Outcome(-2.0), Accept()),
    ("over the budget: rolled back with the step shrunk", Attempt(3, 1, 0.2, 10, 0.5),
     Outcome(1.5), RollBack("drop 1.50 > 1.0", 0.1)),
    ("a non-finite loss: rolled back whatever the accuracy", Attempt(3, 1, 0.2, 10, 0.5),
     Outcome(0.0, finite=False), RollBack("loss was not finite", 0.1)),
    ("the last retry failing ends the run at the frontier", Attempt(3, 3, 0.2, 10, 0.5),
     Outcome(1.5), RollBack("drop 1.50 > 1.0", 0.1, "frontier reached: round 3 failed 3 attempts")),
    ("a next step under min_step ends the run at the frontier", Attempt(3, 2, 0.08, 10, 0.5),
     Outcome(1.5), RollBack("drop 1.50 > 1.0", 0.04, "frontier reached: the next step "
                            "(0.0400) would be under rollback.min_step (0.05)")),
]  # fmt: skip # a table: one case per line


@pytest.mark.parametrize("what, position, expected", BEFORE_AN_ATTEMPT, ids=lambda x: x)
def test_before_an_attempt(what: str, position: Position, expected: Attempt | Finish) -> None:
    got = next_attempt(RULES, position)
    if isinstance(expected, Attempt):
        assert isinstance(got, Attempt)
        assert (got.round, got.attempt, got.n_prune) == (
            expected.round,
            expected.attempt,
            expected.n_prune,
        )
        assert got.step == pytest.approx(expected.step)
        assert got.target_sparsity == pytest.approx(expected.target_sparsity)
    else:
        assert got == expected


@pytest.mark.parametrize("what, attempt, outcome, expected", AFTER_AN_ATTEMPT, ids=lambda x: x)
def test_after_an_attempt(
    what: str, attempt: Attempt, outcome: Outcome, expected: Accept | RollBack
) -> None:
    got = judge(RULES, attempt, outcome)
    assert type(got) is type(expected)
    if isinstance(expected, RollBack):
        assert got.why == expected.why and got.finish == expected.finish
        assert got.next_step == pytest.approx(expected.next_step)


def test_near_the_target_a_step_is_capped_or_removes_nothing() -> None:
    assert next_attempt(RULES, pos(alive=101, step=0.06)) == Attempt(1, 1, 0.06, 1, 0.9)
    # 0.06 of 104 weights... rounds to 6, but only 4 may go: the target caps it
    assert next_attempt(RULES, pos(alive=104, step=0.06)).n_prune == 4
    tiny_rules = Rules(target_sparsity=0.9, max_drop=1.0, retries=2, shrink=0.5, min_step=0.001)
    assert next_attempt(tiny_rules, pos(alive=400, step=0.001)) == Finish(
        "frontier reached: a step of 0.0010 removes no weight"
    )


def test_the_budget_has_a_float_tolerance_and_no_more() -> None:
    attempt = Attempt(1, 1, 0.2, 10, 0.2)
    assert isinstance(judge(RULES, attempt, Outcome(1.0 + 1e-12)), Accept)
    assert isinstance(judge(RULES, attempt, Outcome(1.0 + 1e-6)), RollBack)


def test_amount_to_prune_never_passes_the_target() -> None:
    total = 1000
    assert target_alive(total, 0.95) == 50
    assert amount_to_prune(1000, total, 0.1, 0.95) == 100
    assert amount_to_prune(60, total, 0.5, 0.95) == 10
    assert amount_to_prune(50, total, 0.5, 0.95) == 0


def test_the_decision_module_does_not_import_torch() -> None:
    import ast
    from pathlib import Path

    import iterprune.decisions as decisions

    tree = ast.parse(Path(decisions.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "torch" not in imported and "numpy" not in imported
