"""Conversations in the database: load (with session expiry), save a turn, escalate, resume.

Every function takes a session and is keyword-only; the engine calls them through
:func:`chargedesk.db.run_in_session` before and after a turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from sqlmodel import Session, col, select

from assistant.models import Conversation, ConversationEvent, Escalation, EscalationReason
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

# Kept when a new session starts: who the driver is and the language they write in.
IDENTITY_SLOTS = ("driver_id", "verified", "id_tags", "language")
# Events of the current session handed to actions in the tracker (the latest ones).
TRACKER_EVENTS = 200


@dataclass
class Snapshot:
    """A conversation as the engine works on it during one turn."""

    id: int
    channel: str
    sender: str
    language: str
    slots: dict[str, Any]
    state: dict[str, Any]
    active_loop: str | None
    paused: bool
    latest_intent: str | None
    latest_action: str | None
    session_number: int
    events: list[dict[str, Any]] = field(default_factory=list)
    new_events: list[dict[str, Any]] = field(default_factory=list)
    new_session: bool = False

    def record(self, event: dict[str, Any]) -> None:
        event.setdefault("timestamp", utcnow().timestamp())
        self.events.append(event)
        self.new_events.append(event)


def load_conversation(
    session: Session, *, channel: str, sender: str, initial_slots: dict[str, Any],
    expiry: timedelta, identity: tuple[int, bool] | None = None, now: datetime | None = None,
) -> Snapshot:
    """The conversation of ``(channel, sender)``, created when new; an idle one starts a new
    session (slots back to their initial values except identity and language).

    ``identity`` is the channel's ``(driver_id, verified)``: it sets the identity slots and
    the driver's id tags.
    """
    now = now or utcnow()
    row = session.exec(select(Conversation).where(
        Conversation.channel == channel, Conversation.sender == sender)).first()
    new_session = False
    if row is None:
        row = Conversation(channel=channel, sender=sender, slots=dict(initial_slots),
                           created_at=now, updated_at=now, expires_at=now + expiry)
        session.add(row)
        session.flush()
        new_session = True
    elif row.expires_at <= now:
        kept = {k: row.slots.get(k) for k in IDENTITY_SLOTS if k in row.slots}
        row.slots = {**initial_slots, **kept}
        row.state = {}
        row.active_loop = None
        row.paused = False
        row.latest_intent = None
        row.latest_action = None
        row.session_number += 1
        new_session = True
    if identity is not None:
        driver_id, verified = identity
        slots = dict(row.slots)
        same_driver = slots.get("driver_id") == driver_id
        slots["driver_id"] = driver_id
        slots["verified"] = bool(verified or (same_driver and slots.get("verified")))
        slots["id_tags"] = id_tags(session, driver_id=driver_id)
        row.slots = slots
    row.driver_id = row.slots.get("driver_id")
    row.verified = bool(row.slots.get("verified"))
    events = session.exec(
        select(ConversationEvent)
        .where(ConversationEvent.conversation_id == row.id,
               ConversationEvent.session_number == row.session_number)
        .order_by(col(ConversationEvent.id).desc()).limit(TRACKER_EVENTS)).all()
    snapshot = Snapshot(
        id=row.id or 0, channel=channel, sender=sender, language=row.language,
        slots=dict(row.slots), state=dict(row.state), active_loop=row.active_loop,
        paused=row.paused, latest_intent=row.latest_intent, latest_action=row.latest_action,
        session_number=row.session_number, events=[e.data for e in reversed(events)],
        new_session=new_session)
    if new_session:
        snapshot.record({"event": "session_started"})
        snapshot.record({"event": "action", "name": "action_session_start"})
    return snapshot


def id_tags(session: Session, *, driver_id: int) -> list[str]:
    """The id tags (RFID cards, app tokens) of a driver."""
    from billing_api.models import DriverIdTag

    rows = session.exec(select(DriverIdTag).where(DriverIdTag.driver_id == driver_id)).all()
    return sorted(r.id_tag for r in rows)


def save_turn(
    session: Session, *, snapshot: Snapshot, expiry: timedelta, now: datetime | None = None,
) -> None:
    """Write the turn's state and new events; the conversation expires ``expiry`` from now."""
    now = now or utcnow()
    row = session.get(Conversation, snapshot.id)
    if row is None:
        raise LookupError(f"no conversation {snapshot.id}")
    row.language = snapshot.language
    row.slots = snapshot.slots
    row.state = snapshot.state
    row.active_loop = snapshot.active_loop
    row.paused = snapshot.paused
    row.latest_intent = snapshot.latest_intent
    row.latest_action = snapshot.latest_action
    row.driver_id = snapshot.slots.get("driver_id")
    row.verified = bool(snapshot.slots.get("verified"))
    row.updated_at = now
    row.expires_at = now + expiry
    session.add(row)
    for event in snapshot.new_events:
        session.add(ConversationEvent(
            conversation_id=snapshot.id, session_number=snapshot.session_number,
            type=str(event.get("event")), data=event,
            timestamp=datetime.fromtimestamp(event["timestamp"], UTC)))
    snapshot.new_events = []


def get_conversation(session: Session, *, channel: str, sender: str) -> Conversation | None:
    """The conversation of ``(channel, sender)``, if there is one."""
    return session.exec(select(Conversation).where(
        Conversation.channel == channel, Conversation.sender == sender)).first()


def list_events(session: Session, *, conversation_id: int,
                types: tuple[str, ...] | None = None) -> list[ConversationEvent]:
    """A conversation's events, every session, oldest first (optionally only some types)."""
    query = select(ConversationEvent).where(ConversationEvent.conversation_id == conversation_id)
    if types:
        query = query.where(col(ConversationEvent.type).in_(types))
    return list(session.exec(query.order_by(col(ConversationEvent.id))).all())


def transcript(session: Session, *, conversation_id: int, limit: int = 100
               ) -> list[dict[str, Any]]:
    """What the driver and the bot said, oldest first: the last ``limit`` messages."""
    rows = list_events(session, conversation_id=conversation_id, types=("user", "bot"))
    lines = []
    for row in rows[-limit:]:
        line: dict[str, Any] = {"from": "driver" if row.type == "user" else "bot",
                                "text": row.data.get("text"), "at": row.timestamp.isoformat()}
        if row.type == "user":
            line["intent"] = (row.data.get("parse_data") or {}).get("intent", {}).get("name")
        lines.append(line)
    return lines


def driver_context(session: Session, *, driver_id: int | None, station_id: str | None,
                   settings: Settings) -> dict[str, Any]:
    """What an agent needs at a glance: profile, recent sessions and invoices, the station.

    Each part is best effort: a failure leaves it out rather than losing the escalation.
    """
    from billing_api import support

    context: dict[str, Any] = {}
    if driver_id is not None:
        try:
            driver = support.get_driver(session, driver_id=driver_id)
            context["profile"] = {
                "id": driver.id, "name": driver.name, "email": driver.email,
                "phone": driver.phone, "language": str(driver.language),
                "payment_method": str(driver.payment_method)}
            today = date.today()
            history = support.billing_history(
                session, driver_id=driver_id, since=today - timedelta(days=60),
                until=today + timedelta(days=1), settings=settings)
            context["sessions"] = [
                {"session_id": s.session_id, "station_id": s.station_id,
                 "connector_id": s.connector_id, "start_at": s.start_at.isoformat(),
                 "status": s.status, "energy_kwh": _text(s.energy_kwh),
                 "total_incl_vat": _text(s.total_incl_vat),
                 "invoice_number": s.invoice_number}
                for s in history.sessions[-10:]]
            context["invoices"] = _jsonable(history.invoices[-5:])
        except Exception:
            log.exception("driver context incomplete", driver_id=driver_id)
    if station_id:
        try:
            from station_api import service as stations

            station = stations.get_station(session, station_id=station_id)
            context["station"] = _jsonable(station.model_dump())
        except Exception:
            log.warning("station context unavailable", station_id=station_id)
    return context


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()
                if k not in ("password_hash", "auth_key", "secret")}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def record_escalation(
    session: Session, *, conversation_id: int, reason: EscalationReason | str,
    intent: str | None, slots: dict[str, Any], settings: Settings,
) -> Escalation:
    """An open escalation of a conversation, with its transcript and the driver's context."""
    try:
        reason = EscalationReason(reason)
    except ValueError:
        reason = EscalationReason.asked
    row = Escalation(
        conversation_id=conversation_id, reason=reason, intent=intent, slots=_jsonable(slots),
        transcript=transcript(session, conversation_id=conversation_id),
        driver_context=driver_context(session, driver_id=slots.get("driver_id"),
                                      station_id=slots.get("station_id"), settings=settings))
    session.add(row)
    session.flush()
    return row


def resume_conversation(session: Session, *, channel: str, sender: str) -> Conversation:
    """Give a paused conversation back to the bot (an agent is done)."""
    row = get_conversation(session, channel=channel, sender=sender)
    if row is None:
        raise LookupError(f"no conversation {channel}/{sender}")
    row.paused = False
    session.add(row)
    session.add(ConversationEvent(conversation_id=row.id or 0,
                                  session_number=row.session_number, type="resume",
                                  data={"event": "resume", "timestamp": utcnow().timestamp()}))
    return row
