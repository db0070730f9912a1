"""Properties the rating must keep for any session: more energy never costs less under an
energy tariff, price limits always hold, and how densely a meter reports does not matter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_api.rating import rate
from billing_api.tariffs import Tariff
from tests.billing_api.test_ocpi_examples import component, tariff

START = datetime(2024, 3, 30, 20, 0, tzinfo=UTC)  # the night Stockholm springs forward
STATUSES = ["Charging", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"]

prices = st.decimals(min_value=0, max_value=5, places=2).map(str)
vats = st.sampled_from([None, "0", "6", "12", "25", "5.2"])
steps = st.sampled_from([0, 1, 10, 60, 100, 300, 900, 1000])


@st.composite
def legs(draw: st.DrawFn, *, statuses: bool = True) -> list[tuple[int, int, str, int]]:
    """(seconds, Wh, status, power in W) per stretch between samples."""
    count = draw(st.integers(min_value=1, max_value=8))
    return [
        (
            draw(st.integers(min_value=1, max_value=4 * 3600)),
            draw(st.integers(min_value=0, max_value=40_000)),
            draw(st.sampled_from(STATUSES)) if statuses else "Charging",
            draw(st.integers(min_value=0, max_value=150_000)),
        )
        for _ in range(count)
    ]


def session_from(stretches: list[tuple[int, Any, str, int]]) -> dict[str, Any]:
    moment, energy = START, Fraction(5000)
    samples = []
    for seconds, wh, status, power in stretches:
        samples.append(
            {
                "timestamp": moment.isoformat(),
                "energy_wh": energy,
                "status": status,
                "power_w": power,
            }
        )
        moment += timedelta(seconds=seconds)
        energy += wh
    samples.append({"timestamp": moment.isoformat(), "energy_wh": energy, "status": "Finishing"})
    return {"time_zone": "Europe/Stockholm", "samples": samples}


@st.composite
def energy_tariffs(draw: st.DrawFn) -> Tariff:
    components = [component("ENERGY", draw(prices), draw(steps), draw(vats))]
    if draw(st.booleans()):
        components.append(component("FLAT", draw(prices), 1, draw(vats)))
    return tariff({"price_components": components})


@st.composite
def rich_tariffs(draw: st.DrawFn) -> Tariff:
    """Several elements with clock, kWh, duration and power restrictions, plus a fallback."""
    elements = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        kinds = draw(
            st.sets(st.sampled_from(["ENERGY", "TIME", "PARKING_TIME", "FLAT"]), min_size=1)
        )
        restriction = draw(
            st.sampled_from(
                [
                    {"start_time": "22:00", "end_time": "06:00"},
                    {"start_time": "02:30", "end_time": "03:30"},
                    {"day_of_week": ["SUNDAY"]},
                    {"max_kwh": 12},
                    {"min_kwh": Decimal("7.5")},
                    {"max_duration": 5400},
                    {"min_duration": 3600},
                    {"min_power": 22},
                    {"max_power": 11, "start_time": "07:00"},
                ]
            )
        )
        elements.append(
            {
                "price_components": [
                    component(k, draw(prices), draw(steps), draw(vats)) for k in sorted(kinds)
                ],
                "restrictions": restriction,
            }
        )
    fallback = [
        component(k, draw(prices), draw(steps), draw(vats))
        for k in ("ENERGY", "TIME", "PARKING_TIME")
    ]
    elements.append({"price_components": fallback})
    limits: dict[str, Any] = {}
    low = draw(st.none() | st.decimals(min_value=0, max_value=20, places=2))
    high = draw(st.none() | st.decimals(min_value=0, max_value=60, places=2))
    if low is not None and high is not None and low > high:
        low, high = high, low
    if low is not None:
        limits["min_price"] = {"excl_vat": low, "incl_vat": low * Decimal("1.25")}
    if high is not None:
        limits["max_price"] = {"excl_vat": high} | (
            {"incl_vat": high * 2} if draw(st.booleans()) else {}
        )
    return tariff(*elements, **limits)


@settings(max_examples=150, deadline=None)
@given(energy_tariffs(), legs(), st.data())
def test_more_energy_never_costs_less_under_an_energy_tariff(
    plan: Tariff, stretches: list[tuple[int, int, str, int]], data: st.DataObject
) -> None:
    which = data.draw(st.integers(min_value=0, max_value=len(stretches) - 1))
    extra = data.draw(st.integers(min_value=1, max_value=50_000))
    more = list(stretches)
    seconds, wh, status, power = more[which]
    more[which] = (seconds, wh + extra, status, power)
    before, after = rate(plan, session_from(stretches)), rate(plan, session_from(more))
    assert after.total_cost.excl_vat >= before.total_cost.excl_vat
    assert after.total_cost.incl_vat >= before.total_cost.incl_vat


@settings(max_examples=150, deadline=None)
@given(rich_tariffs(), legs())
def test_min_and_max_price_always_hold(
    plan: Tariff, stretches: list[tuple[int, int, str, int]]
) -> None:
    total = rate(plan, session_from(stretches)).total_cost
    if plan.min_price is not None:
        assert total.excl_vat >= plan.min_price.excl_vat
        assert total.incl_vat >= plan.min_price.incl_vat
    if plan.max_price is not None:
        assert total.excl_vat <= plan.max_price.excl_vat
        if plan.max_price.incl_vat is not None:
            assert total.incl_vat <= plan.max_price.incl_vat


def split(
    stretches: list[tuple[int, int, str, int]], cuts: list[tuple[int, Fraction]]
) -> list[tuple[int, Any, str, int]]:
    """Report the same meter more densely: cut stretches at given fractions of their length,
    the register read by linear interpolation, power and status carried over."""
    out: list[tuple[int, Any, str, int]] = []
    by_stretch: dict[int, list[Fraction]] = {}
    for index, where in cuts:
        by_stretch.setdefault(index % len(stretches), []).append(where)
    for index, (seconds, wh, status, power) in enumerate(stretches):
        marks = sorted({int(seconds * w) for w in by_stretch.get(index, [])} - {0, seconds})
        previous = 0
        for mark in [*marks, seconds]:
            share = Fraction(mark - previous, seconds)
            out.append((mark - previous, wh * share, status, power))
            previous = mark
    return out


@settings(max_examples=150, deadline=None)
@given(
    rich_tariffs(),
    legs(),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=7), st.fractions(min_value=0, max_value=1)),
        max_size=12,
    ),
)
def test_more_frequent_meter_samples_do_not_change_the_bill(
    plan: Tariff, stretches: list[tuple[int, int, str, int]], cuts: list[tuple[int, Fraction]]
) -> None:
    coarse = rate(plan, session_from(stretches))
    fine = rate(plan, session_from(split(stretches, cuts)))
    assert fine.total_cost == coarse.total_cost
    assert fine.cost_breakdown == coarse.cost_breakdown
    assert fine.total_energy == coarse.total_energy
