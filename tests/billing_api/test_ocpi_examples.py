"""The worked examples of the OCPI 2.2.1 Tariffs module (mod_tariffs.asciidoc), with the spec's
own figures. Tariffs are written as in the spec's example JSON; where the prose and the JSON of
an example disagree, the test says which one it follows and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billing_api.rating import Cdr, rate
from billing_api.tariffs import parse_tariff

UPDATED = "2019-01-01T00:00:00Z"


@dataclass(frozen=True)
class Leg:
    """A stretch of a session: how long, how much energy, in which state and at what level."""

    minutes: float
    kwh: float | str = 0
    status: str = "Charging"
    current_a: float | None = None
    power_w: float | None = None


def session_of(start: str, *legs: Leg, zone: str = "Europe/Amsterdam") -> dict[str, Any]:
    """Samples at each leg boundary, starting at local time ``start``; the register starts at
    12 345 Wh so nothing can rely on it starting at zero."""
    moment = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(zone))
    energy = Decimal(12345)
    samples = []
    for leg in legs:
        samples.append(_sample(moment, energy, leg))
        moment += timedelta(minutes=leg.minutes)
        energy += Decimal(str(leg.kwh)) * 1000
    samples.append(_sample(moment, energy, Leg(0, status="Finishing")))
    return {"time_zone": zone, "samples": samples}


def _sample(moment: datetime, energy: Decimal, leg: Leg) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "timestamp": moment.isoformat(),
        "energy_wh": energy,
        "status": leg.status,
    }
    if leg.current_a is not None:
        sample["current_a"] = leg.current_a
    if leg.power_w is not None:
        sample["power_w"] = leg.power_w
    return sample


def tariff(*elements: dict[str, Any], **fields: Any) -> Any:
    return parse_tariff(
        {"id": "T", "currency": "EUR", "elements": list(elements), "last_updated": UPDATED} | fields
    )


def component(kind: str, price: str, step: int, vat: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "price": Decimal(price), "step_size": step}
    if vat is not None:
        out["vat"] = Decimal(vat)
    return out


def totals(cdr: Cdr) -> tuple[Decimal, Decimal]:
    return cdr.total_cost.excl_vat, cdr.total_cost.incl_vat


def amounts(cdr: Cdr) -> list[tuple[str, Decimal]]:
    return [(line.dimension, line.amount) for line in cdr.cost_breakdown]


CHARGE_20_KWH = session_of("2019-03-04T08:00", Leg(120, 20))
ENERGY_025 = component("ENERGY", "0.25", 1, "10.0")
START_FEE = component("FLAT", "0.50", 1, "20.0")


def test_simple_tariff_0_25_euro_per_kwh() -> None:
    cdr = rate(tariff({"price_components": [ENERGY_025]}), CHARGE_20_KWH)
    assert totals(cdr) == (Decimal("5.00"), Decimal("5.50"))


def test_0_25_euro_per_kwh_plus_start_fee() -> None:
    cdr = rate(tariff({"price_components": [START_FEE, ENERGY_025]}), CHARGE_20_KWH)
    assert totals(cdr) == (Decimal("5.50"), Decimal("6.10"))
    assert cdr.total_fixed_cost is not None
    assert cdr.total_fixed_cost.excl_vat == Decimal("0.50")


def test_0_25_euro_per_kwh_plus_minimum_price() -> None:
    minimum = tariff(
        {"price_components": [ENERGY_025]}, min_price={"excl_vat": "0.50", "incl_vat": "0.55"}
    )
    assert totals(rate(minimum, CHARGE_20_KWH)) == (Decimal("5.00"), Decimal("5.50"))
    short = rate(minimum, session_of("2019-03-04T08:00", Leg(10, "1.5")))
    assert totals(short) == (Decimal("0.50"), Decimal("0.55"))
    assert short.price_limit_adjustment is not None


def test_0_25_euro_per_kwh_plus_parking_fee_plus_start_fee() -> None:
    parking = component("PARKING_TIME", "2.00", 900, "20.0")
    plan = tariff({"price_components": [START_FEE, ENERGY_025, parking]})
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(120, 20), Leg(40, status="SuspendedEV")))
    assert totals(cdr) == (Decimal("7.00"), Decimal("7.90"))
    parking_line = cdr.cost_breakdown[-1]
    assert (parking_line.quantity, parking_line.amount) == (Decimal("0.750"), Decimal("1.50"))


def test_start_fee_plus_max_price_and_tariff_end_date() -> None:
    plan = tariff(
        {"price_components": [START_FEE, ENERGY_025]},
        max_price={"excl_vat": "10.00", "incl_vat": "11.00"},
        end_date_time="2019-06-30T23:59:59Z",
    )
    assert totals(rate(plan, session_of("2019-03-04T08:00", Leg(300, 50)))) == (
        Decimal("10.00"),
        Decimal("11.00"),
    )
    assert totals(rate(plan, session_of("2019-03-04T08:00", Leg(180, 30)))) == (
        Decimal("8.00"),
        Decimal("8.85"),
    )


def test_simple_2_euro_per_hour_charging_time() -> None:
    plan = tariff({"price_components": [component("TIME", "2.00", 60, "10.0")]})
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(150, 11)))
    assert totals(cdr) == (Decimal("5.00"), Decimal("5.50"))


def test_3_euro_per_hour_and_5_euro_per_hour_parking() -> None:
    plan = tariff(
        {
            "price_components": [
                component("TIME", "3.00", 60, "10.0"),
                component("PARKING_TIME", "5.00", 300, "20.0"),
            ]
        }
    )
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(150, 20), Leg(42, status="SuspendedEV")))
    assert totals(cdr) == (Decimal("11.25"), Decimal("12.75"))


def test_ad_hoc_tariff_with_alternative_text_1_90_per_hour() -> None:
    plan = tariff(
        {"price_components": [component("TIME", "1.90", 300, "5.2")]},
        type="AD_HOC_PAYMENT",
        tariff_alt_text=[{"language": "en", "text": "2.00 euro p/hour including VAT."}],
    )
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(150, 20)))
    assert totals(cdr) == (Decimal("4.75"), Decimal("5.00"))


def test_alternative_url_tariff_at_the_real_time_price_billed_per_100_wh() -> None:
    # The spec's 0.25 figure (5.50 for 20.5 kWh) does not multiply out (20.5 x 0.25 = 5.125);
    # its real-time variant at 0.22 does, so that is the one pinned down here.
    plan = tariff({"price_components": [component("ENERGY", "0.22", 100, "10.0")]})
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(120, "20.45")))
    assert cdr.cost_breakdown[0].quantity == Decimal("20.500")
    assert totals(cdr) == (Decimal("4.51"), Decimal("4.96"))


COMPLEX = tariff(
    {"price_components": [component("FLAT", "2.50", 1, "15.0")]},
    {
        "price_components": [component("TIME", "1.00", 900, "20.0")],
        "restrictions": {"max_current": 32.00},
    },
    {
        "price_components": [component("TIME", "2.00", 600, "20.0")],
        "restrictions": {
            "min_current": 32.00,
            "day_of_week": ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY"],
        },
    },
    {
        "price_components": [component("TIME", "1.25", 600, "20.0")],
        "restrictions": {"min_current": 32.00, "day_of_week": ["SATURDAY", "SUNDAY"]},
    },
    {
        "price_components": [component("PARKING_TIME", "5.00", 300, "10.0")],
        "restrictions": {
            "start_time": "09:00",
            "end_time": "18:00",
            "day_of_week": ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY"],
        },
    },
    {
        "price_components": [component("PARKING_TIME", "6.00", 300, "10.0")],
        "restrictions": {"start_time": "10:00", "end_time": "17:00", "day_of_week": ["SATURDAY"]},
    },
    type="REGULAR",
)


def test_complex_tariff_monday_morning_at_16_amps() -> None:
    assert datetime(2019, 3, 4).strftime("%A") == "Monday"
    session = session_of(
        "2019-03-04T09:30", Leg(147, 20, current_a=16), Leg(42, status="SuspendedEV")
    )
    cdr = rate(COMPLEX, session)
    assert totals(cdr) == (Decimal("8.75"), Decimal("10.00"))
    billed = [(line.dimension, line.quantity) for line in cdr.cost_breakdown]
    assert billed == [("FLAT", 1), ("TIME", Decimal("2.500")), ("PARKING_TIME", Decimal("0.750"))]


def test_complex_tariff_saturday_afternoon_at_43_amps() -> None:
    session = session_of(
        "2019-03-09T13:30", Leg(114, 30, current_a=43), Leg(71, status="SuspendedEV")
    )
    cdr = rate(COMPLEX, session)
    assert totals(cdr) == (Decimal("12.50"), Decimal("14.13"))
    billed = [(line.dimension, line.quantity) for line in cdr.cost_breakdown]
    assert billed == [("FLAT", 1), ("TIME", Decimal("2.000")), ("PARKING_TIME", Decimal("1.250"))]


def test_free_of_charge_tariff() -> None:
    plan = tariff({"price_components": [component("FLAT", "0.00", 0)]})
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(60, 10), Leg(30, status="SuspendedEV")))
    assert totals(cdr) == (Decimal("0.00"), Decimal("0.00"))


def test_first_hour_parking_and_first_kwh_free() -> None:
    # The spec's JSON spells the key "tariff_restrictions"; OCPI's field is "restrictions".
    # min/max_duration count from plug-in, so the spec's "first hour of parking" is the first
    # hour of the session: the car waits an hour, fast-charges 20 kWh in 15 minutes and stays
    # 1.75 hours more: 2.75 hours of parking in all, 7.30 euro.
    plan = tariff(
        {
            "price_components": [component("PARKING_TIME", "0.0", 60)],
            "restrictions": {"min_duration": 0, "max_duration": 3600},
        },
        {
            "price_components": [component("PARKING_TIME", "2.0", 60)],
            "restrictions": {"min_duration": 3600, "max_duration": 10800},
        },
        {
            "price_components": [component("PARKING_TIME", "3.0", 60)],
            "restrictions": {"min_duration": 10800},
        },
        {"price_components": [component("ENERGY", "0.0", 1)], "restrictions": {"max_kwh": 1.0}},
        {"price_components": [component("ENERGY", "0.2", 1)], "restrictions": {"min_kwh": 1.0}},
    )
    session = session_of(
        "2019-03-04T08:00",
        Leg(60, status="SuspendedEV"),
        Leg(15, 20),
        Leg(105, status="SuspendedEV"),
    )
    cdr = rate(plan, session)
    assert cdr.total_cost.excl_vat == Decimal("7.30")
    assert cdr.total_parking_time == Decimal("2.750")
    assert amounts(cdr) == [
        ("ENERGY", Decimal("0.00")),
        ("ENERGY", Decimal("3.80")),
        ("PARKING_TIME", Decimal("0.00")),
        ("PARKING_TIME", Decimal("3.50")),
    ]


def test_max_power_restriction_switches_price_with_power() -> None:
    # Prices from the example's JSON (0.20/0.35/0.50); they give the spec's breakdown
    # 0.20 + 20.00 + 0.10 = 20.30, the bullet list's 1.00/1.50/2.00 do not.
    plan = tariff(
        {
            "price_components": [component("ENERGY", "0.20", 1, "20.0")],
            "restrictions": {"max_power": 16.00},
        },
        {
            "price_components": [component("ENERGY", "0.35", 1, "20.0")],
            "restrictions": {"max_power": 32.00},
        },
        {"price_components": [component("ENERGY", "0.50", 1, "20.0")]},
        type="REGULAR",
    )
    session = session_of(
        "2019-03-04T08:00",
        Leg(10, 1, power_w=6000),
        Leg(50, 40, power_w=48000),
        Leg(7.5, "0.5", power_w=4000),
    )
    cdr = rate(plan, session)
    assert cdr.total_cost.excl_vat == Decimal("20.30")
    assert amounts(cdr) == [("ENERGY", Decimal("0.30")), ("ENERGY", Decimal("20.00"))]
    assert cdr.cost_breakdown[0].quantity == Decimal("1.500")


def test_max_duration_restriction_makes_the_first_30_minutes_free() -> None:
    plan = tariff(
        {
            "price_components": [component("ENERGY", "0.00", 1, "20.0")],
            "restrictions": {"max_duration": 1800},
        },
        {
            "price_components": [component("ENERGY", "0.25", 1, "20.0")],
            "restrictions": {"max_duration": 3600},
        },
        {"price_components": [component("ENERGY", "0.40", 1, "20.0")]},
    )
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(30, 5), Leg(10, "1.2")))
    assert cdr.total_cost.excl_vat == Decimal("0.30")
    assert amounts(cdr) == [("ENERGY", Decimal("0.00")), ("ENERGY", Decimal("0.30"))]


STEP_SIZE = tariff(
    {
        "price_components": [
            component("TIME", "1.20", 1800),
            component("PARKING_TIME", "1.00", 900),
        ],
        "restrictions": {"start_time": "00:00", "end_time": "17:00"},
    },
    {
        "price_components": [
            component("TIME", "2.40", 900),
            component("PARKING_TIME", "1.00", 900),
        ],
        "restrictions": {"start_time": "17:00", "end_time": "20:00"},
    },
    {
        "price_components": [component("TIME", "2.40", 900)],
        "restrictions": {"start_time": "20:00", "end_time": "23:59"},
    },
)


def test_step_size_when_switching_tariff_element_1() -> None:
    session = session_of(
        "2019-03-04T16:55", Leg(10, 2), Leg(2, status="SuspendedEV"), zone="Europe/Berlin"
    )
    cdr = rate(STEP_SIZE, session)
    assert amounts(cdr) == [
        ("TIME", Decimal("0.10")),
        ("TIME", Decimal("0.40")),
        ("PARKING_TIME", Decimal("0.25")),
    ]
    assert cdr.total_cost.excl_vat == Decimal("0.75")


def test_step_size_when_switching_tariff_element_2() -> None:
    # As told ("immediately unplug") there is no parking: 0.50 + 0.80. The spec's total of
    # 2.05 also bills 45 minutes of parking (0.75), which needs a car parked 31-45 minutes.
    charged_only = rate(STEP_SIZE, session_of("2019-03-04T16:35", Leg(35, 4), zone="Europe/Berlin"))
    assert amounts(charged_only) == [("TIME", Decimal("0.50")), ("TIME", Decimal("0.80"))]
    assert charged_only.total_cost.excl_vat == Decimal("1.30")

    then_parked = session_of(
        "2019-03-04T16:35", Leg(35, 4), Leg(45, status="SuspendedEV"), zone="Europe/Berlin"
    )
    assert rate(STEP_SIZE, then_parked).total_cost.excl_vat == Decimal("2.05")


def test_step_size_when_switching_to_free_of_charge_tariff_element() -> None:
    # As told (charge 19:55-20:05, park 20:05-20:07) the parking falls after 20:00 and is free.
    as_told = session_of(
        "2019-03-04T19:55", Leg(10, 2), Leg(2, status="SuspendedEV"), zone="Europe/Berlin"
    )
    assert amounts(rate(STEP_SIZE, as_told)) == [
        ("TIME", Decimal("0.20")),
        ("TIME", Decimal("0.40")),
    ]
    # The spec's breakdown (5 min charging and 5 min parking before 20:00) comes from a session
    # that also parks before 20:00: parking is rounded up to 15 minutes by the last
    # PARKING_TIME component, the one before 20:00.
    parked_before_eight = session_of(
        "2019-03-04T19:50",
        Leg(5, 1),
        Leg(5, status="SuspendedEV"),
        Leg(5, 1),
        zone="Europe/Berlin",
    )
    cdr = rate(STEP_SIZE, parked_before_eight)
    assert amounts(cdr) == [
        ("TIME", Decimal("0.20")),
        ("TIME", Decimal("0.40")),
        ("PARKING_TIME", Decimal("0.25")),
    ]
    assert cdr.total_cost.excl_vat == Decimal("0.85")


def test_step_size_note_115_2_wh_is_billed_as_116_wh() -> None:
    plan = tariff({"price_components": [component("ENERGY", "0.25", 1)]})
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(5, "0.1152")))
    assert cdr.cost_breakdown[0].quantity == Decimal("0.116")
    assert cdr.cost_breakdown[0].amount == Decimal("0.03")  # 0.029 euro, rounded to the cent
