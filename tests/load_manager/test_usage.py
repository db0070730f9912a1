"""Station events become usage rows: one per visit, whatever order the events come in."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session, select

from chargedesk.db import run_in_session, session_scope
from chargedesk.events import Event, InMemoryEventBus
from load_manager import usage
from load_manager.models import UsageOutcome, UsageSession
from station_api import service
from station_api.events import (
    MeterValuesReceived,
    Sample,
    StatusChanged,
    TransactionStarted,
    TransactionStopped,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
STATION = "SE-TEST-01"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Station:
    """Records what a station reports, as the central system does, and keeps its events."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.events: list[Event] = []
        with session_scope(engine) as session:
            service.create_site(session, site_id="SITE-A", name="Site A")
            service.register_station(session, station_id=STATION, password=None,
                                     site_id="SITE-A")

    def status(self, connector: int, status: str, minutes: float) -> None:
        with session_scope(self.engine) as session:
            new, current = service.record_status(
                session, station_id=STATION, connector_id=connector, status=status,
                error_code="NoError" if status != "Faulted" else "GroundFailure",
                timestamp=at(minutes))
        assert new
        self.events.append(StatusChanged(station_id=STATION, connector_id=connector,
                                         status=status, error_code="NoError",
                                         timestamp=at(minutes), current=current))

    def start(self, connector: int, minutes: float, meter: int) -> int:
        with session_scope(self.engine) as session:
            tx, _info, _created = service.start_transaction(
                session, station_id=STATION, connector_id=connector, id_tag="TAG1",
                meter_start_wh=meter, timestamp=at(minutes))
            tx_id = tx.id or 0
        self.events.append(TransactionStarted(station_id=STATION, connector_id=connector,
                                              transaction_id=tx_id, id_tag="TAG1",
                                              meter_start_wh=meter, timestamp=at(minutes)))
        return tx_id

    def stop(self, tx_id: int, minutes: float, meter_start: int, meter: int) -> None:
        with session_scope(self.engine) as session:
            tx, stopped = service.stop_transaction(session, station_id=STATION,
                                                   transaction_id=tx_id, meter_stop_wh=meter,
                                                   timestamp=at(minutes))
            assert stopped and tx is not None
            connector = tx.connector_id
        self.events.append(TransactionStopped(
            station_id=STATION, connector_id=connector, transaction_id=tx_id, id_tag="TAG1",
            meter_start_wh=meter_start, meter_stop_wh=meter, energy_wh=meter - meter_start,
            reason="EVDisconnected", timestamp=at(minutes)))

    def meter(self, connector: int, tx_id: int, minutes: float, wh: int) -> None:
        sampled = {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        with session_scope(self.engine) as session:
            service.record_meter_values(session, station_id=STATION, connector_id=connector,
                                        transaction_id=tx_id,
                                        meter_values=[(at(minutes), [sampled])])
        self.events.append(MeterValuesReceived(
            station_id=STATION, connector_id=connector, transaction_id=tx_id,
            samples=[Sample(timestamp=at(minutes), measurand="Energy.Active.Import.Register",
                            phase="", location="Outlet", context="Sample.Periodic", unit="Wh",
                            value=Decimal(wh))]))


async def deliver(engine: Any, events: list[Event]) -> None:
    bus = InMemoryEventBus()
    usage.install(engine=engine, bus=bus)
    for event in events:
        await bus.publish(event)
    await bus.join()


def rows(engine: Any) -> list[UsageSession]:
    with Session(engine) as session:
        return list(session.exec(select(UsageSession).order_by(
            UsageSession.connector_id, UsageSession.plugged_in_at)).all())


def a_full_visit(station: Station, connector: int = 1, offset: float = 0) -> int:
    """Plug in, charge an hour, car full for 29 min, stop, finish 10 min, unplug."""
    station.status(connector, "Preparing", offset + 0)
    tx = station.start(connector, offset + 1, meter=1000)
    station.status(connector, "Charging", offset + 1)
    station.status(connector, "SuspendedEV", offset + 61)
    station.stop(tx, offset + 90, meter_start=1000, meter=11_000)
    station.status(connector, "Finishing", offset + 90)
    station.status(connector, "Available", offset + 100)
    return tx


async def test_a_visit_counts_charging_idle_energy_and_completes(engine: Any) -> None:
    station = Station(engine)
    tx = a_full_visit(station)

    await deliver(engine, station.events)

    [row] = rows(engine)
    assert (row.plugged_in_at, row.unplugged_at) == (at(0), at(100))
    assert row.charging_s == 3600
    assert row.idle_s == 29 * 60 + 10 * 60
    assert row.energy_wh == 10_000
    assert row.transaction_id == tx
    assert row.site_id == "SITE-A"
    assert row.outcome == UsageOutcome.completed


async def test_events_in_any_order_give_the_same_row(engine: Any) -> None:
    station = Station(engine)
    a_full_visit(station)

    # Unplug first, stop last: every handler reads history in the station's timestamps.
    await deliver(engine, list(reversed(station.events)))

    [row] = rows(engine)
    assert (row.charging_s, row.idle_s, row.energy_wh) == (3600, 2340, 10_000)
    assert row.outcome == UsageOutcome.completed


async def test_events_that_wait_together_cost_one_rebuild_and_the_same_row(
    engine: Any, monkeypatch: Any
) -> None:
    station = Station(engine)
    a_full_visit(station)
    rebuilt: list[dict[str, Any]] = []
    real = usage.rebuild_between

    def counting(session: Session, **kwargs: Any) -> int:
        rebuilt.append(kwargs)
        return real(session, **kwargs)

    monkeypatch.setattr(usage, "rebuild_between", counting)
    # The database thread is busy with a station's message while all seven events come in.
    busy, go_on = threading.Event(), threading.Event()

    def a_long_message(session: Session) -> None:
        busy.set()
        assert go_on.wait(10)

    message = asyncio.create_task(run_in_session(engine, a_long_message))
    assert await asyncio.to_thread(busy.wait, 10)
    bus = InMemoryEventBus()
    usage.install(engine=engine, bus=bus)
    for event in station.events:
        await bus.publish(event)
    await asyncio.sleep(0)  # every subscriber has queued or joined a rebuild
    go_on.set()
    await message
    await bus.join()

    assert [(r["first"], r["last"]) for r in rebuilt] == [(at(0), at(100))]
    [row] = rows(engine)
    assert (row.charging_s, row.idle_s, row.energy_wh) == (3600, 2340, 10_000)
    assert row.outcome == UsageOutcome.completed


async def test_plugging_in_without_charging_is_a_failed_start(engine: Any) -> None:
    station = Station(engine)
    station.status(2, "Preparing", 0)
    station.status(2, "Available", 4)

    await deliver(engine, station.events)

    [row] = rows(engine)
    assert row.connector_id == 2 and row.transaction_id is None
    assert (row.charging_s, row.idle_s, row.energy_wh) == (0, 0, 0)
    assert row.outcome == UsageOutcome.failed_start


async def test_a_fault_during_the_visit_marks_it_faulted_even_with_energy(engine: Any) -> None:
    station = Station(engine)
    station.status(1, "Preparing", 0)
    tx = station.start(1, 0, meter=0)
    station.status(1, "Charging", 0)
    station.status(1, "Faulted", 20)
    station.stop(tx, 25, meter_start=0, meter=3_000)
    station.status(1, "Available", 30)

    await deliver(engine, station.events)

    [row] = rows(engine)
    assert row.charging_s == 20 * 60 and row.idle_s == 0
    assert row.energy_wh == 3_000
    assert row.outcome == UsageOutcome.faulted


async def test_a_transaction_without_preparing_opens_the_visit(engine: Any) -> None:
    station = Station(engine)
    tx = station.start(1, 5, meter=100)
    station.status(1, "Charging", 6)
    station.stop(tx, 36, meter_start=100, meter=5_100)
    station.status(1, "Finishing", 36)
    station.status(1, "Available", 40)

    await deliver(engine, station.events)

    [row] = rows(engine)
    assert (row.plugged_in_at, row.unplugged_at) == (at(5), at(40))
    assert (row.charging_s, row.idle_s, row.energy_wh) == (30 * 60, 4 * 60, 5_000)


async def test_a_running_visit_is_open_with_the_energy_metered_so_far(engine: Any) -> None:
    station = Station(engine)
    station.status(1, "Preparing", 0)
    tx = station.start(1, 1, meter=2_000)
    station.status(1, "Charging", 1)
    station.meter(1, tx, 31, 4_500)
    station.status(1, "SuspendedEV", 40)

    await deliver(engine, station.events)

    [row] = rows(engine)
    assert row.outcome == UsageOutcome.open and row.unplugged_at is None
    # Meter values alone don't rebuild a visit (they come every few seconds from every
    # station): energy and times are as of the last rebuild, here the SuspendedEV.
    assert row.energy_wh == 2_500
    assert row.charging_s == 39 * 60


async def test_a_late_status_is_placed_by_its_timestamp(engine: Any) -> None:
    station = Station(engine)
    a_full_visit(station)
    await deliver(engine, station.events)
    station.events.clear()

    # Queued offline: the car had paused (SuspendedEV) 20-30 min into charging.
    station.status(1, "SuspendedEV", 21)
    station.status(1, "Charging", 31)
    assert all(isinstance(e, StatusChanged) and not e.current for e in station.events)
    await deliver(engine, station.events)

    [row] = rows(engine)
    assert row.charging_s == 3600 - 600
    assert row.idle_s == 2340 + 600
    assert row.outcome == UsageOutcome.completed


async def test_a_late_unplug_splits_what_looked_like_one_visit(engine: Any) -> None:
    station = Station(engine)
    station.status(1, "Preparing", 0)
    station.status(1, "Preparing", 50)
    tx = station.start(1, 51, meter=0)
    station.status(1, "Charging", 51)
    station.stop(tx, 81, meter_start=0, meter=7_000)
    station.status(1, "Available", 90)
    await deliver(engine, station.events)
    assert len(rows(engine)) == 1
    station.events.clear()

    station.status(1, "Available", 10)  # the first car had left after ten minutes
    await deliver(engine, station.events)

    first, second = rows(engine)
    assert (first.plugged_in_at, first.unplugged_at, first.outcome) == (
        at(0), at(10), UsageOutcome.failed_start)
    assert (second.plugged_in_at, second.unplugged_at, second.transaction_id) == (
        at(50), at(90), tx)
    assert second.charging_s == 39 * 60 and second.energy_wh == 7_000


async def test_backfill_rebuilds_the_same_rows_and_is_idempotent(engine: Any) -> None:
    station = Station(engine)
    a_full_visit(station, connector=1)
    a_full_visit(station, connector=2, offset=200)
    station.status(1, "Preparing", 400)
    station.status(1, "Available", 402)
    await deliver(engine, station.events)
    by_events = [(r.connector_id, r.plugged_in_at, r.unplugged_at, r.charging_s, r.idle_s,
                  r.energy_wh, r.outcome, r.transaction_id) for r in rows(engine)]
    assert len(by_events) == 3

    with session_scope(engine) as session:
        for row in session.exec(select(UsageSession)).all():
            session.delete(row)
    for _ in range(2):
        with session_scope(engine) as session:
            assert usage.backfill(session) == 3

    rebuilt = [(r.connector_id, r.plugged_in_at, r.unplugged_at, r.charging_s, r.idle_s,
                r.energy_wh, r.outcome, r.transaction_id) for r in rows(engine)]
    assert rebuilt == by_events
    with session_scope(engine) as session:
        assert usage.backfill(session, since=at(350)) == 1  # only the visit at 400
    assert len(rows(engine)) == 3


def test_derive_visits_ignores_statuses_outside_a_visit() -> None:
    points = [usage.StatusPoint(at(0), "Faulted"), usage.StatusPoint(at(1), "Available"),
              usage.StatusPoint(at(2), "SuspendedEVSE"), usage.StatusPoint(at(3), "Charging"),
              usage.StatusPoint(at(5), "Available")]

    [visit] = usage.derive_visits(points, [])

    assert (visit.plugged_in_at, visit.unplugged_at) == (at(2), at(5))
    assert visit.charging_s == 120 and visit.idle_s == 0 and not visit.faulted
