"""The batch rater (``rating_batch.rate_batch``) must store, session for session and digit for
digit, what the reference rating gives (``rate_reference``, read as billing stores a CDR):
the totals and every cost line. Sessions it cannot rate go through the exact engine, are
counted, and are refused with the reference's words when the reference refuses them."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from billing_api.rating import rate_reference
from billing_api.rating_batch import Rated, rate_batch, rated_from_cdr
from billing_api.tariffs import BillingInputError, Tariff, parse_tariff
from chargedesk.bench import billing as bench
from chargedesk.db import make_engine
from tests.billing_api.test_ocpi_examples import component, tariff
from tests.billing_api.test_rating_reference import STARTS, reports, tariffs

# The restrictions the batch path rates itself: time of day, dates, weekdays, duration.
BATCH_RESTRICTIONS: list[dict[str, Any]] = [
    {"start_time": "22:00", "end_time": "06:00"},
    {"start_time": "02:30", "end_time": "03:30"},
    {"start_time": "17:00"},
    {"end_time": "07:00"},
    {"start_time": "06:00", "end_time": "06:00"},
    {"day_of_week": ["SATURDAY", "SUNDAY"]},
    {"day_of_week": ["MONDAY"], "start_time": "08:00", "end_time": "18:00"},
    {"start_date": "2026-10-25", "end_date": "2026-10-26"},
    {"max_duration": 5400},
    {"min_duration": 3600},
    {"min_duration": 1800, "max_duration": 7200, "start_time": "09:00"},
]


@st.composite
def batch_tariffs(draw: st.DrawFn) -> Tariff:
    """The shapes the batch path rates: ENERGY, TIME, PARKING_TIME and FLAT components with
    step sizes under clock, date, weekday and duration restrictions, one VAT rate (or none),
    and sometimes min and max prices."""
    prices = st.decimals(min_value=0, max_value=60, places=draw(st.sampled_from([2, 3, 4])))
    steps = st.sampled_from([0, 1, 7, 60, 300, 900, 1000])
    vat = draw(st.sampled_from([None, "0", "6", "12", "25", "5.2", "25.5"]))
    elements = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kinds = draw(st.sets(st.sampled_from(["ENERGY", "TIME", "PARKING_TIME", "FLAT"]),
                             min_size=1))
        elements.append({
            "price_components": [component(k, str(draw(prices)), draw(steps), vat)
                                 for k in sorted(kinds)],
            "restrictions": draw(st.sampled_from(BATCH_RESTRICTIONS)),
        })
    fallback = draw(st.sets(st.sampled_from(["FLAT", "ENERGY", "TIME", "PARKING_TIME"]),
                            min_size=1))
    elements.append({"price_components": [component(k, str(draw(prices)), draw(steps), vat)
                                          for k in sorted(fallback)]})
    limits: dict[str, Any] = {}
    if draw(st.booleans()):
        low = draw(st.none() | st.decimals(min_value=0, max_value=30, places=2))
        high = draw(st.none() | st.decimals(min_value=0, max_value=300, places=3))
        if low is not None and high is not None and low > high:
            low, high = high, low
        if low is not None:
            limits["min_price"] = {"excl_vat": low} | (
                {"incl_vat": low * Decimal("1.25")} if draw(st.booleans()) else {})
        if high is not None:
            limits["max_price"] = {"excl_vat": high} | (
                {"incl_vat": high * 2} if draw(st.booleans()) else {})
    return tariff(*elements, **limits)


def expected_of(plan: Tariff, report: Any) -> Rated | BillingInputError:
    try:
        return rated_from_cdr(rate_reference(plan, report))
    except BillingInputError as exc:
        return exc


def shown(rated: Rated) -> tuple[Any, ...]:
    """Everything stored, Decimals as their text (1.0 == 1.00, but not in the database)."""
    return (rated.start, rated.end, rated.total_excl_vat_ore, rated.total_incl_vat_ore,
            [(line.dimension, str(line.quantity), line.unit, str(line.unit_price),
              line.net_ore, None if line.vat_rate is None else str(line.vat_rate))
             for line in rated.lines])


def assert_batch_same(plan: Tariff, batch_of: list[Any]) -> list[Rated | BillingInputError]:
    result = rate_batch(plan, batch_of)
    assert len(result.results) == len(batch_of)
    went_exact = 0
    for report, got in zip(batch_of, result.results, strict=True):
        expected = expected_of(plan, report)
        if isinstance(expected, BillingInputError):
            assert isinstance(got, type(expected)), (got, expected)
            assert str(got) == str(expected)
            went_exact += 1
            continue
        assert isinstance(got, Rated), got
        assert shown(got) == shown(expected)
        assert got[:5] == expected[:5]
        went_exact += got.exact_path
    # every session the batch left to the exact engine is counted, with its reason
    assert result.exact == went_exact == sum(result.reasons.values())
    return result.results


report_batches = st.lists(reports(), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_tariffs(), report_batches)
def test_the_batch_rates_every_session_as_the_reference_does(
    plan: Tariff, batch_of: list[dict[str, Any]]
) -> None:
    results = assert_batch_same(plan, batch_of)
    if plan.min_price is None and plan.max_price is None:
        # these are the shapes it is for: none of them went the exact way
        assert not any(r.exact_path for r in results if isinstance(r, Rated))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tariffs(), report_batches)
def test_any_tariff_is_rated_as_the_reference_does_batch_or_exact_path(
    plan: Tariff, batch_of: list[dict[str, Any]]
) -> None:
    assert_batch_same(plan, batch_of)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_tariffs(), report_batches, st.data())
def test_damaged_reports_in_a_batch_are_refused_alike_and_spoil_nothing_else(
    plan: Tariff, batch_of: list[dict[str, Any]], data: st.DataObject
) -> None:
    which = data.draw(st.integers(min_value=0, max_value=len(batch_of) - 1))
    samples = batch_of[which]["samples"]
    at = data.draw(st.integers(min_value=0, max_value=len(samples) - 1))
    field = data.draw(st.sampled_from(["timestamp", "energy_wh", "power_w", "current_a",
                                       "status"]))
    value = data.draw(st.sampled_from([
        None, -1, 0, True, 2.5, "7", Decimal("1.5"), "", "Unknown", "2026-10-25T02:30:00",
        "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00z", "2026-10-25T02:30:00+24:00",
        "2026-02-29T02:30:00Z", "2026-10-25T24:00:00Z", "\uff12\uff10\uff12\uff16-10-25T02:30:00Z",
        b"2026-10-25T02:30:00Z", samples[0]["timestamp"], samples[-1]["timestamp"],
        10**20, [1], {"a": 1},
    ]))
    if data.draw(st.booleans()):
        samples[at] = {k: v for k, v in samples[at].items() if k != field}
    else:
        samples[at] = samples[at] | {field: value}
    results = assert_batch_same(plan, batch_of)
    if plan.min_price is None and plan.max_price is None:
        # the others still went the batch way
        assert all(not r.exact_path for i, r in enumerate(results)
                   if i != which and isinstance(r, Rated)
                   and all(type(s.get("power_w", 0)) in (int, type(None))
                           for s in batch_of[which]["samples"]))


def test_odd_reports_in_a_batch() -> None:
    plan = parse_tariff(bench.TARIFF_JSON)
    good = bench.generate(1, 0, sessions=10, drivers=10)[1]
    later = bench.generate(1, 1, sessions=10, drivers=10)[1]
    batch_of = [
        good,
        {"time_zone": "Europe/Stockholm", "samples": good["samples"][:1]},
        {"time_zone": "Europe/Stockholm", "samples": tuple(good["samples"])},
        {"time_zone": "Mars/Olympus", "samples": good["samples"]},
        {"samples": good["samples"]},
        {"time_zone": "Europe/Stockholm", "samples": list(reversed(good["samples"]))},
        {"time_zone": "Europe/Stockholm", "samples": good["samples"],
         "reservation": {"reserved_at": "2026-10-01T00:00:00Z"}},
        {"time_zone": "America/New_York", "samples": later["samples"]},  # another zone
        later,
    ]
    results = assert_batch_same(plan, batch_of)
    assert [isinstance(r, Rated) and not r.exact_path for r in results] == [
        True, False, False, False, False, False, False, True, True]


def test_a_tariff_not_yet_valid_goes_the_exact_way_and_is_refused_alike() -> None:
    first, second = sorted(
        (bench.generate(1, n, sessions=10, drivers=10)[1] for n in range(2)),
        key=lambda r: r["samples"][0]["timestamp"])
    valid_from = first["samples"][1]["timestamp"]  # after the first, before the second
    assert valid_from < second["samples"][0]["timestamp"]
    plan = tariff({"price_components": [component("ENERGY", "2.56", 1, "25")]},
                  start_date_time=valid_from)
    result = rate_batch(plan, [first, second])
    assert isinstance(result.results[0], BillingInputError)
    assert isinstance(result.results[1], Rated) and not result.results[1].exact_path
    assert result.reasons == {"tariff not valid when the session started": 1}
    assert_batch_same(plan, [first, second])


def test_a_thousand_bench_sessions_under_several_tariffs() -> None:
    plans = [
        parse_tariff(bench.TARIFF_JSON),
        tariff(
            {"price_components": [component("ENERGY", "0.25", 1, "25")],
             "restrictions": {"day_of_week": ["SATURDAY", "SUNDAY"]}},
            {"price_components": [component("TIME", "1.20", 60, "25"),
                                  component("ENERGY", "0.31", 100, "25")],
             "restrictions": {"start_time": "07:00", "end_time": "09:30"}},
            {"price_components": [component("FLAT", "0.50", 1, "25"),
                                  component("ENERGY", "0.35", 1, "25"),
                                  component("PARKING_TIME", "2.00", 300, "25")]},
            min_price={"excl_vat": "2.00"}, max_price={"excl_vat": "40", "incl_vat": "45"},
        ),
    ]
    rng = random.Random(7)
    batch_of = [bench.generate(3, number, sessions=1_000_000, drivers=100_000)[1]
                for number in rng.sample(range(1_000_000), 1000)]
    for plan in plans:
        results = assert_batch_same(plan, batch_of)
        if plan.min_price is None:
            assert not any(r.exact_path for r in results if isinstance(r, Rated))


def test_sessions_across_the_dst_change_in_one_batch() -> None:
    plan = parse_tariff(bench.TARIFF_JSON)
    batch_of = []
    for hours in range(0, 48):
        moment = STARTS[1] - timedelta(hours=24) + timedelta(hours=hours, minutes=7)
        samples = []
        energy = 1000
        for step in range(20):
            samples.append({"timestamp": (moment + timedelta(minutes=13 * step)).isoformat(),
                            "energy_wh": energy, "power_w": 7000, "current_a": 16,
                            "status": "Charging" if step < 15 else "SuspendedEV"})
            energy += 1517 if step < 15 else 0
        batch_of.append({"time_zone": "Europe/Stockholm", "samples": samples})
    results = assert_batch_same(plan, batch_of)
    assert not any(r.exact_path for r in results if isinstance(r, Rated))


def test_the_bench_stores_what_the_reference_rates(database_url: str) -> None:
    """The bench's rating path, through its worker processes into a real database (SQLite
    and PostgreSQL): every session's totals and cost lines as the reference gives them."""
    sessions, drivers, seed = 240, 24, 4
    figures = bench.run(sessions=sessions, drivers=drivers, workers=2,
                        database_url=database_url, seed=seed)
    assert figures["failures"] == []
    assert figures["rating"]["exact_path_sessions"] == 0
    assert figures["rating"]["checked_against_exact"] >= sessions // bench.CHECK_EVERY
    plan = parse_tariff(bench.TARIFF_JSON)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            totals = {int(i): (int(e), int(g)) for i, e, g in conn.execute(text(
                "SELECT id, total_excl_vat_ore, total_incl_vat_ore FROM charging_session"))}
            stored: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
            for row in conn.execute(text(
                    "SELECT session_id, dimension, quantity, unit, unit_price, net_ore, vat_rate"
                    " FROM session_cost_line ORDER BY id")):
                sid, dimension, quantity, unit, price, net, vat = row
                stored[int(sid)].append((dimension, Decimal(str(quantity)), unit,
                                         Decimal(str(price)), int(net),
                                         None if vat is None else Decimal(str(vat))))
    finally:
        engine.dispose()
    assert len(totals) == sessions
    for number in range(sessions):
        report = bench.generate(seed, number, sessions=sessions, drivers=drivers)[1]
        expected = rated_from_cdr(rate_reference(plan, report))
        sid = number + 1
        assert totals[sid] == (expected.total_excl_vat_ore, expected.total_incl_vat_ore)
        assert stored[sid] == [tuple(line) for line in expected.lines]


@pytest.mark.parametrize("count", [1, 2, 5000])
def test_batches_of_any_size(count: int) -> None:
    plan = parse_tariff(bench.TARIFF_JSON)
    batch_of = [bench.generate(9, n, sessions=count, drivers=max(1, count // 10))[1]
                for n in range(count)]
    result = rate_batch(plan, batch_of)
    assert result.exact == 0
    step = max(1, count // 50)
    for report, got in list(zip(batch_of, result.results, strict=True))[::step]:
        assert shown(got) == shown(expected_of(plan, report))  # type: ignore[arg-type]
