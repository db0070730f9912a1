"""Dynamic load management in real time: station events in, charging profiles out.

On every transaction start and stop, meter value, status change and station coming or
going, the station's site is rebalanced: its state is read (load_manager.service), charge
plans are re-solved (model-predictive control, load_manager.planning), the allocator shares
what is left (load_manager.allocation) and every connector whose limit changed gets a
TxProfile through the central system, audited like any command as ``system:load_manager``.

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
"""

from __future__ import annotations

import asyncio
import math
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, select

from chargedesk.db import run_in_session
from chargedesk.events import InMemoryEventBus
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from load_manager import planning, service
from load_manager.allocation import Grid, Load, Policy, allocate
from load_manager.models import AllocationState, StationCapability
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
STEP_A = 0.1


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
    _dirty: set[str] = field(default_factory=set)
    _refresher: asyncio.Task[None] | None = None
    last_decision: dict[str, Decision] = field(default_factory=dict)

    def install(self) -> None:
        self.bus.subscribe(TransactionStarted, self._on_station_event)
        self.bus.subscribe(TransactionStopped, self._on_stopped)
        self.bus.subscribe(MeterValuesReceived, self._on_meter_values)
        self.bus.subscribe(StatusChanged, self._on_status)
        self.bus.subscribe(StationOnline, self._on_online)
        self.bus.subscribe(StationOffline, self._on_station_event)

    # -------------------------------------------------------------- events

    async def _on_station_event(self, event: Any) -> None:
        await self.request_for_station(event.station_id)

    async def _on_status(self, event: StatusChanged) -> None:
        if event.current:
            await self.request_for_station(event.station_id)

    async def _on_stopped(self, event: TransactionStopped) -> None:
        await run_in_session(self.engine, service.finish_plans,
                             transaction_id=event.transaction_id)
        await self.request_for_station(event.station_id)

    async def _on_meter_values(self, event: MeterValuesReceived) -> None:
        # Every charging station sends these every few seconds: one small transaction, and
        # nothing at all for a station whose site is not under load management.
        site_id = await run_in_session(self.engine, _observe, station_id=event.station_id,
                                       transaction_id=event.transaction_id,
                                       samples=event.samples)
        if site_id is not None:
            self.request(site_id)

    async def _on_online(self, event: StationOnline) -> None:
        """Learn what the station can do, make it safe, then share the site again."""
        station_id = event.station_id
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
        """Refresh every site's profiles before they run out."""
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

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
        now = utcnow()
        state = await run_in_session(self.engine, service.site_state, site_id=site_id, now=now)
        if state is None or not state.grid.enabled:
            return None
        planned = await self._plan(state, now)
        decision = decide(state, planned=planned, now=now)
        self.last_decision[site_id] = decision
        sends = [
            self._apply(state, connector, decision.limits[connector.station_id,
                                                          connector.connector_id],
                        planned.get((connector.station_id, connector.connector_id)), now)
            for connector in state.active
            if refresh or _changed(connector, decision.limits[connector.station_id,
                                                              connector.connector_id])
        ]
        results = await asyncio.gather(*sends)
        if any(results):  # a station fell to fail safe: share again without it
            self._dirty.add(site_id)
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
        if outcome == CommandOutcome.accepted:
            if capability.composite_schedule:
                verified, failure = await self._verify(connector, limit_a, capability)
        elif outcome == CommandOutcome.rejected:
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
        if first <= limit_a + STEP_A:
            return True, None
        return False, f"composite schedule allows {first:.1f} A, above the {limit_a:.1f} A set"

    def _voltage_phases(self, connector: ActiveConnector) -> float:
        return 230.0 * (connector.vehicle_phases or connector.wiring.phases)

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


def load_of(connector: ActiveConnector, *, cap_a: float | None = None) -> Load:
    wiring = connector.wiring
    max_a = wiring.max_current_a
    if cap_a is not None:
        max_a = min(max_a, cap_a)
    observed = connector.vehicle_max_a
    last = connector.last_limit_a
    # A car that has been drawing clearly less than it was offered (it is tapering, or its
    # charger is smaller) gives the rest back to the others.
    if observed is not None and last is not None and observed < last - 2.0:
        max_a = min(max_a, observed + 1.0)
    departure = energy = None
    if connector.plan is not None:
        departure = connector.plan.departure_at.timestamp()
        energy = max(0.0, connector.plan.energy_wh - (connector.delivered_wh or 0))
    return Load(
        key=(connector.station_id, connector.connector_id),
        phases=wiring.site_phases(connector.vehicle_phases),
        max_a=max_a, min_a=wiring.min_current_a, priority=connector.priority,
        since=connector.started_at.timestamp(), departure=departure, energy_needed_wh=energy,
    )


def decide(
    state: SiteState,
    *,
    planned: dict[tuple[str, int], planning.ConnectorPlan],
    now: datetime,
) -> Decision:
    """Limits for every active connector: planned ones first at their plan's rate, then
    the rest shared by the site's policy from what is left."""
    grid = grid_of(state)
    first = [load_of(c, cap_a=planned[c.station_id, c.connector_id].now_a)
             for c in state.active if (c.station_id, c.connector_id) in planned]
    rest = [load_of(c) for c in state.active if (c.station_id, c.connector_id) not in planned]
    limits: dict[tuple[str, int], float] = {}
    if first:
        limits.update(allocate(grid, first, Policy.priority, now=now.timestamp(), step_a=STEP_A))
        grid = _remaining(grid, first, limits)
    if rest:
        limits.update(allocate(grid, rest, Policy(state.grid.policy), now=now.timestamp(),
                               step_a=STEP_A))
    return Decision(
        site_id=state.site_id, grid=grid_of(state),
        limits={k: float(v) for k, v in limits.items()},  # type: ignore[misc]
        planned=planned, fail_safe=[(s, c) for s, c, _ in state.fail_safe], at=now,
    )


def _remaining(grid: Grid, loads: list[Load], limits: dict[Any, float]) -> Grid:
    used = [0.0, 0.0, 0.0]
    power = 0.0
    for load in loads:
        amps = limits.get(load.key, 0.0)
        for phase in load.phases:
            used[phase] += amps
        power += amps * grid.voltage_v * len(load.phases)
    phases = tuple(max(0.0, limit - u) for limit, u in zip(grid.phase_limit_a, used, strict=True))
    left = None if grid.power_limit_w is None else max(0.0, grid.power_limit_w - power)
    return Grid(phase_limit_a=phases, power_limit_w=left, voltage_v=grid.voltage_v)  # type: ignore[arg-type]


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
    limit = math.floor(limit / STEP_A) * STEP_A
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
                        phases=connector.vehicle_phases or connector.wiring.phases,
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


def _observe(session: Session, *, station_id: str, transaction_id: int | None,
             samples: list[Any]) -> str | None:
    """Learn from a managed station's meter values; returns its site (None: unmanaged)."""
    site_id = service.managed_site(session, station_id=station_id)
    if site_id is not None and transaction_id is not None:
        service.observe_meter_values(session, transaction_id=transaction_id, samples=samples)
    return site_id


def _site_ids(session: Session) -> list[str]:
    return [g.site_id for g in service.list_site_grids(session) if g.enabled]


def install(*, engine: Engine, bus: InMemoryEventBus, central: CentralSystem,
            settings: Settings) -> LoadController:
    controller = LoadController(engine=engine, bus=bus, central=central, settings=settings)
    controller.install()
    return controller


