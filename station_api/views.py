"""REST under ``/api/v1/stations`` and the OCPP WebSocket endpoint."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, WebSocket, status
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool

from chargedesk.auth import OperatorUser, SessionDep, StaffUser
from station_api import service
from station_api.central import CentralSystem, InvalidCommand
from station_api.models import (
    CommandLog,
    CommandOutcome,
    Connector,
    IdTag,
    IdTagStatus,
    Registration,
    Site,
    Station,
    StatusEvent,
    UnknownStop,
)

router = APIRouter(prefix="/api/v1", tags=["stations"])
ocpp_router = APIRouter()


def central(request: Request) -> CentralSystem:
    return request.app.state.runtime.central


@ocpp_router.websocket("/ocpp/{station_id}")
async def ocpp_endpoint(websocket: WebSocket, station_id: str) -> None:
    await websocket.app.state.runtime.central.serve(websocket, station_id)


# ---------------------------------------------------------------- schemas


class ConnectorOut(BaseModel):
    connector_id: int
    status: str
    error_code: str
    info: str | None
    status_at: datetime


class StationOut(BaseModel):
    id: str
    site_id: str | None
    registration: Registration
    online: bool
    vendor: str | None
    model: str | None
    serial_number: str | None
    firmware_version: str | None
    last_heartbeat_at: datetime | None
    last_seen_at: datetime | None
    connectors: list[ConnectorOut]


class StationDetail(StationOut):
    charge_box_serial_number: str | None
    iccid: str | None
    imsi: str | None
    meter_type: str | None
    meter_serial_number: str | None
    last_boot_at: datetime | None
    firmware_status: str | None
    diagnostics_status: str | None
    created_at: datetime
    status_history: list[StatusEvent]


class StationCreate(BaseModel):
    id: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._:\-]+$")
    site_id: str | None = Field(default=None, max_length=48)
    password: str | None = Field(
        default=None,
        min_length=16,
        max_length=40,
        description="OCPP security profile 1 password (AuthorizationKey, 16-40 characters)",
    )
    insecure_no_password: bool = Field(
        default=False,
        description="Let the station connect without Basic auth (only for chargers that "
        "cannot do security profile 1)",
    )

    @model_validator(mode="after")
    def _password_or_explicit_opt_out(self) -> StationCreate:
        if self.password is None and not self.insecure_no_password:
            raise ValueError("give a password, or set insecure_no_password to allow none")
        return self


class TransactionOut(BaseModel):
    id: int
    station_id: str
    connector_id: int
    id_tag: str
    id_tag_status: str
    meter_start_wh: int
    meter_stop_wh: int | None
    energy_wh: int | None
    start_timestamp: datetime
    stop_timestamp: datetime | None
    stop_reason: str | None


class SampleOut(BaseModel):
    timestamp: datetime
    connector_id: int
    transaction_id: int | None
    measurand: str
    phase: str
    location: str
    context: str
    unit: str
    value: Decimal | None


class CommandOut(BaseModel):
    command_id: int | None
    station_id: str
    action: str
    outcome: CommandOutcome
    response: dict[str, Any] | None
    error: str | None
    latency_ms: float


class IdTagCreate(BaseModel):
    id_tag: str = Field(min_length=1, max_length=20)
    parent_id_tag: str | None = Field(default=None, max_length=20)
    expiry_date: datetime | None = None
    note: str | None = Field(default=None, max_length=200)


class IdTagUpdate(BaseModel):
    status: IdTagStatus | None = None
    expiry_date: datetime | None = None
    parent_id_tag: str | None = Field(default=None, max_length=20)


# ---------------------------------------------------------------- stations


def _station_out(station: Station, connectors: list[Connector], online: bool) -> dict[str, Any]:
    return {
        **station.model_dump(exclude={"password_hash", "online"}),
        "online": online,
        "connectors": [c.model_dump() for c in connectors],
    }


@router.get("/stations", response_model=list[StationOut])
def list_stations(request: Request, session: SessionDep, _: StaffUser) -> list[dict[str, Any]]:
    """Every station with its live connector status and last heartbeat."""
    stations = service.list_stations(session)
    by_station: dict[str, list[Connector]] = {}
    for c in service.list_connectors(session, station_ids=[s.id for s in stations]):
        by_station.setdefault(c.station_id, []).append(c)
    cs = central(request)
    return [_station_out(s, by_station.get(s.id, []), cs.is_online(s.id)) for s in stations]


@router.post("/stations", response_model=StationOut, status_code=status.HTTP_201_CREATED)
def register_station(body: StationCreate, session: SessionDep, _: OperatorUser) -> dict[str, Any]:
    station = service.register_station(session, station_id=body.id, password=body.password,
                                       site_id=body.site_id)
    return _station_out(station, [], False)


class SiteIn(BaseModel):
    id: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._:\-]+$")
    name: str = Field(min_length=1, max_length=120)
    address: str | None = Field(default=None, max_length=300)
    time_zone: str = Field(default="Europe/Stockholm", max_length=64)


class StationSite(BaseModel):
    site_id: str | None = Field(description="The site, or null to take the station off it")


@router.get("/sites", response_model=list[Site])
def list_sites(session: SessionDep, _: StaffUser) -> Any:
    return service.list_sites(session)


@router.post("/sites", response_model=Site, status_code=status.HTTP_201_CREATED)
def create_site(body: SiteIn, session: SessionDep, _: OperatorUser) -> Any:
    """A place with stations; its time zone drives tariffs' time-of-day rules there."""
    return service.create_site(session, site_id=body.id, name=body.name,
                               address=body.address, time_zone=body.time_zone)


@router.put("/stations/{station_id}/site", response_model=StationOut)
def move_station(station_id: str, body: StationSite, request: Request, session: SessionDep,
                 _: OperatorUser) -> dict[str, Any]:
    station = service.move_station(session, station_id=station_id, site_id=body.site_id)
    connectors = list(service.list_connectors(session, station_ids=[station_id]))
    return _station_out(station, connectors, central(request).is_online(station_id))


@router.get("/stations/{station_id}", response_model=StationDetail)
def station_detail(
    station_id: str, request: Request, session: SessionDep, _: StaffUser
) -> dict[str, Any]:
    station = service.get_station(session, station_id=station_id)
    connectors = list(service.list_connectors(session, station_ids=[station_id]))
    return {
        **_station_out(station, connectors, central(request).is_online(station_id)),
        "status_history": service.status_history(session, station_id=station_id),
    }


@router.post("/stations/{station_id}/approve", response_model=StationOut)
async def approve_station(
    station_id: str, request: Request, principal: OperatorUser
) -> dict[str, Any]:
    """Accept an auto-registered station; if connected it is asked to boot again now."""
    cs = central(request)
    station = await cs.db(service.approve_station, station_id=station_id)
    connection = cs.connections.get(station_id)
    if connection is not None:
        connection.registration = Registration.accepted
        await cs.send_command(
            station_id,
            "TriggerMessage",
            {"requestedMessage": "BootNotification"},
            requested_by=principal.label,
            reason="registration approved",
            timeout=10,
        )
    return _station_out(station, [], cs.is_online(station_id))


@router.post("/stations/{station_id}/decommission", response_model=StationOut)
async def decommission_station(
    station_id: str, request: Request, _: OperatorUser
) -> dict[str, Any]:
    """Take a station out of service and close its connection."""
    cs = central(request)
    station = await cs.db(service.decommission_station, station_id=station_id)
    await cs.disconnect(station_id, "decommissioned")
    return _station_out(station, [], False)


@router.get("/stations/{station_id}/transactions", response_model=list[TransactionOut])
def station_transactions(
    station_id: str,
    session: SessionDep,
    _: StaffUser,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    service.get_station(session, station_id=station_id)
    return [
        {**tx.model_dump(), "energy_wh": tx.energy_wh}
        for tx in service.list_transactions(
            session, station_id=station_id, active=active, limit=limit
        )
    ]


@router.get("/stations/{station_id}/meter-values", response_model=list[SampleOut])
def station_meter_values(
    station_id: str,
    session: SessionDep,
    _: StaffUser,
    transaction_id: int | None = None,
    measurand: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[Any]:
    service.get_station(session, station_id=station_id)
    return list(
        service.list_meter_samples(
            session,
            station_id=station_id,
            transaction_id=transaction_id,
            measurand=measurand,
            limit=limit,
        )
    )


@router.get("/stations/{station_id}/commands", response_model=list[CommandLog])
def station_commands(
    station_id: str,
    session: SessionDep,
    _: StaffUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandLog]:
    """The command audit trail, newest first."""
    return list(service.list_commands(session, station_id=station_id, limit=limit))


@router.get("/stations/{station_id}/unknown-stops", response_model=list[UnknownStop])
def station_unknown_stops(station_id: str, session: SessionDep, _: StaffUser) -> list[Any]:
    """StopTransactions for transactions we never saw, for investigation."""
    return list(service.list_unknown_stops(session, station_id=station_id))


@router.post("/stations/{station_id}/commands/{action}", response_model=CommandOut)
async def send_command(
    station_id: str,
    action: str,
    request: Request,
    principal: StaffUser,
    session: SessionDep,
    payload: Annotated[dict[str, Any], Body(default_factory=dict)],
    reason: Annotated[str | None, Query(max_length=500)] = None,
    timeout: Annotated[float | None, Query(gt=0, le=300)] = None,
) -> dict[str, Any]:
    """Send an OCPP 1.6 command; the body is the OCPP payload (camelCase fields).

    The answer gives the outcome (accepted, rejected, offline, timeout, error) and what the
    station said. An action or payload OCPP 1.6 does not allow is refused with 422.
    """
    # The request's own session (the API key check) is done with: give its connection
    # back before waiting for the station, which may take up to the command's timeout.
    await run_in_threadpool(session.commit)
    cs = central(request)
    if not cs.is_online(station_id):  # a connected station exists; spare the lookup
        await cs.db(service.get_station, station_id=station_id)
    try:
        result = await cs.send_command(
            station_id,
            action,
            payload,
            requested_by=principal.label,
            reason=reason,
            timeout=timeout,
        )
    except InvalidCommand as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return {
        "command_id": result.command_id,
        "station_id": station_id,
        "action": action,
        "outcome": result.outcome,
        "response": result.response,
        "error": result.error,
        "latency_ms": round(result.latency_ms, 3),
    }


# ---------------------------------------------------------------- id tags


@router.get("/id-tags", response_model=list[IdTag])
def list_id_tags(session: SessionDep, _: StaffUser) -> list[IdTag]:
    return list(service.list_id_tags(session))


@router.post("/id-tags", response_model=IdTag, status_code=status.HTTP_201_CREATED)
def create_id_tag(body: IdTagCreate, session: SessionDep, _: OperatorUser) -> IdTag:
    return service.create_id_tag(session, **body.model_dump())


@router.patch("/id-tags/{id_tag}", response_model=IdTag)
def update_id_tag(id_tag: str, body: IdTagUpdate, session: SessionDep, _: StaffUser) -> IdTag:
    """Block, expire or re-parent a tag (agents may block a lost card)."""
    return service.update_id_tag(session, id_tag=id_tag, **body.model_dump())
