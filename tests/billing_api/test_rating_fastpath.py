"""The sample reader's fast path for timestamps (two cached parts instead of a datetime
parse) must accept exactly what ``datetime.fromisoformat`` accepts, with the same instant,
and refuse the rest with the same error as before."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from billing_api import rating
from billing_api.rating import InvalidSessionError, parse_session

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference_us(stamp: str) -> int | None:
    """What the engine read before the fast path: an aware fromisoformat, in µs."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return (moment - EPOCH) // timedelta(microseconds=1)


DATES = ["2026-10-25", "2026-03-29", "2024-02-29", "2026-02-29", "2026-13-01", "0001-01-01",
         "9999-12-31", "2026-W43-7", "2026-298", "20261025", "2026-1-25", "2026-10-2x"]
HOURS = ["00", "01", "12", "23", "24", "99", "1", "١٢", "+1"]
MINUTES_SECONDS = ["00:00", "59:59", "60:00", "00:60", "34:56", "5:06", "34:5", "3456", "34:56.5",
                   "34:56.123456", "٣٤:٥٦", "34:56 "]
OFFSETS = ["Z", "z", "+00:00", "-00:00", "+01:00", "+02:00", "-05:30", "+23:59", "+24:00",
           "-24:00", "+0100", "+01", "+01:00:30", "+01:60", "", " +01:00", "+01:00 ", "UTC"]
SEPARATORS = ["T", " ", "t", "X"]


def stamps() -> list[str]:
    every = [
        f"{day}{separator}{hour}:{rest}{offset}"
        for day, separator, hour, rest, offset in itertools.product(
            DATES[:4], SEPARATORS, HOURS, MINUTES_SECONDS, OFFSETS)
    ]
    every += [f"{day}T12:34:56{offset}" for day in DATES for offset in OFFSETS]
    chars = "0123456789-:T+Z. "
    rng = random.Random(7)
    base = "2026-10-25T02:30:00+02:00"
    for _ in range(3000):  # one or two characters changed, dropped or added
        text = list(base)
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(text))
            action = rng.random()
            if action < 0.6:
                text[at] = rng.choice(chars)
            elif action < 0.8:
                del text[at]
            else:
                text.insert(at, rng.choice(chars))
        every.append("".join(text))
    return every


def test_epoch_us_agrees_with_fromisoformat_cold_and_cached() -> None:
    all_stamps = stamps()
    rating._HOURS_US.clear()
    rating._REST_US.clear()
    for attempt in ("cold", "cached"):
        for stamp in all_stamps:
            assert rating._epoch_us(stamp) == reference_us(stamp), (attempt, stamp)


def session_of(stamp: str) -> dict[str, object]:
    later = "2030-01-01T00:00:00+00:00"
    return {"time_zone": "Europe/Stockholm", "samples": [
        {"timestamp": stamp, "energy_wh": 0, "power_w": 7000, "current_a": 16,
         "status": "Charging"},
        {"timestamp": later, "energy_wh": 1000, "power_w": 0, "current_a": 0,
         "status": "Finishing"},
    ]}


@pytest.mark.parametrize("cached", [False, True])
def test_parse_session_reads_or_refuses_each_timestamp_as_fromisoformat_does(
    cached: bool,
) -> None:
    if not cached:
        rating._HOURS_US.clear()
        rating._REST_US.clear()
    for stamp in stamps():
        expected = reference_us(stamp)
        if expected is None:
            with pytest.raises(InvalidSessionError, match="sample 1: timestamp"):
                parse_session(session_of(stamp))
        elif expected >= reference_us("2030-01-01T00:00:00+00:00"):  # type: ignore[operator]
            with pytest.raises(InvalidSessionError, match="not later than sample 1"):
                parse_session(session_of(stamp))
        else:
            assert parse_session(session_of(stamp)).samples[0].at_us == expected, stamp


def test_samples_with_the_usual_shape_read_as_the_field_by_field_reader_reads_them() -> None:
    rng = random.Random(3)
    for _ in range(200):
        at = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(40 * 86400))
        zone = rng.choice([UTC, *(timezone_of(h) for h in (-5.5, 1, 2, 14))])
        raw = []
        energy = rng.randrange(10**6)
        for number in range(rng.randint(2, 40)):
            sample: dict[str, object] = {
                "timestamp": at.astimezone(zone).isoformat().replace("+00:00", rng.choice(
                    ["+00:00", "Z"])),
                "energy_wh": energy,
                "status": rng.choice(["Charging", "SuspendedEV", "Finishing", "", None]),
            }
            if rng.random() < 0.9:
                sample["power_w"] = rng.choice([None, 0, rng.randrange(50_000)])
            if rng.random() < 0.9:
                sample["current_a"] = rng.choice([None, 0, rng.randrange(64)])
            raw.append(sample)
            at += timedelta(seconds=rng.randint(1, 900), microseconds=rng.choice([0, 0, 250]))
            energy += rng.randrange(3000) * number % 2
        parsed = parse_session({"time_zone": "Europe/Stockholm", "samples": raw}).samples
        assert parsed == tuple(rating._parse_sample(n, s) for n, s in enumerate(raw, 1))


def timezone_of(hours: float) -> object:
    from datetime import timezone

    return timezone(timedelta(hours=hours))
