"""Whole journeys: simulated charge points against the real central system and REST API."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest

from chargedesk.db import session_scope
from station_api import service
from station_api.events import StationOffline, StationOnline, TransactionStopped
from station_api.simulator import Battery, SimulatedStation
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import add_tag, capture, eventually, register


@pytest.fixture
async def aapi(server, operator_key):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {operator_key}"}) as client:
        yield client


@pytest.fixture
async def sim(server, engine):
    register(engine, "SIM-1")
    add_tag(engine, "RFID-1")
    station = SimulatedStation("SIM-1", server.ws_url, password=PASSWORD, connectors=2,
                               meter_interval=0.2, seed=1)
    await station.start()
    await asyncio.wait_for(station.booted.wait(), 10)
    yield station
    await station.stop()


def powers(engine: Any, transaction_id: int) -> list[Decimal]:
    with session_scope(engine) as session:
        rows = service.list_meter_samples(session, transaction_id=transaction_id,
                                          measurand="Power.Active.Import")
    return [r.value for r in rows if r.context == "Sample.Periodic"]


async def test_a_session_follows_the_charging_profile_we_send(server, engine, sim, aapi):
    stopped = capture(server, TransactionStopped)
    tx = await sim.plug_in(1, "RFID-1", battery=Battery(capacity_kwh=60, soc=0.2,
                                                         max_power_w=11000))
    assert tx is not None
    await eventually(lambda: len(powers(engine, tx)) >= 2)
    assert powers(engine, tx)[-1] == Decimal("11000")

    profile = {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 10, "transactionId": tx, "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}}
    answer = (await aapi.post("/api/v1/stations/SIM-1/commands/SetChargingProfile",
                              json=profile)).json()
    assert answer["outcome"] == "accepted", answer
    composite = (await aapi.post("/api/v1/stations/SIM-1/commands/GetCompositeSchedule",
                                 json={"connectorId": 1, "duration": 600,
                                       "chargingRateUnit": "A"})).json()
    assert composite["outcome"] == "accepted", composite
    periods = composite["response"]["chargingSchedule"]["chargingSchedulePeriod"]
    assert periods[0]["limit"] == 10.0
    # 10 A on three phases at 230 V.
    await eventually(lambda: powers(engine, tx)[-1] == Decimal("6900"))

    await sim.stop_charging(1)
    await eventually(lambda: len(stopped) == 1)
    with session_scope(engine) as session:
        done = service.get_transaction(session, transaction_id=tx)
    assert done.energy_wh > 0 and done.energy_wh == stopped[0].energy_wh
    assert done.stop_reason == "Local"


async def test_a_stuck_cable_lock_is_reported_as_refused(sim, aapi) -> None:
    sim.behaviour.unlock_fails = True
    stuck = (await aapi.post("/api/v1/stations/SIM-1/commands/UnlockConnector",
                             json={"connectorId": 2}, params={"reason": "driver: cable stuck"}
                             )).json()
    assert (stuck["outcome"], stuck["response"]) == ("rejected", {"status": "UnlockFailed"})
    sim.behaviour.unlock_fails = False
    freed = (await aapi.post("/api/v1/stations/SIM-1/commands/UnlockConnector",
                             json={"connectorId": 2})).json()
    assert freed["response"] == {"status": "Unlocked"}
    history = (await aapi.get("/api/v1/stations/SIM-1/commands")).json()
    assert [(h["action"], h["outcome"]) for h in history] == [
        ("UnlockConnector", "accepted"), ("UnlockConnector", "rejected")]
    assert history[1]["reason"] == "driver: cable stuck"


async def test_a_faulted_connector_shows_in_the_station_list(sim, aapi) -> None:
    await sim.set_fault(2, "GroundFailure")

    async def connector_two() -> dict[str, Any]:
        [station] = (await aapi.get("/api/v1/stations")).json()
        return next((c for c in station["connectors"] if c["connector_id"] == 2), {})

    for _ in range(100):
        if (await connector_two()).get("status") == "Faulted":
            break
        await asyncio.sleep(0.05)
    assert (await connector_two())["error_code"] == "GroundFailure"


async def test_a_station_that_stops_answering_times_out(sim, aapi) -> None:
    sim.behaviour.unresponsive = True
    answer = (await aapi.post("/api/v1/stations/SIM-1/commands/Reset", json={"type": "Soft"},
                              params={"timeout": 0.5})).json()
    assert answer["outcome"] == "timeout"


async def test_messages_queued_offline_arrive_late_and_are_stored_once_in_order(
    server, engine, sim
) -> None:
    presence = capture(server, StationOnline, StationOffline)
    tx = await sim.plug_in(1, "RFID-1")
    await eventually(lambda: len(powers(engine, tx)) >= 2)
    await sim.drop_connection(offline_seconds=1.0)
    await eventually(lambda: any(isinstance(e, StationOffline) for e in presence))
    await asyncio.sleep(0.8)  # the car keeps charging; samples queue on the station
    await sim.stop_charging(1)  # queued too while offline
    await eventually(lambda: any(isinstance(e, StationOnline) for e in presence), 10)
    with session_scope(engine) as session:
        await eventually(lambda: service.get_transaction(
            session, transaction_id=tx).stop_timestamp is not None, 10)
    with session_scope(engine) as session:
        rows = service.list_meter_samples(session, transaction_id=tx,
                                          measurand="Energy.Active.Import.Register")
        done = service.get_transaction(session, transaction_id=tx)
    stamps = [r.timestamp for r in rows]
    assert stamps == sorted(stamps)
    assert len({(r.timestamp, r.context) for r in rows}) == len(rows)
    registers = [r.value for r in rows]
    assert registers == sorted(registers)
    assert done.meter_stop_wh == int(registers[-1])


async def test_a_remote_start_with_a_charging_profile_charges_at_that_limit(engine, sim, aapi):
    answer = (await aapi.post("/api/v1/stations/SIM-1/commands/RemoteStartTransaction", json={
        "idTag": "RFID-1", "connectorId": 2, "chargingProfile": {
            "chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 3680.0}]}}},
        params={"reason": "driver asked the assistant"})).json()
    assert answer["outcome"] == "accepted", answer

    def transaction() -> int | None:
        with session_scope(engine) as session:
            active = service.active_transaction(session, station_id="SIM-1", connector_id=2)
            return active.id if active else None

    await eventually(lambda: transaction() is not None)
    tx = transaction()
    await eventually(lambda: len(powers(engine, tx)) >= 2)
    assert powers(engine, tx)[-1] == Decimal("3680")
    stop = (await aapi.post("/api/v1/stations/SIM-1/commands/RemoteStopTransaction",
                            json={"transactionId": tx})).json()
    assert stop["outcome"] == "accepted"
    await eventually(lambda: transaction() is None)
