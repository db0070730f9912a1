"""The reservation restriction of OCPI 2.2.1 Tariffs: what a reservation costs before the
session it was made for, or instead of it when it expires unused. The spec's four reservation
examples (mod_tariffs.asciidoc, "Tariff example with reservation price" and the three after
it) come out exactly, each amount derived by hand beside it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing_api.rating import InvalidSessionError, TariffNotApplicableError, rate
from billing_api.tariffs import InvalidTariffError
from tests.billing_api.test_ocpi_examples import (
    ENERGY_025,
    START_FEE,
    Leg,
    component,
    session_of,
    tariff,
    totals,
)

CHARGING = {"price_components": [START_FEE, ENERGY_025]}


def reserving(*components: dict[str, Any], kind: str = "RESERVATION", **more: Any) -> dict:
    return {"price_components": list(components), "restrictions": {"reservation": kind, **more}}


def reserved(start: str, *legs: Leg, **reservation: Any) -> dict[str, Any]:
    """A session starting at local ``start`` (Amsterdam) after a reservation."""
    return {**session_of(start, *legs), "reservation": reservation}


def expired(reserved_at: str, expires_at: str) -> dict[str, Any]:
    return {
        "time_zone": "Europe/Amsterdam",
        "reservation": {"reserved_at": reserved_at, "expires_at": expires_at, "expired": True},
    }


def lines(cdr: Any) -> list[tuple[str | None, str, Decimal, Decimal]]:
    return [(ln.reservation, ln.dimension, ln.quantity, ln.amount) for ln in cdr.cost_breakdown]


# Amsterdam is UTC+1 on 2019-03-04: 07:45 local is 06:45Z.
RESERVED_0745 = "2019-03-04T07:45:00+01:00"


def test_spec_example_reservation_price_5_euro_per_hour() -> None:
    plan = tariff(reserving(component("TIME", "5.00", 60, "20.0")), CHARGING)
    cdr = rate(plan, reserved("2019-03-04T08:00", Leg(120, 20), reserved_at=RESERVED_0745))
    # reservation 15 min x 5.00/h = 1.25 (VAT 20 %: 0.25); start fee 0.50 (VAT 0.10);
    # 20 kWh x 0.25 = 5.00 (VAT 10 %: 0.50) -> 6.75 excl., 6.75 + 0.85 = 7.60 incl.
    assert totals(cdr) == (Decimal("6.75"), Decimal("7.60"))
    assert lines(cdr) == [
        ("RESERVATION", "TIME", Decimal("0.250"), Decimal("1.25")),
        (None, "FLAT", Decimal("1.000"), Decimal("0.50")),
        (None, "ENERGY", Decimal("20.000"), Decimal("5.00")),
    ]
    assert cdr.total_reservation_cost is not None
    assert (cdr.total_reservation_cost.excl_vat, cdr.total_reservation_cost.incl_vat) == (
        Decimal("1.25"), Decimal("1.50"))


def test_spec_example_reservation_fee_2_euro_and_5_euro_per_hour_in_5_minute_steps() -> None:
    plan = tariff(
        reserving(component("FLAT", "2.00", 1, "20.0"), component("TIME", "5.00", 300, "20.0")),
        CHARGING,
    )
    cdr = rate(plan, reserved("2019-03-04T08:00", Leg(120, 20),
                              reserved_at="2019-03-04T07:47:00+01:00"))
    # 13 min reserved, billed per 5 min: 15 min x 5.00/h = 1.25; reservation fee 2.00;
    # start fee 0.50; energy 5.00 -> 8.75 excl.; VAT 0.25 + 0.40 + 0.10 + 0.50 -> 10.00 incl.
    assert totals(cdr) == (Decimal("8.75"), Decimal("10.00"))
    time_line = cdr.cost_breakdown[1]
    assert (time_line.quantity, time_line.measured_quantity) == (Decimal("0.250"),
                                                                 Decimal("0.216667"))
    # The start fee alone is the session's fixed cost; the reservation fee is reservation cost.
    assert cdr.total_fixed_cost is not None
    assert cdr.total_fixed_cost.excl_vat == Decimal("0.50")
    assert cdr.total_reservation_cost is not None
    assert cdr.total_reservation_cost.excl_vat == Decimal("3.25")


EXPIRE_FEE_PLAN = tariff(
    reserving(component("FLAT", "4.00", 1, "20.0"), kind="RESERVATION_EXPIRES"),
    reserving(component("TIME", "2.00", 600, "20.0")),
    CHARGING,
)


def test_spec_example_reservation_with_expire_fee_when_charging_follows() -> None:
    cdr = rate(EXPIRE_FEE_PLAN, reserved("2019-03-04T08:00", Leg(120, 20),
                                         reserved_at="2019-03-04T07:38:00+01:00"))
    # 22 min reserved, billed per 10 min: 30 min x 2.00/h = 1.00; no expiry fee (charging
    # started); start fee 0.50; energy 5.00 -> 6.50 excl.; VAT 0.20 + 0.10 + 0.50 -> 7.30
    assert totals(cdr) == (Decimal("6.50"), Decimal("7.30"))
    assert [ln.reservation for ln in cdr.cost_breakdown] == ["RESERVATION", None, None]


def test_spec_example_reservation_with_expire_fee_when_it_expires() -> None:
    cdr = rate(EXPIRE_FEE_PLAN, expired(RESERVED_0745, "2019-03-04T08:45:00+01:00"))
    # "the driver has to pay the full amount of reserved time as well as an additional
    # expiration fee": 1 h x 2.00 = 2.00 (RESERVATION time) + 4.00 (RESERVATION_EXPIRES fee)
    # = 6.00 excl.; VAT 20 % = 1.20 -> 7.20 incl.
    assert totals(cdr) == (Decimal("6.00"), Decimal("7.20"))
    assert lines(cdr) == [
        ("RESERVATION_EXPIRES", "FLAT", Decimal("1.000"), Decimal("4.00")),
        ("RESERVATION", "TIME", Decimal("1.000"), Decimal("2.00")),
    ]


EXPIRE_TIME_PLAN = tariff(
    reserving(component("TIME", "6.00", 600, "20.0"), kind="RESERVATION_EXPIRES"),
    reserving(component("TIME", "3.00", 600, "20.0")),
    CHARGING,
)


def test_spec_example_reservation_with_expire_time_when_charging_follows() -> None:
    cdr = rate(EXPIRE_TIME_PLAN, reserved("2019-03-04T08:00", Leg(120, 20),
                                          reserved_at="2019-03-04T07:38:00+01:00"))
    # 22 min billed as 30 min x 3.00/h = 1.50; start fee 0.50; energy 5.00 -> 7.00 excl.;
    # VAT 0.30 + 0.10 + 0.50 -> 7.90 incl.
    assert totals(cdr) == (Decimal("7.00"), Decimal("7.90"))


def test_spec_example_reservation_with_expire_time_when_it_expires() -> None:
    cdr = rate(EXPIRE_TIME_PLAN, expired(RESERVED_0745, "2019-03-04T09:15:00+01:00"))
    # The RESERVATION_EXPIRES time replaces the RESERVATION time (ReservationRestrictionType
    # note): 1.5 h x 6.00 = 9.00 excl.; VAT 20 % = 1.80 -> 10.80 incl.
    assert totals(cdr) == (Decimal("9.00"), Decimal("10.80"))
    assert lines(cdr) == [("RESERVATION_EXPIRES", "TIME", Decimal("1.500"), Decimal("9.00"))]


def test_an_expired_reservations_cdr_has_only_the_reservation() -> None:
    cdr = rate(EXPIRE_TIME_PLAN, expired(RESERVED_0745, "2019-03-04T09:15:00+01:00"))
    out = cdr.to_ocpi()
    assert (out["start_date_time"].isoformat(), out["end_date_time"].isoformat()) == (
        "2019-03-04T06:45:00+00:00", "2019-03-04T08:15:00+00:00")
    assert (out["total_energy"], out["total_time"], out["total_parking_time"]) == (0, 0, 0)
    assert [
        [(d["type"], d["volume"]) for d in p["dimensions"]] for p in out["charging_periods"]
    ] == [[("RESERVATION_TIME", Decimal("1.5"))]]
    assert out["total_reservation_cost"] == {"excl_vat": Decimal("9.00"),
                                             "incl_vat": Decimal("10.80")}
    assert "total_fixed_cost" not in out and "total_time_cost" not in out


def test_the_cdr_starts_at_the_reservation_and_shows_its_period_and_lines() -> None:
    plan = tariff(reserving(component("TIME", "5.00", 60, "20.0")), CHARGING)
    cdr = rate(plan, reserved("2019-03-04T08:00", Leg(120, 20), reserved_at=RESERVED_0745))
    out = cdr.to_ocpi()
    assert out["start_date_time"].isoformat() == "2019-03-04T06:45:00+00:00"
    first, second = out["charging_periods"][:2]
    assert (first["start_date_time"].isoformat(), first["dimensions"]) == (
        "2019-03-04T06:45:00+00:00", [{"type": "RESERVATION_TIME", "volume": Decimal("0.25")}])
    assert second["start_date_time"].isoformat() == "2019-03-04T07:00:00+00:00"
    assert out["total_time"] == Decimal("2")  # the session's own two hours
    assert out["cost_breakdown"][0]["reservation"] == "RESERVATION"
    assert "reservation" not in out["cost_breakdown"][1]


def test_reservation_elements_follow_their_clock_restrictions() -> None:
    plan = tariff(
        reserving(component("TIME", "6.00", 1), start_time="07:00", end_time="09:00"),
        reserving(component("TIME", "1.20", 1)),
        CHARGING,
    )
    cdr = rate(plan, reserved("2019-03-04T07:30", Leg(60, 10),
                              reserved_at="2019-03-04T06:30:00+01:00"))
    # in time order: 06:30-07:00 local: 0.5 h x 1.20 = 0.60; 07:00-07:30: 0.5 h x 6.00 = 3.00
    assert [(ln.reservation, ln.unit_price, ln.amount) for ln in cdr.cost_breakdown[:2]] == [
        ("RESERVATION", Decimal("1.20"), Decimal("0.60")),
        ("RESERVATION", Decimal("6.00"), Decimal("3.00")),
    ]
    assert cdr.total_reservation_cost is not None
    assert cdr.total_reservation_cost.excl_vat == Decimal("3.60")
    reservation_periods = [
        p for p in cdr.charging_periods if p.dimensions[0].type == "RESERVATION_TIME"
    ]
    assert [p.dimensions[0].volume for p in reservation_periods] == [Decimal("0.5")] * 2


def test_a_reservations_duration_counts_from_when_it_was_made() -> None:
    plan = tariff(
        reserving(component("TIME", "0.00", 1), max_duration=600),  # the first 10 min free
        reserving(component("TIME", "6.00", 1)),
        CHARGING,
    )
    cdr = rate(plan, reserved("2019-03-04T08:00", Leg(60, 10),
                              reserved_at="2019-03-04T07:30:00+01:00"))
    # 07:30-07:40 free; 07:40-08:00: 20 min x 6.00/h = 2.00; the session's own duration
    # (for its charging elements) still counts from 08:00
    assert cdr.total_reservation_cost is not None
    assert cdr.total_reservation_cost.excl_vat == Decimal("2.00")
    assert [(ln.unit_price, ln.measured_quantity) for ln in cdr.cost_breakdown[:2]] == [
        (Decimal("0.00"), Decimal("0.166667")), (Decimal("6.00"), Decimal("0.333333"))]


def test_a_reservation_under_a_tariff_without_reservation_prices_costs_nothing() -> None:
    plain = tariff(CHARGING)
    cdr = rate(plain, reserved("2019-03-04T08:00", Leg(120, 20), reserved_at=RESERVED_0745))
    # start fee 0.50 + energy 5.00 = 5.50 excl.; 0.10 + 0.50 VAT -> 6.10, as without it
    assert totals(cdr) == (Decimal("5.50"), Decimal("6.10"))
    assert cdr.total_reservation_cost is not None
    assert cdr.total_reservation_cost.excl_vat == Decimal("0.00")
    expired_cdr = rate(plain, expired(RESERVED_0745, "2019-03-04T08:45:00+01:00"))
    assert totals(expired_cdr) == (Decimal("0.00"), Decimal("0.00"))


def test_min_price_bounds_a_session_with_its_reservation_but_not_an_expired_one() -> None:
    plan = tariff(
        reserving(component("FLAT", "1.00", 1, "25")),
        {"price_components": [component("ENERGY", "0.25", 1, "25")]},
        min_price={"excl_vat": "3.00", "incl_vat": "3.75"},
    )
    short = rate(plan, reserved("2019-03-04T08:00", Leg(10, 2), reserved_at=RESERVED_0745))
    # fee 1.00 + 2 kWh x 0.25 = 0.50 -> 1.50, raised to the minimum 3.00 / 3.75
    assert totals(short) == (Decimal("3.00"), Decimal("3.75"))
    lapsed = rate(plan, expired(RESERVED_0745, "2019-03-04T08:45:00+01:00"))
    # no charging session: the fee 1.00 (+25 % VAT) alone
    assert totals(lapsed) == (Decimal("1.00"), Decimal("1.25"))


def test_reserved_and_plugged_in_at_once_still_pays_the_reservation_fee() -> None:
    plan = tariff(reserving(component("FLAT", "2.00", 1, "20.0"),
                            component("TIME", "5.00", 300, "20.0")), CHARGING)
    cdr = rate(plan, reserved("2019-03-04T08:00", Leg(120, 20),
                              reserved_at="2019-03-04T08:00:00+01:00"))
    # fee 2.00 + start fee 0.50 + energy 5.00 = 7.50 excl.; 0.40 + 0.10 + 0.50 VAT -> 8.50
    assert totals(cdr) == (Decimal("7.50"), Decimal("8.50"))
    assert all(p.dimensions[0].type != "RESERVATION_TIME" for p in cdr.charging_periods)


def test_the_tariff_must_be_valid_when_the_reservation_was_made() -> None:
    plan = tariff(reserving(component("TIME", "5.00", 60)), CHARGING,
                  start_date_time="2019-03-04T07:00:00Z")
    with pytest.raises(TariffNotApplicableError, match="session started 2019-03-04T06:45"):
        rate(plan, reserved("2019-03-04T08:00", Leg(120, 20), reserved_at=RESERVED_0745))


def test_without_a_reservation_nothing_changes_in_the_cdr() -> None:
    plan = tariff(reserving(component("TIME", "5.00", 60, "20.0")), CHARGING)
    cdr = rate(plan, session_of("2019-03-04T08:00", Leg(120, 20)))
    out = cdr.to_ocpi()
    # start fee 0.50 + energy 5.00; the reservation element prices nothing here
    assert totals(cdr) == (Decimal("5.50"), Decimal("6.10"))
    assert "total_reservation_cost" not in out
    assert all("reservation" not in line for line in out["cost_breakdown"])


def test_a_reservation_element_may_price_only_flat_and_time() -> None:
    with pytest.raises(InvalidTariffError, match="prices only FLAT and TIME, not ENERGY"):
        tariff(reserving(component("ENERGY", "1.00", 1)), CHARGING)


@pytest.mark.parametrize(
    ("reservation", "samples", "message"),
    [
        ("2019-03-04T07:45:00+01:00", True, "reservation must be an object"),
        ({"reserved_at": RESERVED_0745, "id": 7}, True, "unknown field id"),
        ({"expires_at": "2019-03-04T08:45:00+01:00"}, True, "reserved_at .* is missing"),
        ({"reserved_at": "2019-03-04T07:45:00"}, True, "has no UTC offset"),
        ({"reserved_at": "yesterday"}, True, "is not an ISO 8601 date and time"),
        ({"reserved_at": RESERVED_0745, "expires_at": "2019-03-04T07:00:00+01:00"}, True,
         "must be after reserved_at"),
        ({"reserved_at": RESERVED_0745, "expired": "yes"}, True, "true or false"),
        ({"reserved_at": RESERVED_0745, "expired": True}, False, "needs expires_at"),
        ({"reserved_at": RESERVED_0745, "expires_at": "2019-03-04T08:45:00+01:00",
          "expired": True}, True, "leave samples out"),
        ({"reserved_at": RESERVED_0745}, False, "set reservation.expired to true"),
        ({"reserved_at": "2019-03-04T08:10:00+01:00"}, True, "a reservation ends when charging"),
        ({"reserved_at": RESERVED_0745, "expires_at": "2019-03-04T07:55:00+01:00"}, True,
         "after the reservation expired"),
    ],
)
def test_reservation_input_is_checked_strictly(
    reservation: Any, samples: bool, message: str
) -> None:
    data: dict[str, Any] = {"time_zone": "Europe/Amsterdam", "reservation": reservation}
    if samples:
        data["samples"] = session_of("2019-03-04T08:00", Leg(120, 20))["samples"]
    with pytest.raises(InvalidSessionError, match=message):
        rate(tariff(CHARGING), data)
