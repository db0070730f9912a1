"""The SMS channel: Twilio's incoming-message webhook in, replies through Twilio's API out.

``POST /webhooks/twilio/sms`` does little while Twilio waits: check the signature, insert
the message keyed by its ``MessageSid`` (a retry of the same message finds the row and gets
the same empty TwiML answer, processed once), hand its id to a worker, answer. The worker
takes the sender's messages in order, answers keywords, and asks the assistant
(:func:`assistant.service.handle_message`, channel ``sms``, the sender's number); the
replies are written to ``sms_message`` first and then sent with the official client's
``messages.create`` (with a status callback), so an action that takes a while answers when
it is done, and a crash loses no reply.

- A sender whose number is on exactly one driver's account is that driver (SMS from a
  number is the possession of that phone: verified). Others verify with a one-time code
  when they ask about an account.
- Quick-reply buttons become numbered lines; answering "2" picks the second.
- Long replies are split (:mod:`.segments`).
- Keywords, whole message, any case. Twilio's own (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END,
  QUIT, REVOKE, OPTOUT; START, YES, UNSTOP; HELP, INFO) are answered by Twilio, which also
  blocks an opted-out number; Swedish ones are not Twilio defaults (only with Advanced
  Opt-Out, which then sends ``OptOutType``), so STOPP, AVSLUTA, STARTA and HJÄLP are
  confirmed by us. Every opt-out and opt-in is stored; nothing is sent to an opted-out
  number but the one confirmation. HELP always gets our help text (who we are, how to reach
  a person, how to stop): Twilio's default one says neither.
- ``POST /webhooks/twilio/sms/status`` follows each outbound message. ``failed`` or
  ``undelivered`` with a transient error (handset off, queue overflow, unknown) is sent
  again after :data:`RETRY_DELAYS_S`; a permanent error, or the last attempt failing,
  becomes an escalation of the conversation (``action_failed``) so a person reaches the
  driver another way. Error 21610 (the recipient opted out at Twilio) is stored as an
  opt-out, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select
from twilio.base.exceptions import TwilioRestException
from twilio.twiml.messaging_response import MessagingResponse

from assistant import contacts
from assistant.channels.models import SmsDirection, SmsMessage, SmsOptOut, SmsStatus
from assistant.channels.twilio.common import (
    TWIML_TYPE,
    TwilioConfig,
    find_driver,
    make_client,
    signed_form,
)
from assistant.channels.twilio.segments import segments, split_message
from assistant.events import ConversationEscalated
from assistant.models import Conversation
from billing_api.models import Driver
from chargedesk.db import run_in_session
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)
# The twilio client logs every request and response at INFO; we log outcomes ourselves.
_api_log = logging.getLogger(f"{__name__}.api")
_api_log.setLevel(logging.WARNING)

CHANNEL = "sms"
ROUTE = "/webhooks/twilio/sms"
STATUS_ROUTE = "/webhooks/twilio/sms/status"
EMPTY_TWIML = str(MessagingResponse())

# Twilio's default keywords (answered and enforced by Twilio on long codes and toll-free).
TWILIO_STOP = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
                         "OPTOUT"})
TWILIO_START = frozenset({"START", "YES", "UNSTOP"})
TWILIO_HELP = frozenset({"HELP", "INFO"})
# Swedish ones, which Twilio does not know: we confirm them ourselves.
SWEDISH_STOP = frozenset({"STOPP", "AVSLUTA", "AVREGISTRERA"})
SWEDISH_START = frozenset({"STARTA"})
SWEDISH_HELP = frozenset({"HJÄLP"})
SWEDISH = SWEDISH_STOP | SWEDISH_START | SWEDISH_HELP
OPT_OUT_TYPES = {"STOP": "stop", "START": "start", "HELP": "help"}
# The ``keyword`` of an outbound text carrying a one-time code.
CODE_KEYWORD = "code"

# Sends of one message: the first, then one after each delay (seconds).
RETRY_DELAYS_S: tuple[float, ...] = (60.0, 300.0)
# Twilio delivery errors worth another try: queue overflow, handset unreachable, unknown
# error, missing segment. Others (landline, unknown number, blocked, filtered) are final.
RETRYABLE_ERRORS = frozenset({30001, 30003, 30008, 30009})
OPTED_OUT_ERROR = 21610
API_TIMEOUT_S = 15.0
# A status callback can arrive before the API's answer (its sid) is written: look again.
STATUS_LOOKUP_WAITS_S = (0.2, 0.5, 1.0)
SWEEP_S = 5.0
# Messages answered at once; the rest wait their turn. In a burst of webhooks (at least
# BUSY_PER_S in the last second) one at a time, at most one started per
# BUSY_TURN_INTERVAL_S: taking the webhooks in comes first, the answers follow.
TURNS_IN_FLIGHT = 4
BUSY_PER_S = 50
BUSY_TURN_INTERVAL_S = 0.05
# Most webhook messages written in one statement.
INTAKE_BATCH = 200
# An inbound message still unprocessed after this (a crash) is taken up again.
STALE_AFTER = timedelta(minutes=2)

STATUS_RANK = {
    SmsStatus.pending: 0, SmsStatus.submitting: 1, SmsStatus.accepted: 2,
    SmsStatus.scheduled: 2, SmsStatus.queued: 3, SmsStatus.sending: 4, SmsStatus.sent: 5,
    SmsStatus.delivered: 6, SmsStatus.read: 7,
}
SETTLED = frozenset({SmsStatus.retrying, SmsStatus.escalating, SmsStatus.escalated,
                     SmsStatus.suppressed, SmsStatus.failed, SmsStatus.canceled})

_sms = SmsMessage.__table__  # type: ignore[attr-defined]
_opt = SmsOptOut.__table__  # type: ignore[attr-defined]
_DIGITS = re.compile(r"^\s*(\d{1,2})\s*[.)]?\s*$")

TEXTS = {
    "stop": {
        "sv": "Du får inga fler sms från ChargeDesk. Svara START om du vill ha sms igen.",
        "en": "You will get no more texts from ChargeDesk. Reply START to get texts again.",
    },
    "start": {
        "sv": "Välkommen tillbaka! Du får sms från ChargeDesk igen. Svara STOPP för att sluta.",
        "en": "Welcome back! You will get texts from ChargeDesk again. Reply STOP to stop.",
    },
    "help": {
        "sv": "ChargeDesk laddsupport: skriv din fråga här så svarar vi.{call} "
              "Svara STOPP för att inte få fler sms.",
        "en": "ChargeDesk charging support: write your question here and we'll answer.{call} "
              "Reply STOP to get no more texts.",
    },
    "call": {"sv": " Ring {number} för att tala med en person.",
             "en": " Call {number} to talk to a person."},
    "choose": {"sv": "Svara med siffran för ditt val.",
               "en": "Reply with the number of your choice."},
}


# ---------------------------------------------------------------- keywords and rendering


def keyword(body: str, opt_out_type: str | None) -> tuple[str | None, bool]:
    """The keyword a message is (``"stop"``, ``"start"``, ``"help"`` or None) and whether
    Twilio answered it itself."""
    if opt_out_type and opt_out_type.upper() in OPT_OUT_TYPES:
        return OPT_OUT_TYPES[opt_out_type.upper()], True
    word = body.strip().rstrip(".!").strip().upper()
    if word in TWILIO_STOP:
        return "stop", True
    if word in TWILIO_START:
        return "start", True
    if word in TWILIO_HELP:
        return "help", True
    if word in SWEDISH_STOP:
        return "stop", False
    if word in SWEDISH_START:
        return "start", False
    if word in SWEDISH_HELP:
        return "help", False
    return None, False


def render(messages: list[dict[str, Any]], language: str) -> tuple[str, list[dict[str, Any]]]:
    """One SMS text for a turn's bot messages, and the numbered options its buttons became."""
    blocks: list[str] = []
    options: list[dict[str, Any]] = []
    for message in messages:
        lines = [str(message["text"]).strip()] if message.get("text") else []
        if message.get("image"):
            lines.append(str(message["image"]))
        for button in message.get("buttons") or []:
            title, payload = str(button.get("title", "")), button.get("payload")
            if not title:
                continue
            options.append({"title": title, "payload": str(payload or title)})
            lines.append(f"{len(options)}) {title}")
        if lines:
            blocks.append("\n".join(lines))
    if options:
        blocks.append(TEXTS["choose"][_lang(language)])
    return "\n\n".join(blocks), options


def _lang(language: str | None) -> str:
    return "en" if language == "en" else "sv"


# ---------------------------------------------------------------- database


def _row(fields: dict[str, str], now: datetime) -> dict[str, Any]:
    body = fields.get("Body", "")
    kind, answered = keyword(body, fields.get("OptOutType"))
    media = [fields[f"MediaUrl{i}"] for i in range(_int(fields.get("NumMedia")))
             if fields.get(f"MediaUrl{i}")]
    return {
        "direction": SmsDirection.inbound, "message_sid": fields["MessageSid"],
        "phone": fields["From"], "our_number": fields.get("To", ""), "body": body,
        "status": SmsStatus.received, "keyword": kind, "twilio_answered": answered,
        "part": 1, "parts": 1, "media_urls": media or None, "attempts": 0,
        "created_at": now, "updated_at": now,
    }


def record_inbound(session: Session, *, messages: list[dict[str, str]], now: datetime
                   ) -> list[int | None]:
    """Store webhooks' messages in one statement: each one's id, or None when its
    MessageSid is already stored (or earlier in ``messages``): Twilio retried it."""
    first: dict[str, int] = {}
    for index, fields in enumerate(messages):
        first.setdefault(fields["MessageSid"], index)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (dialect.insert(_sms)
                 .values([_row(messages[i], now) for i in first.values()])
                 .on_conflict_do_nothing(index_elements=["message_sid"])
                 .returning(_sms.c.id, _sms.c.message_sid))
    stored = {sid: row_id for row_id, sid in session.execute(statement)}
    return [stored.get(fields["MessageSid"]) if first[fields["MessageSid"]] == index else None
            for index, fields in enumerate(messages)]


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def is_opted_out(session: Session, *, phone: str) -> bool:
    """Whether ``phone`` has opted out of SMS (STOP) and not opted in again."""
    return bool(session.execute(select(_opt.c.opted_out).where(_opt.c.phone == phone))
                .scalar())


def set_opt_out(session: Session, *, phone: str, opted_out: bool, keyword: str,
                now: datetime | None = None) -> None:
    row = session.get(SmsOptOut, phone) or SmsOptOut(phone=phone, keyword=keyword)
    row.opted_out, row.keyword, row.changed_at = opted_out, keyword[:30], now or utcnow()
    session.add(row)
    log.info("sms opt-out changed", opted_out=opted_out, keyword=keyword)


def queue_sms(session: Session, *, phone: str, our_number: str, text: str,
              reply_to_id: int | None = None, keyword: str | None = None,
              now: datetime | None = None) -> list[int]:
    """Write an outbound text (split into parts when long) to be sent; the parts' ids.

    Parts to an opted-out number are written as ``suppressed`` and never sent, except the
    confirmation of the opt-out itself (``keyword="stop"``)."""
    rows = _write_parts(session, phone=phone, our_number=our_number, text=text,
                        reply_to_id=reply_to_id, keyword=keyword, claim=False, now=now)
    return [row.id for row in rows if row.status == SmsStatus.pending and row.id is not None]


def _write_parts(session: Session, *, phone: str, our_number: str, text: str,
                 reply_to_id: int | None, keyword: str | None, claim: bool,
                 now: datetime | None = None) -> list[SmsMessage]:
    """The parts of a text as rows: ``pending`` for the worker, or already taken for the
    first attempt (``claim``), or ``suppressed`` to an opted-out number."""
    now = now or utcnow()
    parts = split_message(text)
    blocked = keyword != "stop" and is_opted_out(session, phone=phone)
    status = (SmsStatus.suppressed if blocked
              else SmsStatus.submitting if claim else SmsStatus.pending)
    rows = []
    for index, part in enumerate(parts, 1):
        encoding, count = segments(part)
        row = SmsMessage(
            direction=SmsDirection.outbound, phone=phone, our_number=our_number, body=part,
            status=status, keyword=keyword, reply_to_id=reply_to_id, part=index,
            parts=len(parts), encoding=encoding, segments=count,
            attempts=1 if status == SmsStatus.submitting else 0, created_at=now,
            updated_at=now)
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


def queue_code(session: Session, *, phone: str, text: str, our_number: str) -> int | None:
    """Write a one-time code's text (:mod:`assistant.identity`) to be sent once the
    verification has committed: its id, or None when the number said STOP. A code that
    cannot be delivered is retried like a reply but never escalated: the driver asks for
    another."""
    rows = _write_parts(session, phone=phone, our_number=our_number, text=text,
                        reply_to_id=None, keyword=CODE_KEYWORD, claim=False)
    pending = [row.id for row in rows if row.status == SmsStatus.pending]
    return pending[0] if pending else None


def queue_message(session: Session, *, phone: str, messages: list[dict[str, Any]],
                  from_number: str, now: datetime | None = None
                  ) -> tuple[list[Outgoing], bool]:
    """Write a message of ours that answers nothing (an agent's reply, a notification, a
    late answer) to ``phone``, split as replies are, taken for its first attempt; and
    whether the number has opted out (then the parts are written ``suppressed``).

    Buttons become numbered choices, as in replies; they are kept on the first part, so a
    reply of "2" picks the second. It goes from the number the driver last texted."""
    from assistant.dialogue import store

    now = now or utcnow()
    conversation = store.get_conversation(session, channel=CHANNEL, sender=phone)
    if conversation is not None:
        language = conversation.language
    else:
        driver = find_driver(session, phone=phone)
        language = str(driver.language) if driver is not None else "sv"
    text, options = render(messages, _lang(language))
    our_number = session.execute(
        select(_sms.c.our_number)
        .where(_sms.c.phone == phone, _sms.c.direction == SmsDirection.inbound)
        .order_by(_sms.c.id.desc()).limit(1)).scalar() or from_number
    rows = _write_parts(session, phone=phone, our_number=our_number, text=text,
                        reply_to_id=None, keyword=None, claim=True, now=now)
    if rows:
        rows[0].options = options or None
        session.add(rows[0])
        session.flush()
    return _claimed(rows), any(row.status == SmsStatus.suppressed for row in rows)


def _claimed(rows: list[SmsMessage]) -> list[Outgoing]:
    return [Outgoing(row.id or 0, row.phone, row.our_number, row.body, row.attempts)
            for row in rows if row.status == SmsStatus.submitting]


@dataclass(frozen=True)
class Outgoing:
    """An outbound text taken for one attempt at sending."""

    id: int
    phone: str
    our_number: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Inbound:
    """An inbound message a worker has taken: what to ask the assistant, if anything."""

    id: int
    phone: str
    our_number: str
    text: str | None
    driver_id: int | None
    replies: tuple[Outgoing, ...] = ()


def begin_inbound(session: Session, *, message_id: int, settings: Settings,
                  now: datetime | None = None) -> Inbound | None:
    """Take a received message for processing (once, whoever asks first). Keywords are
    answered here; otherwise the text for the assistant (a number picks an option of the
    previous reply) and the driver the number belongs to.

    This and the other steps every message takes are Core statements: the ORM's unit of
    work cost more than the rest of the step."""
    now = now or utcnow()
    row = session.execute(
        update(_sms)
        .where(_sms.c.id == message_id, _sms.c.status == SmsStatus.received)
        .values(status=SmsStatus.processing, attempts=_sms.c.attempts + 1, updated_at=now)
        .returning(_sms.c.phone, _sms.c.our_number, _sms.c.body, _sms.c.keyword,
                   _sms.c.twilio_answered)
    ).first()
    if row is None:
        return None
    phone, our_number, body, kind, twilio_answered = row
    opted_out = is_opted_out(session, phone=phone)
    if kind == "start" and not opted_out:
        kind = None  # "yes" or "start" from a number that never stopped: just a message
    if kind is not None:
        replies = _answer_keyword(session, message_id=message_id, phone=phone,
                                  our_number=our_number, body=body, kind=kind,
                                  opted_out=opted_out, twilio_answered=twilio_answered,
                                  settings=settings, now=now)
        return Inbound(message_id, phone, our_number, None, None, tuple(replies))
    if opted_out or not body.strip():
        _set_status(session, message_id, SmsStatus.ignored, now)
        return Inbound(message_id, phone, our_number, None, None)
    drivers = session.execute(
        select(col(Driver.id)).where(col(Driver.phone) == phone).limit(2)).scalars().all()
    text = _chosen_option(session, message_id=message_id, phone=phone, body=body,
                          settings=settings, now=now)
    return Inbound(message_id, phone, our_number, text,
                   drivers[0] if len(drivers) == 1 else None)


def _set_status(session: Session, message_id: int, state: SmsStatus, now: datetime,
                **values: Any) -> None:
    session.execute(update(_sms).where(_sms.c.id == message_id)
                    .values(status=state, updated_at=now, **values))


def _answer_keyword(session: Session, *, message_id: int, phone: str, our_number: str,
                    body: str, kind: str, opted_out: bool, twilio_answered: bool,
                    settings: Settings, now: datetime) -> list[Outgoing]:
    """Store an opt-out or opt-in and confirm it when Twilio did not; answer HELP."""
    word = body.strip().rstrip(".!").strip().upper()
    language = _keyword_language(session, phone=phone, word=word)
    text = None
    if kind == "stop":
        set_opt_out(session, phone=phone, opted_out=True, keyword=word or "STOP", now=now)
        text = None if twilio_answered else TEXTS["stop"][language]
    elif kind == "start":
        if opted_out:
            set_opt_out(session, phone=phone, opted_out=False, keyword=word or "START",
                        now=now)
        text = None if twilio_answered else TEXTS["start"][language]
    elif kind == "help":
        number = settings.support_phone_number.strip()
        call = TEXTS["call"][language].format(number=number) if number else ""
        text = TEXTS["help"][language].format(call=call)
    _set_status(session, message_id, SmsStatus.processed, now)
    if text is None:
        return []
    return _claimed(_write_parts(session, phone=phone, our_number=our_number, text=text,
                                 reply_to_id=message_id,
                                 keyword="stop" if kind == "stop" else None, claim=True,
                                 now=now))


def _keyword_language(session: Session, *, phone: str, word: str) -> str:
    if word in SWEDISH:
        return "sv"
    from assistant.dialogue import store

    driver = find_driver(session, phone=phone)
    if driver is not None:
        return _lang(str(driver.language))
    conversation = store.get_conversation(session, channel=CHANNEL, sender=phone)
    return _lang(conversation.language) if conversation is not None else "en"


def _chosen_option(session: Session, *, message_id: int, phone: str, body: str,
                   settings: Settings, now: datetime) -> str:
    """The payload of option N when the message is just a number N the last reply offered."""
    match = _DIGITS.match(body)
    if match is None:
        return body.strip()
    # The choices of the last thing we said: the answer to a processed message (its
    # options are stored on it), or a message of our own (an agent's, a notification).
    said_last = or_(
        (_sms.c.direction == SmsDirection.inbound) & (_sms.c.status == SmsStatus.processed),
        (_sms.c.direction == SmsDirection.outbound) & _sms.c.reply_to_id.is_(None)
        & (_sms.c.part == 1))
    previous = session.execute(
        select(_sms.c.options, _sms.c.created_at)
        .where(_sms.c.phone == phone, _sms.c.id < message_id, said_last)
        .order_by(_sms.c.id.desc()).limit(1)).first()
    expiry = timedelta(minutes=settings.conversation_expiry_minutes)
    options = previous.options if previous is not None and (
        previous.created_at > now - expiry) else None
    number = int(match.group(1))
    if options and 1 <= number <= len(options):
        return str(options[number - 1]["payload"])
    return body.strip()


def finish_inbound(session: Session, *, inbound: Inbound, messages: list[dict[str, Any]],
                   now: datetime | None = None) -> list[Outgoing]:
    """Write the assistant's answer to a message as outbound texts, taken for sending."""
    now = now or utcnow()
    language = session.execute(
        select(col(Conversation.language))
        .where(col(Conversation.channel) == CHANNEL,
               col(Conversation.sender) == inbound.phone)).scalar()
    text, options = render(messages, language or "sv")
    _set_status(session, inbound.id, SmsStatus.processed, now, options=options or None)
    parts = split_message(text)
    if not parts:
        return []
    if is_opted_out(session, phone=inbound.phone):  # a STOP came in meanwhile
        _write_parts(session, phone=inbound.phone, our_number=inbound.our_number, text=text,
                     reply_to_id=inbound.id, keyword=None, claim=True, now=now)
        return []
    out = []
    for index, part in enumerate(parts, 1):
        encoding, count = segments(part)
        row_id = session.execute(insert(_sms).values(
            direction=SmsDirection.outbound, phone=inbound.phone,
            our_number=inbound.our_number, body=part, status=SmsStatus.submitting,
            twilio_answered=False, reply_to_id=inbound.id, part=index, parts=len(parts),
            encoding=encoding, segments=count, attempts=1, created_at=now, updated_at=now,
        ).returning(_sms.c.id)).scalar_one()
        out.append(Outgoing(row_id, inbound.phone, inbound.our_number, part, 1))
    return out


def fail_inbound(session: Session, *, message_id: int, error: str) -> None:
    row = session.get(SmsMessage, message_id)
    if row is not None:
        row.status, row.error_message, row.updated_at = SmsStatus.failed, error[:500], utcnow()
        session.add(row)


def claim_outbound(session: Session, *, message_id: int,
                   now: datetime | None = None) -> Outgoing | None:
    """Take a pending (or due) outbound text for one attempt; None when it is not to be sent
    now, or may not be (the number opted out: it becomes ``suppressed``)."""
    now = now or utcnow()
    claimed = session.execute(
        update(SmsMessage)
        .where(col(SmsMessage.id) == message_id,
               col(SmsMessage.direction) == SmsDirection.outbound,
               col(SmsMessage.status).in_([SmsStatus.pending, SmsStatus.retrying]),
               (col(SmsMessage.next_attempt_at).is_(None))
               | (col(SmsMessage.next_attempt_at) <= now))
        .values(status=SmsStatus.submitting, attempts=col(SmsMessage.attempts) + 1,
                updated_at=now)
        .returning(SmsMessage.phone, SmsMessage.our_number, SmsMessage.body,
                   SmsMessage.attempts, SmsMessage.keyword)
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is None:
        return None
    phone, our_number, body, attempts, kind = claimed
    if kind != "stop" and is_opted_out(session, phone=phone):
        row = session.get(SmsMessage, message_id)
        assert row is not None
        row.status, row.updated_at = SmsStatus.suppressed, now
        session.add(row)
        return None
    return Outgoing(message_id, phone, our_number, body, attempts)


def _after_failure(session: Session, row: SmsMessage, *, code: int | None, retryable: bool,
                   delays: tuple[float, ...], now: datetime) -> str:
    if code == OPTED_OUT_ERROR:
        set_opt_out(session, phone=row.phone, opted_out=True, keyword=f"twilio:{code}", now=now)
        row.status = SmsStatus.suppressed
        return "suppressed"
    if retryable and row.attempts <= len(delays):
        row.status = SmsStatus.retrying
        row.next_attempt_at = now + timedelta(seconds=delays[row.attempts - 1])
        return "retry"
    row.status = SmsStatus.escalating
    return "escalate"


def record_attempt(session: Session, *, message_id: int, sid: str | None,
                   twilio_status: str | None, code: int | None = None, error: str | None = None,
                   retryable: bool = False, delays: tuple[float, ...] = RETRY_DELAYS_S,
                   now: datetime | None = None) -> str:
    """The outcome of one ``messages.create``: ``sent``, ``retry``, ``escalate`` or
    ``suppressed``."""
    now = now or utcnow()
    if sid is not None:
        _set_status(session, message_id, _twilio_status(twilio_status) or SmsStatus.queued,
                    now, message_sid=sid, next_attempt_at=None, error_code=None,
                    error_message=None)
        return "sent"
    row = session.get(SmsMessage, message_id)
    if row is None:
        return "gone"
    row.updated_at = now
    row.error_code, row.error_message = code, (error or "")[:500]
    outcome = _after_failure(session, row, code=code, retryable=retryable, delays=delays,
                             now=now)
    session.add(row)
    return outcome


def _twilio_status(value: str | None) -> SmsStatus | None:
    try:
        return SmsStatus(value) if value else None
    except ValueError:
        return None


def record_status(session: Session, *, sid: str, twilio_status: str, code: int | None,
                  delays: tuple[float, ...] = RETRY_DELAYS_S,
                  now: datetime | None = None) -> tuple[str, int] | None:
    """A delivery status callback: the message's new status. ``("retry", id)`` or
    ``("escalate", id)`` when a failure needs the worker, ``("unknown", 0)`` when no message
    has this sid (yet: the callback may beat the write of the API's answer); repeated
    callbacks change nothing."""
    now = now or utcnow()
    row = session.exec(select(SmsMessage).where(
        col(SmsMessage.message_sid) == sid,
        col(SmsMessage.direction) == SmsDirection.outbound)).first()
    if row is None:
        return "unknown", 0
    new = _twilio_status(twilio_status)
    if new is None or row.status in SETTLED:
        return None
    if new in (SmsStatus.failed, SmsStatus.undelivered):
        if row.status in (SmsStatus.delivered, SmsStatus.read):
            return None
        row.error_code = code
        outcome = _after_failure(session, row, code=code,
                                 retryable=code is None or code in RETRYABLE_ERRORS,
                                 delays=delays, now=now)
        row.updated_at = now
        session.add(row)
        log.info("sms not delivered", message_id=row.id, error_code=code, outcome=outcome)
        return (outcome, row.id or 0) if outcome in ("retry", "escalate") else None
    if STATUS_RANK.get(new, -1) > STATUS_RANK.get(row.status, -1):
        row.status, row.updated_at = new, now
        session.add(row)
    return None


def escalate_delivery(session: Session, *, message_id: int, settings: Settings
                      ) -> tuple[int, int, str] | None:
    """Hand an undeliverable reply to a person: an escalation of the sender's conversation
    with what could not be delivered. ``(escalation id, conversation id, phone)`` when one
    was made; parts of the same reply share it."""
    from assistant.dialogue import store

    row = session.get(SmsMessage, message_id)
    if row is None or row.status != SmsStatus.escalating:
        return None
    row.updated_at = utcnow()
    if row.keyword == CODE_KEYWORD:  # nobody to call back about a code: it just failed
        row.status = SmsStatus.failed
        session.add(row)
        return None
    sibling = None
    if row.reply_to_id is not None:
        sibling = session.exec(select(SmsMessage).where(
            col(SmsMessage.reply_to_id) == row.reply_to_id,
            col(SmsMessage.escalation_id).is_not(None))).first()
    conversation = store.get_conversation(session, channel=CHANNEL, sender=row.phone)
    if sibling is not None or conversation is None:
        row.status = SmsStatus.escalated if sibling is not None else SmsStatus.failed
        row.escalation_id = sibling.escalation_id if sibling is not None else None
        session.add(row)
        return None
    delivery = {"to": row.phone, "text": row.body, "error_code": row.error_code,
                "error": row.error_message, "attempts": row.attempts,
                "message_sid": row.message_sid}
    escalation = store.record_escalation(
        session, conversation_id=conversation.id or 0, reason="action_failed",
        intent=conversation.latest_intent,
        slots={**conversation.slots, "sms_delivery_failed": delivery}, settings=settings)
    row.status, row.escalation_id = SmsStatus.escalated, escalation.id
    session.add(row)
    log.warning("sms reply undeliverable: escalated", message_id=row.id,
                escalation_id=escalation.id, error_code=row.error_code)
    return escalation.id or 0, conversation.id or 0, row.phone


def due_work(session: Session, *, now: datetime | None = None, limit: int = 500
             ) -> dict[str, list[tuple[int, str]]]:
    """What the sweep picks up: retries that are due, escalations to make, and messages a
    crash left behind: received but never processed, written but never sent, or taken for
    sending with no answer from Twilio's API recorded (sent again: a crash at that moment
    may mean the driver gets a text twice, rather than not at all)."""
    now = now or utcnow()
    stale = now - STALE_AFTER
    session.execute(
        update(SmsMessage)
        .where(col(SmsMessage.status) == SmsStatus.submitting,
               col(SmsMessage.updated_at) < stale)
        .values(status=SmsStatus.retrying, next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False))

    def ids(*where: Any) -> list[tuple[int, str]]:
        rows = session.exec(select(SmsMessage.id, SmsMessage.phone).where(*where)
                            .order_by(col(SmsMessage.id)).limit(limit)).all()
        return [(int(i or 0), str(p)) for i, p in rows]

    return {
        "send": ids(col(SmsMessage.status) == SmsStatus.retrying,
                    col(SmsMessage.next_attempt_at) <= now)
        + ids(col(SmsMessage.status) == SmsStatus.pending, col(SmsMessage.updated_at) < stale),
        "escalate": ids(col(SmsMessage.status) == SmsStatus.escalating),
        "process": ids(col(SmsMessage.status) == SmsStatus.received,
                       col(SmsMessage.created_at) < stale),
    }


# ---------------------------------------------------------------- the worker


class SmsChannel:
    """Processes stored messages and sends replies, in the server's event loop.

    Messages of one sender are taken one at a time, in order; at most
    :data:`TURNS_IN_FLIGHT` assistant turns run at once. A sweep every :data:`SWEEP_S`
    seconds (or when woken) sends due retries, makes escalations and takes up what a crash
    left behind.
    """

    def __init__(self, runtime: Any, cfg: TwilioConfig) -> None:
        self.runtime, self.cfg = runtime, cfg
        self.retry_delays_s = RETRY_DELAYS_S
        self._queues: dict[str, deque[int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active = 0
        self._slots: asyncio.Condition | None = None
        self._arrivals: deque[float] = deque()  # webhook arrival times, the last second
        self._last_start = 0.0
        self._wake: asyncio.Event | None = None
        self._http: Any = None
        self._client: Any = None
        self._intake: list[tuple[dict[str, str], asyncio.Future[int | None]]] = []
        self._writing = False

    @property
    def configured(self) -> bool:
        return not self.cfg.missing(sending=True)

    @property
    def status_callback(self) -> str:
        return self.cfg.url(STATUS_ROUTE)

    def client(self) -> Any:
        if self._client is None:
            from twilio.http.async_http_client import AsyncTwilioHttpClient

            self._http = AsyncTwilioHttpClient(timeout=API_TIMEOUT_S, logger=_api_log)
            self._client = make_client(self.cfg, self._http)
        return self._client

    async def receive(self, fields: dict[str, str]) -> None:
        """Store a webhook's message and queue it; returns once it is committed.

        Messages arriving while a write is under way go together in the next one (group
        commit): a burst costs a few transactions, not one each, and the database thread
        stays free for the conversations."""
        self._arrivals.append(time.monotonic())
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._intake.append((fields, future))
        if not self._writing:
            self._writing = True
            self._spawn(self._write_intake())
        message_id = await future
        if message_id is not None:
            self.submit(fields["From"], message_id)

    async def _write_intake(self) -> None:
        try:
            while self._intake:
                batch, self._intake = self._intake[:INTAKE_BATCH], self._intake[INTAKE_BATCH:]
                try:
                    ids = await run_in_session(self.runtime.engine, record_inbound,
                                               messages=[f for f, _ in batch], now=utcnow())
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception)
                                                 else RuntimeError("cancelled"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), message_id in zip(batch, ids, strict=True):
                    if not future.done():
                        future.set_result(message_id)
        finally:
            self._writing = False

    def _busy(self, now: float) -> bool:
        arrivals = self._arrivals
        while arrivals and arrivals[0] < now - 1.0:
            arrivals.popleft()
        return len(arrivals) >= BUSY_PER_S

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """A place among the messages being answered: up to :data:`TURNS_IN_FLIGHT`; while
        more than :data:`BUSY_PER_S` webhooks a second arrive, one at a time and at most one
        start every :data:`BUSY_TURN_INTERVAL_S`, so the webhooks keep the event loop and the
        database thread (answers wait a little; Twilio's webhook timeout would not)."""
        if self._slots is None:
            self._slots = asyncio.Condition()
        async with self._slots:
            while True:
                now = time.monotonic()
                busy = self._busy(now)
                wait = self._last_start + BUSY_TURN_INTERVAL_S - now if busy else 0.0
                if self._active < (1 if busy else TURNS_IN_FLIGHT) and wait <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slots.wait(),
                                           wait if wait > 0 else BUSY_TURN_INTERVAL_S)
            self._active += 1
            self._last_start = now
        try:
            yield
        finally:
            async with self._slots:
                self._active -= 1
                self._slots.notify_all()

    def submit(self, phone: str, message_id: int) -> None:
        """Queue a stored inbound message; its sender's messages are taken in order."""
        queue = self._queues.get(phone)
        if queue is not None:
            queue.append(message_id)
            return
        self._queues[phone] = deque([message_id])
        self._spawn(self._drain(phone))

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, phone: str) -> None:
        try:
            while queue := self._queues.get(phone):
                message_id = queue.popleft()
                try:
                    await self.process(message_id)
                except Exception:
                    log.exception("sms processing failed", message_id=message_id)
        finally:
            self._queues.pop(phone, None)

    async def process(self, message_id: int) -> None:
        """Answer one inbound message (keywords, or the assistant) and send the replies."""
        from assistant import service

        engine, settings = self.runtime.engine, self.runtime.settings
        async with self._slot():
            inbound = await run_in_session(engine, begin_inbound, message_id=message_id,
                                           settings=settings)
            if inbound is None:
                return
            replies = list(inbound.replies)
            if inbound.text is not None:
                # A Twilio-signed From is the number's proof: the number's contact, which
                # is its driver's when the number is on exactly one account. Joined before
                # the assistant answers: a driver people already have is not answered by
                # the bot (the conversation follows their ticket, paused).
                joined = await contacts.join(
                    self.runtime, channel=CHANNEL, sender=inbound.phone, address=inbound.phone,
                    driver_id=inbound.driver_id, proven=True)
                identity = (service.Identity(driver_id=inbound.driver_id, verified=True,
                                             via=CHANNEL)
                            if inbound.driver_id is not None else None)
                try:
                    messages = await service.handle_message(
                        self.runtime, channel=CHANNEL, sender=inbound.phone,
                        text=inbound.text, identity=identity,
                        metadata={"sms_message_id": inbound.id})
                    # People have the case (from before, or once a code in this
                    # message proved the driver): the driver is told so.
                    messages = messages + await contacts.after_turn(
                        self.runtime, channel=CHANNEL, sender=inbound.phone, joined=joined,
                        messages=messages)
                except Exception as exc:
                    log.exception("assistant failed on an sms", message_id=message_id)
                    await run_in_session(engine, fail_inbound, message_id=message_id,
                                         error=f"{type(exc).__name__}: {exc}")
                    return
                replies = await run_in_session(engine, finish_inbound, inbound=inbound,
                                               messages=messages)
            for reply in replies:  # in order: part 2 goes after part 1 is accepted
                await self.send(reply)

    async def deliver(self, runtime: Any, sender: str, messages: list[dict[str, Any]],
                      conversation_id: int | None) -> None:
        """:func:`assistant.channels.outbound.send` for ``sms`` (and ``voice``: a caller
        is answered by text): ``sender`` is the driver's number. The parts are written
        first and each gets its first attempt now; failures are retried or escalated as
        replies are. Raises ChannelUnavailable when the number has opted out."""
        from assistant.channels.outbound import ChannelUnavailable

        if not self.configured:
            raise ChannelUnavailable("the SMS channel is not configured")
        parts, opted_out = await run_in_session(
            runtime.engine, queue_message, phone=sender, messages=messages,
            from_number=self.cfg.from_number)
        if opted_out:
            raise ChannelUnavailable(f"{sender} has opted out of texts (STOP)")
        for part in parts:
            await self.send(part)

    def codes(self) -> Any:
        """How :mod:`assistant.identity` sends one-time codes to a phone number by text."""
        from assistant.identity import SmsCodes

        async def send(message_id: int) -> bool:
            return await self.send(message_id) == "sent"

        return SmsCodes(queue=functools.partial(queue_code, our_number=self.cfg.from_number),
                        send=send, opted_out=is_opted_out)

    async def send(self, message: int | Outgoing) -> str:
        """One attempt at an outbound text through Twilio's API (``message``: an id to
        take, or a text already taken)."""
        engine = self.runtime.engine
        outgoing = (await run_in_session(engine, claim_outbound, message_id=message)
                    if isinstance(message, int) else message)
        if outgoing is None:
            return "skipped"
        message_id = outgoing.id
        sid = twilio_status = error = None
        code: int | None = None
        retryable = False
        try:
            created = await self.client().messages.create_async(
                to=outgoing.phone, from_=outgoing.our_number or self.cfg.from_number,
                body=outgoing.body, status_callback=self.status_callback)
            sid, twilio_status = created.sid, created.status
        except TwilioRestException as exc:
            code, error = exc.code, f"HTTP {exc.status}: {exc.msg}"
            retryable = exc.status == 429 or exc.status >= 500
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error, retryable = f"{type(exc).__name__}: {exc}", True
        outcome = await run_in_session(
            engine, record_attempt, message_id=message_id, sid=sid,
            twilio_status=str(twilio_status) if twilio_status else None, code=code,
            error=error, retryable=retryable, delays=self.retry_delays_s)
        if outcome != "sent":
            log.warning("sms not accepted by twilio", message_id=message_id, error=error,
                        error_code=code, outcome=outcome)
        if outcome == "escalate":
            await self.escalate(message_id)
        elif outcome == "retry":
            self.wake()
        return outcome

    async def escalate(self, message_id: int) -> None:
        runtime = self.runtime
        made = await run_in_session(runtime.engine, escalate_delivery, message_id=message_id,
                                    settings=runtime.settings)
        if made is not None:
            escalation_id, conversation_id, phone = made
            await runtime.bus.publish(ConversationEscalated(
                escalation_id=escalation_id, conversation_id=conversation_id,
                channel=CHANNEL, sender=phone, reason="action_failed"))

    async def sweep(self) -> None:
        work = await run_in_session(self.runtime.engine, due_work)
        for message_id, _phone in work["escalate"]:
            await self.escalate(message_id)
        for message_id, _phone in work["send"]:
            self._spawn(self.send(message_id))
        for message_id, phone in work["process"]:
            if phone not in self._queues:
                self.submit(phone, message_id)

    async def run(self) -> None:
        """The background job: sweep now and then until the server stops."""
        self._wake = asyncio.Event()
        try:
            if not self.configured:
                return
            while True:
                try:
                    await self.sweep()
                except Exception:
                    log.exception("sms sweep failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), SWEEP_S)
                self._wake.clear()
        finally:
            await self.close()

    async def close(self) -> None:
        from assistant import identity

        identity.set_sms_codes(self.runtime.engine, None)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = self._client = None


def sms_channel(app: Any) -> SmsChannel:
    channel: SmsChannel | None = getattr(app.state, "twilio_sms", None)
    if channel is None:
        runtime = app.state.runtime
        channel = app.state.twilio_sms = SmsChannel(
            runtime, TwilioConfig.from_settings(runtime.settings))
    return channel


# ---------------------------------------------------------------- endpoints

router = APIRouter(tags=["twilio"])


def _twiml(text: str = EMPTY_TWIML) -> Response:
    return Response(text, media_type=TWIML_TYPE)


@router.post(ROUTE, include_in_schema=True)
async def incoming_sms(request: Request) -> Response:
    """Twilio's incoming-message webhook: stored once per MessageSid, answered later."""
    _, fields = await signed_form(request, sending=True)
    if not fields.get("MessageSid") or not fields.get("From"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "MessageSid and From are required")
    if len(fields["MessageSid"]) > 64 or len(fields["From"]) > 32 \
            or len(fields.get("To", "")) > 32:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a Twilio message")
    await sms_channel(request.app).receive(fields)
    return _twiml()


@router.post(STATUS_ROUTE)
async def sms_status(request: Request) -> Response:
    """Twilio's delivery status callback for a message we sent."""
    _, fields = await signed_form(request, sending=True)
    sid = fields.get("MessageSid") or fields.get("SmsSid")
    state = fields.get("MessageStatus") or fields.get("SmsStatus")
    if not sid or not state:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            "MessageSid and MessageStatus are required")
    code_text = fields.get("ErrorCode", "")
    code = int(code_text) if code_text.isdigit() else None
    channel = sms_channel(request.app)
    for wait in (*STATUS_LOOKUP_WAITS_S, None):
        action = await run_in_session(request.app.state.runtime.engine, record_status,
                                      sid=sid, twilio_status=state, code=code,
                                      delays=channel.retry_delays_s)
        if action is None or action[0] != "unknown" or wait is None:
            break
        await asyncio.sleep(wait)
    if action is not None and action[0] == "unknown":
        log.info("status callback for a message we don't know", message_sid=sid)
    elif action is not None:
        kind, message_id = action
        if kind == "escalate":
            channel._spawn(channel.escalate(message_id))
        else:
            channel.wake()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
