"""Station tables and API schemas."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Numeric, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class Registration(StrEnum):
    accepted = "accepted"
    # Auto-registered, waiting for an operator's approval: boots are answered Pending.
    pending = "pending"
    decommissioned = "decommissioned"


class Site(SQLModel, table=True):
    """A place with stations: one address, one local time zone, one grid connection."""

    __tablename__ = "site"

    id: str = Field(primary_key=True, max_length=48)
    name: str = Field(max_length=120)
    address: str | None = Field(default=None, max_length=300)
    # IANA name: tariffs' time-of-day restrictions and what drivers are shown use it.
    time_zone: str = Field(default="Europe/Stockholm", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Station(SQLModel, table=True):
    __tablename__ = "station"

    id: str = Field(primary_key=True, max_length=48, description="OCPP charge point identity")
    site_id: str | None = Field(default=None, foreign_key="site.id", max_length=48, index=True)
    registration: Registration = Field(
        default=Registration.accepted, sa_type=EnumText(Registration)
    )
    password_hash: str | None = Field(default=None, max_length=200)
    vendor: str | None = Field(default=None, max_length=20)
    model: str | None = Field(default=None, max_length=20)
    serial_number: str | None = Field(default=None, max_length=25)
    charge_box_serial_number: str | None = Field(default=None, max_length=25)
    firmware_version: str | None = Field(default=None, max_length=50)
    iccid: str | None = Field(default=None, max_length=20)
    imsi: str | None = Field(default=None, max_length=20)
    meter_type: str | None = Field(default=None, max_length=25)
    meter_serial_number: str | None = Field(default=None, max_length=25)
    online: bool = False
    last_boot_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    diagnostics_status: str | None = Field(default=None, max_length=20)
    firmware_status: str | None = Field(default=None, max_length=30)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Connector(SQLModel, table=True):
    """Live state of a connector; connector 0 is the station as a whole."""

    __tablename__ = "connector"

    station_id: str = Field(foreign_key="station.id", primary_key=True, max_length=48)
    connector_id: int = Field(primary_key=True)
    status: str = Field(max_length=20)
    error_code: str = Field(default="NoError", max_length=30)
    info: str | None = Field(default=None, max_length=50)
    vendor_id: str | None = Field(default=None, max_length=255)
    vendor_error_code: str | None = Field(default=None, max_length=50)
    # The station's own timestamp of this status, so late messages cannot roll it back.
    status_at: datetime = Field(sa_type=UTCDateTime)


class StatusEvent(SQLModel, table=True):
    """Every StatusNotification, in the station's timestamp order."""

    __tablename__ = "status_event"
    # A StatusNotification re-sent after a lost connection is kept once.
    __table_args__ = (
        UniqueConstraint("station_id", "connector_id", "timestamp", "status", "error_code"),
    )

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", index=True, max_length=48)
    connector_id: int
    status: str = Field(max_length=20)
    error_code: str = Field(max_length=30)
    info: str | None = Field(default=None, max_length=50)
    vendor_id: str | None = Field(default=None, max_length=255)
    vendor_error_code: str | None = Field(default=None, max_length=50)
    timestamp: datetime = Field(sa_type=UTCDateTime, index=True)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class IdTagStatus(StrEnum):
    accepted = "Accepted"
    blocked = "Blocked"
    expired = "Expired"
    invalid = "Invalid"


class IdTag(SQLModel, table=True):
    __tablename__ = "id_tag"

    id_tag: str = Field(primary_key=True, max_length=20)
    status: IdTagStatus = Field(default=IdTagStatus.accepted, sa_type=EnumText(IdTagStatus))
    expiry_date: datetime | None = Field(default=None, sa_type=UTCDateTime)
    parent_id_tag: str | None = Field(default=None, max_length=20)
    note: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Transaction(SQLModel, table=True):
    """A charging transaction; its id is the OCPP transactionId."""

    __tablename__ = "transaction"
    # A station that retries StartTransaction resends the same four fields.
    __table_args__ = (
        UniqueConstraint("station_id", "connector_id", "id_tag", "start_timestamp"),
    )

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", index=True, max_length=48)
    connector_id: int
    id_tag: str = Field(max_length=20, index=True)
    id_tag_status: str = Field(max_length=20)
    reservation_id: int | None = None
    meter_start_wh: int
    start_timestamp: datetime = Field(sa_type=UTCDateTime)
    meter_stop_wh: int | None = None
    stop_timestamp: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stop_reason: str | None = Field(default=None, max_length=20)
    stop_id_tag: str | None = Field(default=None, max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    @property
    def energy_wh(self) -> int | None:
        if self.meter_stop_wh is None:
            return None
        return self.meter_stop_wh - self.meter_start_wh


class MeterSample(SQLModel, table=True):
    """One sampled value, normalised to its base unit (Wh, W, A, V, varh, var, %, ...)."""

    __tablename__ = "meter_sample"
    # Retried or re-sent MeterValues and transactionData must not count twice.
    __table_args__ = (
        UniqueConstraint(
            "station_id", "connector_id", "timestamp", "measurand", "phase", "location",
            "context",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", max_length=48)
    connector_id: int
    transaction_id: int | None = Field(default=None, index=True)
    timestamp: datetime = Field(sa_type=UTCDateTime, index=True)
    measurand: str = Field(max_length=50)
    # Empty string rather than NULL so the unique constraint holds on every backend.
    phase: str = Field(default="", max_length=10)
    location: str = Field(default="Outlet", max_length=10)
    context: str = Field(default="Sample.Periodic", max_length=30)
    unit: str = Field(max_length=20)
    value: Decimal | None = Field(default=None, sa_column=Column(Numeric(20, 6)))
    raw_value: str = Field(max_length=2500)
    format: str = Field(default="Raw", max_length=20)


class UnknownStop(SQLModel, table=True):
    """A StopTransaction for a transaction we never saw, kept for investigation."""

    __tablename__ = "unknown_stop"

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(max_length=48, index=True)
    transaction_id: int
    id_tag: str | None = Field(default=None, max_length=20)
    meter_stop_wh: int
    timestamp: datetime = Field(sa_type=UTCDateTime)
    reason: str | None = Field(default=None, max_length=20)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CommandOutcome(StrEnum):
    accepted = "accepted"
    rejected = "rejected"
    offline = "offline"
    timeout = "timeout"
    # The station answered with a CALLERROR.
    error = "error"
    # We refused to send it: the payload failed OCPP schema validation.
    invalid = "invalid"


class CommandLog(SQLModel, table=True):
    """Audit trail of every remote command: who, why, what, outcome, latency."""

    __tablename__ = "command_log"

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(max_length=48, index=True)
    action: str = Field(max_length=40)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    requested_by: str = Field(max_length=120)
    reason: str | None = Field(default=None, max_length=500)
    outcome: CommandOutcome = Field(sa_type=EnumText(CommandOutcome))
    response: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error: str | None = Field(default=None, max_length=1000)
    requested_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    latency_ms: float | None = None
