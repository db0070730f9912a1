"""The event bus: typed subscriptions, isolation of subscribers, and a wire format."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from chargedesk.events import Event, InMemoryEventBus, decode, encode
from station_api.events import MeterValuesReceived, Sample, StationOffline, StationOnline


async def test_subscribers_get_the_events_of_their_type_only() -> None:
    bus = InMemoryEventBus()
    online: list[StationOnline] = []
    everything: list[Event] = []
    bus.subscribe(StationOnline, online.append)
    bus.subscribe(Event, everything.append)
    await bus.publish(StationOnline(station_id="A"))
    await bus.publish(StationOffline(station_id="A", reason="gone"))
    await bus.join()
    assert [e.station_id for e in online] == ["A"]
    assert [type(e) for e in everything] == [StationOnline, StationOffline]


async def test_a_failing_or_slow_subscriber_does_not_block_the_others() -> None:
    bus = InMemoryEventBus()
    got: list[str] = []

    def broken(event: StationOnline) -> None:
        raise RuntimeError("subscriber bug")

    async def slow(event: StationOnline) -> None:
        await asyncio.sleep(0.2)
        got.append("slow")

    bus.subscribe(StationOnline, broken)
    bus.subscribe(StationOnline, slow)
    bus.subscribe(StationOnline, lambda e: got.append("fast"))
    await bus.publish(StationOnline(station_id="A"))
    assert got == []  # publishing returns before subscribers run
    await bus.join()
    assert got == ["fast", "slow"]


def test_events_cross_a_process_boundary_as_topic_and_json() -> None:
    event = MeterValuesReceived(
        station_id="CP-1", connector_id=1, transaction_id=7,
        samples=[Sample(timestamp=datetime(2026, 1, 1, tzinfo=UTC),
                        measurand="Energy.Active.Import.Register", phase="", location="Outlet",
                        context="Sample.Periodic", unit="Wh", value="1234.5")],
    )
    topic, payload = encode(event)
    assert topic == "station.meter_values"
    assert decode(topic, payload) == event
    with pytest.raises(ValueError):
        decode("no.such.topic", "{}")


def test_two_event_types_cannot_share_a_topic() -> None:
    with pytest.raises(TypeError):
        class Impostor(Event):
            topic = "station.online"
