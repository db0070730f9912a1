"""A tariff's price lines in the driver's words: each price with when it applies.

OCPI applies, per dimension, the first tariff element whose restrictions hold. A day price
after a night element (22:00-06:00) with no restriction of its own therefore applies the
rest of the day; it is shown as 06-22 (with an en dash), the complement of the windows
before it. An element after an unrestricted one of the same dimension never applies and
is left out.
"""

from __future__ import annotations

from datetime import date
from typing import Any

DAYS = {
    "sv": {"MONDAY": "mån", "TUESDAY": "tis", "WEDNESDAY": "ons", "THURSDAY": "tor",
           "FRIDAY": "fre", "SATURDAY": "lör", "SUNDAY": "sön"},
    "en": {"MONDAY": "Mon", "TUESDAY": "Tue", "WEDNESDAY": "Wed", "THURSDAY": "Thu",
           "FRIDAY": "Fri", "SATURDAY": "Sat", "SUNDAY": "Sun"},
}
_WEEK = list(DAYS["en"])
WORDS = {
    "sv": {"otherwise": "övrig tid", "after": "efter {n} min", "first": "första {n} min",
           "min_kwh": "från {n} kWh", "max_kwh": "upp till {n} kWh",
           "min_power": "från {n} kW", "max_power": "upp till {n} kW",
           "min_current": "från {n} A", "max_current": "upp till {n} A",
           "reservation": "bokning", "now": "gäller nu"},
    "en": {"otherwise": "other times", "after": "after {n} min", "first": "first {n} min",
           "min_kwh": "from {n} kWh", "max_kwh": "up to {n} kWh",
           "min_power": "from {n} kW", "max_power": "up to {n} kW",
           "min_current": "from {n} A", "max_current": "up to {n} A",
           "reservation": "reservation", "now": "applies now"},
}
_CLOCK = ("start_time", "end_time")
_DATES = ("start_date", "end_date")
DAY_MINUTES = 24 * 60


def _minute(clock: str | None, default: int) -> int:
    if not clock:
        return default
    hours, minutes = clock.split(":")[:2]
    return int(hours) * 60 + int(minutes)


def _clock(minute: int) -> str:
    hours, minutes = divmod(minute % DAY_MINUTES, 60)
    return f"{hours:02d}" if minutes == 0 else f"{hours:02d}:{minutes:02d}"


def _window(start: int, end: int) -> str:
    return f"{_clock(start)}\u2013{_clock(end)}"


def _covered(windows: list[tuple[int, int]]) -> list[bool]:
    minutes = [False] * DAY_MINUTES
    for start, end in windows:
        span = (end - start) % DAY_MINUTES or DAY_MINUTES
        for m in range(start, start + span):
            minutes[m % DAY_MINUTES] = True
    return minutes


def complement(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the day no window covers, as (start, end) minutes, wrapping midnight
    into one window ("22-06")."""
    covered = _covered(windows)
    if all(covered):
        return []
    if not any(covered):
        return [(0, 0)]
    first_covered = covered.index(True)
    free: list[tuple[int, int]] = []
    start: int | None = None
    for offset in range(DAY_MINUTES + 1):  # from a covered minute round to it again
        minute = (first_covered + offset) % DAY_MINUTES
        if offset < DAY_MINUTES and not covered[minute]:
            if start is None:
                start = minute
        elif start is not None:
            free.append((start, minute))
            start = None
    return sorted(free)


def _number(value: Any) -> str:
    return f"{float(value):g}"


def _days(days: list[str], lang: str) -> str:
    ordered = sorted(days, key=_WEEK.index)
    indices = [_WEEK.index(d) for d in ordered]
    if len(ordered) > 2 and indices == list(range(indices[0], indices[0] + len(indices))):
        return f"{DAYS[lang][ordered[0]]}\u2013{DAYS[lang][ordered[-1]]}"
    return ", ".join(DAYS[lang][d] for d in ordered)


def _in_force(conditions: dict[str, Any], day: date) -> bool:
    start, end = conditions.get("start_date"), conditions.get("end_date")
    return not ((start and day < date.fromisoformat(start))
                or (end and day >= date.fromisoformat(end)))


def labels(elements: list[dict[str, Any]], *, language: str, day: date
           ) -> dict[tuple[int, str], str | None]:
    """For each (element index, dimension) that can apply on ``day``, when it applies in
    words ("06-22", "efter 45 min"); None when always. ``elements`` as
    :func:`billing_api.pricing.price_sheet` lists them (``conditions``, ``components``)."""
    words = WORDS[language]
    found: dict[tuple[int, str], str | None] = {}
    dimensions = {c["type"] for e in elements for c in e["components"]}
    for dimension in dimensions:
        windows: list[tuple[int, int]] = []
        other_before = False  # an earlier element with conditions besides its clock
        for index, element in enumerate(elements):
            if dimension not in {c["type"] for c in element["components"]}:
                continue
            conditions = element.get("conditions") or {}
            if not _in_force(conditions, day):
                continue
            rest = {k: v for k, v in conditions.items() if k not in _DATES and v}
            parts: list[str] = []
            if rest.get("day_of_week"):
                parts.append(_days(list(rest["day_of_week"]), language))
            if any(k in rest for k in _CLOCK):
                start = _minute(rest.get("start_time"), 0)
                end = _minute(rest.get("end_time"), DAY_MINUTES)
                parts.append(_window(start, end))
                if set(rest) <= set(_CLOCK):
                    windows.append((start, end))
                else:
                    other_before = True
            elif not rest:
                if windows and not other_before:
                    free = complement(windows)
                    if not free:
                        break  # the windows before it cover the whole day
                    parts.append(", ".join(_window(s, e) for s, e in free))
                elif windows or other_before:
                    parts.append(words["otherwise"])
            else:
                other_before = True
            if rest.get("min_duration"):
                parts.append(words["after"].format(n=_number(rest["min_duration"] / 60)))
            if rest.get("max_duration"):
                parts.append(words["first"].format(n=_number(rest["max_duration"] / 60)))
            for key in ("min_kwh", "max_kwh", "min_power", "max_power", "min_current",
                        "max_current"):
                if rest.get(key) is not None:
                    parts.append(words[key].format(n=_number(rest[key])))
            if rest.get("reservation"):
                parts.append(words["reservation"])
            found[(index, dimension)] = " ".join(parts) or None
            if not rest:
                break  # unrestricted: nothing later of this dimension ever applies
    return found


def applies_now(elements: list[dict[str, Any]], labelled: dict[tuple[int, str], Any]
                ) -> set[tuple[int, str]]:
    """Per dimension with several lines, the line that prices a session starting now: the
    first whose clock, date and weekday conditions hold and that has no condition on the
    session itself (energy, power, duration)."""
    session_keys = {"min_kwh", "max_kwh", "min_power", "max_power", "min_current",
                    "max_current", "min_duration", "max_duration", "reservation"}
    now: set[tuple[int, str]] = set()
    per_dimension: dict[str, list[int]] = {}
    for index, dimension in sorted(labelled):
        per_dimension.setdefault(dimension, []).append(index)
    for dimension, indices in per_dimension.items():
        if len(indices) < 2:
            continue
        for index in indices:
            element = elements[index]
            conditions = element.get("conditions") or {}
            if element.get("applies_now") and not session_keys & set(conditions):
                now.add((index, dimension))
                break
    return now
