"""Whole networks of simulated stations, with drivers who come and go."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocpp.v16.enums import (
    Reason,
)

from station_api.simulator.model import (
    Counters,
)
from station_api.simulator.station import SimulatedStation

log = logging.getLogger(__name__)


# Whole-network simulation


@dataclass
class SimulationResult:
    """Aggregate state of a `run_simulation` run (also what `progress` is called with)."""

    stations: int
    connected: int = 0
    booted: int = 0
    elapsed: float = 0.0
    counters: Counters = field(default_factory=Counters)


def _summarise(stations: Sequence[SimulatedStation], started: float) -> SimulationResult:
    result = SimulationResult(stations=len(stations), elapsed=time.monotonic() - started)
    for station in stations:
        result.connected += station.connected.is_set()
        result.booted += station.booted.is_set()
        result.counters.add(station.counters)
    return result


async def _sessions(
    station: SimulatedStation,
    connector_id: int,
    rng: random.Random,
    id_tags: Sequence[str],
    session_seconds: tuple[float, float],
    idle_seconds: tuple[float, float],
) -> None:
    """Cars come and go on one connector: arrive, charge until full enough or gone, leave."""
    await asyncio.sleep(rng.uniform(0, idle_seconds[1]))
    while True:
        try:
            await station.booted.wait()
            battery = station._random_battery()
            need_wh = rng.uniform(5_000, 40_000)
            c = station.connectors[connector_id]
            if station._can_start(c):
                await station.plug_in(connector_id, rng.choice(id_tags), battery=battery)
                start_wh = c.energy_wh
                deadline = time.monotonic() + rng.uniform(*session_seconds)
                poll = max(5.0, float(station.config["MeterValueSampleInterval"].value))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or c.energy_wh - start_wh >= need_wh:
                        break
                    await asyncio.sleep(min(poll, remaining))
                await station.stop_charging(connector_id, reason=Reason.local)
                await asyncio.sleep(rng.uniform(5, 60))
                await station.unplug(connector_id)
        except (ValueError, KeyError) as e:
            log.debug("%s: session skipped: %r", station.station_id, e)
        await asyncio.sleep(rng.uniform(*idle_seconds))


async def run_simulation(
    url: str,
    *,
    stations: int,
    connectors: int = 2,
    password: str | None = None,
    id_prefix: str = "SIM",
    meter_interval: float = 60.0,
    heartbeat_interval: float | None = None,
    seed: int = 0,
    **fleet_options: Any,
) -> SimulationResult:
    """Run `stations` identical simulated stations (PREFIX0001 …) against `url`.

    Takes the options of :func:`run_fleet` (duration, sessions, progress, id_tags, …).
    """
    rng = random.Random(seed)
    fleet = [
        SimulatedStation(
            f"{id_prefix}{n:04d}",
            url,
            password=password,
            connectors=connectors,
            meter_interval=meter_interval,
            heartbeat_interval=heartbeat_interval,
            seed=rng.randrange(2**32),
        )
        for n in range(1, stations + 1)
    ]
    return await run_fleet(fleet, seed=rng.randrange(2**32), **fleet_options)


async def run_fleet(
    fleet: Sequence[SimulatedStation],
    *,
    duration: float | None = None,
    sessions: bool = True,
    progress: Callable[[SimulationResult], None] | None = None,
    id_tags: Sequence[str] = ("04A2B3C4D5E6F7", "04E1F2A3B4C5D6", "0455AA66BB77CC"),
    connect_rate: float = 200.0,
    session_seconds: tuple[float, float] = (120.0, 900.0),
    idle_seconds: tuple[float, float] = (30.0, 600.0),
    seed: int = 0,
    stop: asyncio.Event | None = None,
    progress_interval: float = 1.0,
) -> SimulationResult:
    """Run the given stations until `duration` or `stop` ends it, with random sessions.

    Stations connect at `connect_rate` per second so a thousand do not stampede the server;
    each one's tasks sleep between events, so nothing spins. If the run is cancelled the
    stations are shut down and the cancellation propagates; set `stop` to end early and
    still get the result.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    tasks: list[asyncio.Task[Any]] = []

    async def launch() -> None:
        for station in fleet:
            await station.start()
            if sessions:
                for cid in station.connectors:
                    tasks.append(
                        asyncio.create_task(
                            _sessions(
                                station,
                                cid,
                                random.Random(rng.randrange(2**32)),
                                id_tags,
                                session_seconds,
                                idle_seconds,
                            )
                        )
                    )
            await asyncio.sleep(1.0 / connect_rate)

    async def report() -> None:
        while progress is not None:
            await asyncio.sleep(progress_interval)
            progress(_summarise(fleet, started))

    tasks += [asyncio.create_task(launch()), asyncio.create_task(report())]
    try:
        waiting = asyncio.ensure_future((stop or asyncio.Event()).wait())
        await asyncio.wait([waiting], timeout=duration)
        waiting.cancel()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in fleet), return_exceptions=True)
    return _summarise(fleet, started)
