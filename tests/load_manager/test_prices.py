"""Price series: the shipped sample, per-slot prices, and the hour-of-week profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from load_manager import prices
from load_manager.prices import MissingPriceError, parse_series, slot_prices

SERIES = """\
# a test series
# zone: SE3
start_utc,price_sek_per_kwh
2024-01-01T00:00:00Z,1.0
2024-01-01T01:00:00Z,2.0
2024-01-01T03:00:00Z,4.0
"""


def test_the_shipped_sample_is_the_generators_output_and_says_it_is_synthetic() -> None:
    text = prices.SAMPLE_FILE.read_text(encoding="utf-8")
    assert text == prices.synthetic_sample_csv()
    assert text.startswith("# SYNTHETIC SAMPLE, NOT MARKET DATA.")
    series = prices.sample_series()
    assert series.zone == "SE3" and series.synthetic
    hours = sorted(series.hourly)
    assert len(hours) == 28 * 24
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(hours))
    assert hours[0].astimezone(ZoneInfo("Europe/Stockholm")) == datetime(
        2024, 1, 1, tzinfo=ZoneInfo("Europe/Stockholm"))
    assert all(0 < p < 5 for p in series.hourly.values())


def test_the_sample_has_a_winter_shape_cheap_nights_and_two_peaks() -> None:
    profile = prices.hour_of_week_profile(prices.sample_series())
    tuesday = profile[24:48]
    assert max(tuesday[0:5]) < min(tuesday[7:10]) and max(tuesday[0:5]) < min(tuesday[17:19])
    assert tuesday.index(max(tuesday[6:12])) in (7, 8, 9)
    assert tuesday.index(max(tuesday[15:22])) in (17, 18, 19)
    assert max(profile[5 * 24:]) < max(tuesday)  # the weekend is flatter


def test_each_slot_takes_its_hours_price_and_a_missing_hour_is_an_error() -> None:
    series = parse_series(SERIES)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert slot_prices(series, start, 8, 15) == [1.0] * 4 + [2.0] * 4
    # Stockholm time works the same: 01:00 CET is 00:00 UTC.
    local = datetime(2024, 1, 1, 1, 0, tzinfo=ZoneInfo("Europe/Stockholm"))
    assert slot_prices(series, local, 2, 30) == [1.0, 1.0]
    with pytest.raises(MissingPriceError, match="2024-01-01T02:00Z"):
        slot_prices(series, start, 12, 15)


@pytest.mark.parametrize(("start", "minutes"), [
    (datetime(2024, 1, 1, 0, 10, tzinfo=UTC), 15),  # not on a slot boundary
    (datetime(2024, 1, 1), 15),  # naive
    (datetime(2024, 1, 1, tzinfo=UTC), 7),  # does not divide an hour
])
def test_odd_horizons_are_refused(start: datetime, minutes: int) -> None:
    with pytest.raises(ValueError):
        slot_prices(parse_series(SERIES), start, 2, minutes)


def test_ore_columns_and_file_errors(tmp_path: Path) -> None:
    series = parse_series("start_utc,price_ore_per_kwh\n2024-01-01T00:00:00Z,123.4\n")
    assert series.hourly[datetime(2024, 1, 1, tzinfo=UTC)] == pytest.approx(1.234)
    assert not series.synthetic and series.zone == "unknown"
    for bad in (
        "start_utc,price\n2024-01-01T00:00:00Z,1\n",
        "start_utc,price_sek_per_kwh\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:00Z,2\n",
        "start_utc,price_sek_per_kwh\n2024-01-01T00:00:00+01:00,1\n",
        "start_utc,price_sek_per_kwh\n2024-01-01T00:30:00Z,1\n",
        "start_utc,price_sek_per_kwh\n2024-01-01T00:00:00Z,nan\n",
        "start_utc,price_sek_per_kwh\n",
    ):
        with pytest.raises(ValueError):
            parse_series(bad)
    path = tmp_path / "p.csv"
    path.write_text(SERIES, encoding="utf-8")
    assert prices.load_series(path).zone == "SE3"


def test_the_hour_of_week_profile_averages_each_local_hour_and_needs_a_full_week() -> None:
    series = prices.sample_series()
    profile = prices.hour_of_week_profile(series)
    assert len(profile) == 168
    zone = ZoneInfo("Europe/Stockholm")
    wednesday_18 = [p for at, p in series.hourly.items()
                    if at.astimezone(zone).weekday() == 2 and at.astimezone(zone).hour == 18]
    assert len(wednesday_18) == 4
    assert profile[2 * 24 + 18] == pytest.approx(sum(wednesday_18) / 4)
    with pytest.raises(MissingPriceError):
        prices.hour_of_week_profile(parse_series(SERIES))


def test_the_profile_is_laid_over_a_local_wall_clock() -> None:
    profile = tuple(float(k) for k in range(168))
    monday = datetime(2019, 3, 4)  # naive local, a Monday
    got = prices.prices_by_hour_of_week(profile, monday + timedelta(hours=23, minutes=50),
                                        4, 5)
    assert got == [23.0, 23.0, 24.0, 24.0]  # Monday 23h, then Tuesday 00h
    sunday_late = prices.prices_by_hour_of_week(profile, datetime(2019, 3, 10, 23, 55), 2, 5)
    assert sunday_late == [167.0, 0.0]
    with pytest.raises(ValueError):
        prices.prices_by_hour_of_week(profile[:24], monday, 1, 5)
