"""Tickets: opened from the assistant's escalations, worked by agents, closed with the
driver's rating. Plain keyword-only functions taking a session; the only place that
queries the support tables.

The conversation stays the assistant's (``assistant.models``): an agent's reply is
appended to its event log as a bot message marked with who wrote it; the bot is paused
while people have the ticket (the assistant's handoff paused it) and resumed through
:func:`assistant.dialogue.store.resume_conversation` when the ticket goes back to the bot
or, after resolution, when the satisfaction question is answered or times out. Anything
that changes a conversation row drops the assistant's cached copy when it commits
(:func:`assistant.dialogue.store.forget_after_commit`), so the next turn reads what was
written here.

Driver messages reach a ticket through :func:`read_inbox`: a paused conversation only
records what the driver writes, so the inbox job reads each followed conversation's new
events from where it stopped (``support_ticket_conversation.last_event_id``). The
database is the only channel between the assistant and the desk, which works the same with
several processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from assistant.dialogue import store
from assistant.models import Conversation, ConversationEvent, Escalation, EscalationStatus
from chargedesk import errors
from chargedesk.settings import Settings
from support import routing, sla, webhooks
from support.models import (
    ACTIVE_STATUSES,
    AgentRole,
    CsatState,
    Priority,
    SlaPolicy,
    SupportAgent,
    SupportTeam,
    SupportTeamMember,
    Ticket,
    TicketConversation,
    TicketEscalation,
    TicketEvent,
    TicketStatus,
)

log = structlog.get_logger(__name__)

SYSTEM = "system"
TRANSCRIPT_LIMIT = 300
LIST_LIMIT = 5000


class SupportError(errors.DomainError):
    pass


class NotFound(SupportError, errors.NotFound):
    pass


class Conflict(SupportError, errors.Conflict):
    pass


class Forbidden(SupportError):
    status_code = 403


@dataclass
class Outgoing:
    """Messages to deliver on a conversation's own channel once the transaction that
    decided on them has committed."""

    channel: str
    sender: str
    conversation_id: int
    messages: list[dict[str, Any]]


# ---------------------------------------------------------------- the timeline


def add_event(session: Session, *, ticket: Ticket, kind: str, actor: str, now: datetime,
              text: str | None = None, data: dict[str, Any] | None = None) -> TicketEvent:
    row = TicketEvent(ticket_id=ticket.id or 0, kind=kind, actor=actor, text=text,
                      data=data or {}, created_at=now)
    session.add(row)
    ticket.updated_at = now
    session.add(ticket)
    return row


def summary(ticket: Ticket) -> dict[str, Any]:
    """What webhooks and lists say about a ticket."""
    return {
        "id": ticket.id, "status": str(ticket.status), "priority": str(ticket.priority),
        "category": str(ticket.category), "intent": ticket.intent, "reason": ticket.reason,
        "subject": ticket.subject, "channel": ticket.channel, "language": ticket.language,
        "conversation_id": ticket.conversation_id, "driver_id": ticket.driver_id,
        "team_id": ticket.team_id, "assignee_id": ticket.assignee_id,
        "created_at": ticket.created_at.isoformat(),
        "updated_at": ticket.updated_at.isoformat(),
    }


def get_ticket(session: Session, *, ticket_id: int, lock: bool = False) -> Ticket:
    query = select(Ticket).where(Ticket.id == ticket_id)
    if lock:
        query = query.with_for_update()
    ticket = session.exec(query).first()
    if ticket is None:
        raise NotFound(f"no ticket {ticket_id}")
    return ticket


def _active(ticket: Ticket) -> Ticket:
    if ticket.merged_into_id is not None:
        raise Conflict(f"ticket {ticket.id} was merged into ticket {ticket.merged_into_id}")
    return ticket


# ---------------------------------------------------------------- the assistant's side


def conversations_of(session: Session, *, ticket_id: int) -> list[Conversation]:
    rows = session.exec(
        select(Conversation)
        .join(TicketConversation, col(TicketConversation.conversation_id) == Conversation.id)
        .where(TicketConversation.ticket_id == ticket_id)
        .order_by(col(Conversation.id))).all()
    return list(rows)


def _latest_event_id(session: Session, conversation_id: int) -> int:
    found = session.exec(select(func.max(ConversationEvent.id)).where(
        ConversationEvent.conversation_id == conversation_id)).one()
    return int(found or 0)


def _changed(session: Session, conversation: Conversation) -> None:
    """The assistant's cached copy of this conversation is dropped at commit."""
    store.forget_after_commit(session, channel=conversation.channel,
                              sender=conversation.sender)


def pause(session: Session, *, conversation: Conversation, now: datetime) -> None:
    """The bot stops answering this conversation (people have it)."""
    if conversation.paused:
        return
    conversation.paused = True
    conversation.updated_at = now
    session.add(conversation)
    session.add(ConversationEvent(conversation_id=conversation.id or 0,
                                  session_number=conversation.session_number, type="pause",
                                  data={"event": "pause", "timestamp": now.timestamp()},
                                  timestamp=now))
    _changed(session, conversation)


def resume(session: Session, *, conversation: Conversation) -> None:
    """The bot answers this conversation again."""
    if conversation.paused:
        store.resume_conversation(session, channel=conversation.channel,
                                  sender=conversation.sender)


def append_message(
    session: Session, *, conversation: Conversation, text: str, by: str, ticket_id: int,
    now: datetime, settings: Settings, buttons: list[dict[str, Any]] | None = None,
    kind: str = "agent",
) -> ConversationEvent:
    """Write a message of ours into the conversation's log (a bot event marked with who
    sent it), so the transcript, the assistant's tracker and reports all see it; the
    conversation's session is kept alive as if the driver had written."""
    data: dict[str, Any] = {"buttons": buttons} if buttons else {}
    row = ConversationEvent(
        conversation_id=conversation.id or 0, session_number=conversation.session_number,
        type="bot", timestamp=now,
        data={"event": "bot", "text": text, "data": data, "timestamp": now.timestamp(),
              "metadata": {"support": {"by": by, "ticket_id": ticket_id, "kind": kind}}})
    session.add(row)
    expiry = now + timedelta(minutes=settings.conversation_expiry_minutes)
    if conversation.expires_at < expiry:
        conversation.expires_at = expiry
        session.add(conversation)
    _changed(session, conversation)
    session.flush()
    return row


def _message(text: str, buttons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"text": text, **({"buttons": buttons} if buttons else {})}


def _say(session: Session, *, ticket: Ticket, conversation: Conversation, text: str,
         now: datetime, settings: Settings, buttons: list[dict[str, Any]] | None = None,
         kind: str = "system") -> Outgoing:
    """A message from the desk itself (the satisfaction question, a hand-back)."""
    append_message(session, conversation=conversation, text=text, by=SYSTEM,
                   ticket_id=ticket.id or 0, now=now, settings=settings, buttons=buttons,
                   kind=kind)
    return Outgoing(conversation.channel, conversation.sender, conversation.id or 0,
                    [_message(text, buttons)])


def keep_alive(session: Session, *, now: datetime, settings: Settings) -> int:
    """Conversations of tickets people still hold (or whose rating is awaited) do not
    expire into a new bot session while they wait: their expiry moves ahead."""
    expiry = timedelta(minutes=settings.conversation_expiry_minutes)
    soon = now + timedelta(minutes=min(5, settings.conversation_expiry_minutes / 2))
    rows = session.exec(
        select(Conversation)
        .join(TicketConversation, col(TicketConversation.conversation_id) == Conversation.id)
        .join(Ticket, col(Ticket.id) == TicketConversation.ticket_id)
        .where(col(Conversation.paused), col(Conversation.expires_at) < soon,
               (col(Ticket.status).in_([TicketStatus.open, TicketStatus.snoozed]))
               | (col(Ticket.csat_state).in_([CsatState.asked, CsatState.comment])))).all()
    for conversation in rows:
        conversation.expires_at = now + expiry
        session.add(conversation)
        _changed(session, conversation)
    return len(rows)


def _escalation_status(session: Session, *, ticket: Ticket, status: EscalationStatus) -> None:
    """Keep the assistant's escalation rows in step with the ticket."""
    session.execute(
        update(Escalation)
        .where(col(Escalation.id).in_(select(TicketEscalation.escalation_id).where(
            TicketEscalation.ticket_id == ticket.id)),
            col(Escalation.status) != EscalationStatus.resolved)
        .values(status=status))


# ---------------------------------------------------------------- opening


@dataclass(frozen=True)
class Opened:
    ticket_id: int
    created: bool
    reopened: bool
    assignee_id: int | None


_SMALL_TALK = frozenset({"affirm", "deny", "greet", "thanks", "goodbye", "nlu_fallback",
                         "human_handoff", "out_of_scope"})


def _subject(escalation: Escalation) -> str:
    """The driver's own words for the problem: the message that carried the escalation's
    intent, else their latest request that was not small talk, else their latest."""
    said = [line for line in escalation.transcript or []
            if line.get("from") == "driver" and str(line.get("text") or "").strip()
            and not str(line.get("text")).strip().startswith("/")]
    for wanted in ([line for line in said if line.get("intent") == escalation.intent],
                   [line for line in reversed(said) if line.get("intent") not in _SMALL_TALK],
                   list(reversed(said))):
        if wanted:
            return str(wanted[0]["text"]).strip()[:200]
    return (escalation.intent or "handover").replace("_", " ")


def open_from_escalation(session: Session, *, escalation_id: int, now: datetime,
                         settings: Settings) -> Opened | None:
    """The ticket of an escalation: a new one, or the conversation's active ticket
    reopened (the bot handed over again). Safe to call twice for one escalation."""
    if session.get(TicketEscalation, escalation_id) is not None:
        return None
    escalation = session.get(Escalation, escalation_id)
    if escalation is None:
        raise NotFound(f"no escalation {escalation_id}")
    conversation = session.get(Conversation, escalation.conversation_id)
    assert conversation is not None
    link = session.get(TicketConversation, conversation.id)
    ticket = session.get(Ticket, link.ticket_id) if link is not None else None
    if ticket is not None and ticket.merged_into_id is not None:
        ticket = session.get(Ticket, ticket.merged_into_id)
    reopened = created = False
    if ticket is not None and ticket.status in ACTIVE_STATUSES:
        reopened = _reopen(session, ticket=ticket, escalation=escalation, now=now,
                           settings=settings)
    else:
        ticket = _create(session, escalation=escalation, conversation=conversation, now=now,
                         settings=settings)
        created = True
    session.add(TicketEscalation(escalation_id=escalation_id, ticket_id=ticket.id or 0,
                                 created_at=now))
    last = _latest_event_id(session, conversation.id or 0)
    link = session.get(TicketConversation, conversation.id)
    if link is None:
        session.add(TicketConversation(conversation_id=conversation.id or 0,
                                       ticket_id=ticket.id or 0, last_event_id=last))
    else:
        # A conversation whose earlier ticket was resolved (an SMS number is one
        # conversation for good) moves to the ticket now open for it.
        link.ticket_id = ticket.id or 0
        link.last_event_id = max(link.last_event_id, last)
        session.add(link)
    if ticket.assignee_id is None:
        _route(session, ticket=ticket, now=now, settings=settings)
    session.flush()
    if ticket.assignee_id is not None:
        _escalation_status(session, ticket=ticket, status=EscalationStatus.assigned)
    return Opened(ticket.id or 0, created, reopened, ticket.assignee_id)


def _create(session: Session, *, escalation: Escalation, conversation: Conversation,
            now: datetime, settings: Settings) -> Ticket:
    category = routing.category_of(escalation.intent)
    team = routing.team_for(session, category=category)
    driver_id = escalation.slots.get("driver_id") if escalation.slots.get("verified") else None
    ticket = Ticket(
        conversation_id=conversation.id or 0, channel=conversation.channel,
        driver_id=int(driver_id) if driver_id not in (None, "") else (
            conversation.driver_id if conversation.verified else None),
        status=TicketStatus.open, priority=routing.priority_of(str(escalation.reason),
                                                               escalation.intent),
        category=category, intent=escalation.intent, reason=str(escalation.reason),
        subject=_subject(escalation), language=conversation.language,
        team_id=team.id if team else None, created_at=now, updated_at=now)
    session.add(ticket)
    session.flush()
    sla.start_clocks(session, ticket=ticket, now=now)
    session.add(ticket)
    add_event(session, ticket=ticket, kind="created", actor=SYSTEM, now=now,
              text=f"handed over by the assistant ({escalation.reason})",
              data={"escalation_id": escalation.id, "reason": str(escalation.reason),
                    "intent": escalation.intent, "team_id": ticket.team_id})
    session.flush()
    webhooks.enqueue(session, event="conversation.created", data={"ticket": summary(ticket)},
                     now=now)
    return ticket


def _reopen(session: Session, *, ticket: Ticket, escalation: Escalation, now: datetime,
            settings: Settings) -> bool:
    previous = ticket.status
    ticket.reason = str(escalation.reason)
    if escalation.intent and escalation.intent != ticket.intent:
        ticket.intent = escalation.intent
    add_event(session, ticket=ticket, kind="escalated", actor=SYSTEM, now=now,
              text=f"handed over again by the assistant ({escalation.reason})",
              data={"escalation_id": escalation.id, "reason": str(escalation.reason)})
    if previous == TicketStatus.open:
        return False
    _set_status(session, ticket=ticket, status=TicketStatus.open, actor=SYSTEM, now=now)
    _restart_clocks(session, ticket=ticket, now=now)
    return True


def _restart_clocks(session: Session, *, ticket: Ticket, now: datetime) -> None:
    """A ticket back with people (reopened, escalated again): a first or next reply is
    due from now, and a resolution if none is running."""
    policy = session.get(SlaPolicy, ticket.sla_policy_id) if ticket.sla_policy_id else None
    if policy is None:
        return
    if ticket.first_response_at is None:
        ticket.first_response_due_at = sla.due(session, ticket=ticket, policy=policy,
                                               start=now,
                                               minutes=policy.first_response_minutes)
        ticket.sla_state = {k: v for k, v in ticket.sla_state.items()
                            if k != "first_response"}
    else:
        ticket.next_response_due_at = None
        sla.driver_wrote(session, ticket=ticket, at=now)
    if ticket.resolution_due_at is None:
        ticket.resolution_due_at = sla.due(session, ticket=ticket, policy=policy, start=now,
                                           minutes=policy.resolution_minutes)
        ticket.sla_state = {k: v for k, v in ticket.sla_state.items() if k != "resolution"}
    session.add(ticket)


def _route(session: Session, *, ticket: Ticket, now: datetime, settings: Settings,
           exclude: int | None = None) -> SupportAgent | None:
    """Give the ticket to its team's next online agent (round robin), if anyone is."""
    if ticket.team_id is None:
        return None
    # Locked: two tickets routed at once must not both go to the same "next" agent.
    team = session.exec(select(SupportTeam).where(SupportTeam.id == ticket.team_id)
                        .with_for_update()).first()
    if team is None:
        return None
    agent = routing.next_agent(session, team=team, now=now, settings=settings,
                               exclude=exclude)
    if agent is not None:
        _assign(session, ticket=ticket, agent=agent, actor=SYSTEM, now=now,
                why="round robin" if exclude is None else "reassigned: no first reply")
    return agent


def _assign(session: Session, *, ticket: Ticket, agent: SupportAgent | None, actor: str,
            now: datetime, why: str | None = None) -> None:
    before = ticket.assignee_id
    ticket.assignee_id = agent.id if agent is not None else None
    ticket.assigned_at = now if agent is not None else None
    session.add(ticket)
    add_event(session, ticket=ticket, kind="assigned", actor=actor, now=now,
              text=(f"assigned to {agent.name}" if agent else "unassigned")
              + (f" ({why})" if why else ""),
              data={"from": before, "to": ticket.assignee_id})
    session.flush()
    webhooks.enqueue(session, event="conversation.assigned",
                     data={"ticket": summary(ticket), "previous_assignee_id": before},
                     now=now)


# ---------------------------------------------------------------- lists


def list_tickets(
    session: Session, *, status: list[TicketStatus] | None = None, team_id: int | None = None,
    assignee_id: int | None = None, unassigned: bool = False, priority: Priority | None = None,
    channel: str | None = None, category: str | None = None, driver_id: int | None = None,
    breached: bool | None = None, include_merged: bool = False, limit: int = 100,
    offset: int = 0, supervisor_id: int | None = None,
) -> list[Ticket]:
    """Tickets by the filters, most urgent first: breached or soonest due, then priority,
    then oldest."""
    query = select(Ticket)
    if status:
        query = query.where(col(Ticket.status).in_(status))
    if team_id is not None:
        query = query.where(Ticket.team_id == team_id)
    if assignee_id is not None:
        query = query.where(Ticket.assignee_id == assignee_id)
    if unassigned:
        query = query.where(col(Ticket.assignee_id).is_(None))
    if priority is not None:
        query = query.where(Ticket.priority == priority)
    if channel:
        query = query.where(Ticket.channel == channel)
    if category:
        query = query.where(Ticket.category == category)
    if driver_id is not None:
        query = query.where(Ticket.driver_id == driver_id)
    if supervisor_id is not None:  # escalated to this supervisor after an SLA breach
        query = query.where(Ticket.supervisor_id == supervisor_id)
    if breached is not None:
        query = query.where(col(Ticket.escalated_at).is_not(None) if breached
                            else col(Ticket.escalated_at).is_(None))
    if not include_merged:
        query = query.where(col(Ticket.merged_into_id).is_(None))
    # Sorted by urgency here, not in SQL; the newest LIST_LIMIT are considered.
    rows = list(session.exec(query.order_by(col(Ticket.id).desc()).limit(LIST_LIMIT)).all())
    rank = {p: i for i, p in enumerate(("urgent", "high", "normal", "low"))}
    far = datetime.max.replace(tzinfo=rows[0].created_at.tzinfo) if rows else None

    def key(ticket: Ticket) -> tuple[Any, ...]:
        dues = [at for at in sla.targets(ticket).values()]
        return (ticket.status == TicketStatus.resolved, min(dues) if dues else far,
                rank.get(str(ticket.priority), 9), ticket.created_at)

    rows.sort(key=key)
    return rows[offset:offset + limit]


def agent_names(session: Session) -> dict[int, str]:
    return {a.id or 0: a.name for a in session.exec(select(SupportAgent)).all()}


def team_names(session: Session) -> dict[int, str]:
    return {t.id or 0: t.name for t in session.exec(select(SupportTeam)).all()}


def driver_names(session: Session, *, ids: set[int]) -> dict[int, str]:
    from billing_api.models import Driver

    if not ids:
        return {}
    return {d.id or 0: d.name for d in session.exec(select(Driver).where(
        col(Driver.id).in_(list(ids)))).all()}


def sla_view(ticket: Ticket) -> dict[str, Any]:
    running = sla.targets(ticket)
    return {name: {"due_at": at.isoformat(), "state": ticket.sla_state.get(name)}
            for name, at in running.items()} | {
        "breached": [k for k, v in ticket.sla_state.items() if v == "breached"]}


def list_view(session: Session, *, tickets: list[Ticket]) -> list[dict[str, Any]]:
    agents, teams = agent_names(session), team_names(session)
    drivers = driver_names(session, ids={t.driver_id for t in tickets if t.driver_id})
    return [summary(t) | {
        "assignee": agents.get(t.assignee_id or 0), "team": teams.get(t.team_id or 0),
        "driver": drivers.get(t.driver_id or 0), "sla": sla_view(t),
        "escalated_at": t.escalated_at.isoformat() if t.escalated_at else None,
        "supervisor_id": t.supervisor_id,
        "first_response_at": t.first_response_at.isoformat() if t.first_response_at else None,
        "csat_score": t.csat_score, "csat_state": str(t.csat_state),
        "snoozed_until": t.snoozed_until.isoformat() if t.snoozed_until else None,
        "resolved_at": t.resolved_at.isoformat() if t.resolved_at else None,
    } for t in tickets]


# ---------------------------------------------------------------- one ticket


def transcript(session: Session, *, ticket: Ticket) -> list[dict[str, Any]]:
    """Every message of the ticket's conversations, oldest first: the driver's, the
    bot's, agents' and the desk's own, each with its conversation and channel."""
    lines = []
    for conversation in conversations_of(session, ticket_id=ticket.id or 0):
        rows = session.exec(
            select(ConversationEvent)
            .where(ConversationEvent.conversation_id == conversation.id,
                   col(ConversationEvent.type).in_(["user", "bot"]))
            .order_by(col(ConversationEvent.id).desc()).limit(TRANSCRIPT_LIMIT)).all()
        for row in reversed(rows):
            data = row.data or {}
            marked = (data.get("metadata") or {}).get("support") or {}
            if row.type == "user":
                author, by = "driver", None
            elif marked:
                author, by = ("system" if marked.get("by") == SYSTEM else "agent",
                              marked.get("by"))
            else:
                author, by = "bot", None
            line: dict[str, Any] = {
                "id": row.id, "conversation_id": conversation.id,
                "channel": conversation.channel, "from": author, "by": by,
                "text": data.get("text"), "at": row.timestamp.isoformat()}
            if row.type == "user":
                line["intent"] = ((data.get("parse_data") or {}).get("intent") or {}).get("name")
            buttons = (data.get("data") or {}).get("buttons")
            if buttons:
                line["buttons"] = [b.get("title") for b in buttons]
            lines.append(line)
    lines.sort(key=lambda line: (line["at"], line["id"]))
    return lines


def _latest_escalation(session: Session, *, ticket_id: int) -> Escalation | None:
    return session.exec(
        select(Escalation)
        .join(TicketEscalation, col(TicketEscalation.escalation_id) == Escalation.id)
        .where(TicketEscalation.ticket_id == ticket_id)
        .order_by(col(Escalation.id).desc())).first()


def driver_context(session: Session, *, driver_id: int, settings: Settings,
                   today: date) -> dict[str, Any]:
    """The driver's profile, cards, recent sessions and invoices, and wallet."""
    from billing_api import invoicing, support
    from billing_api.models import DriverIdTag, PaymentMethod
    from billing_api.money import cents_to_decimal
    from station_api.models import IdTag

    driver = support.get_driver(session, driver_id=driver_id)
    tags = session.exec(select(DriverIdTag.id_tag).where(
        DriverIdTag.driver_id == driver_id).order_by(col(DriverIdTag.id_tag))).all()
    cards = []
    for tag in tags:
        row = session.get(IdTag, tag)
        cards.append({"id_tag": tag, "status": str(row.status) if row else "Unknown"})
    history = support.billing_history(session, driver_id=driver_id,
                                      since=today - timedelta(days=90),
                                      until=today + timedelta(days=1), settings=settings)
    sessions = [{
        "session_id": s.session_id, "station_id": s.station_id, "connector_id": s.connector_id,
        "start_at": s.start_at.isoformat(), "end_at": s.end_at.isoformat() if s.end_at else None,
        "status": s.status, "energy_kwh": str(s.energy_kwh) if s.energy_kwh is not None else None,
        "total_incl_vat": str(s.total_incl_vat) if s.total_incl_vat is not None else None,
        "invoice_number": s.invoice_number} for s in reversed(history.sessions[-10:])]
    invoices = []
    for invoice in invoicing.list_invoices(session, driver_id=driver_id, limit=10):
        credited = -sum(line.net_ore for line in invoicing.credited_lines(
            session, invoice_id=invoice.id or 0))
        invoices.append({
            "invoice_id": invoice.id, "number": invoice.display_number,
            "kind": str(invoice.kind), "issue_date": invoice.issue_date.isoformat(),
            "status": str(invoice.status), "currency": invoice.currency,
            "total": str(cents_to_decimal(invoice.total_ore)),
            "net": str(cents_to_decimal(invoice.net_ore)),
            "creditable_net": str(cents_to_decimal(max(0, invoice.net_ore - credited)))
            if str(invoice.kind) == "invoice" else "0.00"})
    context: dict[str, Any] = {
        "profile": {"id": driver.id, "name": driver.name, "email": driver.email,
                    "phone": driver.phone, "language": str(driver.language),
                    "payment_method": str(driver.payment_method),
                    "since": driver.created_at.date().isoformat()},
        "cards": cards, "sessions": sessions, "invoices": invoices}
    if driver.payment_method == PaymentMethod.prepaid:
        balance = support.balance(session, driver_id=driver_id, settings=settings)
        context["wallet"] = {"balance": str(balance.balance), "available": str(balance.available),
                             "currency": balance.currency}
    return context


def station_context(session: Session, *, station_id: str, online: bool) -> dict[str, Any]:
    """The station's registration, live connectors, running sessions, recent commands
    (who sent what, and how it went) and open problem reports."""
    from assistant.actions import flags
    from station_api import service as stations

    station = stations.get_station(session, station_id=station_id)
    connectors = [{"connector_id": c.connector_id, "status": c.status,
                   "error_code": c.error_code, "since": c.status_at.isoformat()}
                  for c in stations.list_connectors(session, station_ids=[station_id])]
    running = [{"transaction_id": tx.id, "connector_id": tx.connector_id, "id_tag": tx.id_tag,
                "start": tx.start_timestamp.isoformat()}
               for tx in stations.list_transactions(session, station_id=station_id,
                                                    active=True, limit=10)]
    recent = [{"transaction_id": tx.id, "connector_id": tx.connector_id, "id_tag": tx.id_tag,
               "start": tx.start_timestamp.isoformat(),
               "stop": tx.stop_timestamp.isoformat() if tx.stop_timestamp else None}
              for tx in stations.list_transactions(session, station_id=station_id, limit=5)]
    commands = [{"id": c.id, "action": c.action, "requested_by": c.requested_by,
                 "outcome": str(c.outcome), "reason": c.reason, "payload": c.payload,
                 "at": c.requested_at.isoformat()}
                for c in stations.list_commands(session, station_id=station_id, limit=10)]
    reports = [{"id": f.id, "connector_id": f.connector_id, "description": f.description,
                "reports": f.reports, "at": f.last_reported_at.isoformat()}
               for f in flags.list_flags(session) if f.station_id == station_id]
    return {"id": station.id, "site_id": station.site_id, "online": online,
            "registration": str(station.registration),
            "last_heartbeat_at": station.last_heartbeat_at.isoformat()
            if station.last_heartbeat_at else None,
            "vendor": station.vendor, "model": station.model,
            "firmware": station.firmware_version, "connectors": connectors,
            "active_transactions": running, "recent_transactions": recent,
            "commands": commands, "problem_reports": reports}


def ticket_detail(session: Session, *, ticket_id: int, settings: Settings, now: datetime,
                  online: Any = None) -> dict[str, Any]:
    """A ticket with everything an agent needs on one screen. ``online`` tells whether a
    station is connected (the central system knows; the database only roughly)."""
    ticket = get_ticket(session, ticket_id=ticket_id)
    escalation = _latest_escalation(session, ticket_id=ticket_id)
    slots = dict(escalation.slots) if escalation else {}
    detail = list_view(session, tickets=[ticket])[0]
    detail["transcript"] = transcript(session, ticket=ticket)
    detail["conversations"] = [
        {"id": c.id, "channel": c.channel, "sender": c.sender, "paused": c.paused,
         "language": c.language} for c in conversations_of(session, ticket_id=ticket_id)]
    detail["escalation"] = None if escalation is None else {
        "id": escalation.id, "reason": str(escalation.reason), "intent": escalation.intent,
        "slots": {k: v for k, v in slots.items() if v not in (None, "", [], {})},
        "at": escalation.created_at.isoformat()}
    detail["events"] = [
        {"id": e.id, "kind": e.kind, "actor": e.actor, "text": e.text, "data": e.data,
         "at": e.created_at.isoformat()}
        for e in session.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket_id)
                              .order_by(col(TicketEvent.id))).all()]
    detail["csat"] = {"state": str(ticket.csat_state), "score": ticket.csat_score,
                      "comment": ticket.csat_comment}
    detail["driver_context"] = None
    if ticket.driver_id is not None:
        try:
            detail["driver_context"] = driver_context(
                session, driver_id=ticket.driver_id, settings=settings,
                today=now.astimezone(_zone(settings)).date())
        except Exception:
            log.exception("driver context unavailable", ticket_id=ticket_id)
    station_id = str(slots.get("station_id") or "").upper() or None
    detail["station"] = None
    if station_id:
        try:
            detail["station"] = station_context(
                session, station_id=station_id,
                online=bool(online(station_id)) if online else False)
        except Exception:
            log.info("station context unavailable", station_id=station_id)
    connector = slots.get("connector")
    detail["connector"] = int(float(connector)) if connector not in (None, "") else None
    detail["other_tickets"] = [
        {"id": t.id, "status": str(t.status), "channel": t.channel, "subject": t.subject,
         "created_at": t.created_at.isoformat()}
        for t in (list_tickets(session, driver_id=ticket.driver_id, limit=20)
                  if ticket.driver_id else []) if t.id != ticket.id]
    return detail


def _zone(settings: Settings) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(settings.time_zone)


# ---------------------------------------------------------------- replies and notes


@dataclass(frozen=True)
class ReplyTarget:
    ticket_id: int
    conversation_id: int
    channel: str
    sender: str


def reply_target(session: Session, *, ticket_id: int, conversation_id: int | None = None
                 ) -> ReplyTarget:
    """Where a reply on this ticket goes: the conversation asked for (one of the
    ticket's), else the one the driver wrote in last."""
    ticket = _active(get_ticket(session, ticket_id=ticket_id))
    if ticket.status not in (TicketStatus.open, TicketStatus.snoozed):
        raise Conflict(f"ticket {ticket_id} is {ticket.status}: reopen it to reply")
    conversations = conversations_of(session, ticket_id=ticket_id)
    if conversation_id is not None:
        chosen = next((c for c in conversations if c.id == conversation_id), None)
        if chosen is None:
            raise NotFound(f"conversation {conversation_id} is not on ticket {ticket_id}")
    else:
        latest = session.exec(
            select(ConversationEvent.conversation_id)
            .where(col(ConversationEvent.conversation_id).in_([c.id for c in conversations]),
                   ConversationEvent.type == "user")
            .order_by(col(ConversationEvent.id).desc())).first()
        chosen = next((c for c in conversations if c.id == latest), None) or next(
            (c for c in conversations if c.id == ticket.conversation_id), conversations[0])
    return ReplyTarget(ticket_id, chosen.id or 0, chosen.channel, chosen.sender)


def record_reply(session: Session, *, target: ReplyTarget, text: str, actor: Any,
                 now: datetime, settings: Settings) -> dict[str, Any]:
    """An agent's reply was delivered: into the transcript, the SLA clocks, webhooks."""
    ticket = get_ticket(session, ticket_id=target.ticket_id, lock=True)
    conversation = session.get(Conversation, target.conversation_id)
    assert conversation is not None
    row = append_message(session, conversation=conversation, text=text, by=actor.label,
                         ticket_id=ticket.id or 0, now=now, settings=settings)
    first = ticket.first_response_at is None
    sla.agent_replied(ticket, at=now)
    ticket.last_agent_message_at = now
    if ticket.assignee_id is None and actor.agent_id is not None:
        agent = session.get(SupportAgent, actor.agent_id)
        _assign(session, ticket=ticket, agent=agent, actor=actor.label, now=now,
                why="replied")
    add_event(session, ticket=ticket, kind="reply", actor=actor.label, now=now, text=text,
              data={"conversation_id": conversation.id, "channel": conversation.channel,
                    "first_response": first})
    session.flush()
    webhooks.enqueue(session, event="message.created", now=now, data={
        "ticket": summary(ticket),
        "message": {"id": row.id, "from": "agent", "by": actor.label, "text": text,
                    "conversation_id": conversation.id, "channel": conversation.channel,
                    "at": now.isoformat()}})
    return {"message_id": row.id, "conversation_id": conversation.id,
            "channel": conversation.channel}


def add_note(session: Session, *, ticket_id: int, text: str, actor: Any, now: datetime
             ) -> TicketEvent:
    """An internal note: agents see it, the driver never does."""
    ticket = get_ticket(session, ticket_id=ticket_id)
    row = add_event(session, ticket=ticket, kind="note", actor=actor.label, now=now,
                    text=text)
    session.flush()
    return row


# ---------------------------------------------------------------- assignment


def assign(session: Session, *, ticket_id: int, actor: Any, now: datetime, settings: Settings,
           agent_id: int | None = None, team_id: int | None = None,
           claim: bool = False) -> Ticket:
    """Claim (for oneself), assign to an agent, or move to a team (its queue, or its next
    online agent). Agents may claim, give up their own and move tickets between teams;
    assigning someone else takes a supervisor or an operator."""
    ticket = _active(get_ticket(session, ticket_id=ticket_id, lock=True))
    if ticket.status == TicketStatus.resolved:
        raise Conflict(f"ticket {ticket_id} is resolved")
    lead = actor.role in ("supervisor", "operator")
    if claim:
        if actor.agent_id is None:
            raise Conflict("an API key is not an agent: assign to an agent by id")
        agent_id = actor.agent_id
    if team_id is not None and team_id != ticket.team_id:
        team = session.get(SupportTeam, team_id)
        if team is None:
            raise NotFound(f"no team {team_id}")
        before = ticket.team_id
        ticket.team_id = team_id
        add_event(session, ticket=ticket, kind="team", actor=actor.label, now=now,
                  text=f"moved to {team.name}", data={"from": before, "to": team_id})
        if agent_id is None:
            if ticket.assignee_id is not None:
                _assign(session, ticket=ticket, agent=None, actor=actor.label, now=now,
                        why="moved to another team")
            _route(session, ticket=ticket, now=now, settings=settings)
            return ticket
    if agent_id is None:
        if ticket.assignee_id is not None and ticket.assignee_id != actor.agent_id and not lead:
            raise Forbidden("only a supervisor may take a ticket from another agent")
        if ticket.assignee_id is not None:
            _assign(session, ticket=ticket, agent=None, actor=actor.label, now=now)
        return ticket
    if agent_id != actor.agent_id and not lead:
        raise Forbidden("assigning a ticket to someone else takes a supervisor")
    if (ticket.assignee_id not in (None, actor.agent_id) and not lead):
        raise Forbidden("the ticket is someone else's: ask a supervisor to reassign it")
    agent = session.get(SupportAgent, agent_id)
    if agent is None or not agent.active:
        raise NotFound(f"no active agent {agent_id}")
    if ticket.assignee_id != agent.id:
        _assign(session, ticket=ticket, agent=agent, actor=actor.label, now=now,
                why="claimed" if claim else None)
        _escalation_status(session, ticket=ticket, status=EscalationStatus.assigned)
    return ticket


# ---------------------------------------------------------------- status


_CSAT_ASK = {
    "sv": "Ditt ärende är löst. Hur nöjd är du med hjälpen du fick? Svara med en siffra från "
          "1 (inte alls nöjd) till 5 (mycket nöjd).",
    "en": "Your case is resolved. How satisfied are you with the help you got? Reply with a "
          "number from 1 (not at all) to 5 (very satisfied).",
}
_CSAT_COMMENT = {
    "sv": ("Tack! Vill du berätta mer? Skriv en kommentar här, eller tryck Hoppa över.",
           "Hoppa över"),
    "en": ("Thank you! Anything you would like to add? Write a comment here, or press Skip.",
           "Skip"),
}
# On SMS (and a call, answered by text) there are no buttons: the channel would list
# "1) 1 ... 5) 5" under a question that already asks for a digit, doubling the text, so the
# question goes alone and the comment prompt says how to skip in words.
_TYPED_CHANNELS = frozenset({"sms", "voice"})
_CSAT_COMMENT_TYPED = {
    "sv": "Tack! Vill du berätta mer? Svara med en kommentar, eller NEJ för att hoppa över.",
    "en": "Thank you! Anything you would like to add? Reply with a comment, or NO to skip.",
}
_CSAT_THANKS = {
    "sv": "Tack för ditt svar! Nu svarar vår assistent igen om du behöver något mer.",
    "en": "Thanks for your feedback! Our assistant answers again if you need anything else.",
}
_HANDED_BACK = {
    "sv": "Jag lämnar tillbaka dig till vår digitala assistent. Skriv om du behöver något mer.",
    "en": "I'm handing you back to our digital assistant. Write if you need anything else.",
}
CSAT_INTENT, CSAT_SKIP_INTENT, CSAT_ENTITY = "csat", "csat_skip", "csat_score"


def _lang(conversation: Conversation) -> str:
    return conversation.language if conversation.language in ("sv", "en") else "sv"


def csat_buttons(channel: str = "web") -> list[dict[str, Any]] | None:
    """The 1-5 buttons of the satisfaction question; None where they are typed."""
    if channel in _TYPED_CHANNELS:
        return None
    return [{"title": str(n), "payload": f'/{CSAT_INTENT}{{"{CSAT_ENTITY}": {n}}}'}
            for n in range(1, 6)]


def _csat_comment_prompt(channel: str, language: str
                         ) -> tuple[str, list[dict[str, Any]] | None]:
    if channel in _TYPED_CHANNELS:
        return _CSAT_COMMENT_TYPED[language], None
    prompt, skip = _CSAT_COMMENT[language]
    return prompt, [{"title": skip, "payload": f"/{CSAT_SKIP_INTENT}"}]


def _set_status(session: Session, *, ticket: Ticket, status: TicketStatus, actor: str,
                now: datetime, text: str | None = None) -> None:
    before = ticket.status
    if before == status:
        return
    ticket.status = status
    add_event(session, ticket=ticket, kind="status", actor=actor, now=now,
              text=text or f"{before} → {status}", data={"from": str(before), "to": str(status)})
    session.flush()
    webhooks.enqueue(session, event="conversation.status_changed", now=now,
                     data={"ticket": summary(ticket), "previous_status": str(before)})


def _reply_conversation(session: Session, *, ticket: Ticket) -> Conversation:
    target = reply_target_any(session, ticket=ticket)
    conversation = session.get(Conversation, target)
    assert conversation is not None
    return conversation


def reply_target_any(session: Session, *, ticket: Ticket) -> int:
    """The conversation the driver wrote in last (any status)."""
    ids = [c.id for c in conversations_of(session, ticket_id=ticket.id or 0)]
    latest = session.exec(
        select(ConversationEvent.conversation_id)
        .where(col(ConversationEvent.conversation_id).in_(ids),
               ConversationEvent.type == "user")
        .order_by(col(ConversationEvent.id).desc())).first()
    return int(latest or ticket.conversation_id)


def set_status(
    session: Session, *, ticket_id: int, status: TicketStatus, actor: Any, now: datetime,
    settings: Settings, snooze_until: datetime | None = None, csat: bool = True,
    deliverable: Any = None, catch_up: bool = True,
) -> list[Outgoing]:
    """Open, snooze, hand back to the bot (pending) or resolve. Returns the messages to
    send the driver: the satisfaction question after resolving, a note when handed back.

    ``deliverable(channel)`` says whether a channel can take messages here; a resolved
    ticket whose channel cannot goes back to the bot at once, without a question. Opening a
    ticket the bot had skips what the bot already answered (``catch_up``)."""
    ticket = _active(get_ticket(session, ticket_id=ticket_id, lock=True))
    label = actor.label if not isinstance(actor, str) else actor
    out: list[Outgoing] = []
    if status == ticket.status and status != TicketStatus.snoozed:
        return out
    conversations = conversations_of(session, ticket_id=ticket_id)
    if status == TicketStatus.snoozed:
        if snooze_until is None or snooze_until <= now:
            raise SupportError("snoozing needs a time in the future")
        if ticket.status not in (TicketStatus.open, TicketStatus.snoozed):
            raise Conflict(f"only an open ticket can be snoozed, not a {ticket.status} one")
        ticket.snoozed_until = snooze_until
        _set_status(session, ticket=ticket, status=status, actor=label, now=now,
                    text=f"snoozed until {snooze_until.isoformat()}")
        return out
    ticket.snoozed_until = None
    if status == TicketStatus.open:
        for conversation in conversations:
            pause(session, conversation=conversation, now=now)
        was = ticket.status
        if was == TicketStatus.resolved:
            ticket.resolved_at = ticket.resolved_by = None
            if ticket.csat_state in (CsatState.asked, CsatState.comment):
                ticket.csat_state = CsatState.cancelled
        _set_status(session, ticket=ticket, status=status, actor=label, now=now)
        if was in (TicketStatus.resolved, TicketStatus.pending):
            _restart_clocks(session, ticket=ticket, now=now)
            if catch_up:
                for link in session.exec(select(TicketConversation).where(
                        TicketConversation.ticket_id == ticket_id)).all():
                    link.last_event_id = max(link.last_event_id,
                                             _latest_event_id(session, link.conversation_id))
                    session.add(link)
        return out
    if status == TicketStatus.pending:
        sla.stop_clocks(ticket)
        _set_status(session, ticket=ticket, status=status, actor=label, now=now,
                    text="handed back to the bot")
        conversation = _reply_conversation(session, ticket=ticket)
        out.append(_say(session, ticket=ticket, conversation=conversation,
                        text=_HANDED_BACK[_lang(conversation)], now=now, settings=settings,
                        kind="handback"))
        for each in conversations:
            resume(session, conversation=each)
        return out
    # resolved
    sla.stop_clocks(ticket)
    ticket.resolved_at = now
    ticket.resolved_by = label
    _set_status(session, ticket=ticket, status=status, actor=label, now=now)
    _escalation_status(session, ticket=ticket, status=EscalationStatus.resolved)
    conversation = _reply_conversation(session, ticket=ticket)
    can_ask = csat and ticket.csat_state in (CsatState.none, CsatState.cancelled,
                                             CsatState.expired) and (
        deliverable is None or deliverable(conversation.channel))
    if can_ask and ticket.csat_score is None:
        ticket.csat_state = CsatState.asked
        ticket.csat_asked_at = now
        out.append(_say(session, ticket=ticket, conversation=conversation,
                        text=_CSAT_ASK[_lang(conversation)],
                        buttons=csat_buttons(conversation.channel), now=now,
                        settings=settings, kind="csat"))
        add_event(session, ticket=ticket, kind="csat_asked", actor=SYSTEM, now=now,
                  data={"conversation_id": conversation.id})
        # The bot stays paused where the question was asked, so the answer reaches us.
        for each in conversations:
            if each.id != conversation.id:
                resume(session, conversation=each)
    else:
        for each in conversations:
            resume(session, conversation=each)
    session.add(ticket)
    return out


# ---------------------------------------------------------------- merging


def merge(session: Session, *, ticket_id: int, into_id: int, actor: Any, now: datetime
          ) -> Ticket:
    """Fold ``ticket_id`` into ``into_id`` (the same driver's): its conversations follow
    the other ticket, it is resolved as merged."""
    if ticket_id == into_id:
        raise SupportError("a ticket cannot be merged into itself")
    source = _active(get_ticket(session, ticket_id=ticket_id, lock=True))
    target = _active(get_ticket(session, ticket_id=into_id, lock=True))
    if source.driver_id is None or source.driver_id != target.driver_id:
        raise Conflict("only tickets of the same (identified) driver can be merged")
    if target.status == TicketStatus.resolved:
        raise Conflict(f"ticket {into_id} is resolved: reopen it first")
    for link in session.exec(select(TicketConversation).where(
            TicketConversation.ticket_id == ticket_id)).all():
        link.ticket_id = into_id
        session.add(link)
        if target.status != TicketStatus.pending:
            conversation = session.get(Conversation, link.conversation_id)
            if conversation is not None:
                pause(session, conversation=conversation, now=now)
    for link in session.exec(select(TicketEscalation).where(
            TicketEscalation.ticket_id == ticket_id)).all():
        link.ticket_id = into_id
        session.add(link)
    source.merged_into_id = into_id
    sla.stop_clocks(source)
    source.resolved_at = now
    source.resolved_by = actor.label
    _set_status(session, ticket=source, status=TicketStatus.resolved, actor=actor.label,
                now=now, text=f"merged into ticket {into_id}")
    add_event(session, ticket=target, kind="merged", actor=actor.label, now=now,
              text=f"ticket {ticket_id} merged into this one", data={"from": ticket_id})
    if source.priority != target.priority and \
            _PRIORITY_RANK[source.priority] > _PRIORITY_RANK[target.priority]:
        target.priority = source.priority
    for at in ("first_response_due_at", "resolution_due_at"):
        mine, theirs = getattr(target, at), getattr(source, at)
        if theirs is not None and (mine is None or theirs < mine):
            setattr(target, at, theirs)
    session.add(target)
    session.flush()
    return target


_PRIORITY_RANK = {Priority.low: 0, Priority.normal: 1, Priority.high: 2, Priority.urgent: 3}


# ---------------------------------------------------------------- the driver's messages


# "4", "4/5", "5 great help", "1 - slow" (a hyphen, en or em dash), "2: too slow".
_SCORE = re.compile(r"^\s*([1-5])(?:\s*(?:/|av|of)\s*5)?(?![\d.,])[\s.,:;!)\-\u2013\u2014]*(.*)$",
                    re.S)
_SKIP = {"nej", "nej tack", "no", "no thanks", "skip", "hoppa över", "inget", "nothing"}


def _csat_answer(event: dict[str, Any]) -> tuple[str, int | None, str | None]:
    """("score", n, comment?), ("skip", None, None) or ("text", None, text)."""
    text = str(event.get("text") or "").strip()
    parse = event.get("parse_data") or {}
    intent = (parse.get("intent") or {}).get("name")
    if intent == CSAT_INTENT:
        for entity in parse.get("entities") or []:
            if entity.get("entity") == CSAT_ENTITY:
                try:
                    score = int(entity.get("value"))
                except (TypeError, ValueError):
                    break
                if 1 <= score <= 5:
                    return "score", score, None
    if intent == CSAT_SKIP_INTENT or text.lower().strip(" .!") in _SKIP:
        return "skip", None, None
    match = _SCORE.match(text)
    if match:
        return "score", int(match.group(1)), match.group(2).strip() or None
    return "text", None, text


def read_inbox(session: Session, *, now: datetime, settings: Settings) -> list[Outgoing]:
    """Take in what drivers wrote on followed conversations since last time: on an open
    or snoozed ticket a message (reopening a snoozed one, starting the next-response
    clock); on a resolved one awaiting its rating, the score and comment."""
    rows = session.exec(
        select(TicketConversation, Ticket)
        .join(Ticket, col(Ticket.id) == TicketConversation.ticket_id)
        .where((col(Ticket.status).in_([TicketStatus.open, TicketStatus.snoozed]))
               | (col(Ticket.csat_state).in_([CsatState.asked, CsatState.comment])))
        .order_by(col(Ticket.id))).all()
    out: list[Outgoing] = []
    for link, ticket in rows:
        events = session.exec(
            select(ConversationEvent)
            .where(ConversationEvent.conversation_id == link.conversation_id,
                   col(ConversationEvent.id) > link.last_event_id)
            .order_by(col(ConversationEvent.id))).all()
        if not events:
            continue
        link.last_event_id = events[-1].id or link.last_event_id
        session.add(link)
        conversation = session.get(Conversation, link.conversation_id)
        assert conversation is not None
        for event in events:
            if event.type != "user":
                continue
            if ticket.status == TicketStatus.resolved:
                out.extend(_csat_reply(session, ticket=ticket, conversation=conversation,
                                       event=event, now=now, settings=settings))
            if ticket.status in (TicketStatus.open, TicketStatus.snoozed):
                _driver_message(session, ticket=ticket, conversation=conversation,
                                event=event, now=now)
    return out


def _driver_message(session: Session, *, ticket: Ticket, conversation: Conversation,
                    event: ConversationEvent, now: datetime) -> None:
    at = event.timestamp
    ticket.last_driver_message_at = at
    if ticket.status == TicketStatus.snoozed:
        ticket.snoozed_until = None
        _set_status(session, ticket=ticket, status=TicketStatus.open,
                    actor=f"driver:{ticket.driver_id}" if ticket.driver_id else "driver",
                    now=now, text="the driver wrote: back in the queue")
    sla.driver_wrote(session, ticket=ticket, at=at)
    session.add(ticket)
    session.flush()
    webhooks.enqueue(session, event="message.created", now=now, data={
        "ticket": summary(ticket),
        "message": {"id": event.id, "from": "driver", "text": event.data.get("text"),
                    "conversation_id": conversation.id, "channel": conversation.channel,
                    "at": at.isoformat()}})


def _csat_reply(session: Session, *, ticket: Ticket, conversation: Conversation,
                event: ConversationEvent, now: datetime, settings: Settings) -> list[Outgoing]:
    if ticket.csat_state not in (CsatState.asked, CsatState.comment):
        return []
    kind, score, text = _csat_answer(event.data or {})
    language = _lang(conversation)
    driver = f"driver:{ticket.driver_id}" if ticket.driver_id else "driver"
    if ticket.csat_state == CsatState.asked:
        if kind == "score":
            ticket.csat_score = score
            add_event(session, ticket=ticket, kind="csat", actor=driver, now=now,
                      text=f"rated {score}/5", data={"score": score})
            if text:
                ticket.csat_comment = text[:1000]
                finished = _finish_csat(session, ticket=ticket, conversation=conversation,
                                        now=now, settings=settings)
                _rating_message(session, ticket=ticket, conversation=conversation,
                                event=event, now=now)
                return [finished]
            ticket.csat_state = CsatState.comment
            session.add(ticket)
            prompt, buttons = _csat_comment_prompt(conversation.channel, language)
            _rating_message(session, ticket=ticket, conversation=conversation, event=event,
                            now=now)
            return [_say(session, ticket=ticket, conversation=conversation, text=prompt,
                         buttons=buttons, now=now, settings=settings, kind="csat")]
        if kind == "skip":
            ticket.csat_state = CsatState.expired
            finished = _finish_csat(session, ticket=ticket, conversation=conversation,
                                    now=now, settings=settings)
            _rating_message(session, ticket=ticket, conversation=conversation, event=event,
                            now=now)
            return [finished]
        # Not an answer: the driver still has a problem. The ticket opens again (and the
        # message is announced as any driver's message on an open ticket).
        ticket.csat_state = CsatState.cancelled
        set_status(session, ticket_id=ticket.id or 0, status=TicketStatus.open,
                   actor=driver, now=now, settings=settings, catch_up=False)
        return []
    # waiting for a comment
    if kind == "score" and not text:
        ticket.csat_score = score
        add_event(session, ticket=ticket, kind="csat", actor=driver, now=now,
                  text=f"rated {score}/5", data={"score": score})
        session.add(ticket)
        _rating_message(session, ticket=ticket, conversation=conversation, event=event,
                        now=now)
        return []
    if kind == "text" or (kind == "score" and text):
        ticket.csat_comment = (event.data.get("text") or "").strip()[:1000]
    finished = _finish_csat(session, ticket=ticket, conversation=conversation, now=now,
                            settings=settings)
    _rating_message(session, ticket=ticket, conversation=conversation, event=event, now=now)
    return [finished]


def _rating_message(session: Session, *, ticket: Ticket, conversation: Conversation,
                    event: ConversationEvent, now: datetime) -> None:
    """The driver's answer to the rating question is a message on the ticket like any
    other: ``message.created``, with the rating as it now stands."""
    session.add(ticket)
    session.flush()
    webhooks.enqueue(session, event="message.created", now=now, data={
        "ticket": summary(ticket),
        "message": {"id": event.id, "from": "driver", "text": event.data.get("text"),
                    "conversation_id": conversation.id, "channel": conversation.channel,
                    "at": event.timestamp.isoformat(),
                    "csat": {"state": str(ticket.csat_state), "score": ticket.csat_score,
                             "comment": ticket.csat_comment}}})


def _finish_csat(session: Session, *, ticket: Ticket, conversation: Conversation,
                 now: datetime, settings: Settings) -> Outgoing:
    if ticket.csat_score is not None:
        ticket.csat_state = CsatState.done
    if ticket.csat_comment:
        add_event(session, ticket=ticket, kind="csat_comment", actor=SYSTEM, now=now,
                  text=ticket.csat_comment)
    session.add(ticket)
    message = _say(session, ticket=ticket, conversation=conversation,
                   text=_CSAT_THANKS[_lang(conversation)], now=now, settings=settings,
                   kind="csat")
    for each in conversations_of(session, ticket_id=ticket.id or 0):
        resume(session, conversation=each)
    return message


# ---------------------------------------------------------------- timers


@dataclass
class TimerReport:
    warned: int = 0
    breached: int = 0
    reassigned: int = 0
    routed: int = 0
    woken: int = 0
    csat_expired: int = 0
    auto_resolved: int = 0
    kept_alive: int = 0
    outgoing: list[Outgoing] = field(default_factory=list)


def run_timers(session: Session, *, now: datetime, settings: Settings) -> TimerReport:
    """Everything that happens because time passed: snoozes end, SLA warnings and
    breaches (escalated to a supervisor), reassignment when nobody replied in time,
    routing of queued tickets to agents who came online, unanswered satisfaction
    questions, tickets the bot kept."""
    report = TimerReport()
    for ticket in session.exec(select(Ticket).where(
            Ticket.status == TicketStatus.snoozed,
            col(Ticket.snoozed_until) <= now)).all():
        ticket.snoozed_until = None
        _set_status(session, ticket=ticket, status=TicketStatus.open, actor=SYSTEM, now=now,
                    text="snooze ended")
        report.woken += 1
    _sla(session, now=now, settings=settings, report=report)
    _reassign(session, now=now, settings=settings, report=report)
    for ticket in session.exec(select(Ticket).where(
            Ticket.status == TicketStatus.open, col(Ticket.assignee_id).is_(None),
            col(Ticket.merged_into_id).is_(None)).order_by(col(Ticket.created_at))).all():
        if _route(session, ticket=ticket, now=now, settings=settings) is not None:
            _escalation_status(session, ticket=ticket, status=EscalationStatus.assigned)
            report.routed += 1
    timeout = now - timedelta(minutes=settings.support_csat_timeout_minutes)
    for ticket in session.exec(select(Ticket).where(
            col(Ticket.csat_state).in_([CsatState.asked, CsatState.comment]),
            col(Ticket.csat_asked_at) <= timeout)).all():
        ticket.csat_state = CsatState.done if ticket.csat_score else CsatState.expired
        session.add(ticket)
        add_event(session, ticket=ticket, kind="csat_timeout", actor=SYSTEM, now=now,
                  text="no answer to the satisfaction question")
        for conversation in conversations_of(session, ticket_id=ticket.id or 0):
            resume(session, conversation=conversation)
        report.csat_expired += 1
    stale = now - timedelta(hours=settings.support_pending_resolve_hours)
    for ticket in session.exec(select(Ticket).where(
            Ticket.status == TicketStatus.pending, col(Ticket.updated_at) <= stale)).all():
        ticket.resolved_at = now
        ticket.resolved_by = SYSTEM
        _set_status(session, ticket=ticket, status=TicketStatus.resolved, actor=SYSTEM,
                    now=now, text="the bot kept it: resolved")
        _escalation_status(session, ticket=ticket, status=EscalationStatus.resolved)
        report.auto_resolved += 1
    report.kept_alive = keep_alive(session, now=now, settings=settings)
    return report


def _sla(session: Session, *, now: datetime, settings: Settings, report: TimerReport) -> None:
    for finding in sla.check(session, now=now):
        ticket = get_ticket(session, ticket_id=finding.ticket_id)
        ticket.sla_state = {**ticket.sla_state, finding.target: finding.level}
        target = finding.target.replace("_", " ")
        if finding.level == "warned":
            add_event(session, ticket=ticket, kind="sla_warning", actor=SYSTEM, now=now,
                      text=f"{target} due {finding.due_at.isoformat()}",
                      data={"target": finding.target, "due_at": finding.due_at.isoformat(),
                            "assignee_id": ticket.assignee_id})
            report.warned += 1
            continue
        report.breached += 1
        supervisor = routing.supervisor_for(session, team_id=ticket.team_id, now=now,
                                            settings=settings)
        first = ticket.escalated_at is None
        if first:
            ticket.escalated_at = now
            ticket.priority = routing.raise_priority(ticket.priority)
        if supervisor is not None:
            ticket.supervisor_id = supervisor.id
        add_event(session, ticket=ticket, kind="sla_breach", actor=SYSTEM, now=now,
                  text=f"{target} missed (due {finding.due_at.isoformat()}); escalated to "
                       f"{supervisor.name if supervisor else 'no supervisor (none exists)'}",
                  data={"target": finding.target, "due_at": finding.due_at.isoformat(),
                        "supervisor_id": ticket.supervisor_id,
                        "priority": str(ticket.priority)})
        session.flush()
        webhooks.enqueue(session, event="conversation.sla_breached", now=now, data={
            "ticket": summary(ticket), "target": finding.target,
            "due_at": finding.due_at.isoformat(), "supervisor_id": ticket.supervisor_id})


def _reassign(session: Session, *, now: datetime, settings: Settings,
              report: TimerReport) -> None:
    """An assigned ticket without a first reply within its team's time goes to the next
    online agent; if nobody else is online and its agent is gone, back to the queue."""
    rows = session.exec(
        select(Ticket, SupportTeam)
        .join(SupportTeam, col(SupportTeam.id) == Ticket.team_id)
        .where(Ticket.status == TicketStatus.open, col(Ticket.assignee_id).is_not(None),
               col(Ticket.first_response_at).is_(None))).all()
    for ticket, team in rows:
        if ticket.assigned_at is None or \
                now - ticket.assigned_at < timedelta(minutes=team.reassign_after_minutes):
            continue
        current = ticket.assignee_id
        nxt = routing.next_agent(session, team=team, now=now, settings=settings,
                                 exclude=current)
        if nxt is not None:
            ticket.reassignments += 1
            _assign(session, ticket=ticket, agent=nxt, actor=SYSTEM, now=now,
                    why=f"no first reply in {team.reassign_after_minutes} min")
            report.reassigned += 1
            continue
        agent = session.get(SupportAgent, current) if current else None
        if agent is None or not routing.is_online(agent, now=now, settings=settings):
            ticket.reassignments += 1
            _assign(session, ticket=ticket, agent=None, actor=SYSTEM, now=now,
                    why="its agent went offline without replying")
            report.reassigned += 1


# ---------------------------------------------------------------- teams, agents


def set_presence(session: Session, *, agent_id: int, online: bool, now: datetime) -> None:
    agent = session.get(SupportAgent, agent_id)
    if agent is None:
        raise NotFound(f"no agent {agent_id}")
    agent.online = online
    agent.last_seen_at = now
    session.add(agent)


def agents_view(session: Session, *, now: datetime, settings: Settings) -> list[dict[str, Any]]:
    members: dict[int, list[int]] = {}
    for row in session.exec(select(SupportTeamMember)).all():
        members.setdefault(row.agent_id, []).append(row.team_id)
    open_counts = dict(session.exec(
        select(Ticket.assignee_id, func.count()).where(
            col(Ticket.status).in_([TicketStatus.open, TicketStatus.snoozed]),
            col(Ticket.assignee_id).is_not(None)).group_by(Ticket.assignee_id)).all())
    return [{"id": a.id, "username": a.username, "name": a.name, "role": str(a.role),
             "active": a.active, "online": routing.is_online(a, now=now, settings=settings),
             "teams": members.get(a.id or 0, []), "open_tickets": open_counts.get(a.id, 0)}
            for a in session.exec(select(SupportAgent).order_by(col(SupportAgent.id))).all()]


def set_members(session: Session, *, team_id: int, agent_ids: list[int]) -> None:
    for row in session.exec(select(SupportTeamMember).where(
            SupportTeamMember.team_id == team_id)).all():
        session.delete(row)
    session.flush()
    for agent_id in dict.fromkeys(agent_ids):
        if session.get(SupportAgent, agent_id) is None:
            raise NotFound(f"no agent {agent_id}")
        session.add(SupportTeamMember(team_id=team_id, agent_id=agent_id))


def supervisors(session: Session) -> list[SupportAgent]:
    return list(session.exec(select(SupportAgent).where(
        SupportAgent.role == AgentRole.supervisor)).all())


def escalations_without_ticket(session: Session, *, now: datetime,
                               within: timedelta = timedelta(days=2),
                               settle: timedelta = timedelta(seconds=10)) -> list[int]:
    """Open escalations of the last ``within`` that no ticket took (the subscriber gets
    them at once; these were recorded elsewhere or while the desk was not running).
    Younger than ``settle`` they are left to the subscriber."""
    return list(session.exec(
        select(Escalation.id).where(
            Escalation.status == EscalationStatus.open,
            col(Escalation.created_at) >= now - within,
            col(Escalation.created_at) <= now - settle,
            col(Escalation.id).not_in(select(TicketEscalation.escalation_id)))
        .order_by(col(Escalation.id)).limit(100)).all())
