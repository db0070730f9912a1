"""What the assistant (and the REST API) call to plan a charge: plan, show, cancel.

Each call names whose behalf it acts on: ``id_tags`` are the driver's cards, and a driver
can only plan, see or cancel a session started with one of them (or a child of one). Staff
pass ``id_tags=None``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session, col, select

from chargedesk.db import run_in_session
from chargedesk.errors import DomainError, NotFound
from load_manager import service
from load_manager.controller import LoadController
from load_manager.events import PlanChanged
from load_manager.models import ChargePlan, PlanStatus
from station_api.models import IdTag, MeterSample, Transaction


class NotYours(NotFound):
    """Reported as not found: a driver learns nothing about others' sessions."""


@dataclass(frozen=True, slots=True)
class PlanView:
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

    @classmethod
    def of(cls, plan: ChargePlan) -> PlanView:
        schedule = plan.schedule or {}
        return cls(
            id=plan.id or 0, transaction_id=plan.transaction_id, station_id=plan.station_id,
            connector_id=plan.connector_id, status=str(plan.status),
            departure_at=plan.departure_at, energy_wh=plan.energy_wh,
            expected_energy_wh=plan.expected_energy_wh, expected_cost_sek=plan.expected_cost_sek,
            explanation=dict(schedule.get("explanation", {})), finish=schedule.get("finish"),
            schedule=schedule,
        )


async def plan_charge(
    controller: LoadController,
    *,
    transaction_id: int,
    departure_at: datetime,
    energy_wh: int | None = None,
    target_soc: float | None = None,
    battery_kwh: float | None = None,
    requested_by: str,
    id_tags: Collection[str] | None,
) -> PlanView:
    """Plan ``energy_wh`` (or up to ``target_soc`` % of a ``battery_kwh`` battery) by
    ``departure_at``; the site is re-planned at once and the profile pushed."""
    plan = await run_in_session(
        controller.engine, _create, transaction_id=transaction_id, departure_at=departure_at,
        energy_wh=energy_wh, target_soc=target_soc, battery_kwh=battery_kwh,
        requested_by=requested_by, id_tags=id_tags,
    )
    site_id = await run_in_session(controller.engine, service.site_of_station,
                                   station_id=plan.station_id)
    if site_id is not None:
        await controller.rebalance(site_id)
    await controller.bus.publish(PlanChanged(plan_id=plan.id or 0, transaction_id=transaction_id,
                                             status=str(PlanStatus.active)))
    return await show_plan(controller, transaction_id=transaction_id, id_tags=id_tags)


async def show_plan(
    controller: LoadController, *, transaction_id: int, id_tags: Collection[str] | None
) -> PlanView:
    """The session's newest plan (active, finished or cancelled)."""
    return await run_in_session(controller.engine, _latest, transaction_id=transaction_id,
                                id_tags=id_tags)


async def cancel_plan(
    controller: LoadController, *, transaction_id: int, id_tags: Collection[str] | None
) -> PlanView:
    """Cancel the active plan: the session charges as the site's policy shares again."""
    view = await run_in_session(controller.engine, _cancel, transaction_id=transaction_id,
                                id_tags=id_tags)
    site_id = await run_in_session(controller.engine, service.site_of_station,
                                   station_id=view.station_id)
    if site_id is not None:
        await controller.rebalance(site_id)
    await controller.bus.publish(PlanChanged(plan_id=view.id, transaction_id=transaction_id,
                                             status=view.status))
    return view


def _own(session: Session, *, transaction_id: int, id_tags: Collection[str] | None
         ) -> Transaction:
    tx = session.get(Transaction, transaction_id)
    if tx is None:
        raise NotFound(f"session {transaction_id} not found")
    if id_tags is not None:
        tag = session.get(IdTag, tx.id_tag)
        owners = {tx.id_tag} | ({tag.parent_id_tag} if tag and tag.parent_id_tag else set())
        if not owners & set(id_tags):
            raise NotYours(f"session {transaction_id} not found")
    return tx


def _create(
    session: Session,
    *,
    transaction_id: int,
    departure_at: datetime,
    energy_wh: int | None,
    target_soc: float | None,
    battery_kwh: float | None,
    requested_by: str,
    id_tags: Collection[str] | None,
) -> ChargePlan:
    _own(session, transaction_id=transaction_id, id_tags=id_tags)
    if (energy_wh is None) == (target_soc is None):
        raise DomainError("give either energy_wh or target_soc (with battery_kwh)")
    if target_soc is not None:
        energy_wh = energy_for_soc(session, transaction_id=transaction_id,
                                   target_soc=target_soc, battery_kwh=battery_kwh)
    assert energy_wh is not None
    return service.create_plan(session, transaction_id=transaction_id,
                               departure_at=departure_at, energy_wh=energy_wh,
                               requested_by=requested_by)


def energy_for_soc(
    session: Session, *, transaction_id: int, target_soc: float, battery_kwh: float | None
) -> int:
    """Wh from the car's last reported state of charge up to ``target_soc`` percent."""
    if not 0 < target_soc <= 100:
        raise DomainError("target_soc is a percentage, above 0 and at most 100")
    if battery_kwh is None or not 1 <= battery_kwh <= 250:
        raise DomainError("a target state of charge needs battery_kwh (1-250)")
    latest = session.exec(
        select(MeterSample)
        .where(MeterSample.transaction_id == transaction_id, MeterSample.measurand == "SoC")
        .order_by(col(MeterSample.timestamp).desc())
    ).first()
    if latest is None or latest.value is None:
        raise DomainError("the car has not reported its state of charge: give energy_wh")
    soc = float(latest.value)
    if soc >= target_soc:
        raise DomainError(f"the car is already at {soc:.0f} %")
    return round((target_soc - soc) / 100 * battery_kwh * 1000)


def _latest(session: Session, *, transaction_id: int, id_tags: Collection[str] | None
            ) -> PlanView:
    _own(session, transaction_id=transaction_id, id_tags=id_tags)
    plans = service.plans_of_transaction(session, transaction_id=transaction_id)
    if not plans:
        raise NotFound(f"session {transaction_id} has no charge plan")
    return PlanView.of(plans[0])


def _cancel(session: Session, *, transaction_id: int, id_tags: Collection[str] | None
            ) -> PlanView:
    _own(session, transaction_id=transaction_id, id_tags=id_tags)
    plan = service.active_plan(session, transaction_id=transaction_id)
    if plan is None:
        raise NotFound(f"session {transaction_id} has no active charge plan")
    plan = service.cancel_plan(session, plan_id=plan.id or 0)
    assert plan.status == PlanStatus.cancelled
    return PlanView.of(plan)
