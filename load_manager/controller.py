"""Dynamic load management in real time: station events in, charging profiles out.

On every transaction start and stop, meter value, status change and station coming or
going, the station's site is rebalanced: its state is read (load_manager.service), charge
plans are re-solved (model-predictive control, load_manager.planning), the allocator shares
what is left (load_manager.allocation) and every connector whose limit changed gets a
TxProfile through the central system, audited like any command as ``system:load_manager``.

Pilots are decided by :func:`load_manager.dispatch.dispatch`, the function the realistic
scheduling bench runs: 0 or from the connector's minimum (6 A) to its maximum in whole
amperes, on the site phases the station's wiring and the car's phases (from its meter values)
give, within every phase limit; a car drawing less than its pilot gives the rest back at the
next decision, from its latest meter values (:mod:`load_manager.meters`). Limits that go down
are sent, and accepted, before limits that go up, so that the site stays within its limits
while they change.

Fail safe, in three layers:
- a station that is offline, lacks smart charging, rejects a profile, does not answer, or
  whose composite schedule contradicts what it accepted is counted at its maximum until it
  reconnects;
- when a station connects (which is also the first thing after a restart of this service),
  it first gets a safe TxDefaultProfile: the site's limit shared equally by all of the site's
  connectors on each phase, so it is safe whatever happens next;
- every TxProfile lasts ``load_profile_validity_s`` and is refreshed before it runs out, so a
  station that loses us falls back to the safe default by itself.

Events for one site are coalesced: while a rebalance runs, further events only mark the
site dirty and one more rebalance follows, so a burst of meter values costs two passes.

Sites with the ``mpc`` policy are decided by the online MPC the realistic scheduling bench
measures (:class:`load_manager.mpc.Mpc`, one per site, kept between rebalances): every
charging car is a :class:`~load_manager.mpc.Car` with the departure and energy its charge
plan states, or without a plan the default estimate (``DEFAULT_STAY`` after it started,
``DEFAULT_ENERGY_KWH``), like the bench's cars with their drivers' noisy statements; what it
has had comes from its meter values. The MPC re-plans when the cars change, a car overstays
its departure, drifts from its plan or starts taking less than offered (meter values), takes
its plan's current slot as targets and passes them through the same dispatch (give-back,
whole amperes, the 6 A minimum, the exact packing where minimums collide). How charge plans
and the MPC combine: a plan is the driver's promise of energy by a time at the least cost,
decided by :mod:`load_manager.planning` first (the cost-minimising LP over the planned cars,
the unplanned cars' minimums kept free); the MPC then treats each planned car as fixed, its
pilot the plan's for now (a ceiling, not filled with dear hours), and its schedule taken off
the capacity it plans the other cars in. The other policies (equal share, priority, least
laxity) are the allocator's rules, each planned car capped at its plan.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, select

from chargedesk.db import run_in_session
from chargedesk.events import InMemoryEventBus
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from load_manager import planning, service
from load_manager.allocation import Grid, Load, Policy
from load_manager.dispatch import STEP_A, Observation, connector_load, dispatch
from load_manager.meters import MeterWatch, Reading, reading_of
from load_manager.models import AllocationState, SitePolicy, StationCapability
from load_manager.mpc import Car, Mpc, need_kwh
from load_manager.service import ActiveConnector, SiteState
from station_api.central import CentralSystem
from station_api.events import (
    MeterValuesReceived,
    StationOffline,
    StationOnline,
    StatusChanged,
    TransactionStarted,
    TransactionStopped,
)
from station_api.models import CommandOutcome

log = structlog.get_logger(__name__)

SYSTEM = "system:load_manager"
SAFE_DEFAULT_PROFILE_ID = 9100
TX_PROFILE_ID_BASE = 9200
# A limit is re-sent only when it moves by at least this much (A): meter values come every
# few seconds and most of them change nothing worth a command.
RESEND_THRESHOLD_A = 0.5
# A composite schedule may differ from the limit set by this much (stations round).
VERIFY_TOLERANCE_A = 0.1
# What the MPC takes a car without a charge plan to want (the median stay and about the
# 75th percentile of energy of the Caltech workplace sessions, 6.1 h and 12.2 kWh), and how
# far off such an estimate may be (need_kwh's rule for a car that charges past it).
DEFAULT_STAY = timedelta(hours=6)
DEFAULT_ENERGY_KWH = 12.0
ESTIMATE_NOISE = 0.2


@dataclass(frozen=True, slots=True)
class Decision:
    """One rebalance: the limit of every active connector and the grid it was shared from."""

    site_id: str
    grid: Grid
    limits: dict[tuple[str, int], float]
    planned: dict[tuple[str, int], planning.ConnectorPlan]
    fail_safe: list[tuple[str, int]]
    at: datetime


@dataclass
class LoadController:
    engine: Engine
    bus: InMemoryEventBus
    central: CentralSystem
    settings: Settings
    _running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # One safe-default computation and send at a time per station: two boots on a site
    # overlap, and a default computed before the other station's connectors were learnt
    # must not reach the station after the one computed since.
    _default_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _refresher: asyncio.Task[None] | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    last_decision: dict[str, Decision] = field(default_factory=dict)
    meters: MeterWatch = field(default_factory=MeterWatch)
    # The phases each connector's last accepted TxProfile named.
    _profile_phases: dict[tuple[str, int], int] = field(default_factory=dict)
    # Each ``mpc`` site's MPC state (its plan, kept between rebalances).
    _mpc: dict[str, Mpc] = field(default_factory=dict)
    _restoring: asyncio.Task[None] | None = None

    def install(self) -> None:
        self.bus.subscribe(TransactionStarted, self._on_station_event)
        self.bus.subscribe(TransactionStopped, self._on_stopped)
        self.bus.subscribe(MeterValuesReceived, self._on_meter_values)
        self.bus.subscribe(StatusChanged, self._on_status)
        self.bus.subscribe(StationOnline, self._on_online)
        self.bus.subscribe(StationOffline, self._on_offline)

    # -------------------------------------------------------------- events

    async def _on_station_event(self, event: Any) -> None:
        await self.request_for_station(event.station_id)

    async def _on_status(self, event: StatusChanged) -> None:
        if event.current:
            await self.request_for_station(event.station_id)

    async def _on_offline(self, event: StationOffline) -> None:
        self.meters.forget_station(event.station_id)
        await self.request_for_station(event.station_id)

    async def _on_stopped(self, event: TransactionStopped) -> None:
        self.meters.forget_transaction(event.transaction_id)
        await run_in_session(self.engine, service.finish_plans,
                             transaction_id=event.transaction_id)
        await self.request_for_station(event.station_id)

    async def _on_meter_values(self, event: MeterValuesReceived) -> None:
        # Every charging station sends these every few seconds: one small transaction, and
        # nothing at all for a station whose site is not under load management. The reading
        # the give-back uses goes into the same transaction, and only when it changed
        # (MeterWatch.to_store): no write, and no commit, of its own.
        tx = event.transaction_id
        store = None
        if tx is not None and self.meters.saw((event.station_id, event.connector_id),
                                              transaction_id=tx,
                                              reading=reading_of(event.samples)):
            store = self.meters.to_store(tx)
        site_id = await run_in_session(self.engine, _observe, station_id=event.station_id,
                                       connector_id=event.connector_id, transaction_id=tx,
                                       samples=event.samples, store=store)
        if site_id is None:
            return
        if store is not None and tx is not None:
            self.meters.stored(tx, offered_a=store[0], reading=store[1])
        self.request(site_id)

    async def _on_online(self, event: StationOnline) -> None:
        """Learn what the station can do, make it safe, then share the site again."""
        station_id = event.station_id
        self.meters.forget_station(station_id)
        site_id = await run_in_session(self.engine, service.managed_site,
                                       station_id=station_id)
        if site_id is None:
            return
        learnt = await self.read_capability(station_id)
        await self.send_safe_default(station_id, site_id)
        if learnt:
            # More connectors share the site now: the others' safe defaults were too high.
            others = await run_in_session(self.engine, service.online_stations,
                                          site_id=site_id)
            await asyncio.gather(*(self.send_safe_default(other, site_id)
                                   for other in others if other != station_id))
        self.request(site_id)

    async def request_for_station(self, station_id: str) -> None:
        site_id = await run_in_session(self.engine, service.managed_site,
                                       station_id=station_id)
        if site_id is not None:
            self.request(site_id)

    def request(self, site_id: str) -> None:
        """Rebalance ``site_id`` soon; coalesces with a rebalance already under way."""
        task = self._running.get(site_id)
        if task is not None and not task.done():
            self._dirty.add(site_id)
            return
        self._running[site_id] = asyncio.get_running_loop().create_task(self._drain(site_id))

    async def _drain(self, site_id: str) -> None:
        while True:
            self._dirty.discard(site_id)
            try:
                await self.rebalance(site_id)
            except Exception:
                log.exception("rebalance failed", site_id=site_id)
            if site_id not in self._dirty:
                return

    async def idle(self) -> None:
        """Wait until no rebalance is running or pending (tests, shutdown)."""
        while any(not t.done() for t in self._running.values()):
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    # -------------------------------------------------------------- refresh

    def start(self) -> None:
        """Load the readings kept before a restart, and refresh every site's profiles before
        they run out."""
        loop = asyncio.get_running_loop()
        self._restoring = loop.create_task(self.restore_readings())
        self._refresher = loop.create_task(self._refresh_loop())

    async def restore_readings(self) -> int:
        """What open transactions' cars were last seen to draw, from the database: after a
        restart a car that gave back counts at what it draws, not at its whole allocation,
        until newer readings arrive. Returns how many were restored."""
        rows = await run_in_session(self.engine, _open_readings)
        restored = 0
        for tx, offered, reading in rows:
            restored += self.meters.restore(tx, offered_a=offered, reading=reading)
        return restored

    async def _restored(self) -> None:
        task = self._restoring
        if task is not None and not task.done():
            with suppress(Exception):
                await asyncio.shield(task)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresher
        await self.idle()

    async def _refresh_loop(self) -> None:
        period = self.settings.load_profile_validity_s / 3
        while True:
            await asyncio.sleep(period)
            grids = await run_in_session(self.engine, _site_ids)
            for site_id in grids:
                await self.rebalance(site_id, refresh=True)

    # -------------------------------------------------------------- the rebalance

    async def rebalance(self, site_id: str, *, refresh: bool = False) -> Decision | None:
        """Decide the site's limits and send what changed; one at a time per site (the
        REST views call this beside the event-driven rebalances), so that sends of two
        decisions never interleave."""
        async with self._locks.setdefault(site_id, asyncio.Lock()):
            return await self._rebalance(site_id, refresh=refresh)

    async def _rebalance(self, site_id: str, *, refresh: bool) -> Decision | None:
        await self._restored()
        now = utcnow()
        state = await run_in_session(self.engine, service.site_state, site_id=site_id, now=now)
        if state is None or not state.grid.enabled:
            return None
        planned = await self._plan(state, now)
        observed = observations(state, self.meters)
        if state.grid.policy == SitePolicy.mpc:
            mpc = self._mpc.get(site_id)
            if mpc is None or mpc.slot_s != self.settings.load_plan_slot_minutes * 60:
                mpc = self._mpc[site_id] = site_mpc(self.settings.load_plan_slot_minutes)
            # An LP, and now and then a small MILP: off the event loop.
            decision = await asyncio.to_thread(decide, state, planned=planned, now=now,
                                               observed=observed, mpc=mpc)
        else:
            self._mpc.pop(site_id, None)
            decision = decide(state, planned=planned, now=now, observed=observed)
        self.last_decision[site_id] = decision
        changes = [
            (connector, decision.limits[connector.station_id, connector.connector_id])
            for connector in state.active
            if refresh or _changed(connector, decision.limits[connector.station_id,
                                                              connector.connector_id])
            # The car turned out to draw on fewer phases: the profile must say so (a limit
            # in watts is over its phases).
            or self._profile_phases.get((connector.station_id, connector.connector_id))
            != profile_phases(connector)
        ]
        # What goes down first: the room it frees is only given away once it is taken.
        lower = [(c, a) for c, a in changes if c.last_limit_a is not None and a < c.last_limit_a]
        higher = [(c, a) for c, a in changes if not (c.last_limit_a is not None
                                                      and a < c.last_limit_a)]
        for batch in (lower, higher):
            results = await asyncio.gather(*(
                self._apply(state, connector, limit,
                            planned.get((connector.station_id, connector.connector_id)), now)
                for connector, limit in batch))
            if any(results):
                # A station fell to fail safe (a limit that was to go down may not have):
                # raise nothing on its room, share again without it.
                self._dirty.add(site_id)
                break
        return decision

    async def _plan(
        self, state: SiteState, now: datetime
    ) -> dict[tuple[str, int], planning.ConnectorPlan]:
        if not any(c.plan is not None for c in state.active):
            return {}
        result = await asyncio.to_thread(planning.plan_site, state, now=now,
                                         settings=self.settings)
        await run_in_session(self.engine, planning.store_solutions, plans=result)
        return result

    async def _apply(
        self,
        state: SiteState,
        connector: ActiveConnector,
        limit_a: float,
        plan: planning.ConnectorPlan | None,
        now: datetime,
    ) -> bool:
        """Send one connector its TxProfile; True when its station had to go fail safe."""
        capability = await run_in_session(self.engine, _capability,
                                          station_id=connector.station_id)
        profile = tx_profile(connector, limit_a, plan=plan, now=now, capability=capability,
                             voltage=state.grid.voltage_v,
                             validity_s=self.settings.load_profile_validity_s)
        result = await self.central.send_command(
            connector.station_id, "SetChargingProfile",
            {"connectorId": connector.connector_id, "csChargingProfiles": profile},
            requested_by=SYSTEM, reason=f"load management of site {state.site_id}",
        )
        outcome = result.outcome
        verified: bool | None = None
        failure: str | None = None
        key = (connector.station_id, connector.connector_id)
        if outcome == CommandOutcome.accepted:
            first = next((start for start, _ in (plan.periods_a if plan else [])
                          if 0 < start < self.settings.load_profile_validity_s), None)
            self._profile_phases[key] = profile_phases(connector)
            self.meters.pilot(key, transaction_id=connector.transaction_id, amps=limit_a,
                              lasts_s=first if first is not None
                              else self.settings.load_profile_validity_s)
            if capability.composite_schedule:
                verified, failure = await self._verify(connector, limit_a, capability)
        else:
            self.meters.unknown_pilot(key)
            if outcome == CommandOutcome.rejected:
                failure = "rejected a charging profile"
            elif outcome != CommandOutcome.offline:
                failure = f"charging profile {outcome}: {result.error or ''}".strip()
        await run_in_session(
            self.engine, service.record_allocation, station_id=connector.station_id,
            connector_id=connector.connector_id, transaction_id=connector.transaction_id,
            limit_a=limit_a, outcome=str(outcome), verified=verified,
        )
        if failure is not None:
            log.warning("station counted at its maximum", station_id=connector.station_id,
                        reason=failure)
            await run_in_session(self.engine, service.set_fail_safe,
                                 station_id=connector.station_id, reason=failure)
            return True
        return False

    async def _verify(
        self, connector: ActiveConnector, limit_a: float, capability: StationCapability
    ) -> tuple[bool | None, str | None]:
        """Ask the station what it will really do now; None when it can't tell."""
        unit = "A" if _units(capability) != ("W",) else "W"
        result = await self.central.send_command(
            connector.station_id, "GetCompositeSchedule",
            {"connectorId": connector.connector_id, "duration": 60, "chargingRateUnit": unit},
            requested_by=SYSTEM, reason="verify the limit just set",
        )
        response = result.response or {}
        if result.outcome != CommandOutcome.accepted or "chargingSchedule" not in response:
            await run_in_session(self.engine, service.note_composite_unsupported,
                                 station_id=connector.station_id)
            return None, None
        schedule = response["chargingSchedule"]
        periods = schedule.get("chargingSchedulePeriod") or []
        if not periods:
            return None, None
        first = float(periods[0]["limit"])
        if schedule.get("chargingRateUnit", unit) == "W":
            first /= self._voltage_phases(connector)
        if first <= limit_a + VERIFY_TOLERANCE_A:
            return True, None
        return False, f"composite schedule allows {first:.1f} A, above the {limit_a:.1f} A set"

    def _voltage_phases(self, connector: ActiveConnector) -> float:
        return 230.0 * profile_phases(connector)

    # -------------------------------------------------------------- capability, safe default

    async def read_capability(self, station_id: str) -> int:
        """Read the station's smart-charging limits; returns the connectors newly learnt."""
        result = await self.central.send_command(
            station_id, "GetConfiguration", {"key": list(service.CAPABILITY_KEYS)},
            requested_by=SYSTEM, reason="read smart-charging limits",
        )
        configuration: dict[str, str] | None = None
        if result.outcome == CommandOutcome.accepted and result.response is not None:
            configuration = {
                item["key"]: item.get("value", "")
                for item in result.response.get("configurationKey", [])
            }
        return await run_in_session(
            self.engine, service.record_capability, station_id=station_id,
            configuration=configuration,
            reason=None if configuration is not None else f"GetConfiguration {result.outcome}",
        )

    async def send_safe_default(self, station_id: str, site_id: str) -> bool:
        """Install the TxDefaultProfile that keeps the site safe without us."""
        lock = self._default_locks.setdefault(station_id, asyncio.Lock())
        async with lock:
            return await self._send_safe_default(station_id, site_id)

    async def _send_safe_default(self, station_id: str, site_id: str) -> bool:
        state = await run_in_session(self.engine, service.site_state, site_id=site_id)
        if state is None or not state.grid.enabled:
            return False
        limit = safe_default_limit(state, station_id)
        capability = await run_in_session(self.engine, _capability, station_id=station_id)
        if not capability.smart_charging:
            return False
        result = await self.central.send_command(
            station_id, "SetChargingProfile",
            {"connectorId": 0, "csChargingProfiles": {
                "chargingProfileId": SAFE_DEFAULT_PROFILE_ID, "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Relative",
                "chargingSchedule": _schedule(limit, capability, phases=3, voltage=state.grid
                                              .voltage_v, duration=None, periods=None),
            }},
            requested_by=SYSTEM, reason="safe default before anything else",
        )
        if result.outcome != CommandOutcome.accepted:
            await run_in_session(self.engine, service.set_fail_safe, station_id=station_id,
                                 reason=f"safe default profile {result.outcome}")
            return False
        # Limits set before this connection are unknown to the station now: resend them.
        await run_in_session(self.engine, _forget_limits, station_id=station_id)
        self.meters.forget_station(station_id)
        return True


# ------------------------------------------------------------------ pure decisions


def grid_of(state: SiteState) -> Grid:
    """What the steerable connectors may share: the limit minus other and fail-safe load."""
    grid = state.grid
    voltage = grid.voltage_v
    phase_limit = grid.phase_limit_a if grid.phase_limit_a is not None else math.inf
    used = list(state.other_load_a)
    for _, _, wiring in state.fail_safe:
        for phase in wiring.site_phases():
            used[phase] += wiring.max_current_a
    limits = tuple(max(0.0, phase_limit - u) for u in used)
    power = None
    if grid.power_limit_kw is not None:
        power = max(0.0, grid.power_limit_kw * 1000 - voltage * sum(used))
    if grid.phase_limit_a is None and power is not None:
        # Only a kW limit: no phase binds before the aggregate does.
        limits = tuple(power / voltage for _ in limits)
    return Grid(phase_limit_a=limits, power_limit_w=power, voltage_v=voltage)  # type: ignore[arg-type]


def load_of(connector: ActiveConnector) -> Load:
    """The connector as :func:`dispatch.dispatch` sees it (:func:`dispatch.connector_load`,
    the bench's too): the wiring's phases, or only those the car was seen to draw on."""
    departure = energy = None
    if connector.plan is not None:
        departure = connector.plan.departure_at.timestamp()
        energy = max(0.0, connector.plan.energy_wh - (connector.delivered_wh or 0))
    return connector_load(
        (connector.station_id, connector.connector_id), connector.wiring,
        car_phases=connector.vehicle_phases, priority=connector.priority,
        since=connector.started_at.timestamp(), departure=departure, energy_needed_wh=energy,
    )


def observations(state: SiteState, meters: MeterWatch) -> dict[tuple[str, int], Observation]:
    """What each active connector's car was last seen to draw, and under which pilot. From
    power alone the car's phases count where meter values have shown them (on a single-phase
    connector, one)."""
    out = {}
    for c in state.active:
        phases = None
        if c.vehicle_phases is not None or c.wiring.phases == 1:
            phases = len(c.wiring.site_phases(c.vehicle_phases))
        seen = meters.observation(c.transaction_id, phases=phases,
                                  voltage_v=state.grid.voltage_v)
        if seen is not None:
            out[c.station_id, c.connector_id] = seen
    return out


def site_mpc(slot_minutes: int) -> Mpc:
    """A site's MPC as the controller runs it: the bench's settings (re-plan drift, overstay,
    window weight, the exact packing), over slots of ``slot_minutes``."""
    return Mpc(slot_s=slot_minutes * 60.0)


def mpc_cars(
    state: SiteState, *, planned: dict[tuple[str, int], planning.ConnectorPlan],
    now: datetime,
) -> tuple[list[Car], list[list[float]]]:
    """The site's charging cars as the MPC sees them, and the kW per phase and slot their
    charge plans take (see the module docstring): each car's departure and energy from its
    plan, else the default estimate; what it has had from its meter values."""
    voltage = state.grid.voltage_v
    cars = []
    reserved: list[list[float]] = [[], [], []]
    for c in state.active:
        key = (c.station_id, c.connector_id)
        delivered = (c.delivered_wh or 0) / 1000
        if c.plan is not None:
            departure, stated = c.plan.departure_at, c.plan.energy_wh / 1000
        else:
            departure, stated = c.started_at + DEFAULT_STAY, DEFAULT_ENERGY_KWH
        need = need_kwh(stated, delivered, noise=ESTIMATE_NOISE)
        load = connector_load(
            key, c.wiring, car_phases=c.vehicle_phases, priority=c.priority,
            since=c.started_at.timestamp(), departure=departure.timestamp(),
            energy_needed_wh=need * 1000)
        plan = planned.get(key)
        cars.append(Car(load, need, departure.timestamp(), delivered,
                        None if plan is None else plan.now_a))
        if plan is not None:
            amps = [plan.now_a] + [a for _, a in plan.periods_a]
            for phase in load.phases:
                row = reserved[phase]
                row.extend([0.0] * (len(amps) - len(row)))
                for t, a in enumerate(amps):
                    row[t] += a * voltage / 1000
    return cars, reserved


def decide(
    state: SiteState,
    *,
    planned: dict[tuple[str, int], planning.ConnectorPlan],
    now: datetime,
    observed: dict[tuple[str, int], Observation] | None = None,
    mpc: Mpc | None = None,
) -> Decision:
    """Limits for every active connector (:func:`dispatch.dispatch`, the code the
    scheduling bench runs): cars seen drawing less than their pilot (``observed``, from
    :func:`observations`) give the rest back; planned connectors come first, up
    to their plan's pilot for now (a ceiling: a plan that waits for cheap hours is not
    filled with dear ones); the others share what is left by the site's policy, or, under
    the ``mpc`` policy, by the site's MPC (``mpc``, :meth:`load_manager.mpc.Mpc.decide`,
    the bench's; a fresh one when None), over :func:`mpc_cars`. Whole amperes, 0 or from
    each connector's minimum."""
    grid = grid_of(state)
    if state.grid.policy == SitePolicy.mpc:
        # A fresh MPC (tests, one-off decisions) over the default slot of charge plans.
        mpc = mpc if mpc is not None else site_mpc(15)
        cars, reserved = mpc_cars(state, planned=planned, now=now)
        result = mpc.decide(grid, cars, now.timestamp(), observed or {},
                            reserved_kw=reserved)
    else:
        loads = [load_of(c) for c in state.active]
        result = dispatch(
            grid, loads, Policy(state.grid.policy), now=now.timestamp(), step_a=STEP_A,
            observed=observed or {},
            targets={key: plan.now_a for key, plan in planned.items()},
            target_policy=Policy.priority,
        )
    return Decision(
        site_id=state.site_id, grid=grid,
        limits={k: float(v) for k, v in result.pilots.items()},  # type: ignore[misc]
        planned=planned, fail_safe=[(s, c) for s, c, _ in state.fail_safe], at=now,
    )


def safe_default_limit(state: SiteState, station_id: str) -> float:
    """Amps per phase that every connector of the site may draw at once without us.

    The tightest phase decides: its limit (minus forecast other load) over the connectors
    wired to it; the aggregate kW limit likewise over all connectors. Below a connector's
    minimum the safe default is 0: a paused car is safe, an overloaded fuse is not.
    """
    grid = state.grid
    per_phase = [0, 0, 0]
    for wiring in state.wiring.values():
        for phase in wiring.site_phases():
            per_phase[phase] += 1
    candidates = []
    if grid.phase_limit_a is not None:
        for phase, count in enumerate(per_phase):
            if count:
                candidates.append((grid.phase_limit_a - state.other_load_a[phase]) / count)
    if grid.power_limit_kw is not None:
        conductors = sum(per_phase) or 1
        other_w = grid.voltage_v * sum(state.other_load_a)
        candidates.append((grid.power_limit_kw * 1000 - other_w) / (grid.voltage_v * conductors))
    limit = max(0.0, min(candidates)) if candidates else 0.0
    limit = math.floor(limit / STEP_A + 1e-9) * STEP_A
    minimum = min((w.min_current_a for (s, _), w in state.wiring.items() if s == station_id),
                  default=6.0)
    return round(limit, 1) if limit >= minimum else 0.0


def tx_profile(
    connector: ActiveConnector,
    limit_a: float,
    *,
    plan: planning.ConnectorPlan | None,
    now: datetime,
    capability: StationCapability,
    voltage: float,
    validity_s: int,
) -> dict[str, Any]:
    """The TxProfile for one connector: the limit now, then the plan's, for validity_s."""
    max_stack = capability.max_stack_level
    periods = None if plan is None else plan.periods_a
    return {
        "chargingProfileId": TX_PROFILE_ID_BASE + connector.connector_id,
        "transactionId": connector.transaction_id,
        "stackLevel": 1 if max_stack is None else min(1, max_stack),
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            **_schedule(limit_a, capability,
                        phases=profile_phases(connector),
                        voltage=voltage, duration=validity_s, periods=periods),
            "startSchedule": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def _schedule(
    limit_a: float,
    capability: StationCapability,
    *,
    phases: int,
    voltage: float,
    duration: int | None,
    periods: list[tuple[int, float]] | None,
) -> dict[str, Any]:
    """A chargingSchedule in the unit the station takes, with no more periods than it keeps.

    ``periods`` are (start offset s, A) after the first one; the first is always
    ``limit_a``, the real-time decision.
    """
    unit = "A" if "A" in _units(capability) else "W"
    steps = [(0, limit_a)] + [(s, a) for s, a in (periods or []) if 0 < s < (duration or 10**9)]
    if capability.max_periods is not None:
        steps = steps[: max(1, capability.max_periods)]

    def rate(amps: float) -> float:
        value = amps if unit == "A" else amps * voltage * phases
        return round(value, 1)

    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [
            {"startPeriod": start, "limit": rate(amps), **({"numberPhases": phases}
                                                          if phases != 3 else {})}
            for start, amps in steps
        ],
    }
    if duration is not None:
        schedule["duration"] = duration
    return schedule


def _units(capability: StationCapability) -> tuple[str, ...]:
    raw = capability.rate_units or "Current"
    units = tuple("A" if u.strip() == "Current" else "W" for u in raw.split(",") if u.strip())
    return units or ("A",)


def profile_phases(connector: ActiveConnector) -> int:
    """The phases a connector's profile names: the connector's, or fewer where its car was
    seen to draw on fewer."""
    return len(connector.wiring.site_phases(connector.vehicle_phases))


def _changed(connector: ActiveConnector, limit_a: float) -> bool:
    last = connector.last_limit_a
    return last is None or abs(last - limit_a) >= RESEND_THRESHOLD_A or (
        limit_a == 0.0) != (last == 0.0)


# ------------------------------------------------------------------ small queries


def _capability(session: Session, *, station_id: str) -> StationCapability:
    # Unknown stations get the defaults: smart charging assumed until GetConfiguration says.
    return session.get(StationCapability, station_id) or StationCapability(station_id=station_id)


def _forget_limits(session: Session, *, station_id: str) -> None:
    for row in session.exec(select(AllocationState)
                            .where(AllocationState.station_id == station_id)):
        session.delete(row)


def _observe(session: Session, *, station_id: str, connector_id: int,
             transaction_id: int | None, samples: list[Any],
             store: tuple[float, Reading] | None = None) -> str | None:
    """Learn from a managed station's meter values, and keep the reading ``store`` (pilot,
    reading) for a restart; returns its site (None: unmanaged)."""
    site_id = service.managed_site(session, station_id=station_id)
    if site_id is not None and transaction_id is not None:
        service.observe_meter_values(session, transaction_id=transaction_id, samples=samples)
        if store is not None:
            offered, reading = store
            service.store_meter_reading(
                session, station_id=station_id, connector_id=connector_id,
                transaction_id=transaction_id, offered_a=offered, current_a=reading.current_a,
                power_w=reading.power_w, phase_power_w=reading.phase_power_w)
    return site_id


def _open_readings(session: Session) -> list[tuple[int, float, Reading]]:
    return [(r.transaction_id, r.offered_a,
             Reading(current_a=r.current_a, power_w=r.power_w, phase_power_w=r.phase_power_w))
            for r in service.open_meter_readings(session)]


def _site_ids(session: Session) -> list[str]:
    return [g.site_id for g in service.list_site_grids(session) if g.enabled]


def install(*, engine: Engine, bus: InMemoryEventBus, central: CentralSystem,
            settings: Settings) -> LoadController:
    controller = LoadController(engine=engine, bus=bus, central=central, settings=settings)
    controller.install()
    return controller


