"""The round decision, rule by rule: pure functions, so each behaviour is a row of a table."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import iterprune.core.decisions as decisions
from iterprune.core.decisions import (
    Accept,
    Attempt,
    Finish,
    Outcome,
    Position,
    Recover,
    RollBack,
    Rules,
    amount_to_prune,
    judge,
    next_attempt,
    target_alive,
)

# The rules of the first releases: no recovery, a step that never grows back.
PLAIN = Rules(target_sparsity=0.9, max_drop=1.0, retries=2, shrink=0.5, min_step=0.05, step=0.2)
TOTAL = 1000  # at 90% sparsity, 100 weights are left


def pos(
    alive: int = 1000,
    step: float = 0.2,
    accepted: int = 0,
    rolled_back: int = 0,
    streak: int = 0,
    room: int | None = None,
) -> Position:
    return Position(accepted, step, alive, TOTAL, rolled_back, streak, room)


def rules(**changes: object) -> Rules:
    return dataclasses.replace(PLAIN, **changes)


A = Attempt(3, 1, 0.2, 10, 0.5)  # an attempt of round 3 with a 20% step

# (what it shows, position, what comes next)
BEFORE_AN_ATTEMPT = [
    ("a first round removes step of the weights", pos(), Attempt(1, 1, 0.2, 200, 0.2)),
    ("step is of the remaining weights", pos(alive=500, accepted=3), Attempt(4, 1, 0.2, 100, 0.6)),
    ("a retried round counts its rolled-back attempts", pos(alive=500, accepted=3, rolled_back=2),
     Attempt(4, 3, 0.2, 100, 0.6)),
    ("the last round stops at the target, not past it", pos(alive=110, step=0.5),
     Attempt(1, 1, 0.5, 10, 0.9)),
    ("no sliver: less than half a step left after it, so to the target", pos(alive=130),
     Attempt(1, 1, 0.2, 30, 0.9)),
    ("more than half a step left: an ordinary round", pos(alive=140), Attempt(1, 1, 0.2, 28, 0.888)),
    ("target reached", pos(alive=100), Finish("target sparsity 90% reached")),
    ("past the target counts as reached", pos(alive=90), Finish("target sparsity 90% reached")),
    ("a step under min_step is the frontier", pos(step=0.04),
     Finish("frontier reached: the next step (0.0400) would be under rollback.min_step")),
    ("the layer caps leave less than a step: that much", pos(room=50), Attempt(1, 1, 0.2, 50, 0.05)),
    ("the layer caps leave more: an ordinary round", pos(room=500), Attempt(1, 1, 0.2, 200, 0.2)),
    ("every layer at its cap: finished there", pos(alive=400, room=0),
     Finish("every layer is at prune.max_layer_sparsity: the highest sparsity the layer caps "
            "allow (60.00%) is reached")),
]  # fmt: skip # a table: one case per line

# (what it shows, rules, position, attempt, outcome, decision)
AFTER_AN_ATTEMPT = [
    ("within the budget: accepted", PLAIN, pos(), A, Outcome(0.6), Accept(0.2, 1)),
    ("exactly the budget: accepted", PLAIN, pos(), A, Outcome(1.0), Accept(0.2, 1)),
    ("a gain: accepted", PLAIN, pos(), A, Outcome(-2.0), Accept(0.2, 1)),
    ("over the budget: rolled back with the step shrunk", PLAIN, pos(), A, Outcome(1.5),
     RollBack("drop 1.50 > 1.00", 0.1)),
    ("just over the budget: as many decimals as tell them apart", rules(max_drop=0.647), pos(), A,
     Outcome(0.648), RollBack("drop 0.648 > 0.647", 0.1)),
    ("confident, just over: the interval's top told apart", rules(rule="confident", max_drop=0.647),
     pos(), A, Outcome(0.2, drop_high=0.6472), RollBack("drop up to 0.6472 > 0.6470 (drop 0.2000)", 0.1)),
    ("a non-finite loss: rolled back whatever the accuracy", PLAIN, pos(), A,
     Outcome(0.0, finite=False), RollBack("loss was not finite", 0.1)),
    ("the last retry failing ends the run at the frontier", PLAIN, pos(), Attempt(3, 3, 0.2, 10, 0.5),
     Outcome(1.5), RollBack("drop 1.50 > 1.00", 0.1, "frontier reached: round 3 failed 3 attempts")),
    ("a next step under min_step ends the run at the frontier", PLAIN, pos(),
     Attempt(3, 2, 0.08, 10, 0.5), Outcome(1.5), RollBack("drop 1.50 > 1.00", 0.04,
     "frontier reached: the next step (0.0400) would be under rollback.min_step (0.05)")),
    # the rule
    ("confident: the interval's top within the budget is accepted", rules(rule="confident"),
     pos(), A, Outcome(0.2, drop_high=0.9), Accept(0.2, 1)),
    ("confident: a drop within the budget whose interval is not is rolled back",
     rules(rule="confident"), pos(), A, Outcome(0.6, drop_high=1.6),
     RollBack("drop up to 1.60 > 1.00 (drop 0.60)", 0.1)),
    ("estimate: the same attempt is accepted", PLAIN, pos(), A, Outcome(0.6, drop_high=1.6),
     Accept(0.2, 1)),
    # recovery
    ("a failed attempt with a finite loss recovers first", rules(recover_epochs=2), pos(), A,
     Outcome(1.5), Recover(2, "drop 1.50 > 1.00")),
    ("a non-finite loss does not recover", rules(recover_epochs=2), pos(), A,
     Outcome(0.0, finite=False), RollBack("loss was not finite", 0.1)),
    ("after its recovery an attempt that passes is accepted", rules(recover_epochs=2), pos(), A,
     Outcome(0.5, recovered=True), Accept(0.2, 1)),
    ("a second failure, after the recovery, rolls back", rules(recover_epochs=2), pos(), A,
     Outcome(1.2, recovered=True), RollBack("drop 1.20 > 1.00", 0.1)),
    # growth
    ("accepted rounds in a row count up", rules(grow_after=3, grow=2.0), pos(streak=1),
     Attempt(3, 1, 0.05, 10, 0.5), Outcome(0.5), Accept(0.05, 2)),
    ("enough in a row: the step grows and the count starts over", rules(grow_after=3, grow=2.0),
     pos(streak=2), Attempt(3, 1, 0.05, 10, 0.5), Outcome(0.5), Accept(0.1, 0)),
    ("never beyond the schedule's step", rules(grow_after=3, grow=2.0), pos(streak=2),
     Attempt(3, 1, 0.15, 10, 0.5), Outcome(0.5), Accept(0.2, 0)),
    ("at the schedule's step there is nothing to grow", rules(grow_after=3, grow=2.0),
     pos(streak=7), A, Outcome(0.5), Accept(0.2, 8)),
]  # fmt: skip # a table: one case per line


@pytest.mark.parametrize("what, position, expected", BEFORE_AN_ATTEMPT, ids=lambda x: x)
def test_before_an_attempt(what: str, position: Position, expected: Attempt | Finish) -> None:
    got = next_attempt(PLAIN, position)
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


@pytest.mark.parametrize(
    "what, the_rules, position, attempt, outcome, expected", AFTER_AN_ATTEMPT, ids=lambda x: x
)
def test_after_an_attempt(
    what: str,
    the_rules: Rules,
    position: Position,
    attempt: Attempt,
    outcome: Outcome,
    expected: Accept | Recover | RollBack,
) -> None:
    got = judge(the_rules, position, attempt, outcome)
    assert type(got) is type(expected)
    if isinstance(expected, RollBack):
        assert got.why == expected.why and got.finish == expected.finish
        assert got.next_step == pytest.approx(expected.next_step)
    elif isinstance(expected, Accept):
        assert got.streak == expected.streak
        assert got.next_step == pytest.approx(expected.next_step)
    else:
        assert got == expected


def test_near_the_target_a_step_is_capped_or_removes_nothing() -> None:
    # 0.06 of 104 weights rounds to 6, but only 4 may go: the target caps it
    assert next_attempt(PLAIN, pos(alive=104, step=0.06)).n_prune == 4
    tiny_rules = rules(min_step=0.001)
    assert next_attempt(tiny_rules, pos(alive=400, step=0.001)) == Finish(
        "frontier reached: a step of 0.0010 removes no weight"
    )


def test_the_budget_has_a_float_tolerance_and_no_more() -> None:
    assert isinstance(judge(PLAIN, pos(), A, Outcome(1.0 + 1e-12)), Accept)
    assert isinstance(judge(PLAIN, pos(), A, Outcome(1.0 + 1e-6)), RollBack)


def test_amount_to_prune_never_passes_the_target_and_leaves_no_sliver() -> None:
    total = 1000
    assert target_alive(total, 0.95) == 50
    assert amount_to_prune(1000, total, 0.1, 0.95) == 100
    assert amount_to_prune(60, total, 0.5, 0.95) == 10
    assert amount_to_prune(50, total, 0.5, 0.95) == 0
    assert amount_to_prune(720, total, 0.1, 0.95) == 72  # far from the target: an ordinary round
    # 10,000 weights to 95%: from 720 left, 30% would remove 216 and leave a sliver of 4 for a
    # round of its own; all 220 go now
    assert amount_to_prune(720, 10_000, 0.3, 0.95) == 220


def test_the_rules_come_from_the_schedule() -> None:
    from helpers import parse, tiny

    doc = tiny(validate={"rule": "confident"}, rollback={"recover_epochs": 3, "grow_after": 4})
    got = Rules.of(parse(doc))
    assert (got.rule, got.recover_epochs, got.grow_after, got.step) == ("confident", 3, 4, 0.3)


def test_the_decision_module_does_not_import_torch() -> None:
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


def test_a_fractional_target_is_named_exactly() -> None:
    done = next_attempt(rules(target_sparsity=0.985), pos(alive=15))
    assert done == Finish("target sparsity 98.5% reached")


def test_a_relative_budget_becomes_points_of_the_baseline() -> None:
    from helpers import parse, tiny

    s = parse(tiny(validate={"max_drop": "2%"}))
    assert Rules.of(s, 90.0).max_drop == pytest.approx(1.8)
    with pytest.raises(ValueError, match="needs the baseline"):
        Rules.of(s)


@pytest.mark.parametrize(
    "budget, places",
    [(0.5, 2), (0.694, 2), (5.0, 2), (0.1, 2), (0.05, 3), (0.01, 3), (5.72e-05, 6), (0.0, 2)],
)
def test_a_drop_is_written_with_the_decimals_its_budget_needs(budget, places) -> None:
    """Accuracy points and perplexities keep two decimals; a small budget gets the digits to be
    read beside it (an MSE budget of 5.72e-05 written with two was 0.00)."""
    assert decisions.decimals(budget) == places
    if budget:
        assert float(f"{budget:.{places}f}") > 0
