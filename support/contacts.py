"""One history per driver for agents, and tickets that follow a driver across channels.

- ``GET /api/v1/support/tickets/{id}/history``: every message of the ticket's contact(s)
  (the driver's one contact, or the anonymous contact of an unproven address) on every
  channel, oldest first, each marked with its channel and address
  (:func:`assistant.contacts.history`); ``GET /api/v1/support/contacts/{id}`` the same for a
  contact, ``GET /api/v1/support/contacts?driver_id=|phone=|email=`` finds one.
- ``/agent/tickets/{id}/history``: that history as a console page.
- When a proven driver writes on another channel (or signs in to the web chat) while they
  hold an active ticket, the conversation joins the ticket before the assistant sees the
  message (:func:`follow`, a follower of :func:`assistant.contacts.join`): paused while
  people have the ticket, so the bot does not answer and the driver is told an agent has
  their case; the desk's inbox reads the driver's message from it, and agents' replies go
  to the channel the driver wrote on last. A driver who started in the web chat and goes on
  by SMS is answered by SMS.
- A ticket from a phone call asks for its rating by SMS (a caller is answered by text). The
  texted answer comes in on the number's SMS conversation, not the call's: that conversation
  joins the ticket, paused, before the assistant sees the text (:func:`follow_rating`, for
  any number, known driver or not), so the answer is the rating and never a question for
  the bot; once the rating is done the bot has the number again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func
from sqlmodel import Session, col, select

from assistant import contacts
from assistant.contact_models import Contact
from assistant.dialogue import store
from assistant.models import Conversation, ConversationEvent
from chargedesk.auth import SessionDep
from support import service
from support.auth import Staff
from support.console import PageAgent, _context, _render
from support.models import (
    ACTIVE_STATUSES,
    CsatState,
    Ticket,
    TicketConversation,
    TicketStatus,
)

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/api/v1/support", tags=["support desk"])
pages = APIRouter(prefix="/agent", tags=["agent console"], include_in_schema=False)


# ---------------------------------------------------------------- reading


def ticket_contacts(session: Session, *, ticket: Ticket) -> list[int]:
    """The contacts a ticket is about: those of its conversations. The ticket's driver's
    contact only through them (a ticket whose driver came from a claim nobody proved, an
    unauthenticated From, shows that anonymous contact, not the driver's history), or when
    none of its conversations has a contact yet (older than contacts)."""
    found: list[int] = []
    for conversation in service.conversations_of(session, ticket_id=ticket.id or 0):
        contact_id = contacts.contact_of(session, channel=conversation.channel,
                                         sender=conversation.sender)
        if contact_id is not None and contact_id not in found:
            found.append(contact_id)
    if not found and ticket.driver_id is not None:
        row = contacts.find(session, driver_id=ticket.driver_id)
        if row is not None and row.id is not None:
            found.append(row.id)
    return found


def ticket_history(session: Session, *, ticket_id: int) -> dict[str, Any]:
    """The ticket's contacts and their one history across channels."""
    ticket = service.get_ticket(session, ticket_id=ticket_id)
    ids = ticket_contacts(session, ticket=ticket)
    own = [c.id or 0 for c in service.conversations_of(session, ticket_id=ticket_id)]
    lines = contacts.history(session, contact_ids=ids, conversation_ids=own)
    return {"ticket_id": ticket_id, "driver_id": ticket.driver_id,
            "contacts": [contacts.describe(session, contact_id=i) for i in ids],
            "channels": sorted({line["channel"] for line in lines}), "history": lines}


def contact_history(session: Session, *, contact_id: int) -> dict[str, Any]:
    try:
        described = contacts.describe(session, contact_id=contact_id)
    except LookupError:
        raise service.NotFound(f"no contact {contact_id}") from None
    lines = contacts.history(session, contact_ids=[described["id"]])
    return {**described, "channels": sorted({line["channel"] for line in lines}),
            "history": lines}


# ---------------------------------------------------------------- following the driver

# Tickets people hold: a conversation joining one is paused for them.
HELD = (TicketStatus.open, TicketStatus.snoozed)


def _active(session: Session, ticket_id: int | None) -> Ticket | None:
    ticket = session.get(Ticket, ticket_id) if ticket_id is not None else None
    seen: set[int] = set()
    while ticket is not None and ticket.merged_into_id is not None \
            and ticket.merged_into_id not in seen:
        seen.add(ticket.merged_into_id)
        ticket = session.get(Ticket, ticket.merged_into_id)
    return ticket if ticket is not None and ticket.status in ACTIVE_STATUSES else None


def follow(session: Session, *, channel: str, sender: str, contact_id: int, now: Any,
           expiry: timedelta | None = None) -> contacts.Followed | None:
    """Put a proven driver's conversation on their active ticket before the assistant
    answers its message (see the module docstring and :func:`assistant.contacts.join`).

    A ticket people hold (open, snoozed) pauses the conversation, created first when the
    driver has not written in it yet (a web chat signed in before its first message), and
    kept from expiring into a new bot session; a ticket handed back to the bot (pending)
    only gains the conversation, so a later handover on it reopens the same ticket. None
    when there is no such ticket or the conversation is already on it."""
    contact = contacts.resolve(session, contact_id=contact_id)
    if contact.driver_id is None:
        return None  # only a proven driver is followed
    conversation = store.get_conversation(session, channel=channel, sender=sender)
    link = (session.get(TicketConversation, conversation.id)
            if conversation is not None else None)
    if link is not None and _active(session, link.ticket_id) is not None:
        return None  # on an active ticket already
    siblings = [c.id for c in contacts.conversations(session, contact_ids=[contact.id or 0])
                if conversation is None or c.id != conversation.id]
    linked_tickets = select(TicketConversation.ticket_id).where(
        col(TicketConversation.conversation_id).in_(siblings or [-1]))
    ticket = session.exec(
        select(Ticket)
        .where((col(Ticket.driver_id) == contact.driver_id) | col(Ticket.id).in_(linked_tickets),
               col(Ticket.status).in_(list(ACTIVE_STATUSES)),
               col(Ticket.merged_into_id).is_(None))
        .order_by(col(Ticket.updated_at).desc(), col(Ticket.id).desc())).first()
    if ticket is None or ticket.id is None:
        return None
    expiry = expiry or timedelta(minutes=30)
    if conversation is None:
        conversation = contacts.open_conversation(session, channel=channel, sender=sender,
                                                  expiry=expiry, now=now)
    assert conversation.id is not None
    # Everything before the driver's coming message is old news to the ticket's inbox.
    last = session.exec(select(func.max(ConversationEvent.id)).where(
        ConversationEvent.conversation_id == conversation.id)).one() or 0
    if link is None:
        session.add(TicketConversation(conversation_id=conversation.id, ticket_id=ticket.id,
                                       last_event_id=int(last)))
    else:  # it was on a ticket closed since
        link.ticket_id, link.last_event_id = ticket.id, max(link.last_event_id, int(last))
        session.add(link)
    held = ticket.status in HELD
    if held:
        service.pause(session, conversation=conversation, now=now)
        if conversation.expires_at < now + expiry:
            conversation.expires_at = now + expiry  # not a new bot session on arrival
            session.add(conversation)
    service.add_event(session, ticket=ticket, kind="channel", actor=service.SYSTEM, now=now,
                      text=f"the driver went on by {channel}",
                      data={"conversation_id": conversation.id, "channel": channel})
    ticket.updated_at = now
    session.add(ticket)
    session.flush()
    log.info("ticket follows the driver to another channel", ticket_id=ticket.id,
             channel=channel, conversation_id=conversation.id, paused=held)
    return contacts.Followed(ticket_id=ticket.id, paused=held,
                             language=ticket.language or None)


# Where a question asked on one channel is answered: the channel a driver's answer comes in
# on, and the channels whose conversations are answered through it (a call, by text).
ANSWERED_BY = {"sms": ("voice",)}
AWAITING = (CsatState.asked, CsatState.comment)


def follow_rating(session: Session, *, channel: str, sender: str, now: Any,
                  expiry: timedelta | None = None) -> contacts.Followed | None:
    """A text from a number whose call's ticket awaits its rating (the question went to
    the number by SMS): put the number's SMS conversation on that ticket, paused, before
    the assistant sees the text, so the desk's inbox reads it as the answer. Any number,
    known driver or not: the question went to it. Nothing to tell the driver (``quiet``).

    None when no such ticket waits, the conversation is on it already, or the conversation
    is on another active ticket (people, or the bot, have it for something else)."""
    asked_on = ANSWERED_BY.get(channel)
    if not asked_on:
        return None
    ticket = session.exec(
        select(Ticket)
        .join(TicketConversation, col(TicketConversation.ticket_id) == Ticket.id)
        .join(Conversation, col(Conversation.id) == TicketConversation.conversation_id)
        .where(col(Conversation.channel).in_(asked_on), col(Conversation.sender) == sender,
               col(Ticket.csat_state).in_(list(AWAITING)),
               col(Ticket.status) == TicketStatus.resolved,
               col(Ticket.merged_into_id).is_(None))
        .order_by(col(Ticket.csat_asked_at).desc(), col(Ticket.id).desc())).first()
    if ticket is None or ticket.id is None:
        return None
    conversation = store.get_conversation(session, channel=channel, sender=sender)
    link = (session.get(TicketConversation, conversation.id)
            if conversation is not None else None)
    if link is not None and (link.ticket_id == ticket.id
                             or _active(session, link.ticket_id) is not None):
        return None
    expiry = expiry or timedelta(minutes=30)
    if conversation is None:
        conversation = contacts.open_conversation(session, channel=channel, sender=sender,
                                                  expiry=expiry, now=now)
        asked = next((c for c in service.conversations_of(session, ticket_id=ticket.id)
                      if c.channel in asked_on and c.sender == sender), None)
        if asked is not None and asked.language != conversation.language:
            conversation.language = asked.language  # the thanks in the call's language
            session.add(conversation)
    assert conversation.id is not None
    last = session.exec(select(func.max(ConversationEvent.id)).where(
        ConversationEvent.conversation_id == conversation.id)).one() or 0
    if link is None:
        session.add(TicketConversation(conversation_id=conversation.id, ticket_id=ticket.id,
                                       last_event_id=int(last)))
    else:  # on a ticket closed since
        link.ticket_id, link.last_event_id = ticket.id, max(link.last_event_id, int(last))
        session.add(link)
    service.pause(session, conversation=conversation, now=now)
    service.add_event(session, ticket=ticket, kind="channel", actor=service.SYSTEM, now=now,
                      text=f"the rating question is answered by {channel}",
                      data={"conversation_id": conversation.id, "channel": channel})
    session.flush()
    log.info("rating answer expected by text", ticket_id=ticket.id, channel=channel,
             conversation_id=conversation.id)
    return contacts.Followed(ticket_id=ticket.id, paused=True,
                             language=ticket.language or None, quiet=True)


def install(app: Any, desk: Any) -> None:
    """Mount the history API and page; follow drivers' conversations onto their tickets
    before the assistant answers them."""
    app.include_router(router)
    app.include_router(pages)
    expiry = timedelta(minutes=desk.runtime.settings.conversation_expiry_minutes)

    def follower(session: Session, *, channel: str, sender: str, contact_id: int,
                 now: Any) -> contacts.Followed | None:
        return follow(session, channel=channel, sender=sender, contact_id=contact_id,
                      now=now, expiry=expiry)

    def rating(session: Session, *, channel: str, sender: str, contact_id: int,
               now: Any) -> contacts.Followed | None:
        return follow_rating(session, channel=channel, sender=sender, now=now, expiry=expiry)

    contacts.add_follower(desk.runtime, follower)
    contacts.add_follower(desk.runtime, rating)


# ---------------------------------------------------------------- the demo

DEMO_TEXT = ("Jag står kvar vid SE-STO-CITY-01 och kabeln sitter fortfarande fast",
             "cable_stuck")


def seed_demo(engine: Any, *, settings: Any) -> bool:
    """The demo's handed-over drivers as contacts, and Anna going on by SMS from her own
    number: her web chat ticket follows her there (``/agent/tickets/1/history`` shows
    both). Once; False when done before."""
    from billing_api.models import Driver
    from chargedesk.db import session_scope
    from chargedesk.types import utcnow
    from support.demo import STORIES

    with session_scope(engine) as session:
        anna = session.exec(select(Driver).where(
            Driver.email == STORIES[0]["driver"])).first()
        if anna is None or anna.id is None or not anna.phone or store.get_conversation(
                session, channel="sms", sender=anna.phone) is not None:
            return False
        for story in STORIES:
            driver = session.exec(select(Driver).where(Driver.email == story["driver"])).first()
            if driver is not None and store.get_conversation(
                    session, channel=story["channel"], sender=story["sender"]) is not None:
                contacts.link(session, channel=story["channel"], sender=story["sender"],
                              address=story["sender"], driver_id=driver.id, proven=True)
        expiry = timedelta(minutes=settings.conversation_expiry_minutes)
        # As the SMS channel does: joined (and paused) first, then her message is stored.
        linked = contacts.link(session, channel="sms", sender=anna.phone, address=anna.phone,
                               driver_id=anna.id, proven=True)
        followed = follow(session, channel="sms", sender=anna.phone,
                          contact_id=linked.contact_id, now=utcnow(), expiry=expiry)
        snapshot = store.load_conversation(session, channel="sms", sender=anna.phone,
                                           initial_slots={}, expiry=expiry,
                                           identity=(anna.id, True))
        text, intent = DEMO_TEXT
        snapshot.record({"event": "user", "text": text, "input_channel": "sms",
                         "parse_data": {"intent": {"name": intent, "confidence": 0.95},
                                        "entities": [], "text": text, "language": "sv"}})
        store.save_turn(session, snapshot=snapshot, expiry=expiry)
        session.flush()
        if followed is not None and followed.paused:
            contacts.record_acknowledgement(session, channel="sms", sender=anna.phone,
                                            followed=followed, now=utcnow())
    return True


# ---------------------------------------------------------------- endpoints


@router.get("/tickets/{ticket_id}/history")
def get_ticket_history(ticket_id: int, session: SessionDep, actor: Staff) -> dict[str, Any]:
    """Everything the ticket's driver wrote and was told, on every channel, oldest first;
    each message with its channel, address and whether that address was proven."""
    return ticket_history(session, ticket_id=ticket_id)


@router.get("/contacts")
def find_contact(session: SessionDep, actor: Staff,
                 driver_id: Annotated[int | None, Query()] = None,
                 phone: Annotated[str | None, Query(max_length=32)] = None,
                 email: Annotated[str | None, Query(max_length=254)] = None) -> dict[str, Any]:
    """A contact by driver, or by a proven phone number or e-mail address."""
    if driver_id is None and not phone and not email:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "give driver_id, phone or email")
    row: Contact | None = contacts.find(session, driver_id=driver_id, phone=phone, email=email)
    if row is None or row.id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such contact")
    return contacts.describe(session, contact_id=row.id)


@router.get("/contacts/{contact_id}")
def get_contact(contact_id: int, session: SessionDep, actor: Staff) -> dict[str, Any]:
    """A contact, its addresses and conversations, and its one history."""
    return contact_history(session, contact_id=contact_id)


@pages.get("/tickets/{ticket_id}/history", response_class=HTMLResponse)
def history_page(ticket_id: int, request: Request, session: SessionDep,
                 agent: PageAgent) -> Response:
    """The ticket's driver's history on every channel, as a page of the console."""
    try:
        view = ticket_history(session, ticket_id=ticket_id)
    except service.NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no ticket {ticket_id}") from None
    return _render("agent_history.html", view=view, **_context(request, agent))
