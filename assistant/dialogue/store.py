"""Conversations: in this process's memory between turns, in the database after every turn.

A turn needs a conversation's current state (slots, active form, language, identity) and the
latest events of its session (the tracker the actions see). Reading them back from the
database every turn was most of a turn's cost, so :class:`ConversationCache` keeps the
snapshot the last turn left behind, and the database is read only for a conversation this
process has not seen (or evicted). Writing stays synchronous: :func:`save_turn` commits the
turn's state (one UPDATE of the conversation row) and its new events (one multi-row INSERT)
before the driver gets the answer, so a restart loses nothing the driver was told.

The cached copy is only as good as its version, the row's ``updated_at`` as this process last
wrote or read it. The save is guarded by it: when someone else changed the row in between
(an agent resumed the conversation from another process, a second process answered the same
sender), the turn's events are still appended, the row keeps that other writer's
``paused``, and the cached copy is dropped so the next turn starts from the database. Code
that changes a conversation outside a turn goes through this module (see
:func:`resume_conversation`), which drops the cached copy once its transaction commits.

Functions take a session and are keyword-only; :mod:`assistant.service` calls them through
:func:`chargedesk.db.run_in_session`. Statements are SQLAlchemy Core on the session's
connection: the ORM's unit of work costs more than these two tables' rows are worth.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, bindparam, event, insert, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from assistant.models import Conversation, ConversationEvent, Escalation, EscalationReason
from chargedesk.db import run_in_session
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

# Kept when a new session starts: who the driver is and the language they write in.
IDENTITY_SLOTS = ("driver_id", "verified", "id_tags", "language")
# Events of the current session handed to actions in the tracker (the latest ones).
TRACKER_EVENTS = 200
# A driver's id tags are read again after this long (a card added during a conversation).
ID_TAGS_TTL_S = 60.0
# Conversations kept in memory per database (each with up to TRACKER_EVENTS events, a few
# hundred kB at most); the least recently used go first, and any idle past their expiry.
CACHE_SIZE = 1000

_conversation = Conversation.__table__  # type: ignore[attr-defined]
_event = ConversationEvent.__table__  # type: ignore[attr-defined]

# Statements built once: building one costs more than running it here.
_BY_SENDER = core_select(_conversation).where(
    _conversation.c.channel == bindparam("channel"),
    _conversation.c.sender == bindparam("sender"))
_LATEST_EVENTS = (core_select(_event.c.data)
                  .where(_event.c.conversation_id == bindparam("row_id"),
                         _event.c.session_number == bindparam("session_number"))
                  .order_by(_event.c.id.desc()).limit(TRACKER_EVENTS))
_CREATE = insert(_conversation).returning(_conversation.c.id)
_TURN_COLUMNS = ("language", "slots", "state", "active_loop", "paused", "latest_intent",
                 "latest_action", "driver_id", "verified", "session_number", "updated_at",
                 "expires_at")
_SAVE = (update(_conversation)
         .where(_conversation.c.id == bindparam("row_id"))
         .values({name: bindparam(name) for name in _TURN_COLUMNS}))
_SAVE_GUARDED = _SAVE.where(_conversation.c.updated_at == bindparam("row_version"))
_CURRENT = (core_select(_conversation.c.id, _conversation.c.paused, _conversation.c.updated_at)
            .where(_conversation.c.id.in_(bindparam("row_ids", expanding=True))))
_APPEND = insert(_event)


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
    expires_at: datetime | None = None
    # The row's ``updated_at`` as last read or written: what the next save is guarded by.
    version: datetime | None = None
    # ``paused`` as the turn found it (a conflicting save keeps the other writer's change).
    paused_before: bool = False
    # When the driver's id tags were read (``time.monotonic()``), for ID_TAGS_TTL_S.
    id_tags_read: float = 0.0
    # Someone else changed the row since this snapshot was taken: don't cache it.
    stale: bool = False

    def record(self, event: dict[str, Any]) -> None:
        event.setdefault("timestamp", time.time())
        self.events.append(event)
        self.new_events.append(event)

    def saved(self, *, now: datetime, expiry: timedelta) -> None:
        """The turn is in the database, written at ``now``: the next one starts from here."""
        self.new_events = []
        self.new_session = False
        self.version = now
        self.expires_at = now + expiry
        self.paused_before = self.paused
        if len(self.events) > TRACKER_EVENTS:
            del self.events[:-TRACKER_EVENTS]


# ---------------------------------------------------------------- a turn's start


def load_conversation(
    session: Session, *, channel: str, sender: str, initial_slots: dict[str, Any],
    expiry: timedelta, identity: tuple[int, bool] | None = None, now: datetime | None = None,
) -> Snapshot:
    """The conversation of ``(channel, sender)`` from the database, created when new; an
    idle one starts a new session (slots back to their initial values except identity and
    language).

    ``identity`` is the channel's ``(driver_id, verified)``: it sets the identity slots and
    the driver's id tags.
    """
    now = now or utcnow()
    conn = session.connection()
    row = conn.execute(_BY_SENDER, {"channel": channel, "sender": sender}).first()
    if row is None:
        values = {"channel": channel, "sender": sender, "language": "sv",
                  "slots": dict(initial_slots), "state": {}, "verified": False,
                  "paused": False, "session_number": 1, "created_at": now,
                  "updated_at": now, "expires_at": now + expiry}
        conversation_id = conn.execute(_CREATE, values).scalar_one()
        snapshot = Snapshot(
            id=conversation_id, channel=channel, sender=sender, language="sv",
            slots=dict(initial_slots), state={}, active_loop=None, paused=False,
            latest_intent=None, latest_action=None, session_number=1,
            expires_at=now + expiry, version=now)
        _start_session(snapshot, initial_slots, first=True)
    else:
        events = conn.execute(_LATEST_EVENTS, {
            "row_id": row.id, "session_number": row.session_number}).scalars().all()
        snapshot = Snapshot(
            id=row.id, channel=channel, sender=sender, language=row.language,
            slots=dict(row.slots), state=dict(row.state), active_loop=row.active_loop,
            paused=row.paused, latest_intent=row.latest_intent,
            latest_action=row.latest_action, session_number=row.session_number,
            events=list(reversed(events)), expires_at=row.expires_at,
            version=row.updated_at)
        if snapshot.expires_at is not None and snapshot.expires_at <= now:
            _start_session(snapshot, initial_slots)
    if identity is not None:
        driver_id, verified = identity
        _identify(snapshot, driver_id=driver_id, verified=verified,
                  id_tags=id_tags(session, driver_id=driver_id))
        snapshot.id_tags_read = time.monotonic()
    snapshot.paused_before = snapshot.paused
    return snapshot


def _start_session(snapshot: Snapshot, initial_slots: dict[str, Any], *,
                   first: bool = False) -> None:
    if not first:
        kept = {k: snapshot.slots.get(k) for k in IDENTITY_SLOTS if k in snapshot.slots}
        snapshot.slots = {**initial_slots, **kept}
        snapshot.state = {}
        snapshot.active_loop = None
        snapshot.paused = False
        snapshot.latest_intent = None
        snapshot.latest_action = None
        snapshot.session_number += 1
        snapshot.events = []
    snapshot.new_session = True
    snapshot.record({"event": "session_started"})
    snapshot.record({"event": "action", "name": "action_session_start"})


def _identify(snapshot: Snapshot, *, driver_id: int, verified: bool,
              id_tags: list[str]) -> None:
    slots = snapshot.slots
    same_driver = slots.get("driver_id") == driver_id
    slots["driver_id"] = driver_id
    slots["verified"] = bool(verified or (same_driver and slots.get("verified")))
    slots["id_tags"] = id_tags


def id_tags(session: Session, *, driver_id: int) -> list[str]:
    """The id tags (RFID cards, app tokens) of a driver."""
    from billing_api.models import DriverIdTag

    rows = session.exec(select(DriverIdTag.id_tag).where(
        DriverIdTag.driver_id == driver_id)).all()
    return sorted(rows)


# ---------------------------------------------------------------- a turn's end


def save_turn(
    session: Session, *, snapshot: Snapshot, expiry: timedelta, now: datetime | None = None,
) -> None:
    """Write the turn's state and new events; the conversation expires ``expiry`` from now.

    The row is updated only if it is still the version the turn started from; when it is
    not, the turn is still recorded, the other writer's ``paused`` is kept, and the
    snapshot is marked stale.
    """
    now = now or utcnow()
    save_turns(session, turns=[(snapshot, expiry)], now=now)
    snapshot.saved(now=now, expiry=expiry)


def save_turns(session: Session, *, turns: list[tuple[Snapshot, timedelta]],
               now: datetime) -> None:
    """:func:`save_turn` for several conversations at once: one guarded UPDATE and one
    INSERT, each executed for many rows. The snapshots are not touched beyond ``paused``
    and ``stale``: call :meth:`Snapshot.saved` on each once the transaction committed."""
    conn = session.connection()
    guarded: list[dict[str, Any]] = []
    unguarded: list[dict[str, Any]] = []
    for snapshot, expiry in turns:
        values = _row_values(snapshot, expiry=expiry, now=now)
        (unguarded if snapshot.version is None else guarded).append(values)
    if unguarded:
        conn.execute(_SAVE, unguarded)
    if guarded and conn.execute(_SAVE_GUARDED, guarded).rowcount != len(guarded):
        _save_conflicts(conn, [s for s, _ in turns if s.version is not None], guarded, now)
    events = [
        {"conversation_id": snapshot.id, "session_number": snapshot.session_number,
         "type": str(e.get("event")), "data": e,
         "timestamp": datetime.fromtimestamp(e["timestamp"], UTC)}
        for snapshot, _ in turns for e in snapshot.new_events]
    if events:
        conn.execute(_APPEND, events)


def _row_values(snapshot: Snapshot, *, expiry: timedelta, now: datetime) -> dict[str, Any]:
    slots = snapshot.slots
    return {
        "row_id": snapshot.id, "row_version": snapshot.version,
        "language": snapshot.language, "slots": slots, "state": snapshot.state,
        "active_loop": snapshot.active_loop, "paused": snapshot.paused,
        "latest_intent": snapshot.latest_intent, "latest_action": snapshot.latest_action,
        "driver_id": slots.get("driver_id"), "verified": bool(slots.get("verified")),
        "session_number": snapshot.session_number, "updated_at": now,
        "expires_at": now + expiry}


def _save_conflicts(conn: Any, snapshots: list[Snapshot], values: list[dict[str, Any]],
                    now: datetime) -> None:
    """The rows the guarded UPDATE left alone (changed by someone else since the turn
    started): written anyway, keeping that writer's ``paused``; their snapshots are stale."""
    ids = [s.id for s in snapshots]
    rows = {row.id: row for row in conn.execute(_CURRENT, {"row_ids": ids})}
    for snapshot, row_values in zip(snapshots, values, strict=True):
        row = rows.get(snapshot.id)
        if row is None:
            raise LookupError(f"no conversation {snapshot.id}")
        if row.updated_at == now:
            continue  # written by the guarded UPDATE
        if row.paused != snapshot.paused_before:
            row_values["paused"] = snapshot.paused = row.paused
        conn.execute(_SAVE, row_values)
        snapshot.stale = True
        log.warning("conversation changed during a turn", conversation_id=snapshot.id)


class TurnWriter:
    """Group commit of turns: a turn that ends while the previous group is being written
    waits for the next, and every group is one hop to a database thread, one transaction
    and one commit. Each turn is answered only once its own group has committed.

    Under load this divides the per-transaction cost (the hop, the session, the commit and
    on PostgreSQL its WAL flush) between the turns that ended together; alone, a turn is
    written at once. One writer per engine and event loop: see :func:`writer_for`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: list[tuple[Snapshot, timedelta, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def save(self, snapshot: Snapshot, expiry: timedelta) -> None:
        """Write one turn (in the next group); returns when it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((snapshot, expiry, done))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        group: list[tuple[Snapshot, timedelta, asyncio.Future[None]]] = []
        try:
            while self._pending:
                group, self._pending = self._pending, []
                await self._write(group)
                group = []
        finally:
            self._task = None
            for _snapshot, _expiry, done in [*group, *self._pending]:  # only if cancelled
                if not done.done():
                    done.set_exception(RuntimeError("the turn writer was stopped"))
            self._pending = []

    async def _write(self, group: list[tuple[Snapshot, timedelta, asyncio.Future[None]]]
                     ) -> None:
        now = utcnow()
        try:
            await run_in_session(self.engine, save_turns,
                                 turns=[(s, expiry) for s, expiry, _ in group], now=now)
        except Exception as exc:
            if len(group) == 1:
                _settle(group, now, failed=exc)
                return
            # Not the others' fault: each turn again on its own, so only a bad one fails.
            for one in group:
                await self._write([one])
            return
        _settle(group, now)


def _settle(group: list[tuple[Snapshot, timedelta, asyncio.Future[None]]], now: datetime,
            failed: BaseException | None = None) -> None:
    for snapshot, expiry, done in group:
        if failed is None:
            snapshot.saved(now=now, expiry=expiry)
        if not done.done():
            if failed is None:
                done.set_result(None)
            else:
                done.set_exception(failed)


_writers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Engine, TurnWriter]] = (
    weakref.WeakKeyDictionary())


def writer_for(engine: Engine) -> TurnWriter:
    """The turn writer of ``engine`` on the running event loop."""
    per_loop = _writers.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    writer = per_loop.get(engine)
    if writer is None:
        writer = per_loop[engine] = TurnWriter(engine)
    return writer


# ---------------------------------------------------------------- in memory


class ConversationCache:
    """The snapshots turns left behind, per ``(channel, sender)``, least recently used
    evicted beyond ``size``. A snapshot is handed to one turn at a time (the service holds
    a lock per conversation) and put back only after that turn is saved."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def checkout(
        self, *, channel: str, sender: str, initial_slots: dict[str, Any], expiry: timedelta,
        identity: tuple[int, bool] | None = None, now: datetime | None = None,
    ) -> Snapshot | None:
        """The conversation ready for a turn, as :func:`load_conversation` would give it,
        or None when it has to come from the database (not here, or a driver whose id tags
        are due to be read)."""
        with self._lock:
            snapshot = self._entries.pop((channel, sender), None)
        if snapshot is None:
            return None
        if identity is not None:
            driver_id, verified = identity
            if (snapshot.slots.get("driver_id") != driver_id
                    or time.monotonic() - snapshot.id_tags_read > ID_TAGS_TTL_S):
                return None
            _identify(snapshot, driver_id=driver_id, verified=verified,
                      id_tags=snapshot.slots.get("id_tags") or [])
        now = now or utcnow()
        if snapshot.expires_at is not None and snapshot.expires_at <= now:
            _start_session(snapshot, initial_slots)
        snapshot.paused_before = snapshot.paused
        return snapshot

    def keep(self, snapshot: Snapshot) -> None:
        """Put a saved snapshot back for the conversation's next turn."""
        if snapshot.stale or snapshot.new_events:
            return
        key = (snapshot.channel, snapshot.sender)
        now = utcnow()
        with self._lock:
            self._entries[key] = snapshot
            self._entries.move_to_end(key)
            # The least recently used first: beyond the size, and those gone idle (their
            # next turn starts a new session, which the database serves as well).
            while self._entries:
                oldest = next(iter(self._entries.values()))
                if len(self._entries) <= self.size and (
                        oldest.expires_at is None or oldest.expires_at > now):
                    break
                self._entries.popitem(last=False)

    def forget(self, channel: str, sender: str) -> None:
        with self._lock:
            self._entries.pop((channel, sender), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_caches: weakref.WeakKeyDictionary[Engine, ConversationCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(engine: Engine) -> ConversationCache:
    """The conversation cache of one database (one per engine)."""
    cache = _caches.get(engine)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(engine)
            if cache is None:
                cache = _caches[engine] = ConversationCache()
    return cache


def forget_after_commit(session: Session, *, channel: str, sender: str) -> None:
    """Drop the cached copy of a conversation now and again when ``session`` commits, so
    its next turn reads what this transaction wrote."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    cache = cache_for(engine)
    cache.forget(channel, sender)
    event.listen(session, "after_commit",
                 lambda _session: cache.forget(channel, sender), once=True)


# ---------------------------------------------------------------- reading back


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


# ---------------------------------------------------------------- handing over


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
    now = utcnow()
    row.paused = False
    row.updated_at = now
    session.add(row)
    session.add(ConversationEvent(conversation_id=row.id or 0,
                                  session_number=row.session_number, type="resume",
                                  data={"event": "resume", "timestamp": now.timestamp()}))
    forget_after_commit(session, channel=channel, sender=sender)
    return row
