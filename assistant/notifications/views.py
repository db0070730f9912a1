"""Notification endpoints: a driver's preferences, the operator's view of the outbox.

Drivers authenticate with their signed-in web chat token (``Authorization: Bearer <token>``
from ``/chat/verify/check``, which carries the driver); operators and agents with API keys.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field, model_validator

from assistant.channels.web import Chat
from assistant.notifications import service
from assistant.notifications.models import (
    NotificationChannel,
    NotificationKind,
    NotificationOutbox,
    OutboxStatus,
)
from chargedesk.auth import OperatorUser, SessionDep, StaffUser

router = APIRouter(tags=["notifications"])


class QuietHours(BaseModel):
    start: time = Field(description="Local time in Europe/Stockholm, e.g. 22:00")
    end: time = Field(description="Local time in Europe/Stockholm; before start: next day")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours must start and end at different times")
        return self


class PreferencesIn(BaseModel):
    """Fields left out keep their value; ``quiet_hours: null`` means none."""

    channel: NotificationChannel | None = None
    language: str | None = Field(default=None, pattern="^(sv|en)$")
    quiet_hours: QuietHours | None = None
    enabled: bool | None = None
    muted: list[NotificationKind] | None = None


class PreferencesOut(BaseModel):
    channel: NotificationChannel
    language: str
    quiet_hours: QuietHours | None
    time_zone: str = "Europe/Stockholm"
    enabled: bool
    muted: list[NotificationKind]
    kinds: list[NotificationKind] = Field(default_factory=lambda: list(NotificationKind))
    # False while the driver has the defaults.
    chosen: bool


def _out(prefs: service.Preferences) -> PreferencesOut:
    quiet = (QuietHours(start=prefs.quiet_start, end=prefs.quiet_end)
             if prefs.quiet_start is not None and prefs.quiet_end is not None else None)
    return PreferencesOut(channel=prefs.channel, language=prefs.language, quiet_hours=quiet,
                          enabled=prefs.enabled,
                          muted=[NotificationKind(k) for k in prefs.muted], chosen=prefs.chosen)


def _driver_id(chat: Any) -> int:
    if chat.driver_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "sign in to the chat first")
    return int(chat.driver_id)


@router.get("/api/v1/me/notification-preferences", response_model=PreferencesOut)
def my_preferences(chat: Chat, session: SessionDep) -> PreferencesOut:
    """How the signed-in driver hears from us (defaults until they choose)."""
    return _out(service.preferences(session, driver_id=_driver_id(chat)))


@router.put("/api/v1/me/notification-preferences", response_model=PreferencesOut)
def set_my_preferences(body: PreferencesIn, chat: Chat, session: SessionDep) -> PreferencesOut:
    """Change channel, language, quiet hours, or which notifications to get."""
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "quiet_hours":
            changes[name] = None if value is None else (value.start, value.end)
        elif value is not None:
            changes[name] = [k.value for k in value] if name == "muted" else value
    return _out(service.set_preferences(session, driver_id=_driver_id(chat), **changes))


class OutboxOut(BaseModel):
    id: int
    driver_id: int
    kind: NotificationKind
    subject: str
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    channel: str | None
    address: str | None
    language: str | None
    text: str | None
    note: str | None
    data: dict[str, Any]
    created_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, row: NotificationOutbox) -> OutboxOut:
        return cls.model_validate(row, from_attributes=True)


@router.get("/api/v1/notifications/outbox", response_model=list[OutboxOut])
def list_outbox(
    _: StaffUser, session: SessionDep,
    status_: Annotated[OutboxStatus | None, Query(alias="status")] = None,
    driver_id: int | None = None, kind: NotificationKind | None = None,
    before_id: int | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[OutboxOut]:
    """Notifications, newest first: what was said to whom, when, and why not if not."""
    rows = service.list_outbox(session, status=status_, driver_id=driver_id, kind=kind,
                               before_id=before_id, limit=limit)
    return [OutboxOut.of(row) for row in rows]


@router.get("/api/v1/notifications/outbox/summary")
def outbox_summary(_: StaffUser, session: SessionDep) -> dict[str, int]:
    """Notifications by status."""
    return service.outbox_counts(session)


@router.post("/api/v1/notifications/outbox/{outbox_id}/retry", response_model=OutboxOut)
def retry(outbox_id: int, _: OperatorUser, session: SessionDep) -> OutboxOut:
    """Send a failed notification again."""
    return OutboxOut.of(service.retry(session, outbox_id=outbox_id))
