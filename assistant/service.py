"""The assistant's entry point for every channel: one message in, the bot's messages out.

A channel calls :func:`handle_message` with its name, the sender's address on it and the
text; it gets Rasa REST-channel messages back, and every one is also published as
:class:`assistant.events.BotUttered` so channels with a socket can push later messages too.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from assistant.dialogue import domain as domain_module
from assistant.dialogue import policy as policy_module
from assistant.dialogue import store
from assistant.dialogue.engine import DialogueEngine, Turn, parse_payload
from assistant.events import BotUttered, ConversationEscalated
from chargedesk.db import run_in_session

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who a channel already knows the sender to be (a logged-in web user, a known phone)."""

    driver_id: int
    verified: bool
    via: str  # "web", "sms", "email", "voice"


# One turn at a time per conversation, so two quick messages don't overwrite each other.
_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary())


def _lock(channel: str, sender: str) -> asyncio.Lock:
    lock = _locks.get((channel, sender))
    if lock is None:
        lock = asyncio.Lock()
        _locks[(channel, sender)] = lock
    return lock


# What others add to a handoff turn (the support desk: when a person will answer, outside
# business hours): ``note(runtime, conversation, reason, intent)`` → messages. Kept per
# runtime; see :func:`add_handoff_note`.
HandoffNote = Callable[[Any, store.Snapshot, str, str | None],
                       Awaitable[list[dict[str, Any]]]]


def add_handoff_note(runtime: Any, note: HandoffNote) -> None:
    """Have ``note`` add messages to every turn that hands a conversation over."""
    notes: list[HandoffNote] | None = getattr(runtime, "handoff_notes", None)
    if notes is None:
        notes = []
        runtime.handoff_notes = notes
    notes.append(note)


async def _handoff_notes(runtime: Any, dialogue: DialogueEngine, turn: Turn) -> None:
    intent = turn.state.get("topic") or turn.conversation.latest_intent
    for note in getattr(runtime, "handoff_notes", ()):
        try:
            messages = await note(runtime, turn.conversation, str(turn.escalate), intent)
        except Exception:  # a note is a courtesy: the handoff goes on without it
            log.exception("handoff note failed")
            continue
        for message in messages:
            dialogue.send(turn, message, name="utter_handoff_note")


def parse(text: str, *, today: date) -> dict[str, Any]:
    """A quick-reply payload as is, anything else through the NLU."""
    payload = parse_payload(text)
    if payload is not None:
        return payload
    from assistant.nlu.engine import get_engine

    return get_engine().parse(text, today=today)


_nlu_loaded = False


async def _parse(text: str, *, today: date) -> dict[str, Any]:
    """:func:`parse` on the event loop once the NLU model is loaded (a parse is half a
    millisecond of Python, cheaper than a hop to a thread); the first, which may load or
    train the model, in a thread."""
    global _nlu_loaded
    if _nlu_loaded:
        return parse(text, today=today)
    parsed = await asyncio.to_thread(parse, text, today=today)
    _nlu_loaded = parse_payload(text) is None
    return parsed


async def handle_message(
    runtime: Any, *, channel: str, sender: str, text: str, identity: Identity | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Answer one message of ``sender`` on ``channel``: Rasa REST-channel messages.

    The conversation is loaded (a new session after idle expiry), the message parsed and run
    through the dialogue policies, the state and events saved; a handoff records an
    escalation. A paused conversation (handed to an agent) stores the message and returns [].
    """
    settings = runtime.settings
    expiry = timedelta(minutes=settings.conversation_expiry_minutes)
    domain = domain_module.get_domain()
    dialogue = DialogueEngine(domain=domain, policy=policy_module.get_policy(),
                              runtime=runtime)
    today = datetime.now(ZoneInfo(settings.time_zone)).date()
    who = None if identity is None else (identity.driver_id, identity.verified)
    conversations = store.cache_for(runtime.engine)
    async with _lock(channel, sender):
        # The state the last turn left in memory; the database only for one not seen here.
        snapshot = conversations.checkout(
            channel=channel, sender=sender, initial_slots=domain.initial_slots(),
            expiry=expiry, identity=who)
        if snapshot is None:
            snapshot = await run_in_session(
                runtime.engine, store.load_conversation, channel=channel, sender=sender,
                initial_slots=domain.initial_slots(), expiry=expiry, identity=who)
        parsed = await _parse(text, today=today)
        if metadata:
            parsed = {**parsed, "metadata": metadata}
        seed = f"{snapshot.id}:{snapshot.session_number}:{len(snapshot.events)}"
        turn = Turn(conversation=snapshot, parse=parsed, rng=random.Random(seed))
        await dialogue.handle(turn)
        if turn.escalate is not None:
            await _handoff_notes(runtime, dialogue, turn)
        # Saved before anyone hears the answer; a turn that fails leaves no cached copy.
        escalation = None
        if turn.escalate is None:
            await store.writer_for(runtime.engine).save(snapshot, expiry)
        else:
            escalation = await run_in_session(runtime.engine, _escalate, snapshot=snapshot,
                                              expiry=expiry, turn=turn, settings=settings)
        conversations.keep(snapshot)
    for message in turn.messages:
        await runtime.bus.publish(BotUttered(channel=channel, sender=sender, message=message))
    if escalation is not None:
        await runtime.bus.publish(ConversationEscalated(
            escalation_id=escalation, conversation_id=snapshot.id, channel=channel,
            sender=sender, reason=str(turn.escalate)))
    return turn.messages


def _escalate(session: Any, *, snapshot: store.Snapshot, expiry: timedelta, turn: Turn,
              settings: Any) -> int:
    """Save a turn that hands the conversation over, with its escalation."""
    store.save_turn(session, snapshot=snapshot, expiry=expiry)
    session.flush()
    intent = turn.state.get("topic") or snapshot.latest_intent
    row = store.record_escalation(session, conversation_id=snapshot.id,
                                  reason=str(turn.escalate), intent=intent,
                                  slots=snapshot.slots, settings=settings)
    log.info("conversation escalated", conversation_id=snapshot.id, reason=str(row.reason),
             escalation_id=row.id)
    return row.id or 0
