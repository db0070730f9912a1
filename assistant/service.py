"""The assistant's entry point for every channel: one message in, the bot's messages out.

A channel calls :func:`handle_message` with its name, the sender's address on it and the
text; it gets Rasa REST-channel messages back, and every one is also published as
:class:`assistant.events.BotUttered` so channels with a socket can push later messages too.
"""

from __future__ import annotations

import asyncio
import random
import weakref
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


def parse(text: str, *, today: date) -> dict[str, Any]:
    """A quick-reply payload as is, anything else through the NLU."""
    payload = parse_payload(text)
    if payload is not None:
        return payload
    from assistant.nlu.engine import get_engine

    return get_engine().parse(text, today=today)


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
    async with _lock(channel, sender):
        snapshot = await run_in_session(
            runtime.engine, store.load_conversation, channel=channel, sender=sender,
            initial_slots=domain.initial_slots(), expiry=expiry,
            identity=None if identity is None else (identity.driver_id, identity.verified))
        parsed = await asyncio.to_thread(parse, text, today=today)
        if metadata:
            parsed = {**parsed, "metadata": metadata}
        seed = f"{snapshot.id}:{snapshot.session_number}:{len(snapshot.events)}"
        turn = Turn(conversation=snapshot, parse=parsed, rng=random.Random(seed))
        await dialogue.handle(turn)
        escalation = await run_in_session(runtime.engine, _save, snapshot=snapshot,
                                          expiry=expiry, turn=turn, settings=settings)
    for message in turn.messages:
        await runtime.bus.publish(BotUttered(channel=channel, sender=sender, message=message))
    if escalation is not None:
        await runtime.bus.publish(ConversationEscalated(
            escalation_id=escalation, conversation_id=snapshot.id, channel=channel,
            sender=sender, reason=str(turn.escalate)))
    return turn.messages


def _save(session: Any, *, snapshot: store.Snapshot, expiry: timedelta, turn: Turn,
          settings: Any) -> int | None:
    store.save_turn(session, snapshot=snapshot, expiry=expiry)
    if turn.escalate is None:
        return None
    session.flush()
    intent = turn.state.get("topic") or snapshot.latest_intent
    row = store.record_escalation(session, conversation_id=snapshot.id, reason=turn.escalate,
                                  intent=intent, slots=snapshot.slots, settings=settings)
    log.info("conversation escalated", conversation_id=snapshot.id, reason=str(row.reason),
             escalation_id=row.id)
    return row.id
