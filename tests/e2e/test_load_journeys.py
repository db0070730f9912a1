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
from load_manager.models import (
    AllocationState,
    ConnectorWiring,
    StationCapability,
    VehicleObservation,
)
from load_manager.service import set_wiring
from station_api import service
from station_api.models import CommandLog
from station_api.simulator import Battery, SimulatedStation
from tests.conftest import start_server
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import add_tag, eventually, register

LIMIT_A = 32.0
BIG_CAR = Battery(capacity_kwh=75, soc=0.2, max_power_w=23000)
VOLTAGE = 230.0


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

    await eventually(fail_safe, timeout=30)
    # LM-2 is assumed to draw its 20 A: LM-1 keeps the remaining 12 A.
    await eventually(lambda: allocations(engine).get("LM-1") == (12.0, "accepted"), timeout=30)
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


# ---------------------------------------------------------------- whole amperes, give-back


def single_phase_car() -> Battery:
    """A car with a single-phase 32 A (7.4 kW) on-board charger."""
    return Battery(capacity_kwh=60, soc=0.2, max_power_w=32 * VOLTAGE, phases=1)


def drawn_a(sim: SimulatedStation) -> float:
    """The current the station's car draws on each phase it uses, now."""
    connector = sim.connectors[1]
    if connector.battery is None or connector.session is None:
        return 0.0
    return connector.power_w / (VOLTAGE * connector.battery.phases)


@pytest.fixture
async def one_phase_site(engine: Any, aapi: httpx.AsyncClient, server: Any
                         ) -> AsyncIterator[list[SimulatedStation]]:
    """Three three-phase 32 A stations all wired RST, 20 A per phase, equal share."""
    ids = ("P-1", "P-2", "P-3")
    with session_scope(engine) as session:
        service.create_site(session, site_id="TIGHT", name="Tight", time_zone="Europe/Stockholm")
    for n, station_id in enumerate(ids):
        register(engine, station_id)
        with session_scope(engine) as session:
            service.move_station(session, station_id=station_id, site_id="TIGHT")
            set_wiring(session, station_id=station_id, connector_id=1, phases=3,
                       rotation="RST", max_current_a=32)
        add_tag(engine, f"TAG-{n}")
    answer = await aapi.put("/api/v1/load/sites/TIGHT/grid",
                            json={"phase_limit_a": 20, "policy": "equal_share"})
    assert answer.status_code == 200, answer.text
    sims = [SimulatedStation(station_id, server.ws_url, password=PASSWORD, connectors=1,
                             meter_interval=0.2, seed=n, max_current=32)
            for n, station_id in enumerate(ids)]
    for sim in sims:
        await sim.start()
        await asyncio.wait_for(sim.booted.wait(), 10)
    yield sims
    for sim in sims:
        await sim.stop()


def learnt_phases(engine: Any) -> list[int | None]:
    with session_scope(engine) as session:
        return [o.phases for o in session.exec(select(VehicleObservation)).all()]


async def test_single_phase_cars_on_one_phase_get_whole_amperes_within_its_limit(
    engine, server, aapi, one_phase_site
) -> None:
    sims = one_phase_site
    # The safe default: 20 A over the three connectors on L1, in whole amperes.
    await eventually(lambda: all(tx_default(sim) == 6.0 for sim in sims))
    for n, sim in enumerate(sims):
        assert await sim.plug_in(1, f"TAG-{n}", battery=single_phase_car()) is not None
    await eventually(lambda: learnt_phases(engine) == [1, 1, 1])
    controller = server.app.state.runtime.load

    def settled(expected: list[float], limit: float) -> bool:
        rows = allocations(engine)
        limits = sorted(rows.get(sim.station_id, (0.0, ""))[0] for sim in sims)
        decision = controller.last_decision.get("TIGHT")
        return (limits == expected
                and all(rows[sim.station_id][1] == "accepted" for sim in sims)
                and decision is not None and sorted(decision.limits.values()) == expected
                # What the cars really draw on L1, by their simulators.
                and sum(drawn_a(sim) for sim in sims) <= limit + 1e-6
                and all(abs(drawn_a(sim) - rows[sim.station_id][0]) < 0.01 for sim in sims))

    # 20 A on L1: 7 + 7 + 6, not 6.7 each; the profiles say one phase.
    def one_phase_profiles() -> bool:
        periods = [p["chargingSchedule"]["chargingSchedulePeriod"][0]
                   for sim in sims for p in sim.profiles.get(1, [])
                   if p["chargingProfilePurpose"] == "TxProfile"]
        return len(periods) == 3 and all(
            p.get("numberPhases") == 1 and p["limit"] == int(p["limit"]) for p in periods)

    await eventually(lambda: settled([6.0, 7.0, 7.0], 20.0) and one_phase_profiles())

    # 16 A: the three 6 A minimums no longer fit. The latest arrival pauses (0 A, not 5.3),
    # the others share: 8 + 8.
    answer = await aapi.put("/api/v1/load/sites/TIGHT/grid",
                            json={"phase_limit_a": 16, "policy": "equal_share"})
    assert answer.status_code == 200, answer.text
    await eventually(lambda: settled([0.0, 8.0, 8.0], 16.0))
    assert allocations(engine)["P-3"][0] == 0.0
    # What went down was sent, and accepted, before what went up.
    with session_scope(engine) as session:
        sent = [(c.station_id, _first_limit(c.payload), c.requested_at)
                for c in session.exec(select(CommandLog).where(
                    CommandLog.action == "SetChargingProfile")).all()]
    paused = min(at for station, limit, at in sent if station == "P-3" and limit == 0.0)
    raised = min(at for station, limit, at in sent if station != "P-3" and limit == 8.0)
    assert paused < raised


def _first_limit(payload: dict[str, Any]) -> float:
    schedule = payload["csChargingProfiles"]["chargingSchedule"]
    return float(schedule["chargingSchedulePeriod"][0]["limit"])


async def test_a_tapering_car_gives_what_it_does_not_take_to_the_other(engine, stations
                                                                        ) -> None:
    one, two = stations
    with session_scope(engine) as session:
        for station_id in ("LM-1", "LM-2"):
            set_wiring(session, station_id=station_id, connector_id=1, phases=3,
                       max_current_a=32)
    first = await one.plug_in(1, "TAG-A", battery=Battery(capacity_kwh=75, soc=0.5,
                                                           max_power_w=23000))
    second = await two.plug_in(1, "TAG-B", battery=BIG_CAR)
    assert first is not None and second is not None
    await eventually(lambda: allocations(engine) == {"LM-1": (16.0, "accepted"),
                                                     "LM-2": (16.0, "accepted")})
    await eventually(lambda: last_power(engine, second) == Decimal("11040"))

    # LM-1's car reaches 96 %: its taper lets it take 4.6 kW, 6.7 A a phase, of its 16 A.
    battery = one.connectors[1].battery
    assert battery is not None
    battery.soc = 0.96
    # Seen in its meter values, it gives the rest back: counted at 6.7 A plus the 2 A
    # margin, 8 A in whole amperes, and LM-2 gets the other 24 A at the next decision.
    await eventually(lambda: allocations(engine) == {"LM-1": (8.0, "accepted"),
                                                     "LM-2": (24.0, "accepted")})
    await eventually(lambda: last_power(engine, second) == Decimal("16560"))
    # And it stays there: the tapering car under its 8 A is held, not offered 16 A again.
    await eventually(lambda: (power := last_power(engine, first)) is not None
                     and power < Decimal("4600"))
    assert allocations(engine)["LM-1"] == (8.0, "accepted")
