"""The reference data the actions keep for a few seconds: expiry, size, and a new
connector status dropping what was kept of its station."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from assistant.actions import reference
from assistant.actions.reference import TtlCache
from chargedesk.events import InMemoryEventBus
from station_api.events import StatusChanged


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_expires_after_its_time_to_live() -> None:
    clock = Clock()
    cache: TtlCache[str] = TtlCache(5.0, clock=clock)
    cache.put("k", "v")
    clock.now += 4.9
    assert cache.get("k") == "v"
    clock.now += 0.1
    assert cache.get("k") is None
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first_when_full() -> None:
    cache: TtlCache[int] = TtlCache(60.0, maxsize=2, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


async def test_get_or_load_loads_once_and_does_not_keep_a_failure() -> None:
    cache: TtlCache[list[int]] = TtlCache(60.0, clock=Clock())
    loads = []

    async def load() -> list[int]:
        loads.append(1)
        return [1, 2]

    assert await cache.get_or_load("x", load) == [1, 2]
    assert await cache.get_or_load("x", load) == [1, 2]
    assert len(loads) == 1

    async def fail() -> list[int]:
        raise LookupError("no such station")

    for _ in range(2):
        with pytest.raises(LookupError):
            await cache.get_or_load("missing", fail)
    assert cache.get("missing") is None


async def test_a_new_status_drops_the_kept_connectors_of_its_station_and_the_sites() -> None:
    bus = InMemoryEventBus()
    runtime = SimpleNamespace(bus=bus)
    kept = reference.install(runtime)
    assert reference.of(runtime) is kept
    kept.connectors.put("ST-1", [(1, "Available", "NoError")])
    kept.connectors.put("ST-2", [(1, "Charging", "NoError")])
    kept.sites.put("all", [{"id": "S", "free": 1, "total": 2}])

    await bus.publish(StatusChanged(station_id="ST-1", connector_id=1, status="Preparing",
                                    error_code="NoError", timestamp=datetime.now(UTC)))
    await bus.join()

    assert kept.connectors.get("ST-1") is None
    assert kept.connectors.get("ST-2") == [(1, "Charging", "NoError")]
    assert kept.sites.get("all") is None
