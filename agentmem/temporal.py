"""Time-aware matching: what a query says about time, and which notes can answer it.

Two cues, both cheap and local:
- a query that names a period ("in May 2023", "in 2022", "last week") favours notes
  stored in that period;
- a query that asks *when* ("When did...", "How long ago...", "What year...") favours
  notes that carry a time expression ("yesterday", "last Friday", "in 2019", "3 years
  ago"), since those are the notes a date can be read from.
"""
from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

_MONTHS = {name.lower(): number for number, name in enumerate(calendar.month_name) if name}
_MONTHS |= {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))

_MONTH_YEAR = re.compile(rf"\b({_MONTH})\.?\s*,?\s*((?:19|20)\d\d)\b", re.I)
_YEAR = re.compile(r"\b(?:in|during|of|since)\s+((?:19|20)\d\d)\b", re.I)
_RELATIVE = {
    "yesterday": timedelta(days=1), "last week": timedelta(weeks=1), "last month": timedelta(days=31),
    "last year": timedelta(days=366), "this week": timedelta(weeks=1), "this month": timedelta(days=31),
    "today": timedelta(days=1),
}

_ASKS_WHEN = re.compile(
    r"^\s*(when\b|what (?:year|month|day|date|time)\b|how long\b|which (?:year|month|day)\b|since when\b)", re.I
)
_TIME_EXPRESSION = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|last (?:night|week|weekend|month|year|summer|winter|spring|fall|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday)|next (?:week|weekend|month|year)|"
    r"this (?:week|weekend|month|year|morning)|(?:a |one |two |three |few |\d+ )?(?:days?|weeks?|months?|years?) ago|"
    r"ago|recently|just (?:got|started|finished|went|came)|since|(?:19|20)\d\d|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekend)\b",
    re.I,
)
# month names only when capitalised: "May" is a month, "may" a verb
_MONTH_NAME = re.compile(r"\b(" + "|".join(name for name in calendar.month_name if name) + r")\b")


def asks_when(query: str) -> bool:
    return bool(_ASKS_WHEN.search(query))


def mentions_time(text: str) -> bool:
    return bool(_TIME_EXPRESSION.search(text) or _MONTH_NAME.search(text))


def named_period(query: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The period a query names explicitly, as [start, end), or None."""
    if match := _MONTH_YEAR.search(query):
        month, year = _MONTHS[match.group(1).lower()], int(match.group(2))
        start = datetime(year, month, 1, tzinfo=timezone.utc)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
        return start, end
    if match := _YEAR.search(query):
        year = int(match.group(1))
        return datetime(year, 1, 1, tzinfo=timezone.utc), datetime(year + 1, 1, 1, tzinfo=timezone.utc)
    lowered = query.lower()
    for phrase, span in _RELATIVE.items():
        if phrase in lowered:
            return now - span, now
    return None


def time_matcher(query: str, now: datetime) -> Callable[[str, datetime], float]:
    """Score notes (text, stored time) against what `query` says about time: 1 when the note
    fits, 0 when it does not or the query says nothing. The query is read once, not per note."""
    period = named_period(query, now)
    if period is not None:
        start, end = period
        return lambda text, at: float(start <= at < end)
    if asks_when(query):
        return lambda text, at: float(mentions_time(text))
    return lambda text, at: 0.0
