"""What every action shares: the driver it acts for, slots read as our types, money and
numbers in the driver's language, handing off to a person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.numbers import format_currency, format_decimal
from rasa_sdk import Tracker
from rasa_sdk.events import ConversationPaused, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from assistant.actions import context, queries

LANGUAGES = ("sv", "en")
LOCALES = {"sv": "sv_SE", "en": "en_SE"}
# Swedish "52,30 kr"; English "SEK 52.30" (en_SE would print the Swedish form).
_MONEY = {"sv": ("sv_SE", None), "en": ("en", "¤\xa0#,##0.00")}
HANDOFF_REASONS = ("asked", "fallback", "dispute", "damage", "action_failed", "safety")


def language(tracker: Tracker) -> str:
    value = tracker.get_slot("language")
    return value if value in LANGUAGES else "sv"


def money(amount: Decimal, language: str, currency: str = "SEK") -> str:
    locale, pattern = _MONEY[language]
    return format_currency(amount, currency, format=pattern, locale=locale,
                           currency_digits=pattern is None)


# Numbers beside English money ("0.5 kWh at SEK 1.68") need the English decimal point, which
# en_SE would print as a comma.
_NUMBER_LOCALES = {"sv": "sv_SE", "en": "en"}


def number(value: Decimal | float | int, language: str, digits: int = 2) -> str:
    pattern = "#,##0." + "#" * digits if digits else "#,##0"
    return format_decimal(value, format=pattern, locale=_NUMBER_LOCALES[language])


def when(at: datetime, language: str, time_zone: str) -> str:
    """A moment in local time: "3 okt. 2026 10:00" / "3 Oct 2026, 10:00"."""
    return format_datetime(at.astimezone(ZoneInfo(time_zone)), "d MMM y HH:mm",
                           locale=LOCALES[language])


def clock(at: datetime, time_zone: str) -> str:
    return at.astimezone(ZoneInfo(time_zone)).strftime("%H:%M")


@dataclass(frozen=True)
class Driver:
    """The verified driver an action acts for; ``id_tags`` as billing links them now (the
    tracker's copy may be stale)."""

    id: int
    id_tags: tuple[str, ...]
    language: str

    @property
    def label(self) -> str:
        return f"driver:{self.id}"


async def verified_driver(dispatcher: CollectingDispatcher, tracker: Tracker) -> Driver | None:
    """The driver, or None after asking them to verify who they are."""
    driver_id = tracker.get_slot("driver_id")
    if not tracker.get_slot("verified") or driver_id in (None, ""):
        dispatcher.utter_message(response="utter_verify_first")
        return None
    driver_id = int(driver_id)
    tags = await context.db(queries.driver_tags, driver_id=driver_id)
    return Driver(driver_id, tuple(tags), language(tracker))


def handoff(reason: str) -> list[dict[str, Any]]:
    """Ask for a person: the dialogue records the escalation with ``reason``."""
    assert reason in HANDOFF_REASONS, reason
    return [SlotSet("handoff_reason", reason), ConversationPaused()]


def text_slot(tracker: Tracker, name: str) -> str | None:
    value = tracker.get_slot(name)
    return str(value).strip() or None if value not in (None, "") else None


def station_slot(tracker: Tracker) -> str | None:
    value = text_slot(tracker, "station_id")
    return value.upper() if value else None


def station_and_connector(dispatcher: CollectingDispatcher, tracker: Tracker
                          ) -> tuple[str, int] | None:
    """The station and connector the driver means, or None after asking for what's missing."""
    station_id, connector = station_slot(tracker), int_slot(tracker, "connector")
    if station_id is None or connector is None:
        dispatcher.utter_message(response="utter_ask_station_id" if station_id is None
                                 else "utter_ask_connector")
        return None
    return station_id, connector


def int_slot(tracker: Tracker, name: str) -> int | None:
    value = tracker.get_slot(name)
    try:
        return int(float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def offset(tracker: Tracker) -> int:
    """How far back "the one before that" goes: 0 the latest (the dialogue's ``offset``)."""
    return max(0, int_slot(tracker, "offset") or 0)


def period(tracker: Tracker, today: date) -> tuple[date, date] | None:
    """The ``date`` slot as [since, until): a day, or a period with both ends inclusive."""
    value = tracker.get_slot("date")
    try:
        if isinstance(value, dict) and value.get("from") and value.get("to"):
            since = date.fromisoformat(str(value["from"]))
            return since, date.fromisoformat(str(value["to"])) + timedelta(days=1)
        if isinstance(value, str) and value:
            day = date.fromisoformat(value)
            return day, day + timedelta(days=1)
    except ValueError:
        return None
    return None


def month_back(today: date, months: int) -> tuple[date, date]:
    """The calendar month ``months`` before today's (0: this month so far)."""
    year, month = today.year, today.month - months
    while month < 1:
        year, month = year - 1, month + 12
    since = date(year, month, 1)
    until = date(year + (month == 12), month % 12 + 1, 1)
    return since, until


def refused(dispatcher: CollectingDispatcher, refusal: Any) -> list[dict[str, Any]]:
    """A safety rule said no: tell the driver why and hand over to a person."""
    dispatcher.utter_message(response=f"utter_refused_{refusal.code}")
    return handoff("safety")


def failed(dispatcher: CollectingDispatcher, result: Any, station_id: str
           ) -> list[dict[str, Any]]:
    """The station did not do it (refused, offline, silent, error): hand over."""
    outcome = str(result.outcome)
    template = ("utter_station_unreachable" if outcome in ("offline", "timeout")
                else "utter_command_failed")
    dispatcher.utter_message(response=template, station_id=station_id)
    return handoff("action_failed")
