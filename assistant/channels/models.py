"""The Twilio channels' tables: every SMS in and out, who has opted out, and phone calls.

``sms_message`` is the message log and the idempotency record at once: Twilio's
``MessageSid`` is unique, so a webhook Twilio retries finds its row and is not processed
twice. Outbound rows are the delivery queue: a reply is written before it is sent, sent
through Twilio's API, and its status follows Twilio's delivery callbacks (retried with
backoff, then escalated to a person).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class SmsDirection(StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class SmsStatus(StrEnum):
    # Inbound: stored by the webhook, then taken by a worker and answered (or ignored).
    received = "received"
    processing = "processing"
    processed = "processed"
    ignored = "ignored"  # an opted-out sender, or an empty body: nothing to answer
    # Outbound: written, then handed to Twilio's API; Twilio's statuses follow.
    pending = "pending"
    submitting = "submitting"
    accepted = "accepted"
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    sent = "sent"
    delivered = "delivered"
    read = "read"
    undelivered = "undelivered"
    canceled = "canceled"
    # Both: an inbound message the assistant failed on, an outbound one Twilio gave up on.
    failed = "failed"
    retrying = "retrying"  # a failed attempt with another one due at ``next_attempt_at``
    escalating = "escalating"  # given up: a person is to be told
    escalated = "escalated"
    suppressed = "suppressed"  # never sent: the number has opted out


class SmsMessage(SQLModel, table=True):
    """One text message to or from a driver's phone."""

    __tablename__ = "sms_message"
    __table_args__ = (
        UniqueConstraint("message_sid", name="uq_sms_message_message_sid"),
        Index("ix_sms_message_phone_id", "phone", "id"),
        Index("ix_sms_message_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    direction: SmsDirection = Field(sa_type=EnumText(SmsDirection, 10))
    # Twilio's SM… id: the inbound message's, or the current attempt's of an outbound one.
    message_sid: str | None = Field(default=None, max_length=64)
    # The driver's number (E.164) and ours.
    phone: str = Field(max_length=32)
    our_number: str = Field(max_length=32)
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: SmsStatus = Field(sa_type=EnumText(SmsStatus))
    # An inbound opt-out keyword ("stop", "start", "help"), and whether Twilio answered it
    # itself (its default English keywords, or Advanced Opt-Out's, which set OptOutType).
    # Outbound: "stop" marks the one confirmation sent after an opt-out.
    keyword: str | None = Field(default=None, max_length=10)
    twilio_answered: bool = False
    # Outbound: the inbound message this answers, and its place among the reply's parts.
    reply_to_id: int | None = Field(default=None, foreign_key="sms_message.id")
    part: int = 1
    parts: int = 1
    encoding: str | None = Field(default=None, max_length=10)  # "GSM-7" or "UCS-2"
    segments: int | None = None
    # Inbound: the numbered choices its reply offered ([{"title", "payload"}]), so a reply
    # of "2" means the second one.
    options: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    media_urls: list[str] | None = Field(default=None, sa_column=Column(JSON))
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    error_code: int | None = None
    error_message: str | None = Field(default=None, max_length=500)
    escalation_id: int | None = Field(default=None, foreign_key="escalation.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SmsOptOut(SQLModel, table=True):
    """A phone number's answer to STOP and START: nothing is sent while ``opted_out``."""

    __tablename__ = "sms_opt_out"

    phone: str = Field(primary_key=True, max_length=32)
    opted_out: bool = True
    # The word that changed it ("STOP", "STOPP", "START", ...) or "twilio:21610".
    keyword: str = Field(max_length=30)
    changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class VoiceCall(SQLModel, table=True):
    """A phone call to the assistant: its language, the choices last offered, and the
    voicemail (and the escalation it went to) when the caller left one."""

    __tablename__ = "voice_call"
    __table_args__ = (
        UniqueConstraint("call_sid", name="uq_voice_call_call_sid"),
        UniqueConstraint("recording_sid", name="uq_voice_call_recording_sid"),
    )

    id: int | None = Field(default=None, primary_key=True)
    call_sid: str = Field(max_length=64)
    caller: str = Field(max_length=32)
    driver_id: int | None = Field(default=None, foreign_key="driver.id")
    # Caller ID is easy to forge: only a number with full STIR/SHAKEN attestation counts as
    # the driver's own phone; otherwise the driver is known but asked for a code.
    caller_verified: bool = False
    language: str = Field(default="sv", max_length=2)
    options: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    turns: int = 0
    # "bot", "dial" (put through to the support number), "voicemail", "ended".
    state: str = Field(default="bot", max_length=20)
    recording_sid: str | None = Field(default=None, max_length=64)
    recording_url: str | None = Field(default=None, max_length=500)
    recording_duration_s: int | None = None
    escalation_id: int | None = Field(default=None, foreign_key="escalation.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
