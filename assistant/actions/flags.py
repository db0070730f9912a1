"""Stations drivers reported broken: flagged for operators until one resolves the flag.

Plain keyword-only functions taking a session, like a domain's ``service.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from assistant.actions.models import StationFlag, StationFlagStatus
from assistant.models import Conversation
from chargedesk.errors import NotFound
from chargedesk.types import utcnow
from station_api import service as stations


def flag_station(
    session: Session, *, station_id: str, connector_id: int | None, description: str | None,
    reported_by: str, channel: str | None = None, sender: str | None = None,
) -> StationFlag:
    """Flag ``station_id`` as reported broken; a station already flagged counts one more
    report. Raises ``station_api.service.NotFound`` for an unknown station."""
    stations.get_station(session, station_id=station_id)
    conversation_id = None
    if channel and sender:
        conversation_id = session.exec(select(Conversation.id).where(
            Conversation.channel == channel, Conversation.sender == sender)).first()
    now = utcnow()
    flag = session.exec(select(StationFlag).where(
        StationFlag.station_id == station_id, StationFlag.status == StationFlagStatus.open)
        .with_for_update()).first()
    if flag is not None:
        flag.reports += 1
        flag.last_reported_at = now
        if flag.connector_id != connector_id:
            flag.connector_id = None  # reports about different connectors: the station
    else:
        flag = StationFlag(station_id=station_id, connector_id=connector_id,
                           description=(description or "").strip()[:500] or None,
                           reported_by=reported_by, conversation_id=conversation_id,
                           created_at=now, last_reported_at=now)
    session.add(flag)
    session.flush()
    return flag


def list_flags(session: Session, *, status: StationFlagStatus | None = StationFlagStatus.open
               ) -> Sequence[StationFlag]:
    """Flags, most recently reported first (only open ones unless told otherwise)."""
    query = select(StationFlag)
    if status is not None:
        query = query.where(StationFlag.status == status)
    return session.exec(query.order_by(col(StationFlag.last_reported_at).desc(),
                                       col(StationFlag.id).desc())).all()


def resolve_flag(session: Session, *, flag_id: int, resolved_by: str) -> StationFlag:
    """Close a flag (the station was repaired or the report was unfounded)."""
    flag = session.get(StationFlag, flag_id)
    if flag is None:
        raise NotFound(f"no station flag {flag_id}")
    if flag.status != StationFlagStatus.resolved:
        flag.status = StationFlagStatus.resolved
        flag.resolved_at = utcnow()
        flag.resolved_by = resolved_by
        session.add(flag)
        session.flush()
    return flag
