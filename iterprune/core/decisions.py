"""The round decision: what happens next, as pure functions of the schedule's rules, the run's
position and an attempt's outcome.

No torch and no I/O, so every rule is a row in a table test (tests/core/test_decisions.py). The runner
asks :func:`next_attempt` before a round (prune how much, or finish and why) and :func:`judge`
after it (accept, recover first, or roll back with the next step, or finish at the frontier), then
carries the answer out. The controller:

- an attempt passes under ``validate.rule``: ``estimate`` (its drop is within ``max_drop``) or
  ``confident`` (the upper end of the drop's interval is);
- one that fails with a finite loss is first fine-tuned ``rollback.recover_epochs`` more and
  judged again; only a second failure rolls it back, and the step shrinks;
- after ``rollback.grow_after`` accepted rounds in a row the step grows by ``rollback.grow``,
  never beyond the schedule's ``prune.step``;
- a round that would leave less than half a step to the target goes to the target instead;
- a round never removes more than the layer caps (``prune.max_layer_sparsity``) leave, and a run
  whose every layer is at its cap is finished.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from iterprune.schedule.specs import Schedule

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
    step: float = 1.0  # the schedule's prune.step: growth never goes beyond it
    rule: str = "estimate"  # estimate | confident
    recover_epochs: int = 0
    grow_after: int = 0  # 0: the step never grows back
    grow: float = 1.0
    pattern: str | None = None  # "N:M": rounds follow the pattern, not the step

    @classmethod
    def of(cls, schedule: Schedule, baseline: float | None = None) -> Rules:
        """The rules of ``schedule``; a relative budget (``max_drop: 2%``) needs the dense
        model's accuracy ``baseline`` to become points."""
        r, v = schedule.rollback, schedule.validate
        if v.relative and baseline is None:
            raise ValueError("a relative max_drop needs the baseline accuracy")
        return cls(
            target_sparsity=schedule.prune.target_sparsity,
            max_drop=v.budget(baseline if baseline is not None else 0.0),
            retries=r.retries,
            shrink=r.shrink,
            min_step=r.min_step,
            step=schedule.prune.step,
            rule=v.rule,
            recover_epochs=r.recover_epochs,
            grow_after=r.grow_after,
            grow=r.grow,
            pattern=schedule.prune.pattern,
        )

    @property
    def decimals(self) -> int:
        """The decimals a drop is written with beside this budget (:func:`decimals`)."""
        return decimals(self.max_drop)


@dataclass(frozen=True)
class Position:
    """Where a run stands before its next attempt."""

    accepted_round: int  # the last accepted round (0: the dense model)
    step: float  # the fraction of the remaining weights the next attempt removes
    alive: int  # prunable weights left
    total: int  # prunable weights of the dense model
    rolled_back: int = 0  # attempts of the next round that were rolled back already
    streak: int = 0  # rounds accepted in a row since the step last changed
    room: int | None = None  # weights the layer caps still let the method remove (None: no caps)
    pattern_room: int | None = None  # N:M: weights the next round removes (one per full group)


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
    drop_high: float | None = None  # the upper end of the drop's interval
    recovered: bool = False  # this is the judgement after a recovery


@dataclass(frozen=True)
class Accept:
    next_step: float
    streak: int


@dataclass(frozen=True)
class Recover:
    """Fine-tune the attempt ``epochs`` more, then judge it again."""

    epochs: int
    why: str


@dataclass(frozen=True)
class RollBack:
    why: str
    next_step: float
    finish: str | None = None  # the frontier: no further attempt, and why


def target_alive(total: int, target_sparsity: float) -> int:
    """Weights left at the target sparsity (the target is met once ``alive <= target_alive``)."""
    return total - math.floor(target_sparsity * total + 1e-9)


def amount_to_prune(alive: int, total: int, step: float, target_sparsity: float) -> int:
    """How many of the ``alive`` weights to remove: ``step`` of them, never past the target, and
    all the way to it when less than half a step would be left for a last round."""
    to_target = alive - target_alive(total, target_sparsity)
    want = round(alive * step)
    if to_target - want < 0.5 * step * (alive - want):  # no sliver left for one more round
        want = to_target
    return max(0, min(want, to_target))


def next_attempt(rules: Rules, pos: Position) -> Attempt | Finish:
    """The next attempt, or why the run is finished."""
    if rules.pattern is not None and pos.pattern_room is not None:
        if pos.pattern_room == 0:
            return Finish(f"the {rules.pattern} pattern holds in every layer it applies to")
        return Attempt(
            round=pos.accepted_round + 1,
            attempt=pos.rolled_back + 1,
            step=pos.pattern_room / pos.alive,
            n_prune=pos.pattern_room,
            target_sparsity=1 - (pos.alive - pos.pattern_room) / pos.total,
        )
    if pos.alive <= target_alive(pos.total, rules.target_sparsity):
        return Finish(f"target sparsity {100 * rules.target_sparsity:g}% reached")
    if pos.step < rules.min_step - EPS:
        return Finish(
            f"frontier reached: the next step ({pos.step:.4f}) would be under rollback.min_step"
        )
    if pos.room == 0:
        return Finish(
            "every layer is at prune.max_layer_sparsity: the highest sparsity the layer caps "
            f"allow ({1 - pos.alive / pos.total:.2%}) is reached"
        )
    n_prune = amount_to_prune(pos.alive, pos.total, pos.step, rules.target_sparsity)
    if pos.room is not None:
        n_prune = min(n_prune, pos.room)
    if n_prune == 0:
        return Finish(f"frontier reached: a step of {pos.step:.4f} removes no weight")
    return Attempt(
        round=pos.accepted_round + 1,
        attempt=pos.rolled_back + 1,
        step=pos.step,
        n_prune=n_prune,
        target_sparsity=1 - (pos.alive - n_prune) / pos.total,
    )


def passes(rules: Rules, outcome: Outcome) -> bool:
    """Whether a measured attempt is within the budget under the schedule's rule."""
    if not outcome.finite:
        return False
    if rules.rule == "confident":
        drop = outcome.drop_high if outcome.drop_high is not None else outcome.drop
    else:
        drop = outcome.drop
    return drop <= rules.max_drop + DROP_EPS


def judge(
    rules: Rules, pos: Position, attempt: Attempt, outcome: Outcome
) -> Accept | Recover | RollBack:
    """Accept an attempt that passes; give one that fails with a finite loss its recovery
    epochs first; roll back the rest with a smaller next step, finishing at the frontier when
    the retries are spent or the step would be under ``min_step``."""
    if passes(rules, outcome):
        streak = pos.streak + 1
        if rules.grow_after and streak >= rules.grow_after and attempt.step < rules.step:
            return Accept(next_step=min(rules.step, attempt.step * rules.grow), streak=0)
        return Accept(next_step=attempt.step, streak=streak)
    why = _why(rules, outcome)
    if outcome.finite and not outcome.recovered and rules.recover_epochs > 0:
        return Recover(rules.recover_epochs, why)
    next_step = attempt.step * rules.shrink
    finish = None
    if attempt.attempt > rules.retries:
        finish = f"frontier reached: round {attempt.round} failed {attempt.attempt} attempts"
    elif rules.pattern is not None:  # the same round again: a pattern has no smaller step
        next_step = attempt.step
    elif next_step < rules.min_step - EPS:
        finish = (
            f"frontier reached: the next step ({next_step:.4f}) would be under "
            f"rollback.min_step ({rules.min_step})"
        )
    return RollBack(why=why, next_step=next_step, finish=finish)


def decimals(budget: float) -> int:
    """The decimals that show a drop beside the budget it is judged by: two for accuracy points
    or a perplexity, more for a budget under 0.1 (a mean squared error's 5.7e-05: six)."""
    if not budget > 0 or budget >= 0.1:
        return 2
    return min(1 + math.ceil(-math.log10(budget)), 10)


def _why(rules: Rules, outcome: Outcome) -> str:
    if not outcome.finite:
        return "loss was not finite"
    top = outcome.drop_high if rules.rule == "confident" else None
    judged = outcome.drop if top is None else top
    d = rules.decimals
    while d < 10 and f"{judged:.{d}f}" == f"{rules.max_drop:.{d}f}":
        d += 1  # a drop just over the budget never reads "0.65 > 0.65"
    said = f"{judged:.{d}f} > {rules.max_drop:.{d}f}"
    return f"drop {said}" if top is None else f"drop up to {said} (drop {outcome.drop:.{d}f})"


# The floor under each layer (``prune.max_layer_sparsity``): what selection keeps and what ``show``
# marks as capped. Here, not in selection.py, so that ``show`` needs no torch.


def floors(sizes: Mapping[str, int], max_layer_sparsity: float) -> dict[str, int]:
    """The fewest weights each layer keeps: a layer of ``size`` weights stays at or under
    ``max_layer_sparsity`` (1 disables the floor)."""
    return {n: math.ceil(size * (1 - max_layer_sparsity) - 1e-9) for n, size in sizes.items()}


def capped(alive: int, floor: int) -> bool:
    """Whether a layer with ``alive`` weights is held at its (non-zero) floor by its cap."""
    return 0 < floor and alive <= floor
