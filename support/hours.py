"""Business hours: when a team is open, when it opens next, and SLA clocks that run only
while it is open.

A team's hours are a small JSON object in its local time zone (Europe/Stockholm unless
told otherwise)::

    {"mon": [["08:00", "17:00"]], "tue": [["08:00", "12:00"], ["13:00", "17:00"]], ...,
     "closed": ["2026-12-24", "2026-12-25"]}

Days left out are closed; ``"24:00"`` ends a day. An object without any day is open round
the clock. Local times are turned into instants with :mod:`zoneinfo`, so a day with a
daylight-saving change is as long as it really is.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
# How far ahead we look for an opening before deciding there is none.
HORIZON_DAYS = 400


class InvalidHours(ValueError):
    """Business hours that do not parse."""


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` checked and normalised (sorted intervals); raises :class:`InvalidHours`."""
    unknown = set(spec) - {*DAYS, "closed"}
    if unknown:
        raise InvalidHours(f"unknown keys {sorted(unknown)}; days are {', '.join(DAYS)}")
    clean: dict[str, Any] = {}
    for day in DAYS:
        if day not in spec:
            continue
        intervals = []
        for interval in spec[day] or []:
            if (not isinstance(interval, list | tuple) or len(interval) != 2
                    or not all(isinstance(t, str) and _TIME.match(t) for t in interval)):
                raise InvalidHours(f"{day}: intervals are [\"HH:MM\", \"HH:MM\"]")
            start, end = interval
            if _minutes(start) >= _minutes(end):
                raise InvalidHours(f"{day}: {start}-{end} ends before it starts")
            intervals.append([start, end])
        intervals.sort()
        for (_, end), (start, _) in pairwise(intervals):
            if _minutes(start) < _minutes(end):
                raise InvalidHours(f"{day}: intervals overlap")
        clean[day] = intervals
    closed = []
    for value in spec.get("closed") or []:
        try:
            closed.append(date.fromisoformat(str(value)).isoformat())
        except ValueError:
            raise InvalidHours(f"closed: {value!r} is not a date (YYYY-MM-DD)") from None
    if closed:
        clean["closed"] = sorted(set(closed))
    return clean


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def always_open(spec: dict[str, Any]) -> bool:
    return not any(day in spec for day in DAYS)


def intervals_on(spec: dict[str, Any], zone: ZoneInfo, day: date
                 ) -> list[tuple[datetime, datetime]]:
    """The open intervals of one local day, as UTC instants."""
    if day.isoformat() in (spec.get("closed") or []):
        return []
    found = []
    for start, end in spec.get(DAYS[day.weekday()]) or []:
        opens = _instant(day, start, zone)
        closes = _instant(day, end, zone)
        found.append((opens, closes))
    return found


def _instant(day: date, text: str, zone: ZoneInfo) -> datetime:
    if text == "24:00":
        return datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
    hours, minutes = (int(part) for part in text.split(":"))
    return datetime.combine(day, time(hours, minutes), zone).astimezone(UTC)


def _days_from(at: datetime, zone: ZoneInfo) -> Any:
    first = at.astimezone(zone).date() - timedelta(days=1)  # an interval may start yesterday
    for n in range(HORIZON_DAYS):
        yield first + timedelta(days=n)


def is_open(spec: dict[str, Any], time_zone: str, at: datetime) -> bool:
    if always_open(spec):
        return True
    zone = ZoneInfo(time_zone)
    day = at.astimezone(zone).date()
    return any(opens <= at < closes for d in (day - timedelta(days=1), day)
               for opens, closes in intervals_on(spec, zone, d))


def next_open(spec: dict[str, Any], time_zone: str, at: datetime) -> datetime | None:
    """``at`` when open then, else the next opening; None when it never opens."""
    if always_open(spec):
        return at
    zone = ZoneInfo(time_zone)
    for day in _days_from(at, zone):
        for opens, closes in intervals_on(spec, zone, day):
            if closes > at:
                return max(opens, at)
    return None


def add_business_minutes(spec: dict[str, Any], time_zone: str, start: datetime,
                         minutes: float) -> datetime:
    """The instant ``minutes`` of open time after ``start`` (``start`` plus ``minutes``
    round the clock when the team is always open or never opens)."""
    if always_open(spec):
        return start + timedelta(minutes=minutes)
    zone = ZoneInfo(time_zone)
    left = timedelta(minutes=minutes)
    for day in _days_from(start, zone):
        for opens, closes in intervals_on(spec, zone, day):
            if closes <= start:
                continue
            begin = max(opens, start)
            if begin + left <= closes:
                return begin + left
            left -= closes - begin
    return start + timedelta(minutes=minutes)


def business_minutes_between(spec: dict[str, Any], time_zone: str, start: datetime,
                             end: datetime) -> float:
    """Open minutes from ``start`` to ``end`` (reports measure response times with it)."""
    if end <= start:
        return 0.0
    if always_open(spec):
        return (end - start).total_seconds() / 60
    zone = ZoneInfo(time_zone)
    total = timedelta()
    for day in _days_from(start, zone):
        if datetime.combine(day, time(0), zone) > end:
            break
        for opens, closes in intervals_on(spec, zone, day):
            lo, hi = max(opens, start), min(closes, end)
            if hi > lo:
                total += hi - lo
    return total.total_seconds() / 60


# ---------------------------------------------------------------- telling the driver

_WEEKDAYS = {
    "sv": ("måndag", "tisdag", "onsdag", "torsdag", "fredag", "lördag", "söndag"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}


def describe(at: datetime, *, now: datetime, time_zone: str, language: str) -> str:
    """When ``at`` is, as a driver reads it: "i morgon kl. 08:00", "on Monday at 08:00"."""
    zone = ZoneInfo(time_zone)
    local, today = at.astimezone(zone), now.astimezone(zone).date()
    clock = local.strftime("%H:%M")
    days = (local.date() - today).days
    sv = language == "sv"
    if days <= 0:
        return f"i dag kl. {clock}" if sv else f"today at {clock}"
    if days == 1:
        return f"i morgon kl. {clock}" if sv else f"tomorrow at {clock}"
    weekday = _WEEKDAYS["sv" if sv else "en"][local.weekday()]
    if days < 7:
        return f"på {weekday} kl. {clock}" if sv else f"on {weekday} at {clock}"
    if sv:
        return f"{weekday} {local.day}/{local.month} kl. {clock}"
    return f"on {weekday} {local:%d %B} at {clock}"
