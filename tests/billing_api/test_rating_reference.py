"""The fast path of ``rate`` (column-wise sample reader, the walk visiting only the samples
where something changes, billing with shared Decimals and one-call records) must give, object
for object and digit for digit, what ``rate_reference`` gives (every sample parsed into a
Sample, every sample walked, totals built by the general arithmetic), and refuse the same
inputs with the same words."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_api import rating
from billing_api.rating import rate, rate_reference
from billing_api.tariffs import BillingInputError, Tariff, parse_tariff
from chargedesk.bench import billing as bench
from tests.billing_api.test_ocpi_examples import component, tariff
from tests.billing_api.test_rating_properties import rich_tariffs

ZONES = ["Europe/Stockholm", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]
# Around DST changes (Stockholm spring and autumn, New York, Lord Howe's half hour) and an
# ordinary week.
STARTS = [
    datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 24, 23, 0, tzinfo=UTC),
    datetime(2026, 3, 8, 5, 0, tzinfo=UTC),
    datetime(2026, 4, 4, 14, 0, tzinfo=UTC),
    datetime(2026, 10, 5, 17, 0, tzinfo=UTC),
]
STATUSES = ["Charging", "Charging", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing",
            "Preparing", "Faulted"]
RESTRICTIONS: list[dict[str, Any]] = [
    {"start_time": "22:00", "end_time": "06:00"},
    {"start_time": "02:30", "end_time": "03:30"},
    {"start_time": "17:00"},
    {"end_time": "07:00"},
    {"day_of_week": ["SATURDAY", "SUNDAY"]},
    {"start_date": "2026-10-25", "end_date": "2026-10-26"},
    {"max_kwh": 12},
    {"min_kwh": Decimal("7.5")},
    {"max_duration": 5400},
    {"min_duration": 3600},
    {"min_power": 22},
    {"max_power": 11, "start_time": "07:00"},
    {"min_current": 16},
    {"max_current": 32},
]


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    """Elements with any restriction, several VAT rates (none, 0 %, 6 %, 25 %, 5.2 %), step
    sizes, a fallback, and sometimes price limits (from ``rich_tariffs``)."""
    if draw(st.booleans()):
        return draw(rich_tariffs())
    prices = st.decimals(min_value=0, max_value=5, places=3).map(str)
    vats = st.sampled_from([None, "0", "6", "25", "5.2"])
    steps = st.sampled_from([0, 1, 60, 300, 1000])
    elements = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kinds = draw(st.sets(st.sampled_from(["ENERGY", "TIME", "PARKING_TIME", "FLAT"]),
                             min_size=1))
        elements.append({
            "price_components": [component(k, draw(prices), draw(steps), draw(vats))
                                 for k in sorted(kinds)],
            "restrictions": draw(st.sampled_from(RESTRICTIONS)),
        })
    elements.append({"price_components": [component(k, draw(prices), draw(steps), draw(vats))
                                          for k in ("FLAT", "ENERGY", "TIME", "PARKING_TIME")]})
    return tariff(*elements)


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    """A station's report in the usual shape (whole readings, ISO timestamps with an offset,
    every field present), timestamps written in UTC, with Z or in the site's offset."""
    zone = draw(st.sampled_from(ZONES))
    moment = draw(st.sampled_from(STARTS)) + timedelta(seconds=draw(
        st.integers(min_value=0, max_value=6 * 3600)))
    energy = draw(st.integers(min_value=0, max_value=10**7))
    writing = draw(st.sampled_from(["utc", "z", "local", "micro"]))
    samples = []
    for number in range(draw(st.integers(min_value=1, max_value=40))):
        samples.append({
            "timestamp": _stamp(moment, zone, writing),
            "energy_wh": energy,
            "power_w": draw(st.sampled_from([None, 0, 3700, 7400, 11_000, 22_000, 50_000])),
            "current_a": draw(st.sampled_from([None, 0, 6, 16, 32, 63])),
            "status": STATUSES[0] if number == 0 else draw(st.sampled_from(STATUSES)),
        })
        moment += timedelta(seconds=draw(st.integers(min_value=1, max_value=3 * 3600)))
        energy += draw(st.integers(min_value=0, max_value=30_000))
    samples.append({"timestamp": _stamp(moment, zone, writing), "energy_wh": energy,
                    "power_w": 0, "current_a": 0, "status": "Finishing"})
    return {"time_zone": zone, "samples": samples}


def _stamp(moment: datetime, zone: str, writing: str) -> str:
    if writing == "local":
        return moment.astimezone(ZoneInfo(zone)).isoformat()
    if writing == "micro":
        return (moment + timedelta(microseconds=250)).isoformat()
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z") if writing == "z" else text


def assert_same(plan: Tariff, report: Any) -> None:
    try:
        expected = rate_reference(plan, report)
    except BillingInputError as exc:
        with pytest.raises(type(exc)) as refused:
            rate(plan, report)
        assert str(refused.value) == str(exc)
        return
    got = rate(plan, report)
    assert got == expected
    # repr shows every Decimal digit for digit (1.0 == 1.00, but not in the CDR).
    assert repr(got) == repr(expected)
    assert got.to_json() == expected.to_json()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tariffs(), reports())
def test_the_fast_path_rates_every_session_as_the_reference_does(
    plan: Tariff, report: dict[str, Any]
) -> None:
    # The report does take the fast path (else this would compare the reference to itself).
    assert rating._read_session(report) is not None
    assert_same(plan, report)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tariffs(), reports(), st.data())
def test_damaged_reports_are_refused_or_read_as_the_reference_does(
    plan: Tariff, report: dict[str, Any], data: st.DataObject
) -> None:
    samples = report["samples"]
    at = data.draw(st.integers(min_value=0, max_value=len(samples) - 1))
    field = data.draw(st.sampled_from(["timestamp", "energy_wh", "power_w", "current_a",
                                       "status"]))
    value = data.draw(st.sampled_from([
        None, -1, 0, True, 2.5, "7", Decimal("1.5"), Fraction(7, 3), "", "Charging",
        "Unknown", "2026-10-25T02:30:00+02:00", "2026-10-25 02:30:00Z", "20261025T0230Z",
        "2026-10-25T02:30:00", samples[0]["timestamp"], samples[-1]["timestamp"], [1],
    ]))
    if data.draw(st.booleans()):
        samples[at] = {k: v for k, v in samples[at].items() if k != field}  # left out
    else:
        samples[at] = samples[at] | {field: value}
    assert_same(plan, report)


def test_reports_that_are_no_list_of_objects_are_refused_alike() -> None:
    plan = parse_tariff(bench.TARIFF_JSON)
    good = bench.generate(1, 0, sessions=10, drivers=10)[1]
    for report in [
        {"time_zone": "Europe/Stockholm", "samples": good["samples"][:1]},
        {"time_zone": "Europe/Stockholm", "samples": tuple(good["samples"])},
        {"time_zone": "Europe/Stockholm", "samples": [*good["samples"][:-1], "x"]},
        {"time_zone": "Mars/Olympus", "samples": good["samples"]},
        {"time_zone": None, "samples": good["samples"]},
        {"samples": good["samples"]},
        {"time_zone": "Europe/Stockholm", "samples": list(reversed(good["samples"]))},
        {"time_zone": "Europe/Stockholm", "samples": good["samples"],
         "reservation": {"reserved_at": "2026-10-01T00:00:00Z"}},
    ]:
        assert_same(plan, report)


def test_bench_sessions_under_several_tariffs() -> None:
    plans = [parse_tariff(bench.TARIFF_JSON)]
    rng = random.Random(11)
    plans.append(tariff(
        {"price_components": [component("ENERGY", "0.25", 1, "25")],
         "restrictions": {"max_power": 11, "start_time": "07:00"}},
        {"price_components": [component("TIME", "1.20", 60, "25"),
                              component("ENERGY", "0.31", 100, "6")],
         "restrictions": {"min_current": 16}},
        {"price_components": [component("FLAT", "0.50", 1, None),
                              component("ENERGY", "0.35", 1, "25"),
                              component("PARKING_TIME", "2.00", 300, "25")]},
        min_price={"excl_vat": "2.00"}, max_price={"excl_vat": "40", "incl_vat": "45"},
    ))
    for number in rng.sample(range(1_000_000), 400):
        _plan, report = bench.generate(3, number, sessions=1_000_000, drivers=100_000)
        for plan in plans:
            assert rating._read_session(report) is not None
            assert_same(plan, report)


def test_the_column_reader_reads_what_the_sample_parser_reads() -> None:
    rng = random.Random(5)
    for number in range(300):
        report = bench.generate(5, number, sessions=300, drivers=30)[1]
        samples = report["samples"]
        if number % 3 == 1:
            samples[rng.randrange(len(samples))]["power_w"] = None
        if number % 3 == 2:
            stamp = samples[0]["timestamp"]
            samples[0]["timestamp"] = stamp.replace("+00:00", "Z")
        zone, columns = rating._read_session(report)  # type: ignore[misc]
        parsed = rating.parse_session(report)
        assert zone is parsed.time_zone
        assert columns == rating._Columns(*zip(*parsed.samples, strict=True))


@pytest.mark.parametrize("zone", ZONES)
def test_local_clock_is_what_astimezone_says(zone: str) -> None:
    tz = ZoneInfo(zone)
    rng = random.Random(zone)
    for start in STARTS:
        base = (start - rating.EPOCH) // timedelta(microseconds=1)
        for _ in range(300):
            at: Any = base + rng.randrange(-2 * 86_400, 2 * 86_400) * 1_000_000 \
                + rng.choice([0, 0, 1, 999_999, rng.randrange(1_000_000)])
            if rng.random() < 0.2:
                at = Fraction(at * 3 + 1, 3)
            local = rating._utc(int(at)).astimezone(tz)
            expected = ((local.hour * 60 + local.minute) * 60 + local.second) * 1_000_000 \
                + local.microsecond
            assert rating._local_clock(tz, at) == (expected, local.date())
