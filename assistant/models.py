"""The assistant's tables: conversations (one per channel and sender), their event log, and
the escalations handed to the support desk.

A conversation keeps its current state in columns and JSON (slots, active form, language,
identity) so a turn needs one row to start; ``conversation_event`` is the ordered history in
Rasa's event format (``{"event": "user", ...}``), from which trackers and transcripts are built.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class Conversation(SQLModel, table=True):
    """One driver's conversation on one channel; a new session starts after idle expiry."""

    __tablename__ = "conversation"
    __table_args__ = (UniqueConstraint("channel", "sender"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    sender: str = Field(max_length=200)
    language: str = Field(default="sv", max_length=2)
    driver_id: int | None = Field(default=None, foreign_key="driver.id", index=True)
    verified: bool = False
    slots: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Bookkeeping of the dialogue engine that is not a slot: the message a form interrupted,
    # consecutive fallbacks, the last account question (for "and the one before that?").
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    active_loop: str | None = Field(default=None, max_length=80)
    paused: bool = False
    latest_intent: str | None = Field(default=None, max_length=80)
    latest_action: str | None = Field(default=None, max_length=80)
    # Sessions of this conversation so far; a new one starts when ``expires_at`` has passed.
    session_number: int = 1
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ConversationEvent(SQLModel, table=True):
    """One Rasa event of a conversation (user, bot, action, slot, active_loop, pause, ...)."""

    __tablename__ = "conversation_event"
    __table_args__ = (Index("ix_conversation_event_conversation_id_id", "conversation_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id")
    session_number: int = 1
    type: str = Field(max_length=40)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    timestamp: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class EscalationReason(StrEnum):
    asked = "asked"
    fallback = "fallback"
    dispute = "dispute"
    damage = "damage"
    action_failed = "action_failed"
    safety = "safety"


class EscalationStatus(StrEnum):
    open = "open"
    assigned = "assigned"
    resolved = "resolved"


class Escalation(SQLModel, table=True):
    """A conversation handed to a human, with what the agent needs to pick it up."""

    __tablename__ = "escalation"

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    reason: EscalationReason = Field(sa_type=EnumText(EscalationReason))
    intent: str | None = Field(default=None, max_length=80)
    slots: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # [{"from": "driver" | "bot", "text": ..., "at": ISO time}], oldest first.
    transcript: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False))
    # {"profile": ..., "sessions": [...], "invoices": [...], "station": ...}; empty for anonymous.
    driver_context: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: EscalationStatus = Field(
        default=EscalationStatus.open, sa_type=EnumText(EscalationStatus), index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
