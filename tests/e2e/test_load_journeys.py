"""Load management end to end: simulated stations on a site with a grid limit, the real
central system sharing it, and the power the stations report."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from chargedesk.db import session_scope
from chargedesk.settings import Settings
from load_manager import controller
from load_manager.allocation import Grid
from load_manager.dispatch import Observation, Wiring, connector_load
from load_manager.models import (
    AllocationState,
    ConnectorWiring,
    MeterReading,
    StationCapability,
    VehicleObservation,
)
from load_manager.mpc import Car, Mpc, need_kwh
from load_manager.service import set_wiring
from station_api import service
from station_api.models import CommandLog, Transaction
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


# ---------------------------------------------------------------- the MPC, held cars, restart


def big_car() -> Battery:
    """A fresh BIG_CAR: a test that changes its battery must not change another's."""
    return dataclasses.replace(BIG_CAR)


MPC_WIRING = {"M-1": Wiring(3, "RST", 32.0, 6.0), "M-2": Wiring(1, "RST", 32.0, 6.0),
              "M-3": Wiring(1, "STR", 32.0, 6.0)}


@pytest.fixture
async def mpc_site(engine: Any, aapi: httpx.AsyncClient, server: Any
                   ) -> AsyncIterator[list[SimulatedStation]]:
    """A 32 A site under the MPC: one three-phase station and two single-phase ones, on L1
    and on L2."""
    with session_scope(engine) as session:
        service.create_site(session, site_id="MPC", name="MPC", time_zone="Europe/Stockholm")
    for n, (station_id, wiring) in enumerate(MPC_WIRING.items()):
        register(engine, station_id)
        with session_scope(engine) as session:
            service.move_station(session, station_id=station_id, site_id="MPC")
            set_wiring(session, station_id=station_id, connector_id=1, phases=wiring.phases,
                       rotation=wiring.rotation, max_current_a=wiring.max_current_a)
        add_tag(engine, f"TAG-M{n}")
    answer = await aapi.put("/api/v1/load/sites/MPC/grid",
                            json={"phase_limit_a": 32, "policy": "mpc"})
    assert answer.status_code == 200, answer.text
    sims = [SimulatedStation(station_id, server.ws_url, password=PASSWORD, connectors=1,
                             meter_interval=0.2, seed=n, max_current=32)
            for n, station_id in enumerate(MPC_WIRING)]
    for sim in sims:
        await sim.start()
        await asyncio.wait_for(sim.booted.wait(), 10)
    yield sims
    for sim in sims:
        await sim.stop()


def mpc_decision(engine: Any, observed: dict[tuple[str, int], Observation]
                 ) -> dict[str, float]:
    """What the bench's MPC decides for the site as the test knows it: the wiring it set,
    each open transaction's start (a car without a plan: the default estimate) and the
    energy its meter values show."""
    with session_scope(engine) as session:
        txs = session.exec(select(Transaction).where(
            col(Transaction.stop_timestamp).is_(None))).all()
        delivered = {o.transaction_id: o.delivered_wh or 0
                     for o in session.exec(select(VehicleObservation)).all()}
    cars = []
    for tx in sorted(txs, key=lambda t: (t.start_timestamp, t.id or 0)):
        departure = (tx.start_timestamp + controller.DEFAULT_STAY).timestamp()
        had = delivered.get(tx.id or 0, 0) / 1000
        need = need_kwh(controller.DEFAULT_ENERGY_KWH, had, noise=controller.ESTIMATE_NOISE)
        load = connector_load((tx.station_id, 1), MPC_WIRING[tx.station_id],
                              since=tx.start_timestamp.timestamp(), departure=departure,
                              energy_needed_wh=need * 1000)
        cars.append(Car(load, need, departure, had))
    result = Mpc(slot_s=15 * 60.0).decide(Grid(phase_limit_a=(32.0, 32.0, 32.0)), cars,
                                          time.time(), observed)
    return {station_id: amps for (station_id, _), amps in result.pilots.items()}  # type: ignore[misc]


async def test_an_mpc_site_gets_the_pilots_the_mpc_decides(engine, mpc_site) -> None:
    m1, m2, m3 = mpc_site
    assert await m1.plug_in(1, "TAG-M0", battery=big_car()) is not None
    await eventually(lambda: allocations(engine).get("M-1") == (32.0, "accepted"))
    assert await m2.plug_in(1, "TAG-M1", battery=single_phase_car()) is not None
    assert await m3.plug_in(1, "TAG-M2", battery=single_phase_car()) is not None

    def pilots() -> dict[str, float]:
        return {s: limit for s, (limit, outcome) in allocations(engine).items()
                if outcome == "accepted"}

    # The three-phase car takes the whole 32 A on every phase: the most energy now, and by
    # the default estimate it leaves first. Equal shares would have been 16 A each.
    await eventually(lambda: len(pilots()) == 3 and pilots() == mpc_decision(engine, {}))
    assert pilots() == {"M-1": 32.0, "M-2": 0.0, "M-3": 0.0}
    await eventually(lambda: drawn_a(m1) == pytest.approx(32.0))

    # Its battery reaches 96 %: it takes 6.7 A. The meter values show it, the MPC re-plans
    # at what it takes, and the single-phase cars get what it leaves on L1 and L2.
    battery = m1.connectors[1].battery
    assert battery is not None
    battery.soc = 0.96

    def seen() -> dict[tuple[str, int], Observation]:
        return {("M-1", 1): Observation(pilots()["M-1"], drawn_a(m1))}

    await eventually(lambda: pilots() == mpc_decision(engine, seen())
                     and pilots()["M-1"] < 32.0, timeout=20)
    assert pilots() == {"M-1": 8.0, "M-2": 24.0, "M-3": 24.0}
    await eventually(lambda: drawn_a(m2) == pytest.approx(24.0)
                     and drawn_a(m3) == pytest.approx(24.0))


class UnderDrawingCar(Battery):
    """An on-board charger that keeps 1.5 A below whatever pilot it is given (some do; a
    meter may also read so): never all of its pilot, never clearly less."""

    station: SimulatedStation | None = None

    def acceptance_w(self) -> float:
        assert self.station is not None
        limit = self.station._limit_w(self.station.connectors[1])
        return max(0.0, min(self.max_power_w, limit - 1.5 * VOLTAGE * self.phases))


async def test_a_held_car_is_offered_the_capacity_that_frees_up(engine, stations) -> None:
    one, two = stations
    await eventually(lambda: tx_default(one) == 16.0 and tx_default(two) == 16.0)
    with session_scope(engine) as session:
        for station_id in ("LM-1", "LM-2"):
            set_wiring(session, station_id=station_id, connector_id=1, phases=3,
                       max_current_a=32)
    car = UnderDrawingCar(capacity_kwh=75, soc=0.2, max_power_w=23000)
    car.station = one
    held = await one.plug_in(1, "TAG-A", battery=car)
    other = await two.plug_in(1, "TAG-B", battery=big_car())
    assert held is not None and other is not None
    await eventually(lambda: allocations(engine) == {"LM-1": (16.0, "accepted"),
                                                     "LM-2": (16.0, "accepted")})
    # 14.5 A of its 16: held at its pilot, not offered LM-2's share.
    await eventually(lambda: drawn_a(one) == pytest.approx(14.5))
    await asyncio.sleep(1)  # meter values every 0.2 s: several decisions see it held
    assert allocations(engine)["LM-1"] == (16.0, "accepted")

    await two.stop_charging(1)
    # The 16 A LM-2 frees are offered to the held car, and it takes them.
    await eventually(lambda: allocations(engine).get("LM-1") == (32.0, "accepted"))
    await eventually(lambda: drawn_a(one) == pytest.approx(30.5))


async def test_readings_kept_across_a_restart_count_before_new_ones_arrive(
        engine, stations, server, settings) -> None:
    one, two = stations
    await eventually(lambda: tx_default(one) == 16.0 and tx_default(two) == 16.0)
    with session_scope(engine) as session:
        for station_id in ("LM-1", "LM-2"):
            set_wiring(session, station_id=station_id, connector_id=1, phases=3,
                       max_current_a=32)
    first = await one.plug_in(1, "TAG-A", battery=Battery(capacity_kwh=75, soc=0.96,
                                                           max_power_w=23000))
    second = await two.plug_in(1, "TAG-B", battery=big_car())
    assert first is not None and second is not None
    # LM-1's car tapers (6.7 A): counted at 8 A, LM-2 gets 24.
    await eventually(lambda: allocations(engine) == {"LM-1": (8.0, "accepted"),
                                                     "LM-2": (24.0, "accepted")})
    with session_scope(engine) as session:
        kept = session.get(MeterReading, ("LM-1", 1))
        assert kept is not None and kept.transaction_id == first
        assert kept.current_a is not None and kept.current_a < 7.0

    # The service restarts; the stations reconnect to it.
    await asyncio.to_thread(server.stop)
    since = datetime.now(UTC)
    restarted = start_server(settings.model_copy(update={"command_timeout": 1.0}))
    try:
        for sim in (one, two):
            sim.url = restarted.ws_url
            await sim.drop_connection(offline_seconds=0.1)

        def tx_profiles(station_id: str) -> list[float]:
            with session_scope(engine) as session:
                sent = session.exec(select(CommandLog).where(
                    CommandLog.station_id == station_id,
                    CommandLog.action == "SetChargingProfile",
                    col(CommandLog.requested_at) >= since).order_by(CommandLog.id)).all()
            return [_first_limit(c.payload) for c in sent
                    if c.payload["csChargingProfiles"]["chargingProfilePurpose"]
                    == "TxProfile"]

        await eventually(lambda: any(limit > 0 for limit in tx_profiles("LM-2")), timeout=20)
        # The restarted controller counted LM-1 at what it was last seen to draw from its
        # first decision: LM-2's first limit is the 24 A, not an equal share of 16.
        assert next(limit for limit in tx_profiles("LM-2") if limit > 0) == 24.0
        assert all(limit <= 8.0 for limit in tx_profiles("LM-1"))
    finally:
        restarted.stop()
