"""The round decision: what happens next, as pure functions of the schedule's rules, the run's
position and an attempt's outcome.

No torch and no I/O, so every rule is a row in a table test (tests/test_decisions.py). The runner
asks :func:`next_attempt` before a round (prune how much, or finish and why) and :func:`judge`
after it (accept, or roll back with the next step, or finish at the frontier), then carries the
answer out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from iterprune.specs import Schedule

EPS = 1e-12  # float slack when a step is compared with rollback.min_step
DROP_EPS = 1e-9  # float slack when a drop is compared with validate.max_drop


@dataclass(frozen=True)
class Rules:
    """The schedule's rules for deciding, as plain numbers."""

    target_sparsity: float
    max_drop: float
    retries: int
    shrink: float
    min_step: float

    @classmethod
    def of(cls, schedule: Schedule) -> Rules:
        r = schedule.rollback
        return cls(
            target_sparsity=schedule.prune.target_sparsity,
            max_drop=schedule.validate.max_drop,
            retries=r.retries,
            shrink=r.shrink,
            min_step=r.min_step,
        )


@dataclass(frozen=True)
class Position:
    """Where a run stands before its next attempt."""

    accepted_round: int  # the last accepted round (0: the dense model)
    step: float  # the fraction of the remaining weights the next attempt removes
    alive: int  # prunable weights left
    total: int  # prunable weights of the dense model
    rolled_back: int = 0  # attempts of the next round that were rolled back already


@dataclass(frozen=True)
class Attempt:
    """The next attempt: remove ``n_prune`` weights (``step`` of the remaining ones)."""

    round: int
    attempt: int
    step: float
    n_prune: int
    target_sparsity: float  # the sparsity after it (channel mode: roughly; channels are coarse)


@dataclass(frozen=True)
class Finish:
    reason: str


@dataclass(frozen=True)
class Outcome:
    """What an attempt measured."""

    drop: float  # accuracy points lost against the dense baseline (negative: gained)
    finite: bool = True  # the fine-tuning loss stayed finite


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class RollBack:
    why: str
    next_step: float
    finish: str | None = None  # the frontier: no further attempt, and why


def target_alive(total: int, target_sparsity: float) -> int:
    """Weights left at the target sparsity (the target is met once ``alive <= target_alive``)."""
    return total - math.floor(target_sparsity * total + 1e-9)


def amount_to_prune(alive: int, total: int, step: float, target_sparsity: float) -> int:
    """How many of the ``alive`` weights to remove: ``step`` of them, never past the target."""
    want = round(alive * step)
    return max(0, min(want, alive - target_alive(total, target_sparsity)))


def next_attempt(rules: Rules, pos: Position) -> Attempt | Finish:
    """The next attempt, or why the run is finished."""
    if pos.alive <= target_alive(pos.total, rules.target_sparsity):
        return Finish(f"target sparsity {rules.target_sparsity:.0%} reached")
    if pos.step < rules.min_step - EPS:
        return Finish(
            f"frontier reached: the next step ({pos.step:.4f}) would be under rollback.min_step"
        )
    n_prune = amount_to_prune(pos.alive, pos.total, pos.step, rules.target_sparsity)
    if n_prune == 0:
        return Finish(f"frontier reached: a step of {pos.step:.4f} removes no weight")
    return Attempt(
        round=pos.accepted_round + 1,
        attempt=pos.rolled_back + 1,
        step=pos.step,
        n_prune=n_prune,
        target_sparsity=1 - (pos.alive - n_prune) / pos.total,
    )


def judge(rules: Rules, attempt: Attempt, outcome: Outcome) -> Accept | RollBack:
    """Accept an attempt within the budget; roll back any other with a smaller next step, and
    finish at the frontier when the retries are spent or the step would be under ``min_step``."""
    if outcome.finite and outcome.drop <= rules.max_drop + DROP_EPS:
        return Accept()
    why = (
        "loss was not finite"
        if not outcome.finite
        else f"drop {outcome.drop:.2f} > {rules.max_drop}"
    )
    next_step = attempt.step * rules.shrink
    finish = None
    if attempt.attempt > rules.retries:
        finish = f"frontier reached: round {attempt.round} failed {attempt.attempt} attempts"
    elif next_step < rules.min_step - EPS:
        finish = (
            f"frontier reached: the next step ({next_step:.4f}) would be under "
            f"rollback.min_step ({rules.min_step})"
        )
    return RollBack(why=why, next_step=next_step, finish=finish)
