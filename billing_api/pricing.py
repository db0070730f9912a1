"""What a driver will pay at a station, shown before charging (EU price transparency).

Every element of the tariff in force, each with its prices excluding and including VAT and
the conditions under which it applies, structured so that the assistant and web pages can
phrase them in the driver's language. Conditions of time, date and weekday are evaluated
for "now"; those that depend on the session itself (energy, power, duration) are listed.
"""

from __future__ import annotations

from datetime import date, datetime, time
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from billing_api.money import round_money
from billing_api.tariffs import PriceComponent, Tariff, TariffRestrictions

# OCPI prices TIME and PARKING_TIME per hour and ENERGY per kWh; step sizes are in seconds
# and in Wh.
_UNITS = {"ENERGY": "kWh", "TIME": "hour", "PARKING_TIME": "hour", "FLAT": "session"}


def price_sheet(tariff: Tariff, *, at: datetime, time_zone: ZoneInfo) -> dict[str, Any]:
    """The tariff as a driver should see it at ``at`` (local time in ``time_zone``)."""
    local = at.astimezone(time_zone)
    return {
        "tariff_id": tariff.id,
        "currency": tariff.currency,
        "at": local.isoformat(),
        "elements": [
            {
                "applies_now": _clock_matches(element.restrictions, local),
                "conditions": _conditions(element.restrictions),
                "components": [_component(c) for c in element.price_components],
            }
            for element in tariff.elements
        ],
        "min_price": tariff.min_price.model_dump() if tariff.min_price else None,
        "max_price": tariff.max_price.model_dump() if tariff.max_price else None,
        "alt_text": [t.model_dump() for t in tariff.tariff_alt_text],
    }


def _component(component: PriceComponent) -> dict[str, Any]:
    vat = component.vat
    incl = None if vat is None else round_money(Fraction(component.price) * (100 + Fraction(vat))
                                                / 100)
    line: dict[str, Any] = {
        "type": component.type.value,
        "unit": _UNITS[component.type.value],
        "price_excl_vat": component.price,
        "price_incl_vat": incl,
        "vat_percent": vat,
        "step_size": component.step_size,
    }
    if component.type.value in ("TIME", "PARKING_TIME"):
        line["per_minute_incl_vat"] = None if incl is None else round_money(
            Fraction(component.price) * (100 + Fraction(vat or 0)) / 100 / 60)
    return line


def _conditions(restrictions: TariffRestrictions | None) -> dict[str, Any]:
    if restrictions is None:
        return {}
    return {k: v for k, v in restrictions.model_dump(exclude_none=True).items()
            if v not in ([], None)}


def _clock_matches(restrictions: TariffRestrictions | None, local: datetime) -> bool:
    """Whether the time, date and weekday conditions hold at ``local``."""
    if restrictions is None:
        return True
    r = restrictions
    if r.day_of_week and local.strftime("%A").upper() not in {d.value for d in r.day_of_week}:
        return False
    today = local.date()
    if r.start_date and today < date.fromisoformat(r.start_date):
        return False
    if r.end_date and today >= date.fromisoformat(r.end_date):
        return False
    if r.start_time or r.end_time:
        now = local.time()
        start = time.fromisoformat(r.start_time) if r.start_time else time.min
        end = time.fromisoformat(r.end_time) if r.end_time else None
        if end is None:
            return now >= start
        if start == end:
            return True
        # A window that ends before it starts wraps midnight (22:00-06:00).
        return start <= now < end if start < end else now >= start or now < end
    return True

