"""Business hours in Europe/Stockholm: open or not, the next opening, SLA minutes that
count only while open (across nights, weekends, holidays and the change to winter time),
and how a driver is told when a person will answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from support import hours

STOCKHOLM = "Europe/Stockholm"
ZONE = ZoneInfo(STOCKHOLM)
OFFICE = hours.validate({
    **{day: [["08:00", "12:00"], ["13:00", "17:00"]] for day in ("mon", "tue", "wed", "thu")},
    "fri": [["08:00", "15:00"]],
    "closed": ["2026-12-24", "2026-12-25"]})


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=ZONE)


def test_open_only_within_the_intervals_of_the_day() -> None:
    assert hours.is_open(OFFICE, STOCKHOLM, local(2026, 12, 1, 9, 30))  # Tuesday
    assert not hours.is_open(OFFICE, STOCKHOLM, local(2026, 12, 1, 12, 30))  # lunch
    assert not hours.is_open(OFFICE, STOCKHOLM, local(2026, 12, 1, 17, 0))  # closes at 17
    assert not hours.is_open(OFFICE, STOCKHOLM, local(2026, 12, 5, 10, 0))  # Saturday
    assert not hours.is_open(OFFICE, STOCKHOLM, local(2026, 12, 24, 10, 0))  # Christmas Eve
    assert hours.is_open({}, STOCKHOLM, local(2026, 12, 5, 3, 0))  # no hours: always open


def test_the_next_opening() -> None:
    assert hours.next_open(OFFICE, STOCKHOLM, local(2026, 12, 1, 9, 30)) == \
        local(2026, 12, 1, 9, 30)
    assert hours.next_open(OFFICE, STOCKHOLM, local(2026, 12, 1, 12, 10)) == \
        local(2026, 12, 1, 13, 0)
    assert hours.next_open(OFFICE, STOCKHOLM, local(2026, 12, 4, 16, 0)) == \
        local(2026, 12, 7, 8, 0)  # Friday after three: Monday
    assert hours.next_open(OFFICE, STOCKHOLM, local(2026, 12, 23, 18, 0)) == \
        local(2026, 12, 28, 8, 0)  # over Christmas
    assert hours.next_open({"mon": []}, STOCKHOLM, local(2026, 12, 1, 9, 0)) is None


def test_sla_minutes_count_only_open_time() -> None:
    add = hours.add_business_minutes
    assert add(OFFICE, STOCKHOLM, local(2026, 12, 1, 11, 30), 60) == local(2026, 12, 1, 13, 30)
    assert add(OFFICE, STOCKHOLM, local(2026, 12, 4, 14, 50), 60) == local(2026, 12, 7, 8, 50)
    assert add(OFFICE, STOCKHOLM, local(2026, 12, 5, 10, 0), 30) == local(2026, 12, 7, 8, 30)
    start = local(2026, 12, 1, 11, 30)
    assert add({}, STOCKHOLM, start, 90) == start + timedelta(minutes=90)
    assert hours.business_minutes_between(
        OFFICE, STOCKHOLM, local(2026, 12, 4, 14, 50), local(2026, 12, 7, 8, 50)) == 60


def test_a_day_with_the_change_to_winter_time_is_as_long_as_it_really_is() -> None:
    round_the_clock = {day: [["00:00", "24:00"]] for day in hours.DAYS}
    start = local(2026, 10, 25, 0, 0)  # clocks go back at 03:00: a day of 25 hours
    assert hours.add_business_minutes(round_the_clock, STOCKHOLM, start, 25 * 60) == \
        local(2026, 10, 26, 0, 0)
    assert local(2026, 10, 26, 0, 0).astimezone(UTC) - start.astimezone(UTC) == \
        timedelta(hours=25)
    assert hours.add_business_minutes(round_the_clock, STOCKHOLM, start, 24 * 60) == \
        local(2026, 10, 25, 23, 0)


@pytest.mark.parametrize("spec", [
    {"mon": [["17:00", "08:00"]]}, {"mon": [["08:00", "12:00"], ["11:00", "13:00"]]},
    {"monday": []}, {"tue": [["8:00", "17:00"]]}, {"closed": ["24 dec"]},
])
def test_hours_that_do_not_make_sense_are_refused(spec: dict) -> None:
    with pytest.raises(hours.InvalidHours):
        hours.validate(spec)


def test_the_driver_hears_when_in_their_language() -> None:
    friday_evening = local(2026, 12, 4, 18, 0)
    monday = hours.next_open(OFFICE, STOCKHOLM, friday_evening)
    assert monday is not None
    assert hours.describe(monday, now=friday_evening, time_zone=STOCKHOLM,
                          language="sv") == "på måndag kl. 08:00"
    assert hours.describe(monday, now=friday_evening, time_zone=STOCKHOLM,
                          language="en") == "on Monday at 08:00"
    tuesday_night = local(2026, 12, 1, 22, 0)
    assert hours.describe(local(2026, 12, 2, 8, 0), now=tuesday_night, time_zone=STOCKHOLM,
                          language="sv") == "i morgon kl. 08:00"
    assert hours.describe(local(2026, 12, 1, 13, 0).astimezone(UTC),
                          now=local(2026, 12, 1, 12, 5), time_zone=STOCKHOLM,
                          language="en") == "today at 13:00"
