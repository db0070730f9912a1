"""REST under ``/api/v1/billing`` for operators and agents: tariffs, drivers, sessions
(CDRs), wallets and their ledger, invoices and runs, mandates, bank files, disputes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from billing_api import service, support
from billing_api.models import TariffAssignment
from billing_api.tariffs import BillingInputError, parse_tariff
from chargedesk.auth import OperatorUser, SessionDep, StaffUser

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])


class TariffVersionOut(BaseModel):
    tariff_id: str
    version: int
    currency: str
    valid_from: datetime
    created_by: str
    created_at: datetime


class AssignmentIn(BaseModel):
    site_id: str | None = Field(default=None, max_length=48)
    station_id: str | None = Field(default=None, max_length=48)
    connector_id: int | None = Field(default=None, ge=1)
    driver_group: str | None = Field(default=None, max_length=40)
    valid_from: datetime | None = None


@router.post("/tariffs", response_model=TariffVersionOut, status_code=status.HTTP_201_CREATED)
def import_tariff(
    session: SessionDep,
    principal: OperatorUser,
    body: Annotated[
        bytes, Body(media_type="application/json", description="An OCPI 2.2.1 Tariff object")
    ],
    valid_from: datetime | None = None,
) -> Any:
    """Import an OCPI tariff as the next version of its id (from ``valid_from``, or now)."""
    try:
        tariff = parse_tariff(body)
    except BillingInputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return service.import_tariff(
        session, tariff=tariff, created_by=principal.label, valid_from=valid_from
    )


@router.get("/tariffs", response_model=list[TariffVersionOut])
def list_tariffs(session: SessionDep, _: StaffUser) -> Any:
    """The newest version of every tariff."""
    return service.list_tariffs(session)


@router.get("/tariffs/{tariff_id}/versions", response_model=list[TariffVersionOut])
def tariff_versions(tariff_id: str, session: SessionDep, _: StaffUser) -> Any:
    return service.tariff_versions(session, tariff_id=tariff_id)


@router.get(
    "/tariffs/{tariff_id}",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}},
)
def export_tariff(
    tariff_id: str, session: SessionDep, _: StaffUser, version: int | None = None
) -> Response:
    """The tariff as an OCPI 2.2.1 Tariff object (the version in force, or ``version``)."""
    row = service.tariff_version(session, tariff_id=tariff_id, version=version)
    return Response(row.body, media_type="application/json")


@router.post(
    "/tariffs/{tariff_id}/assignments",
    response_model=TariffAssignment,
    status_code=status.HTTP_201_CREATED,
)
def assign_tariff(
    tariff_id: str, body: AssignmentIn, session: SessionDep, principal: OperatorUser
) -> Any:
    """Apply a tariff to a connector, a station or the whole network, maybe for one group."""
    return service.assign_tariff(
        session, tariff_id=tariff_id, created_by=principal.label, **body.model_dump()
    )


@router.get("/stations/{station_id}/price")
def station_price(
    station_id: str,
    request: Request,
    session: SessionDep,
    _: StaffUser,
    connector_id: Annotated[int | None, Query(ge=1)] = None,
    driver_id: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """Everything a driver pays at this station now: energy, time, session and idle fees,
    VAT; for the driver's group when ``driver_id`` is given."""
    return support.price_now(session, station_id=station_id, connector_id=connector_id,
                             driver_id=driver_id, settings=request.app.state.runtime.settings)
