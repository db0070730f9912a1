"""Dates and periods in Swedish and English, relative to a given day: "förra månaden",
"i oktober", "last October", "yesterday", "igår", "3 november", "12/10".

A value is an ISO date ("2025-11-03") or a period ``{"from": …, "to": …}`` (both inclusive).
A month or weekday named without a direction means the most recent one for months ("i
oktober" in November is this October, in March it is last year's: drivers ask about bills
behind them) and the next one for weekdays ("på fredag" plans ahead; the past takes "i
fredags" or "last Friday").
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

MONTHS: dict[str, int] = {}
for _number, _names in enumerate([
    "january jan januari", "february feb februari", "march mar mars", "april apr",
    "may maj", "june jun juni", "july jul juli", "august aug augusti",
    "september sep sept", "october oct oktober okt", "november nov", "december dec",
], start=1):
    for _name in _names.split():
        MONTHS[_name] = _number

WEEKDAYS: dict[str, int] = {}
for _number, _names in enumerate([
    "monday mon måndag mandag", "tuesday tue tues tisdag", "wednesday wed onsdag",
    "thursday thu thurs torsdag", "friday fri fredag", "saturday sat lördag lordag",
    "sunday sun söndag sondag",
]):
    for _name in _names.split():
        WEEKDAYS[_name] = _number
# Swedish past weekday: "i tisdags", "i fredags".
PAST_WEEKDAYS = {"måndags": 0, "tisdags": 1, "onsdags": 2, "torsdags": 3, "fredags": 4,
                 "lördags": 5, "söndags": 6, "mandags": 0, "lordags": 5, "sondags": 6}

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "a": 1, "an": 1,
    "en": 1, "ett": 1, "två": 2, "tva": 2, "tre": 3, "fyra": 4, "fem": 5, "sex": 6,
}

_MONTH = "(?P<month>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_MONTH2 = "(?P<month2>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_WEEKDAY = "(?P<weekday>" + "|".join(sorted(WEEKDAYS, key=len, reverse=True)) + ")"
_NUM = "(?P<n>" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r"|\d{1,2})"
_UNIT = r"(?P<unit>days?|weeks?|months?|dagar|dag|veckor|vecka|månader|manader|månad|manad)"


@dataclass(frozen=True)
class Found:
    start: int
    end: int
    text: str
    value: str | dict[str, str]


def _iso(day: date) -> str:
    return day.isoformat()


def _period(first: date, last: date) -> dict[str, str]:
    return {"from": first.isoformat(), "to": last.isoformat()}


def _month_period(year: int, month: int) -> dict[str, str]:
    return _period(date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1]))


def _add_months(day: date, months: int) -> tuple[int, int]:
    index = day.year * 12 + day.month - 1 + months
    return index // 12, index % 12 + 1


def _recent_month(today: date, month: int, *, strictly_past: bool) -> int:
    """The year of the latest ``month`` that has begun (before this month if strictly)."""
    if month < today.month or (month == today.month and not strictly_past):
        return today.year
    return today.year - 1


def _week(day: date) -> tuple[date, date]:
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)


def _day_of(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _year_for_day(today: date, month: int, day: int) -> int:
    """A day without a year: this year's, unless that is more than a month ahead (then last
    year's, as a driver asking about "3 november" in January means the one just past)."""
    this = _day_of(today.year, month, day)
    if this is not None and this - today > timedelta(days=31):
        return today.year - 1
    return today.year


Rule = tuple[re.Pattern[str], Any]
_RULES: list[Rule] = []


def rule(pattern: str):  # type: ignore[no-untyped-def]
    def register(fn):  # type: ignore[no-untyped-def]
        _RULES.append((re.compile(pattern, re.IGNORECASE), fn))
        return fn

    return register


@rule(r"\b(?:between|mellan)\s+(?:the\s+|den\s+)?(?P<d1>\d{1,2})(?:st|nd|rd|th|:e|:a)?\s+"
      r"(?:and|och|-)\s+(?:the\s+|den\s+)?(?P<d2>\d{1,2})(?:st|nd|rd|th|:e|:a)?\s+" + _MONTH
      + r"(?:\s+(?P<year>\d{4}))?")
def _between_days(m: re.Match[str], today: date) -> Any:
    month = MONTHS[m["month"].lower()]
    year = int(m["year"]) if m["year"] else _year_for_day(today, month, int(m["d1"]))
    first, last = _day_of(year, month, int(m["d1"])), _day_of(year, month, int(m["d2"]))
    return _period(first, last) if first and last and first <= last else None


@rule(r"\b(?:the\s+)?day\s+before\s+yesterday\b|\bi\s*förrgår\b|\bi\s*forrgar\b")
def _day_before_yesterday(m: re.Match[str], today: date) -> Any:
    return _iso(today - timedelta(days=2))


@rule(r"\bday\s+after\s+tomorrow\b|\bi\s*övermorgon\b")
def _day_after_tomorrow(m: re.Match[str], today: date) -> Any:
    return _iso(today + timedelta(days=2))


@rule(r"\b(?:today|tonight|idag|i\s+dag|ikväll|i\s+kväll|ikvall)\b")
def _today(m: re.Match[str], today: date) -> Any:
    return _iso(today)


@rule(r"\b(?:yesterday|igår|i\s+går|igar)\b")
def _yesterday(m: re.Match[str], today: date) -> Any:
    return _iso(today - timedelta(days=1))


@rule(r"\b(?:tomorrow|imorgon|i\s+morgon|imorn|i\s+morn)\b")
def _tomorrow(m: re.Match[str], today: date) -> Any:
    return _iso(today + timedelta(days=1))


@rule(r"\b(?:(?P<en>" + _NUM + r"\s+" + _UNIT + r"\s+ago)|(?:för\s+)?"
      r"(?P<n2>" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r"|\d{1,2})\s+"
      r"(?P<unit2>dagar|dag|veckor|vecka|månader|manader|månad|manad)\s+sedan)\b")
def _ago(m: re.Match[str], today: date) -> Any:
    count = m["n"] or m["n2"]
    unit = (m["unit"] or m["unit2"]).lower()
    n = NUMBER_WORDS.get(count.lower()) or int(count)
    if unit.startswith(("day", "dag")):
        return _iso(today - timedelta(days=n))
    if unit.startswith(("week", "veck")):
        return _iso(today - timedelta(weeks=n))
    year, month = _add_months(today, -n)
    return _iso(date(year, month, min(today.day, calendar.monthrange(year, month)[1])))


@rule(r"\b(?:(?P<last>last|previous|förra|forra)|(?P<this>this|current|denna|den\s+här|"
      r"den\s+har|innevarande)|(?P<next>next|nästa|nasta))\s+"
      r"(?P<unit>week|month|year|veckan|månaden|manaden|året|aret|vecka|månad|år)\b")
def _relative_unit(m: re.Match[str], today: date) -> Any:
    unit = m["unit"].lower()
    shift = -1 if m["last"] else 1 if m["next"] else 0
    if unit.startswith(("week", "veck")):
        first, last = _week(today + timedelta(weeks=shift))
        return _period(first, last)
    if unit.startswith(("month", "månad", "manad")):
        return _month_period(*_add_months(today, shift))
    year = today.year + shift
    return _period(date(year, 1, 1), date(year, 12, 31))


@rule(r"\b(?:i\s+år|i\s+ar|hittills\s+i\s+år)\b")
def _this_year_sv(m: re.Match[str], today: date) -> Any:
    return _period(date(today.year, 1, 1), date(today.year, 12, 31))


@rule(r"\bi\s+fjol\b")
def _last_year_sv(m: re.Match[str], today: date) -> Any:
    return _period(date(today.year - 1, 1, 1), date(today.year - 1, 12, 31))


@rule(r"\b(?:since|sedan|sen|från|fran|from)\s+(?:the\s+)?(?:start\s+of\s+|början\s+av\s+)?"
      + _MONTH + r"(?!\s*\d)")
def _since_month(m: re.Match[str], today: date) -> Any:
    month = MONTHS[m["month"].lower()]
    year = _recent_month(today, month, strictly_past=False)
    return _period(date(year, month, 1), today)


@rule(r"\b(?:(?P<last>last|förra|forra|previous)\s+)?(?:in\s+|i\s+|during\s+|under\s+|for\s+|för\s+)?"
      + _MONTH + r"(?:\s+(?P<year>\d{4})|\s+(?P<lastyear>last\s+year|förra\s+året|forra\s+aret|"
      r"i\s+fjol))?\b(?!\s*\d)")
def _month(m: re.Match[str], today: date) -> Any:
    word = m["month"].lower()
    # "may", "mar", "sat", "jun"… are ordinary words too: short names need a preposition.
    prefixed = bool(re.match(r"(?i)(last|förra|forra|previous|in|i|during|under|for|för)\s",
                             m.group(0)))
    if (len(word) <= 3 or word in {"may", "mars", "maj"}) and not prefixed and not m["year"]:
        return None
    month = MONTHS[word]
    if m["year"]:
        year = int(m["year"])
    elif m["lastyear"]:
        year = today.year - 1
    else:
        year = _recent_month(today, month, strictly_past=bool(m["last"]))
    return _month_period(year, month)


@rule(r"\b(?:on\s+|den\s+|the\s+)?(?P<day>\d{1,2})(?:st|nd|rd|th|:e|:a)?\s+(?:of\s+)?" + _MONTH
      + r"(?:\s+(?P<year>\d{4}))?\b")
def _day_month(m: re.Match[str], today: date) -> Any:
    month, day = MONTHS[m["month"].lower()], int(m["day"])
    year = int(m["year"]) if m["year"] else _year_for_day(today, month, day)
    found = _day_of(year, month, day)
    return _iso(found) if found else None


@rule(r"\b(?:on\s+)?" + _MONTH + r"\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(?P<year>\d{4}))?\b")
def _month_day(m: re.Match[str], today: date) -> Any:
    month, day = MONTHS[m["month"].lower()], int(m["day"])
    year = int(m["year"]) if m["year"] else _year_for_day(today, month, day)
    found = _day_of(year, month, day)
    return _iso(found) if found else None


@rule(r"\b(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})\b")
def _iso_date(m: re.Match[str], today: date) -> Any:
    found = _day_of(int(m["y"]), int(m["m"]), int(m["d"]))
    return _iso(found) if found else None


@rule(r"(?<![\d/])(?P<d>\d{1,2})/(?P<m>\d{1,2})(?:/(?P<y>\d{2,4}))?(?![\d/])")
def _slash_date(m: re.Match[str], today: date) -> Any:
    # Day first, as written in Sweden and the UK.
    day, month = int(m["d"]), int(m["m"])
    if m["y"]:
        year = int(m["y"]) + (2000 if len(m["y"]) == 2 else 0)
    elif 1 <= month <= 12:
        year = _year_for_day(today, month, day)
    else:
        return None
    found = _day_of(year, month, day)
    return _iso(found) if found else None


@rule(r"\b(?:(?P<last>last|förra|forra|previous)\s+|(?P<next>next|nästa|nasta|this\s+coming)\s+"
      r"|on\s+|på\s+|pa\s+)?" + _WEEKDAY + r"\b")
def _weekday(m: re.Match[str], today: date) -> Any:
    word = m["weekday"].lower()
    if len(word) <= 4 and not (m["last"] or m["next"] or m.group(0).lower().startswith("on")):
        return None  # "sat", "wed", "sun" alone are too often something else
    target = WEEKDAYS[word]
    if m["last"]:
        back = (today.weekday() - target) % 7 or 7
        return _iso(today - timedelta(days=back))
    ahead = (target - today.weekday()) % 7
    if m["next"] or ahead == 0:
        ahead = ahead or 7
    return _iso(today + timedelta(days=ahead))


@rule(r"\bi\s+(?P<past>" + "|".join(PAST_WEEKDAYS) + r")\b")
def _past_weekday_sv(m: re.Match[str], today: date) -> Any:
    back = (today.weekday() - PAST_WEEKDAYS[m["past"].lower()]) % 7 or 7
    return _iso(today - timedelta(days=back))


@rule(r"(?<![\d.,:/-])(?:(?:in|for|during|i|för|under)\s+)(?P<year>20\d\d)\b(?![.,:/-]?\d)")
def _year(m: re.Match[str], today: date) -> Any:
    year = int(m["year"])
    return _period(date(year, 1, 1), date(year, 12, 31))


@rule(r"(?<![\d.,:/-])(?P<year>20\d\d)(?![.,:/-]?\d)(?!\s*(?:kr|sek|kwh|kronor))")
def _bare_year(m: re.Match[str], today: date) -> Any:
    year = int(m["year"])
    return _period(date(year, 1, 1), date(year, 12, 31))


def find_dates(text: str, today: date) -> Iterator[Found]:
    """Every date or period in ``text``, leftmost-longest, not overlapping."""
    candidates: list[tuple[int, int, int, re.Match[str], Any]] = []
    for order, (pattern, fn) in enumerate(_RULES):
        for m in pattern.finditer(text):
            value = fn(m, today)
            if value is not None:
                candidates.append((m.start(), -(m.end() - m.start()), order, m, value))
    taken: list[tuple[int, int]] = []
    for start, negative_length, _order, _m, value in sorted(candidates, key=lambda c: c[:3]):
        end = start - negative_length
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        # The span keeps its preposition ("in October"), as Duckling's does.
        yield Found(start, end, text[start:end], value)
