"""Tables of the actions: stations drivers reported broken, and card blocks still to reach a
station's local authorization list.

A :class:`StationFlag` is what operators see of a report (``GET
/api/v1/assistant/station-flags``); the conversation itself goes to the support desk as an
escalation. A :class:`LocalListPush` is one blocked card owed to one station: delivered at
once to a connected station, or when the station next connects (OCPP SendLocalList).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class StationFlagStatus(StrEnum):
    open = "open"
    resolved = "resolved"


class StationFlag(SQLModel, table=True):
    """A station drivers reported broken or damaged; one open flag per station, counting
    the reports, until an operator resolves it."""

    __tablename__ = "station_flag"

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", max_length=48, index=True)
    connector_id: int | None = None
    status: StationFlagStatus = Field(
        default=StationFlagStatus.open, sa_type=EnumText(StationFlagStatus), index=True)
    # The first reporter's own words, as they wrote them.
    description: str | None = Field(default=None, max_length=500)
    reports: int = 1
    # "driver:<id>" for a verified driver, else "anonymous".
    reported_by: str = Field(max_length=120)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_reported_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_by: str | None = Field(default=None, max_length=120)


class LocalListPush(SQLModel, table=True):
    """A card block owed to a station's local list; ``delivered_at`` once the station took
    it (or has no local list to update)."""

    __tablename__ = "local_list_push"
    __table_args__ = (Index("ix_local_list_push_station_id_delivered_at",
                            "station_id", "delivered_at"),)

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", max_length=48)
    id_tag: str = Field(max_length=20)
    requested_by: str = Field(max_length=120)
    reason: str = Field(max_length=300)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=300)
