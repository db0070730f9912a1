"""REST under ``/api/v1/load``: grid limits, wiring, priorities, live allocations and plans."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from chargedesk.auth import OperatorUser, SessionDep, StaffUser
from chargedesk.db import run_in_session
from load_manager import service, support
from load_manager.controller import Decision, LoadController
from load_manager.models import (
    AllocationState,
    ConnectorWiring,
    SiteGrid,
    SitePolicy,
    TagPriority,
)

router = APIRouter(prefix="/api/v1/load", tags=["load"])


def controller(request: Request) -> LoadController:
    return request.app.state.runtime.load


# ---------------------------------------------------------------- schemas


class GridIn(BaseModel):
    phase_limit_a: float | None = Field(None, gt=0, le=10_000)
    power_limit_kw: float | None = Field(None, gt=0, le=100_000)
    voltage_v: float = Field(230.0, ge=100, le=300)
    # The MPC the scheduling bench measures, unless the operator picks an allocator rule.
    policy: SitePolicy = SitePolicy.mpc
    enabled: bool = True


class ForecastPoint(BaseModel):
    starts_at: AwareDatetime
    l1_a: float = Field(ge=0)
    l2_a: float = Field(ge=0)
    l3_a: float = Field(ge=0)


class WiringIn(BaseModel):
    phases: int = Field(3, description="1 or 3")
    rotation: str = Field("RST", description="OCPP ConnectorPhaseRotation letters")
    max_current_a: float = Field(gt=0, le=80)
    min_current_a: float = Field(6.0, gt=0, le=80)


class PriorityIn(BaseModel):
    priority: int = Field(ge=-100, le=100)
    note: str | None = Field(None, max_length=200)


class PlanIn(BaseModel):
    transaction_id: int
    departure_at: AwareDatetime
    energy_wh: int | None = Field(None, gt=0, le=200_000)
    target_soc: float | None = Field(None, gt=0, le=100)
    battery_kwh: float | None = Field(None, ge=1, le=250)

    @model_validator(mode="after")
    def _one_need(self) -> PlanIn:
        if (self.energy_wh is None) == (self.target_soc is None):
            raise ValueError("give either energy_wh or target_soc with battery_kwh")
        return self


class LimitOut(BaseModel):
    station_id: str
    connector_id: int
    limit_a: float


class DecisionOut(BaseModel):
    site_id: str
    at: datetime
    available_phase_a: list[float | None]
    available_power_w: float | None
    limits: list[LimitOut]
    planned: list[LimitOut]
    fail_safe: list[tuple[str, int]]

    @classmethod
    def of(cls, decision: Decision) -> DecisionOut:
        def finite(value: float) -> float | None:
            return None if value == float("inf") else round(value, 2)

        return cls(
            site_id=decision.site_id, at=decision.at,
            available_phase_a=[finite(v) for v in decision.grid.phase_limit_a],
            available_power_w=decision.grid.power_limit_w,
            limits=[LimitOut(station_id=s, connector_id=c, limit_a=a)
                    for (s, c), a in sorted(decision.limits.items())],
            planned=[LimitOut(station_id=s, connector_id=c, limit_a=p.now_a)
                     for (s, c), p in sorted(decision.planned.items())],
            fail_safe=decision.fail_safe,
        )


class SiteLoadOut(BaseModel):
    grid: SiteGrid
    other_load_a: tuple[float, float, float]
    allocations: list[AllocationState]
    phase_use_a: list[float]
    fail_safe_stations: list[dict[str, Any]]
    last_decision: DecisionOut | None


class PlanOut(BaseModel):
    id: int
    transaction_id: int
    station_id: str
    connector_id: int
    status: str
    departure_at: datetime
    energy_wh: int
    expected_energy_wh: int | None
    expected_cost_sek: Decimal | None
    explanation: dict[str, str]
    finish: str | None
    schedule: dict[str, Any]


# ---------------------------------------------------------------- grid and wiring


@router.get("/sites", response_model=list[SiteGrid])
def list_sites(_: StaffUser, session: SessionDep) -> Any:
    """Sites under load management, with their limits and policy."""
    return service.list_site_grids(session)


@router.put("/sites/{site_id}/grid", response_model=SiteGrid)
async def set_grid(site_id: str, body: GridIn, _: OperatorUser, request: Request) -> Any:
    """Set a site's grid limit (A per phase and/or kW) and policy; rebalances at once."""
    grid = await run_in_session(request.app.state.runtime.engine, service.set_site_grid,
                                site_id=site_id, **body.model_dump())
    await controller(request).rebalance(site_id)
    return grid


@router.put("/sites/{site_id}/forecast")
async def set_forecast(
    site_id: str, points: Annotated[list[ForecastPoint], Body(max_length=10_000)],
    _: OperatorUser, request: Request,
) -> dict[str, int]:
    """Replace the forecast of other load from its first point on."""
    count = await run_in_session(
        request.app.state.runtime.engine, service.set_forecast, site_id=site_id,
        points=[(p.starts_at, p.l1_a, p.l2_a, p.l3_a) for p in points],
    )
    await controller(request).rebalance(site_id)
    return {"points": count}


@router.get("/sites/{site_id}", response_model=SiteLoadOut)
async def site_load(site_id: str, _: StaffUser, request: Request) -> Any:
    """Live state: limits, what each connector may draw, who is counted at maximum."""
    engine = request.app.state.runtime.engine
    snapshot = await run_in_session(engine, service.site_load, site_id=site_id)
    decision = controller(request).last_decision.get(site_id)
    snapshot["last_decision"] = None if decision is None else DecisionOut.of(decision)
    return snapshot


@router.post("/sites/{site_id}/rebalance", response_model=DecisionOut)
async def rebalance(site_id: str, _: OperatorUser, request: Request) -> Any:
    """Share the site's capacity now and send every connector its limit again."""
    engine = request.app.state.runtime.engine
    await run_in_session(engine, service.get_site_grid, site_id=site_id)
    decision = await controller(request).rebalance(site_id, refresh=True)
    if decision is None:
        raise service.InvalidSetting(f"load management of site {site_id} is disabled")
    return DecisionOut.of(decision)


@router.put("/connectors/{station_id}/{connector_id}/wiring", response_model=ConnectorWiring)
async def set_wiring(
    station_id: str, connector_id: int, body: WiringIn, _: OperatorUser, request: Request
) -> Any:
    """How a connector is wired (phases, rotation) and the current it allows."""
    row = await run_in_session(request.app.state.runtime.engine, service.set_wiring,
                               station_id=station_id, connector_id=connector_id,
                               **body.model_dump())
    await controller(request).request_for_station(station_id)
    return row


@router.post("/stations/{station_id}/steer", status_code=202)
async def steer_again(station_id: str, _: OperatorUser, request: Request) -> dict[str, str]:
    """Read a fail-safe station's capabilities again and, if it can, steer it again."""
    load = controller(request)
    engine = request.app.state.runtime.engine
    site_id = await run_in_session(engine, service.site_of_station, station_id=station_id)
    if site_id is None:
        raise service.InvalidSetting(f"station {station_id} is on no site")
    await run_in_session(engine, service.set_fail_safe, station_id=station_id, reason=None)
    await load.read_capability(station_id)
    await load.send_safe_default(station_id, site_id)
    await load.rebalance(site_id, refresh=True)
    reason = await run_in_session(engine, service.capability_reason, station_id=station_id)
    return {"station_id": station_id, "state": "fail safe" if reason else "steered",
            "reason": reason or ""}


@router.put("/tags/{id_tag}/priority", response_model=TagPriority)
def set_priority(id_tag: str, body: PriorityIn, _: OperatorUser, session: SessionDep) -> Any:
    """Priority of a card (or all cards under a parent tag) under the priority policy."""
    return service.set_tag_priority(session, id_tag=id_tag, priority=body.priority,
                                    note=body.note)


# ---------------------------------------------------------------- plans


@router.post("/plans", response_model=PlanOut, status_code=201)
async def create_plan(body: PlanIn, user: StaffUser, request: Request) -> Any:
    """Plan a session: this much energy (or state of charge) by the departure time."""
    return await support.plan_charge(
        controller(request), transaction_id=body.transaction_id,
        departure_at=body.departure_at, energy_wh=body.energy_wh, target_soc=body.target_soc,
        battery_kwh=body.battery_kwh, requested_by=user.label, id_tags=None,
    )


@router.get("/plans/{transaction_id}", response_model=PlanOut)
async def show_plan(transaction_id: int, _: StaffUser, request: Request) -> Any:
    """A session's newest plan with its explanation in English and Swedish."""
    return await support.show_plan(controller(request), transaction_id=transaction_id,
                                   id_tags=None)


@router.delete("/plans/{transaction_id}", response_model=PlanOut)
async def cancel_plan(transaction_id: int, _: StaffUser, request: Request) -> Any:
    """Cancel a session's active plan."""
    return await support.cancel_plan(controller(request), transaction_id=transaction_id,
                                     id_tags=None)
