"""When rounds may run: a standard 5-field cron expression in a timezone, matched minute by minute.

One of the two modules that import APScheduler (its ``CronTrigger`` computes openings); the daemon
is the other. The schedule validator uses :func:`window_problem`, the daemon :class:`Window`.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _standard_dow(field: str) -> str:
    """A standard cron day-of-week field (0 or 7 = Sunday) as APScheduler day names.

    APScheduler 3 counts 0 as *Monday*, so ``0 2 * * 0`` would silently run on Mondays; spelling
    the days out removes the ambiguity.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            lo, hi = 0, 6
        elif "-" in body:
            a, b = body.split("-", 1)
            lo, hi = _day_number(a), _day_number(b)
        else:
            lo = hi = _day_number(body)
            if step_text:
                hi = 6
        if hi == 0 and lo > 0:
            hi = 7  # "5-0" / "fri-sun": up to Sunday
        if lo > hi or step < 1:
            raise ValueError(f"day-of-week range '{part}' is empty")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def _day_number(text: str) -> int:
    if text in _DOW_NAMES:
        return _DOW_NAMES.index(text)
    if not re.fullmatch(r"\d+", text) or not 0 <= int(text) <= 7:
        raise ValueError(f"day of week must be 0-7 or sun-sat, got '{text}'")
    return int(text)


class Window:
    """When rounds may run: a standard 5-field cron expression, matched minute by minute.

    ``* 22-23,0-5 * * *`` is open from 22:00 to 05:59; ``0-59 1-5 * * mon-fri`` on weekday nights.
    Raises ValueError for an invalid expression or timezone, or a window that never opens.
    """

    def __init__(self, expression: str, timezone: str | None = None) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(
                f"must have 5 fields (minute hour day month weekday), got {len(fields)}"
            )
        try:
            self.tz = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone '{timezone}'") from None
        minute, hour, day, month, dow = fields
        self.trigger = CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_standard_dow(dow),
            timezone=self.tz,
        )
        if self.trigger.get_next_fire_time(None, dt.datetime.now(self.tz)) is None:
            raise ValueError("never opens")
        self.expression = expression

    def is_open(self, now: dt.datetime) -> bool:
        minute = now.astimezone(self.tz).replace(second=0, microsecond=0)
        return self.trigger.get_next_fire_time(None, minute) == minute

    def next_open(self, now: dt.datetime) -> dt.datetime | None:
        """``now`` when open, else the start of the next opening."""
        if self.is_open(now):
            return now.astimezone(self.tz)
        return self.trigger.get_next_fire_time(None, now.astimezone(self.tz))

    def next_close(self, now: dt.datetime, horizon: dt.timedelta = dt.timedelta(days=8)):
        """The first minute after ``now`` outside the window (None: open all the way to horizon)."""
        t = now.astimezone(self.tz).replace(second=0, microsecond=0)
        end = t + horizon
        while t < end:
            t += dt.timedelta(minutes=1)
            if not self.is_open(t):
                return t
        return None


def window_problem(expression: str, timezone: str | None) -> str | None:
    """Why a window is unusable, for the schedule validator; None when it is fine."""
    try:
        Window(expression, timezone)
    except ValueError as exc:
        return str(exc)
    return None
