"""Load management end to end: simulated stations on a site with a grid limit, the real
central system sharing it, and the power the stations report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlmodel import select

from chargedesk.db import session_scope
from chargedesk.settings import Settings
from load_manager.models import AllocationState, ConnectorWiring, StationCapability
from station_api import service
from station_api.models import CommandLog
from station_api.simulator import Battery, SimulatedStation
from tests.conftest import start_server
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import add_tag, eventually, register

LIMIT_A = 32.0
BIG_CAR = Battery(capacity_kwh=75, soc=0.2, max_power_w=23000)


@pytest.fixture
def server(settings: Settings) -> Any:
    # A short command timeout: the fail-safe journey waits for one.
    live = start_server(settings.model_copy(update={"command_timeout": 1.0}))
    yield live
    live.stop()


@pytest.fixture
async def aapi(server: Any, operator_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {operator_key}"}) as client:
        yield client


@pytest.fixture
async def site(engine: Any, aapi: httpx.AsyncClient) -> str:
    with session_scope(engine) as session:
        service.create_site(session, site_id="GARAGE", name="Garage", time_zone="Europe/Stockholm")
    for station_id in ("LM-1", "LM-2"):
        register(engine, station_id)
        with session_scope(engine) as session:
            service.move_station(session, station_id=station_id, site_id="GARAGE")
    add_tag(engine, "TAG-A")
    add_tag(engine, "TAG-B")
    answer = await aapi.put("/api/v1/load/sites/GARAGE/grid",
                            json={"phase_limit_a": LIMIT_A, "policy": "equal_share"})
    assert answer.status_code == 200, answer.text
    return "GARAGE"


@pytest.fixture
async def stations(site: str, server: Any) -> AsyncIterator[list[SimulatedStation]]:
    sims = [SimulatedStation(station_id, server.ws_url, password=PASSWORD, connectors=1,
                             meter_interval=0.2, seed=n, max_current=32)
            for n, station_id in enumerate(("LM-1", "LM-2"))]
    for sim in sims:
        await sim.start()
        await asyncio.wait_for(sim.booted.wait(), 10)
    yield sims
    for sim in sims:
        await sim.stop()


def allocations(engine: Any) -> dict[str, tuple[float, str]]:
    with session_scope(engine) as session:
        rows = session.exec(select(AllocationState)).all()
        return {r.station_id: (r.limit_a, r.outcome) for r in rows}


def last_power(engine: Any, transaction_id: int) -> Decimal | None:
    with session_scope(engine) as session:
        rows = service.list_meter_samples(session, transaction_id=transaction_id,
                                          measurand="Power.Active.Import")
    periodic = [r.value for r in rows if r.context == "Sample.Periodic"]
    return periodic[-1] if periodic else None


def tx_default(sim: SimulatedStation) -> float | None:
    for profile in sim.profiles.get(0, []):
        if profile["chargingProfilePurpose"] == "TxDefaultProfile":
            return profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
    return None


async def test_two_cars_share_the_site_limit_and_draw_no_more(engine, stations) -> None:
    one, two = stations
    # Connected: each station first gets a safe default, the limit over the site's two
    # connectors, and its wiring is learnt from NumberOfConnectors.
    await eventually(lambda: tx_default(one) == 16.0 and tx_default(two) == 16.0)
    with session_scope(engine) as session:
        assert len(session.exec(select(ConnectorWiring)).all()) == 2

    first = await one.plug_in(1, "TAG-A", battery=BIG_CAR)
    assert first is not None
    # Alone on the site the car may have the whole limit, capped by the connector's 16 A.
    await eventually(lambda: allocations(engine).get("LM-1") == (16.0, "accepted"))
    await eventually(lambda: last_power(engine, first) == Decimal("11040"))

    with session_scope(engine) as session:
        from load_manager.service import set_wiring
        for station_id in ("LM-1", "LM-2"):
            set_wiring(session, station_id=station_id, connector_id=1, phases=3,
                       max_current_a=32)
    second = await two.plug_in(1, "TAG-B", battery=BIG_CAR)
    assert second is not None
    await eventually(lambda: allocations(engine) == {"LM-1": (16.0, "accepted"),
                                                     "LM-2": (16.0, "accepted")})
    # 16 A on three phases at 230 V each, together exactly the 32 A per phase.
    await eventually(lambda: last_power(engine, first) == Decimal("11040")
                     and last_power(engine, second) == Decimal("11040"))

    await one.stop_charging(1)
    # The car that stays gets the freed capacity: the whole 32 A.
    await eventually(lambda: allocations(engine).get("LM-2") == (32.0, "accepted"))
    await eventually(lambda: last_power(engine, second) == Decimal("22080"))
    with session_scope(engine) as session:
        verified = session.exec(select(AllocationState)
                                .where(AllocationState.station_id == "LM-2")).one().verified
        audited = session.exec(select(CommandLog).where(
            CommandLog.action == "SetChargingProfile",
            CommandLog.requested_by == "system:load_manager")).all()
    assert verified is True
    assert {c.station_id for c in audited} == {"LM-1", "LM-2"}
    for station_id in ("LM-1", "LM-2"):
        purposes = [c.payload["csChargingProfiles"]["chargingProfilePurpose"]
                    for c in sorted(audited, key=lambda c: c.id or 0)
                    if c.station_id == station_id]
        # The safe default is in place before any limit of the moment.
        assert purposes[0] == "TxDefaultProfile" and "TxProfile" in purposes


async def test_a_station_that_stops_answering_counts_at_its_maximum(engine, stations,
                                                                     aapi) -> None:
    one, two = stations
    await eventually(lambda: tx_default(two) == 16.0)
    with session_scope(engine) as session:
        from load_manager.service import set_wiring
        for station_id in ("LM-1", "LM-2"):
            set_wiring(session, station_id=station_id, connector_id=1, phases=3,
                       max_current_a=20)
    first = await one.plug_in(1, "TAG-A", battery=BIG_CAR)
    await eventually(lambda: allocations(engine).get("LM-1") == (20.0, "accepted"))
    two.behaviour.unresponsive = True
    second = await two.plug_in(1, "TAG-B", battery=BIG_CAR)
    assert first is not None and second is not None

    def fail_safe() -> bool:
        with session_scope(engine) as session:
            row = session.get(StationCapability, "LM-2")
            return row is not None and row.fail_safe

    await eventually(fail_safe, timeout=10)
    # LM-2 is assumed to draw its 20 A: LM-1 keeps the remaining 12 A.
    await eventually(lambda: allocations(engine).get("LM-1") == (12.0, "accepted"), timeout=10)
    state = (await aapi.get("/api/v1/load/sites/GARAGE")).json()
    assert state["fail_safe_stations"][0]["station_id"] == "LM-2"
    assert "timeout" in state["fail_safe_stations"][0]["reason"]
    await eventually(lambda: last_power(engine, first) == Decimal("8280"))


async def test_a_plan_delivers_by_the_deadline_and_explains_itself(engine, stations,
                                                                   aapi) -> None:
    one, _ = stations
    tx = await one.plug_in(1, "TAG-A", battery=BIG_CAR)
    assert tx is not None
    await eventually(lambda: "LM-1" in allocations(engine))
    departure = datetime.now(UTC) + timedelta(hours=8)
    answer = await aapi.post("/api/v1/load/plans", json={
        "transaction_id": tx, "departure_at": departure.isoformat(), "energy_wh": 20000})
    assert answer.status_code == 201, answer.text
    plan = answer.json()
    assert plan["status"] == "active"
    # Delivered so far plus planned, to the solver's tolerance.
    assert abs(plan["expected_energy_wh"] - 20000) <= 1
    assert Decimal(plan["expected_cost_sek"]) > 0
    assert plan["explanation"]["en"].startswith("20 kWh by ")
    assert plan["explanation"]["sv"].startswith("20 kWh till kl. ")
    # The schedule charges in the cheapest slots: its cost is the minimum over any slots
    # that could hold 20 kWh at 11 kW.
    kw = plan["schedule"]["kw"]
    prices = plan["schedule"]["price_sek_per_kwh"]
    hours = plan["schedule"]["slot_minutes"] / 60
    cost = sum(k * p * hours for k, p in zip(kw, prices, strict=True))
    cheapest = sorted(prices)
    need, floor_cost = 20.0, 0.0
    for price in cheapest:
        take = min(need, 11.04 * hours)
        floor_cost += take * price
        need -= take
        if need <= 1e-9:
            break
    assert cost == pytest.approx(floor_cost, rel=1e-3)

    cancelled = await aapi.delete(f"/api/v1/load/plans/{tx}")
    assert cancelled.json()["status"] == "cancelled"
    await eventually(lambda: allocations(engine).get("LM-1") == (16.0, "accepted"))
