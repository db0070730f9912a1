"""Model-predictive control of planned sessions: the site's plans as one LP, re-solved on
every event, turned into amps for now and a profile for the next slots.

A slot's power becomes a pilot by :func:`load_manager.dispatch.plan_current` (0 or at least
the minimum, in whole amperes), the rounding the scheduling bench measures.

Planned cars are served before the others, so the LP sees the site's capacity minus the
fail-safe and other load, minus the minimum current of every unplanned car that is charging
(they must be able to go on). What the LP leaves is shared by the site's real-time policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session

from chargedesk.settings import Settings
from load_manager import lp, prices, service
from load_manager.dispatch import STEP_A, plan_current
from load_manager.service import ActiveConnector, SiteState

Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ConnectorPlan:
    """One planned connector's share of the solution."""

    plan_id: int
    # Amps per phase the plan wants in the current slot (the real-time cap).
    now_a: float
    # (seconds from now, A) for the following slots: the rest of the pushed profile.
    periods_a: list[tuple[int, float]]
    schedule: dict[str, Any]
    expected_energy_wh: int
    expected_cost_sek: Decimal | None


def plan_site(state: SiteState, *, now: datetime, settings: Settings) -> dict[Key, ConnectorPlan]:
    """Solve every active plan of the site together and split the result per connector."""
    from load_manager.controller import grid_of  # the same grid the allocator shares

    planned = [c for c in state.active if c.plan is not None]
    if not planned:
        return {}
    minutes = settings.load_plan_slot_minutes
    latest = max(c.plan.departure_at for c in planned if c.plan is not None)
    slots = max(1, math.ceil((latest - now).total_seconds() / (minutes * 60)))
    grid = grid_of(state)
    voltage = grid.voltage_v
    reserve = [0.0, 0.0, 0.0]
    for connector in state.active:
        if connector.plan is None:
            for phase in connector.wiring.site_phases(connector.vehicle_phases):
                reserve[phase] += connector.wiring.min_current_a
    phase_kw = [max(0.0, limit - r) * voltage / 1000
                for limit, r in zip(grid.phase_limit_a, reserve, strict=True)]
    total_kw = sum(phase_kw)
    if grid.power_limit_w is not None:
        total_kw = min(total_kw, max(0.0, grid.power_limit_w / 1000 - voltage * sum(reserve)
                                     / 1000))
    phase_rows = None
    if all(math.isfinite(p) for p in phase_kw):
        phase_rows = [[p] * slots for p in phase_kw]
    vehicles = [_vehicle(c, now=now, minutes=minutes, voltage=voltage) for c in planned]
    slot_prices = prices_for(settings, now, slots, minutes, zone=state.time_zone)
    problem = lp.Problem(
        slot_minutes=minutes, capacity_kw=[total_kw if math.isfinite(total_kw) else 1e6] * slots,
        vehicles=vehicles, prices=slot_prices, phase_capacity_kw=phase_rows,
    )
    solution = lp.solve(problem)
    zone = ZoneInfo(state.time_zone)
    result = {}
    for connector, vehicle in zip(planned, vehicles, strict=True):
        assert connector.plan is not None and connector.plan.id is not None
        row = solution.row(vehicle.key)
        amps = [plan_current(float(kw), phases=len(vehicle.phases), voltage_v=voltage,
                             min_a=connector.wiring.min_current_a, step_a=STEP_A)
                for kw in row]
        facts = {
            language: lp.explain(solution, vehicle.key, now.astimezone(zone), minutes,
                                 slot_prices, language)
            for language in ("en", "sv")
        }
        english = facts["en"]
        result[vehicle.key] = ConnectorPlan(
            plan_id=connector.plan.id, now_a=amps[0],
            periods_a=[(int(i * minutes * 60), a) for i, a in enumerate(amps) if i],
            schedule={
                "start": now.isoformat(), "slot_minutes": minutes,
                "kw": [round(float(kw), 3) for kw in row],
                "price_sek_per_kwh": [round(p, 4) for p in slot_prices],
                "explanation": {language: f.sentence for language, f in facts.items()},
                "finish": None if english.finish is None else english.finish.isoformat(),
                "requested_kwh": round(vehicle.energy_kwh, 3),
            },
            # What the car will have had by departure: delivered so far plus the plan.
            expected_energy_wh=(connector.delivered_wh or 0)
            + round(float(row.sum()) * minutes / 60 * 1000),
            expected_cost_sek=english.cost_sek,
        )
    return result


@lru_cache(maxsize=4)
def _series(path: Path) -> prices.PriceSeries:
    return prices.load_series(path)


@lru_cache(maxsize=4)
def _profile(path: Path, zone: str) -> tuple[float, ...]:
    return prices.hour_of_week_profile(_series(path), zone)


def prices_for(settings: Settings, start: datetime, slots: int, minutes: int, *, zone: str,
               ) -> list[float]:
    """SEK/kWh for each slot from ``start``: the series' own hours, or (only when the
    settings say the series repeats weekly) its mean price of the same local hour of week."""
    series = _series(settings.price_series)
    starts = [start + timedelta(minutes=k * minutes) for k in range(slots)]
    try:
        return [series.price_at(at) for at in starts]
    except prices.MissingPriceError:
        if not settings.price_series_repeats_weekly:
            raise
    profile = _profile(settings.price_series, zone)
    local = ZoneInfo(zone)
    return [profile[prices.hour_of_week(at.astimezone(local))] for at in starts]


def _vehicle(connector: ActiveConnector, *, now: datetime, minutes: int, voltage: float,
             ) -> lp.Vehicle:
    plan = connector.plan
    assert plan is not None
    phases = connector.wiring.site_phases(connector.vehicle_phases)
    # The car leaves at departure: only whole slots before it can be planned.
    departure = max(1, math.floor((plan.departure_at - now) / timedelta(minutes=minutes)))
    needed_wh = max(0, plan.energy_wh - (connector.delivered_wh or 0))
    return lp.Vehicle(
        key=(connector.station_id, connector.connector_id), arrival_slot=0,
        departure_slot=departure, energy_kwh=needed_wh / 1000,
        max_kw=connector.wiring.max_current_a * voltage * len(phases) / 1000, phases=phases,
    )


def store_solutions(session: Session, *, plans: dict[Key, ConnectorPlan]) -> None:
    for plan in plans.values():
        service.record_plan_solution(
            session, plan_id=plan.plan_id, schedule=plan.schedule,
            expected_energy_wh=plan.expected_energy_wh,
            expected_cost_sek=plan.expected_cost_sek,
        )
