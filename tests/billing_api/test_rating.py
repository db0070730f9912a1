"""How the rating engine prices a metered session: restrictions switching elements on and off
along the session, parking versus charging, step sizes, price limits, VAT, and bad input."""

from __future__ import annotations

import json
from decimal import Decimal
from types import MappingProxyType

import pytest

from billing_api.rating import (
    InvalidSessionError,
    TariffNotApplicableError,
    parse_session,
    rate,
)
from billing_api.tariffs import InvalidTariffError, parse_tariff
from tests.billing_api.test_ocpi_examples import (
    COMPLEX,
    Leg,
    amounts,
    component,
    session_of,
    tariff,
    totals,
)

NIGHT_AND_DAY = tariff(
    {
        "price_components": [component("ENERGY", "0.10", 1, "25")],
        "restrictions": {"start_time": "22:00", "end_time": "06:00"},
    },
    {"price_components": [component("ENERGY", "0.30", 1, "25")]},
    currency="SEK",
)


def test_night_window_wraps_midnight_and_splits_energy_linearly_between_samples() -> None:
    evening = rate(
        NIGHT_AND_DAY, session_of("2024-03-05T21:00", Leg(120, 2), zone="Europe/Stockholm")
    )
    # one sample at 21:00, one at 23:00: the kWh after 22:00 is the second half of the register
    assert amounts(evening) == [("ENERGY", Decimal("0.30")), ("ENERGY", Decimal("0.10"))]
    assert [p.start_date_time.isoformat() for p in evening.charging_periods] == [
        "2024-03-05T20:00:00+00:00",
        "2024-03-05T21:00:00+00:00",
    ]
    morning = rate(
        NIGHT_AND_DAY, session_of("2024-03-06T05:00", Leg(120, 2), zone="Europe/Stockholm")
    )
    assert morning.total_cost.excl_vat == Decimal("0.40")
    assert [line.quantity for line in morning.cost_breakdown] == [Decimal("1.000")] * 2


def test_time_of_day_is_the_sites_local_time_across_a_dst_change() -> None:
    # 2024-10-27: Stockholm falls back from 03:00 CEST to 02:00 CET; 21:00-07:00 local is 11 h
    overnight = session_of("2024-10-26T21:00", Leg(600, 11), zone="Europe/Stockholm")
    cdr = rate(NIGHT_AND_DAY, overnight)
    night = next(line for line in cdr.cost_breakdown if line.unit_price == Decimal("0.10"))
    assert night.quantity == Decimal("9.000")  # 22:00-06:00 local lasts 9 real hours that night


def test_day_of_week_element_applies_from_local_midnight() -> None:
    sunday_cheaper = tariff(
        {
            "price_components": [component("TIME", "1.00", 1)],
            "restrictions": {"day_of_week": ["SUNDAY"]},
        },
        {"price_components": [component("TIME", "4.00", 1)]},
    )
    saturday_night = session_of("2024-03-09T23:00", Leg(120, 10), zone="Europe/Stockholm")
    cdr = rate(sunday_cheaper, saturday_night)
    assert amounts(cdr) == [("TIME", Decimal("4.00")), ("TIME", Decimal("1.00"))]


def test_kwh_tiers_switch_at_the_instant_the_threshold_is_reached() -> None:
    tiers = tariff(
        {"price_components": [component("ENERGY", "0.50", 1)], "restrictions": {"max_kwh": 10}},
        {"price_components": [component("ENERGY", "0.30", 1)], "restrictions": {"min_kwh": 10}},
    )
    cdr = rate(tiers, session_of("2024-03-05T08:00", Leg(90, 15)))
    assert amounts(cdr) == [("ENERGY", Decimal("5.00")), ("ENERGY", Decimal("1.50"))]
    # 10 of 15 kWh spread over 90 minutes: reached at 09:00 local (08:00 UTC)
    assert cdr.charging_periods[1].start_date_time.isoformat() == "2024-03-05T08:00:00+00:00"


def test_instantaneous_power_switches_time_elements_on_and_off() -> None:
    fast_costs_more = tariff(
        {"price_components": [component("TIME", "6.00", 1)], "restrictions": {"min_power": 22}},
        {"price_components": [component("TIME", "2.00", 1)]},
    )
    session = session_of(
        "2024-03-05T08:00",
        Leg(30, 25, power_w=50000),
        Leg(60, 11, power_w=11000),
        Leg(30, 12, power_w=24000),
    )
    cdr = rate(fast_costs_more, session)
    assert amounts(cdr) == [("TIME", Decimal("6.00")), ("TIME", Decimal("2.00"))]
    assert len(cdr.charging_periods) == 3
    max_power = {d.type: d.volume for d in cdr.charging_periods[0].dimensions}["MAX_POWER"]
    assert max_power == Decimal("50.000")


def test_missing_power_is_an_error_only_while_charging_under_a_power_restriction() -> None:
    by_power = tariff(
        {"price_components": [component("ENERGY", "0.60", 1)], "restrictions": {"min_power": 50}},
        {"price_components": [component("ENERGY", "0.40", 1)]},
    )
    parked_without_power = session_of(
        "2024-03-05T08:00", Leg(30, 10, power_w=20000), Leg(30, status="SuspendedEV")
    )
    assert rate(by_power, parked_without_power).total_cost.excl_vat == Decimal("4.00")
    with pytest.raises(InvalidSessionError, match="power_w is missing"):
        rate(by_power, session_of("2024-03-05T08:00", Leg(30, 10)))


PARKING_COSTS_MORE = tariff(
    {
        "price_components": [
            component("TIME", "2.00", 1, "25"),
            component("PARKING_TIME", "10.00", 1, "25"),
        ]
    }
)


def test_suspended_ev_is_parking_but_suspended_evse_is_charging_time() -> None:
    station_paused = session_of("2024-03-05T08:00", Leg(30, 5), Leg(30, status="SuspendedEVSE"))
    car_full = session_of("2024-03-05T08:00", Leg(30, 5), Leg(30, status="SuspendedEV"))
    assert amounts(rate(PARKING_COSTS_MORE, station_paused)) == [("TIME", Decimal("2.00"))]
    assert amounts(rate(PARKING_COSTS_MORE, car_full)) == [
        ("TIME", Decimal("1.00")),
        ("PARKING_TIME", Decimal("5.00")),
    ]
    assert rate(PARKING_COSTS_MORE, car_full).total_parking_time == Decimal("0.500")


def test_faulted_and_preparing_time_is_billed_neither_as_charging_nor_parking() -> None:
    session = session_of(
        "2024-03-05T08:00", Leg(10, status="Preparing"), Leg(30, 5), Leg(20, status="Faulted")
    )
    cdr = rate(PARKING_COSTS_MORE, session)
    assert amounts(cdr) == [("TIME", Decimal("1.00"))]
    assert cdr.total_time == Decimal("1.000")


def test_step_size_rounds_the_whole_session_once_not_each_period() -> None:
    per_quarter = tariff({"price_components": [component("TIME", "4.00", 900)]})
    two_stretches = session_of(
        "2024-03-05T08:00", Leg(5, 1), Leg(20, status="SuspendedEV"), Leg(5, 1)
    )
    cdr = rate(per_quarter, two_stretches)
    assert cdr.cost_breakdown[0].measured_quantity == Decimal("0.166667")
    assert cdr.cost_breakdown[0].quantity == Decimal("0.250")  # 10 min -> 15, not 2 x 15
    assert cdr.total_cost.excl_vat == Decimal("1.00")


def test_max_price_without_incl_vat_moves_the_incl_total_by_the_same_amount() -> None:
    capped = tariff(
        {"price_components": [component("ENERGY", "1.00", 1, "25")]}, max_price={"excl_vat": 10}
    )
    cdr = rate(capped, session_of("2024-03-05T08:00", Leg(60, 20)))
    assert totals(cdr) == (Decimal("10.00"), Decimal("15.00"))
    assert cdr.price_limit_adjustment is not None
    assert cdr.price_limit_adjustment.excl_vat == Decimal("-10.00")


def test_min_price_raises_a_short_session_to_the_minimum() -> None:
    minimum = tariff(
        {"price_components": [component("ENERGY", "2.00", 1, "25")]},
        min_price={"excl_vat": "5.00", "incl_vat": "6.25"},
    )
    assert totals(rate(minimum, session_of("2024-03-05T08:00", Leg(5, "0.5")))) == (
        Decimal("5.00"),
        Decimal("6.25"),
    )


def test_vat_is_per_rate_on_the_summed_net_lines_and_adds_up_to_the_total() -> None:
    cdr = rate(
        COMPLEX,
        session_of("2019-03-04T09:30", Leg(147, 20, current_a=16), Leg(42, status="SuspendedEV")),
    )
    by_rate = {line.rate: (line.base, line.amount) for line in cdr.vat}
    # exact VAT 0.375 + 0.50 + 0.375 = 1.25; the half cent goes to the larger base
    assert by_rate == {
        Decimal("15"): (Decimal("2.50"), Decimal("0.37")),
        Decimal("20"): (Decimal("2.50"), Decimal("0.50")),
        Decimal("10"): (Decimal("3.75"), Decimal("0.38")),
    }
    net = sum(line.amount for line in cdr.cost_breakdown)
    assert net + sum(line.amount for line in cdr.vat) == cdr.total_cost.incl_vat


def test_components_without_vat_carry_none() -> None:
    cdr = rate(
        tariff({"price_components": [component("ENERGY", "0.25", 1)]}),
        session_of("2024-03-05T08:00", Leg(60, 10)),
    )
    assert [(v.rate, v.amount) for v in cdr.vat] == [(None, Decimal("0.00"))]
    assert totals(cdr) == (Decimal("2.50"), Decimal("2.50"))


def test_tariff_round_trips_through_ocpi_json_with_prices_as_numbers() -> None:
    text = COMPLEX.to_json()
    assert '"price":2.50' in text and '"vat":15.0' in text and '"max_current":32.0' in text
    assert parse_tariff(text) == COMPLEX
    assert json.loads(text)["elements"][2]["restrictions"]["day_of_week"][0] == "MONDAY"


def test_cdr_json_writes_money_as_numbers() -> None:
    cdr = rate(COMPLEX, session_of("2019-03-09T13:30", Leg(114, 30, current_a=43)))
    data = json.loads(cdr.to_json(), parse_float=Decimal)
    assert data["total_cost"] == {"excl_vat": Decimal("5.00"), "incl_vat": Decimal("5.88")}
    assert data["charging_periods"][0]["tariff_id"] == "T"


def test_float_inputs_are_read_as_the_decimal_written() -> None:
    floats = parse_tariff(json.loads(COMPLEX.to_json()))
    assert floats.elements[0].price_components[0].price == Decimal("2.5")


# --- bad input -----------------------------------------------------------------------------

GOOD = session_of("2024-03-05T08:00", Leg(30, 5), Leg(30, 5))
SIMPLE = tariff({"price_components": [component("ENERGY", "0.25", 1)]})


def _with_samples(*changes: dict[str, object]) -> dict[str, object]:
    samples = [sample | change for sample, change in zip(GOOD["samples"], changes, strict=False)]
    return {"time_zone": GOOD["time_zone"], "samples": samples + GOOD["samples"][len(changes) :]}


@pytest.mark.parametrize(
    ("session", "message"),
    [
        (_with_samples({}, {"timestamp": "2024-03-05T06:00:00+00:00"}), "not later than sample 1"),
        (_with_samples({}, {"timestamp": GOOD["samples"][0]["timestamp"]}), "without duplicates"),
        (_with_samples({}, {"energy_wh": 1}), "register goes down"),
        (_with_samples({"status": "Charged"}), "unknown status 'Charged'"),
        (_with_samples({"timestamp": "2024-03-05T08:00:00"}), "no UTC offset"),
        (_with_samples({"timestamp": "yesterday"}), "not an ISO 8601"),
        (_with_samples({"energy_wh": "lots"}), "expected a number"),
        (_with_samples({"energy_wh": float("nan")}), "finite"),
        (_with_samples({"power_w": -5}), "negative"),
        ({"time_zone": "Europe/Stokholm", "samples": GOOD["samples"]}, "unknown time_zone"),
        ({"time_zone": "Europe/Stockholm", "samples": GOOD["samples"][:1]}, "at least two"),
        ({"samples": GOOD["samples"]}, "time_zone is missing"),
    ],
)
def test_bad_sessions_are_refused_with_a_reason(session: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSessionError, match=message):
        parse_session(session)
    with pytest.raises(ValueError, match=message):
        rate(SIMPLE, session)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"currency": "kronor"}, "ISO 4217"),
        ({"elements": []}, "at least 1 item"),
        ({"min_price": {"excl_vat": 5}, "max_price": {"excl_vat": 1}}, "min_price is higher"),
        (
            {
                "elements": [
                    {"price_components": [component("TIME", "1", 1)], "tariff_restrictions": {}}
                ]
            },
            "tariff_restrictions",
        ),
        (
            {
                "elements": [
                    {
                        "price_components": [component("TIME", "1", 1)],
                        "restrictions": {"start_time": "25:00"},
                    }
                ]
            },
            "start_time",
        ),
        ({"elements": [{"price_components": [component("TIME", "-1", 1)]}]}, "price"),
    ],
)
def test_bad_tariffs_are_refused_with_a_reason(change: dict[str, object], message: str) -> None:
    data = json.loads(SIMPLE.to_json()) | change
    with pytest.raises(InvalidTariffError, match=message):
        parse_tariff(data)


def test_bad_tariff_json_text_is_refused() -> None:
    with pytest.raises(InvalidTariffError, match="not valid JSON"):
        parse_tariff("{")


def test_a_tariff_is_only_applied_to_sessions_started_while_it_is_valid() -> None:
    ended = tariff(
        {"price_components": [component("ENERGY", "0.25", 1)]}, end_date_time="2024-01-01T00:00:00Z"
    )
    with pytest.raises(TariffNotApplicableError, match="ended"):
        rate(ended, GOOD)


# --- the fast paths give the same answers as the general ones ------------------------------


def test_timestamps_read_the_same_in_any_offset_or_iso_form() -> None:
    forms = [
        "2024-03-05T08:00:00+01:00",
        "2024-03-05T07:00:00Z",
        "2024-03-05T02:00:00-05:00",
        "2024-03-05T08:00:00.000+01:00",
        "20240305T080000+01:00",
        "2024-03-05 08:00:00+01:00",
    ]
    instants = {
        parse_session(
            {
                "time_zone": "Europe/Stockholm",
                "samples": [
                    {"timestamp": form, "energy_wh": 0},
                    {"timestamp": "2024-03-05T09:00:00+01:00", "energy_wh": 1},
                ],
            }
        ).start
        for form in forms
    }
    assert [moment.isoformat() for moment in instants] == ["2024-03-05T07:00:00+00:00"]


def test_readings_of_any_number_type_or_mapping_rate_alike() -> None:
    plain = session_of("2024-03-05T21:00", Leg(60, 5, power_w=11000), Leg(60, 2, current_a=16))
    as_ints = {
        **plain,
        "samples": [{**s, "energy_wh": int(s["energy_wh"])} for s in plain["samples"]],
    }
    as_floats = {
        **plain,
        "samples": [{**s, "energy_wh": float(s["energy_wh"])} for s in plain["samples"]],
    }
    as_mappings = {**plain, "samples": [MappingProxyType(s) for s in plain["samples"]]}
    results = {
        rate(NIGHT_AND_DAY, session).to_json() for session in (as_ints, as_floats, as_mappings)
    }
    assert len(results) == 1


def test_flat_fees_of_different_tariffs_are_not_mixed_up() -> None:
    # flat cost lines are cached per price component; each tariff must still bill its own
    fees = [
        tariff({"price_components": [component("FLAT", price, 1, "25")]})
        for price in ("1.00", "2.50", "1.00")
    ]
    charge = session_of("2024-03-05T08:00", Leg(30, 5))
    assert [rate(fee, charge).total_cost.excl_vat for fee in fees] == [
        Decimal("1.00"),
        Decimal("2.50"),
        Decimal("1.00"),
    ]


def test_out_of_order_samples_name_the_first_bad_pair_even_after_good_ones() -> None:
    session = session_of("2024-03-05T08:00", Leg(30, 5), Leg(30, 5), Leg(30, 5))
    samples = session["samples"]
    samples[3] = {**samples[3], "energy_wh": samples[1]["energy_wh"]}
    with pytest.raises(
        InvalidSessionError, match="from 22345 Wh at sample 3 to 17345 Wh at sample 4"
    ):
        parse_session(session)
