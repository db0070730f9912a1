"""Operator REST for what the actions leave behind: ``/api/v1/assistant/station-flags``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from assistant.actions import flags
from assistant.actions.models import StationFlagStatus
from chargedesk.auth import OperatorUser, SessionDep, StaffUser

router = APIRouter(prefix="/api/v1/assistant", tags=["assistant"])


class StationFlagOut(BaseModel):
    id: int
    station_id: str
    connector_id: int | None
    status: StationFlagStatus
    description: str | None
    reports: int
    reported_by: str
    conversation_id: int | None
    created_at: datetime
    last_reported_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None


@router.get("/station-flags", response_model=list[StationFlagOut])
def list_station_flags(
    session: SessionDep, _: StaffUser,
    status: StationFlagStatus | None = Query(  # noqa: B008
        StationFlagStatus.open, description="open (default) or resolved"),
) -> Any:
    """Stations drivers reported broken through the assistant, most recent report first;
    ``conversation_id`` leads to the escalation with the driver's conversation."""
    return flags.list_flags(session, status=status)


@router.post("/station-flags/{flag_id}/resolve", response_model=StationFlagOut)
def resolve_station_flag(flag_id: int, session: SessionDep, principal: OperatorUser) -> Any:
    """Close a flag: the station was repaired, or the report was unfounded."""
    return flags.resolve_flag(session, flag_id=flag_id, resolved_by=principal.label)
