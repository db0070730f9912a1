"""The notification tables: each driver's preferences, and the outbox of messages to them.

``notification_outbox`` is the queue and the record at once. A domain event becomes one row
keyed by (driver, kind, subject) — a transaction, an invoice, a plan — so an event delivered
twice, or a fact seen both on the bus and in the database, is one message. Whether and how it
goes out is decided when it is due, not when it is written: the driver's preferences of that
moment (channel, language, quiet hours, opt-outs), an SMS STOP, and whether it is still true
(a car that has since been unplugged needs no idle warning).
"""

from __future__ import annotations

from datetime import datetime, time
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class NotificationKind(StrEnum):
    session_started = "session_started"
    session_finished = "session_finished"
    session_suspended = "session_suspended"  # the car paused charging (SuspendedEV)
    station_faulted = "station_faulted"  # the station reported a fault during a session
    idle_warning = "idle_warning"  # the session is over, the cable is still connected
    low_balance = "low_balance"
    invoice_issued = "invoice_issued"
    debit_failed = "debit_failed"
    plan_confirmed = "plan_confirmed"
    plan_changed = "plan_changed"
    plan_cancelled = "plan_cancelled"


class NotificationChannel(StrEnum):
    sms = "sms"
    email = "email"
    web = "web"


class OutboxStatus(StrEnum):
    pending = "pending"  # due at next_attempt_at (later when held by quiet hours)
    sending = "sending"  # taken for an attempt; due again when the lease runs out (a crash)
    retrying = "retrying"  # an attempt failed; another is due at next_attempt_at
    sent = "sent"  # handed to the channel
    failed = "failed"  # gave up: attempts used up, or nowhere to send it
    suppressed = "suppressed"  # the driver opted out (of this kind, of all, or SMS STOP)
    obsolete = "obsolete"  # no longer true when due (the car left, the session ended)


class NotificationPreference(SQLModel, table=True):
    """How a driver wants to hear from us. A driver without a row gets the defaults
    (:func:`assistant.notifications.service.preferences`)."""

    __tablename__ = "notification_preference"

    driver_id: int = Field(foreign_key="driver.id", primary_key=True)
    channel: NotificationChannel = Field(sa_type=EnumText(NotificationChannel, 10))
    language: str = Field(max_length=2)
    # Local time in Europe/Stockholm; both None: no quiet hours. The end may be the next day.
    quiet_start: time | None = None
    quiet_end: time | None = None
    # False: no notifications at all.
    enabled: bool = True
    # Kinds the driver does not want (NotificationKind values).
    muted: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class NotificationOutbox(SQLModel, table=True):
    """One message to one driver about one thing."""

    __tablename__ = "notification_outbox"
    __table_args__ = (
        UniqueConstraint("driver_id", "kind", "subject", name="uq_notification_outbox_dedupe"),
        Index("ix_notification_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_notification_outbox_driver_id_id", "driver_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    driver_id: int = Field(foreign_key="driver.id")
    kind: NotificationKind = Field(sa_type=EnumText(NotificationKind, 30))
    # What it is about: a transaction id, an invoice id, "<invoice>:<failures>", ...
    subject: str = Field(max_length=64)
    # What the text is made from (amounts in öre, times in ISO 8601), captured at the event.
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: OutboxStatus = Field(default=OutboxStatus.pending, sa_type=EnumText(OutboxStatus))
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    attempts: int = 0
    # Filled in when it is due: where it went and what it said.
    channel: str | None = Field(default=None, max_length=10)
    address: str | None = Field(default=None, max_length=254)
    language: str | None = Field(default=None, max_length=2)
    text: str | None = Field(default=None, sa_column=Column(Text))
    # Why it is held, suppressed, obsolete or failed; the last error of a failed attempt.
    note: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NotificationCursor(SQLModel, table=True):
    """How far the scan of a billing table has read (invoices, dunning notices): facts
    written by invoice runs and bank-file imports, in this process or another."""

    __tablename__ = "notification_cursor"

    source: str = Field(primary_key=True, max_length=40)
    last_id: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
