"""Load-management queries and records: the only module of the package that touches tables.

A site's *state* is what one rebalance needs, read in one transaction: its grid limits minus
the forecast other load, every connector with an open transaction (wiring, the car's observed
phases and rate, its plan, its priority), and the stations that must be counted at their
maximum because they cannot be steered (fail safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session, col, select

from chargedesk.errors import DomainError, NotFound
from chargedesk.types import utcnow
from load_manager.dispatch import Wiring
from load_manager.models import (
    AllocationState,
    ChargePlan,
    ConnectorWiring,
    LoadForecast,
    MeterReading,
    PlanStatus,
    SiteGrid,
    SitePolicy,
    StationCapability,
    TagPriority,
    VehicleObservation,
)
from station_api.models import Connector, IdTag, Site, Station, Transaction
from station_api.service import insert_ignore

ROTATIONS = ("RST", "RTS", "SRT", "STR", "TRS", "TSR")
# Config keys read with GetConfiguration to learn what a station's profiles may hold.
CAPABILITY_KEYS = (
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
    "SupportedFeatureProfiles",
    "NumberOfConnectors",
)
# How far ahead a driver may plan: the price series and the model's horizon.
_HORIZON_LIMIT = timedelta(hours=48)


class InvalidSetting(DomainError):
    """A grid, wiring or plan setting that cannot be right."""


@dataclass(frozen=True, slots=True)
class ActiveConnector:
    """A connector with an open transaction, as the allocator needs to see it."""

    station_id: str
    connector_id: int
    transaction_id: int
    id_tag: str
    status: str | None
    started_at: datetime
    wiring: Wiring
    vehicle_phases: int | None
    delivered_wh: int | None
    priority: int
    plan: ChargePlan | None
    last_limit_a: float | None


@dataclass(frozen=True, slots=True)
class SiteState:
    site_id: str
    time_zone: str
    grid: SiteGrid
    # Forecast other load now, A on L1, L2, L3.
    other_load_a: tuple[float, float, float]
    active: list[ActiveConnector]
    # Connectors of stations that cannot be steered, counted at their maximum.
    fail_safe: list[tuple[str, int, Wiring]]
    # Every connector of the site (for the safe default limits).
    wiring: dict[tuple[str, int], Wiring]
    stations: list[str]


# ------------------------------------------------------------------ configuration


def set_site_grid(
    session: Session,
    *,
    site_id: str,
    phase_limit_a: float | None,
    power_limit_kw: float | None,
    voltage_v: float = 230.0,
    policy: SitePolicy = SitePolicy.equal_share,
    enabled: bool = True,
) -> SiteGrid:
    """Set (or replace) a site's grid connection limits and sharing policy."""
    if session.get(Site, site_id) is None:
        raise NotFound(f"site {site_id} not found")
    if phase_limit_a is None and power_limit_kw is None:
        raise InvalidSetting("give a limit per phase (A), in total (kW), or both")
    for name, value in (("phase_limit_a", phase_limit_a), ("power_limit_kw", power_limit_kw)):
        if value is not None and not value > 0:
            raise InvalidSetting(f"{name} must be positive, not {value}")
    if not 100 <= voltage_v <= 300:
        raise InvalidSetting(f"voltage_v is phase-to-neutral, 100-300 V, not {voltage_v}")
    row = session.get(SiteGrid, site_id) or SiteGrid(site_id=site_id)
    row.phase_limit_a, row.power_limit_kw, row.voltage_v = phase_limit_a, power_limit_kw, voltage_v
    row.policy, row.enabled, row.updated_at = SitePolicy(policy), enabled, utcnow()
    session.add(row)
    session.flush()
    return row


def get_site_grid(session: Session, *, site_id: str) -> SiteGrid:
    row = session.get(SiteGrid, site_id)
    if row is None:
        raise NotFound(f"site {site_id} has no grid limits; set them first")
    return row


def list_site_grids(session: Session) -> Sequence[SiteGrid]:
    return session.exec(select(SiteGrid).order_by(SiteGrid.site_id)).all()


def set_forecast(
    session: Session, *, site_id: str, points: Sequence[tuple[datetime, float, float, float]]
) -> int:
    """Replace the site's forecast of other load from the first point on."""
    if session.get(Site, site_id) is None:
        raise NotFound(f"site {site_id} not found")
    if not points:
        return 0
    ordered = sorted(points)
    for at, *amps in ordered:
        if at.tzinfo is None:
            raise InvalidSetting(f"forecast time {at} has no time zone")
        if any(a < 0 for a in amps):
            raise InvalidSetting(f"negative load at {at.isoformat()}")
    for row in session.exec(select(LoadForecast).where(
        LoadForecast.site_id == site_id, LoadForecast.starts_at >= ordered[0][0]
    )):
        session.delete(row)
    session.flush()
    for at, l1, l2, l3 in ordered:
        session.add(LoadForecast(site_id=site_id, starts_at=at, l1_a=l1, l2_a=l2, l3_a=l3))
    session.flush()
    return len(ordered)


def other_load(session: Session, *, site_id: str, at: datetime) -> tuple[float, float, float]:
    """The forecast other load in force at ``at`` (zero before the first point)."""
    row = session.exec(
        select(LoadForecast)
        .where(LoadForecast.site_id == site_id, LoadForecast.starts_at <= at)
        .order_by(col(LoadForecast.starts_at).desc())
    ).first()
    return (0.0, 0.0, 0.0) if row is None else (row.l1_a, row.l2_a, row.l3_a)


def set_wiring(
    session: Session,
    *,
    station_id: str,
    connector_id: int,
    phases: int,
    rotation: str = "RST",
    max_current_a: float,
    min_current_a: float = 6.0,
) -> ConnectorWiring:
    """Record how a connector is wired and what current it allows."""
    if session.get(Station, station_id) is None:
        raise NotFound(f"station {station_id} not found")
    if connector_id < 1:
        raise InvalidSetting("connector ids start at 1")
    if phases not in (1, 3):
        raise InvalidSetting(f"a connector uses 1 or 3 phases, not {phases}")
    if rotation not in ROTATIONS:
        raise InvalidSetting(f"rotation is one of {', '.join(ROTATIONS)}, not {rotation!r}")
    if not 0 < min_current_a <= max_current_a <= 80:
        raise InvalidSetting("need 0 < min_current_a <= max_current_a <= 80 A")
    row = session.get(ConnectorWiring, (station_id, connector_id)) or ConnectorWiring(
        station_id=station_id, connector_id=connector_id
    )
    row.phases, row.rotation = phases, rotation
    row.max_current_a, row.min_current_a = max_current_a, min_current_a
    session.add(row)
    session.flush()
    return row


def ensure_wiring(session: Session, *, station_id: str, connectors: int) -> int:
    """Give connectors 1..``connectors`` the default wiring unless they have their own;
    returns how many were new."""
    added = 0
    for connector_id in range(1, connectors + 1):
        if session.get(ConnectorWiring, (station_id, connector_id)) is None:
            session.add(ConnectorWiring(station_id=station_id, connector_id=connector_id))
            added += 1
    session.flush()
    return added


def set_tag_priority(
    session: Session, *, id_tag: str, priority: int, note: str | None = None
) -> TagPriority:
    """Priority of a card, or of every card under it when it is a parent tag."""
    row = session.get(TagPriority, id_tag) or TagPriority(id_tag=id_tag)
    row.priority, row.note = priority, note
    session.add(row)
    session.flush()
    return row


# ------------------------------------------------------------------ what stations and cars do


def record_capability(
    session: Session, *, station_id: str, configuration: dict[str, str] | None, reason: str | None
) -> int:
    """Store what GetConfiguration said; ``None`` means it could not be read (fail safe).

    Returns the number of connectors learnt from NumberOfConnectors: the site's safe
    defaults depend on how many connectors share it.
    """
    row = session.get(StationCapability, station_id) or StationCapability(station_id=station_id)
    row.read_at = utcnow()
    if configuration is None:
        row.fail_safe, row.fail_reason = True, reason or "configuration not readable"
    else:
        features = configuration.get("SupportedFeatureProfiles")
        row.smart_charging = features is None or "SmartCharging" in features
        row.max_stack_level = _int(configuration.get("ChargeProfileMaxStackLevel"))
        row.rate_units = configuration.get("ChargingScheduleAllowedChargingRateUnit")
        row.max_periods = _int(configuration.get("ChargingScheduleMaxPeriods"))
        row.max_profiles = _int(configuration.get("MaxChargingProfilesInstalled"))
        row.fail_safe = not row.smart_charging
        row.fail_reason = None if row.smart_charging else "no SmartCharging feature profile"
    session.add(row)
    session.flush()
    connectors = _int((configuration or {}).get("NumberOfConnectors"))
    if connectors is not None and 0 < connectors <= 64:
        return ensure_wiring(session, station_id=station_id, connectors=connectors)
    return 0


def online_stations(session: Session, *, site_id: str) -> list[str]:
    return list(session.exec(
        select(Station.id).where(Station.site_id == site_id, col(Station.online).is_(True))
    ))


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def set_fail_safe(session: Session, *, station_id: str, reason: str | None) -> None:
    """Count a station at its maximum (``reason``) or steer it again (None)."""
    row = session.get(StationCapability, station_id) or StationCapability(station_id=station_id)
    row.fail_safe, row.fail_reason = reason is not None, reason
    session.add(row)


def capability_reason(session: Session, *, station_id: str) -> str | None:
    """Why the station is counted at its maximum, or None when it is steered."""
    station = session.get(Station, station_id)
    row = session.get(StationCapability, station_id)
    if row is not None and row.fail_safe:
        return row.fail_reason or "fail safe"
    if station is not None and not station.online:
        return "offline"
    return None


def note_composite_unsupported(session: Session, *, station_id: str) -> None:
    row = session.get(StationCapability, station_id) or StationCapability(station_id=station_id)
    row.composite_schedule = False
    session.add(row)


def observe_meter_values(
    session: Session, *, transaction_id: int, samples: Sequence[Any]
) -> VehicleObservation | None:
    """Learn the car's phases, peak current and power, and energy so far from samples.

    (What the car draws now, for the give-back, is the controller's: it needs the pilot the
    station had when the sample was taken, :mod:`load_manager.meters`.)"""
    tx = session.get(Transaction, transaction_id)
    if tx is None:
        return None
    row = session.get(VehicleObservation, transaction_id) or VehicleObservation(
        transaction_id=transaction_id, station_id=tx.station_id, connector_id=tx.connector_id
    )
    phases_carrying: set[str] = set()
    for sample in samples:
        if sample.value is None or sample.location not in ("Outlet", ""):
            continue
        value = float(sample.value)
        if sample.measurand == "Current.Import":
            if sample.phase in ("L1", "L2", "L3") and value >= 1.0:
                phases_carrying.add(sample.phase)
            row.max_current_a = max(row.max_current_a or 0.0, value)
        elif sample.measurand == "Power.Active.Import" and not sample.phase:
            row.max_power_w = max(row.max_power_w or 0.0, value)
        elif sample.measurand == "Energy.Active.Import.Register" and not sample.phase:
            row.delivered_wh = max(row.delivered_wh or 0, int(value) - tx.meter_start_wh)
    if phases_carrying:
        row.phases = max(row.phases or 0, len(phases_carrying))
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def store_meter_reading(
    session: Session, *, station_id: str, connector_id: int, transaction_id: int,
    offered_a: float, current_a: float | None, power_w: float | None,
    phase_power_w: float | None,
) -> None:
    """Keep the latest reading of the connector's car under its pilot (one row per
    connector, replaced), for the give-back after a restart (:mod:`load_manager.meters`)."""
    key = (station_id, connector_id)
    row = session.get(MeterReading, key)
    values = {"transaction_id": transaction_id, "offered_a": offered_a,
              "current_a": current_a, "power_w": power_w, "phase_power_w": phase_power_w,
              "taken_at": utcnow()}
    if row is None:
        # Two stores for a new connector can race: the second takes the first's row.
        insert_ignore(session, MeterReading, [{"station_id": station_id,
                                                "connector_id": connector_id, **values}],
                      key=("station_id", "connector_id"))
        row = session.get(MeterReading, key)
        assert row is not None
    for name, value in values.items():
        setattr(row, name, value)
    session.add(row)
    session.flush()


def open_meter_readings(session: Session) -> Sequence[MeterReading]:
    """The stored readings of transactions still open (what a restart starts from)."""
    return session.exec(
        select(MeterReading)
        .join(Transaction, col(Transaction.id) == MeterReading.transaction_id)
        .where(col(Transaction.stop_timestamp).is_(None))
    ).all()


def record_allocation(
    session: Session,
    *,
    station_id: str,
    connector_id: int,
    transaction_id: int | None,
    limit_a: float,
    outcome: str,
    verified: bool | None = None,
) -> AllocationState:
    key = (station_id, connector_id)
    row = session.get(AllocationState, key)
    if row is None:
        # Two decisions for a new connector can race (a rebalance and a plan, say): the
        # second to insert takes the first's row instead of failing on the key.
        insert_ignore(session, AllocationState, [{
            "station_id": station_id, "connector_id": connector_id, "limit_a": limit_a,
            "outcome": outcome, "decided_at": utcnow()}], key=("station_id", "connector_id"))
        row = session.get(AllocationState, key)
        assert row is not None
    row.transaction_id, row.limit_a, row.outcome, row.verified = (
        transaction_id, limit_a, outcome, verified
    )
    row.decided_at = utcnow()
    if outcome == "accepted":
        row.applied_at = row.decided_at
    session.add(row)
    session.flush()
    return row


def list_allocations(session: Session, *, site_id: str) -> Sequence[AllocationState]:
    return session.exec(
        select(AllocationState)
        .join(Station, col(Station.id) == AllocationState.station_id)
        .where(Station.site_id == site_id)
        .order_by(AllocationState.station_id, AllocationState.connector_id)
    ).all()


# ------------------------------------------------------------------ the state of a site


def site_of_station(session: Session, *, station_id: str) -> str | None:
    station = session.get(Station, station_id)
    return None if station is None else station.site_id


def managed_site(session: Session, *, station_id: str) -> str | None:
    """The station's site when it is under load management (a grid limit, enabled)."""
    site_id = site_of_station(session, station_id=station_id)
    grid = None if site_id is None else session.get(SiteGrid, site_id)
    return site_id if grid is not None and grid.enabled else None


def site_state(session: Session, *, site_id: str, now: datetime | None = None) -> SiteState | None:
    """Everything a rebalance of ``site_id`` needs, or None if the site has no grid limit."""
    grid = session.get(SiteGrid, site_id)
    site = session.get(Site, site_id)
    if grid is None or site is None:
        return None
    now = now or utcnow()
    stations = session.exec(select(Station).where(Station.site_id == site_id)).all()
    station_ids = [s.id for s in stations]
    wiring = _wiring(session, stations=stations)
    capabilities = {
        c.station_id: c
        for c in session.exec(
            select(StationCapability).where(col(StationCapability.station_id).in_(station_ids))
        )
    }
    fail_safe = [
        (station_id, connector_id, w)
        for (station_id, connector_id), w in wiring.items()
        if not _steerable(stations, capabilities, station_id)
    ]
    steerable = {s.id for s in stations if _steerable(stations, capabilities, s.id)}
    active = _active(session, steerable=steerable, wiring=wiring)
    return SiteState(
        site_id=site_id, time_zone=site.time_zone, grid=grid,
        other_load_a=other_load(session, site_id=site_id, at=now), active=active,
        fail_safe=fail_safe, wiring=wiring, stations=station_ids,
    )


def _steerable(
    stations: Sequence[Station], capabilities: dict[str, StationCapability], station_id: str
) -> bool:
    station = next(s for s in stations if s.id == station_id)
    capability = capabilities.get(station_id)
    return station.online and (capability is None or not capability.fail_safe)


def _wiring(session: Session, *, stations: Sequence[Station]) -> dict[tuple[str, int], Wiring]:
    """Every physical connector of the stations, with its wiring (defaults where unset)."""
    ids = [s.id for s in stations]
    configured = {
        (w.station_id, w.connector_id): Wiring(w.phases, w.rotation, w.max_current_a,
                                              w.min_current_a)
        for w in session.exec(
            select(ConnectorWiring).where(col(ConnectorWiring.station_id).in_(ids))
        )
    }
    known = {
        (c.station_id, c.connector_id)
        for c in session.exec(select(Connector).where(
            col(Connector.station_id).in_(ids), Connector.connector_id > 0
        ))
    }
    return {key: configured.get(key, Wiring()) for key in sorted(known | set(configured))}


def _active(
    session: Session, *, steerable: set[str], wiring: dict[tuple[str, int], Wiring]
) -> list[ActiveConnector]:
    if not steerable:
        return []
    transactions = session.exec(
        select(Transaction).where(
            col(Transaction.station_id).in_(steerable), col(Transaction.stop_timestamp).is_(None)
        ).order_by(Transaction.start_timestamp, Transaction.id)
    ).all()
    if not transactions:
        return []
    ids = [t.id for t in transactions]
    statuses = {
        (c.station_id, c.connector_id): c.status
        for c in session.exec(select(Connector).where(col(Connector.station_id).in_(steerable)))
    }
    observed = {
        o.transaction_id: o
        for o in session.exec(
            select(VehicleObservation).where(col(VehicleObservation.transaction_id).in_(ids))
        )
    }
    plans = {
        p.transaction_id: p
        for p in session.exec(select(ChargePlan).where(
            col(ChargePlan.transaction_id).in_(ids), ChargePlan.status == PlanStatus.active
        ))
    }
    limits = {
        (a.station_id, a.connector_id): a.limit_a
        for a in session.exec(
            select(AllocationState).where(col(AllocationState.station_id).in_(steerable))
        )
    }
    priorities = _priorities(session, tags={t.id_tag for t in transactions})
    # Only the newest open transaction of a connector is live; an older one is a missed stop.
    latest: dict[tuple[str, int], Transaction] = {}
    for tx in transactions:
        latest[(tx.station_id, tx.connector_id)] = tx
    result = []
    for key, tx in latest.items():
        seen = observed.get(tx.id or 0)
        result.append(ActiveConnector(
            station_id=tx.station_id, connector_id=tx.connector_id, transaction_id=tx.id or 0,
            id_tag=tx.id_tag, status=statuses.get(key), started_at=tx.start_timestamp,
            wiring=wiring.get(key, Wiring()),
            vehicle_phases=None if seen is None else seen.phases,
            delivered_wh=None if seen is None else seen.delivered_wh,
            priority=priorities.get(tx.id_tag, 0), plan=plans.get(tx.id or 0),
            last_limit_a=limits.get(key),
        ))
    return result


def _priorities(session: Session, *, tags: set[str]) -> dict[str, int]:
    """A tag's own priority, else its parent's."""
    parents = {
        t.id_tag: t.parent_id_tag
        for t in session.exec(select(IdTag).where(col(IdTag.id_tag).in_(tags)))
    }
    wanted = tags | {p for p in parents.values() if p}
    rows = {
        p.id_tag: p.priority
        for p in session.exec(select(TagPriority).where(col(TagPriority.id_tag).in_(wanted)))
    }
    result = {}
    for tag in tags:
        parent = parents.get(tag)
        if tag in rows:
            result[tag] = rows[tag]
        elif parent and parent in rows:
            result[tag] = rows[parent]
    return result


def site_load(session: Session, *, site_id: str) -> dict[str, Any]:
    """The live picture of a managed site: limits, other load, each connector's limit and
    outcome, the current per phase those limits allow, and who is counted at maximum."""
    grid = get_site_grid(session, site_id=site_id)
    state = site_state(session, site_id=site_id)
    assert state is not None
    allocations = list(list_allocations(session, site_id=site_id))
    use = [0.0, 0.0, 0.0]
    active = {(c.station_id, c.connector_id): c for c in state.active}
    for row in allocations:
        connector = active.get((row.station_id, row.connector_id))
        if connector is None or row.outcome != "accepted":
            continue
        for phase in connector.wiring.site_phases(connector.vehicle_phases):
            use[phase] += row.limit_a
    stations = sorted({s for s, _, _ in state.fail_safe})
    capabilities = {s: capability_reason(session, station_id=s) for s in stations}
    return {
        "grid": grid, "other_load_a": state.other_load_a, "allocations": allocations,
        "phase_use_a": [round(u, 1) for u in use],
        "fail_safe_stations": [{"station_id": s, "reason": capabilities[s]} for s in stations],
    }


# ------------------------------------------------------------------ charge plans


def create_plan(
    session: Session,
    *,
    transaction_id: int,
    departure_at: datetime,
    energy_wh: int,
    requested_by: str,
    now: datetime | None = None,
) -> ChargePlan:
    """Ask for ``energy_wh`` by ``departure_at`` on an open transaction; replaces its plan."""
    now = now or utcnow()
    tx = session.get(Transaction, transaction_id)
    if tx is None:
        raise NotFound(f"transaction {transaction_id} not found")
    if tx.stop_timestamp is not None:
        raise InvalidSetting(f"transaction {transaction_id} has already stopped")
    if departure_at.tzinfo is None:
        raise InvalidSetting("departure_at needs a time zone")
    if departure_at <= now:
        raise InvalidSetting("departure_at must be in the future")
    if departure_at - now > _HORIZON_LIMIT:
        raise InvalidSetting("plans reach at most 48 hours ahead")
    if not 0 < energy_wh <= 200_000:
        raise InvalidSetting("energy_wh must be between 1 Wh and 200 kWh")
    for old in session.exec(select(ChargePlan).where(
        ChargePlan.transaction_id == transaction_id, ChargePlan.status == PlanStatus.active
    )):
        old.status, old.ended_at = PlanStatus.cancelled, now
        session.add(old)
    plan = ChargePlan(
        transaction_id=transaction_id, station_id=tx.station_id, connector_id=tx.connector_id,
        departure_at=departure_at, energy_wh=energy_wh, requested_by=requested_by,
    )
    session.add(plan)
    session.flush()
    return plan


def active_plan(session: Session, *, transaction_id: int) -> ChargePlan | None:
    return session.exec(select(ChargePlan).where(
        ChargePlan.transaction_id == transaction_id, ChargePlan.status == PlanStatus.active
    )).first()


def get_plan(session: Session, *, plan_id: int) -> ChargePlan:
    plan = session.get(ChargePlan, plan_id)
    if plan is None:
        raise NotFound(f"plan {plan_id} not found")
    return plan


def cancel_plan(session: Session, *, plan_id: int) -> ChargePlan:
    plan = get_plan(session, plan_id=plan_id)
    if plan.status == PlanStatus.active:
        plan.status, plan.ended_at = PlanStatus.cancelled, utcnow()
        session.add(plan)
    return plan


def finish_plans(session: Session, *, transaction_id: int) -> None:
    """A transaction stopped: its plan is over."""
    for plan in session.exec(select(ChargePlan).where(
        ChargePlan.transaction_id == transaction_id, ChargePlan.status == PlanStatus.active
    )):
        plan.status, plan.ended_at = PlanStatus.finished, utcnow()
        session.add(plan)


def record_plan_solution(
    session: Session,
    *,
    plan_id: int,
    schedule: dict[str, Any],
    expected_energy_wh: int,
    expected_cost_sek: Decimal | None,
) -> None:
    plan = session.get(ChargePlan, plan_id)
    if plan is None or plan.status != PlanStatus.active:
        return
    plan.schedule, plan.expected_energy_wh = schedule, expected_energy_wh
    plan.expected_cost_sek, plan.planned_at = expected_cost_sek, utcnow()
    session.add(plan)


def plans_of_transaction(session: Session, *, transaction_id: int) -> Sequence[ChargePlan]:
    return session.exec(
        select(ChargePlan).where(ChargePlan.transaction_id == transaction_id)
        .order_by(col(ChargePlan.id).desc())
    ).all()

