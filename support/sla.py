"""SLA clocks: which policy a ticket follows, when each target is due, and which targets
are close (a warning) or missed (a breach) at a given moment.

Three targets, each with its own clock:

- *first response*: from the escalation to the first agent reply;
- *next response*: from a driver's message (after the first reply) to the agent's next
  reply; it starts again with each new message the driver writes while nobody answered;
- *resolution*: from the escalation to resolved.

With a policy on business hours the clocks run only while the ticket's team is open
(:mod:`support.hours`). Nothing here reads the wall clock: every function is told ``now``,
so tests move time as they like and the scheduler passes its clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, or_, select

from support import hours
from support.models import SlaPolicy, SupportTeam, Ticket, TicketStatus

TARGETS = ("first_response", "next_response", "resolution")


def policy_for(session: Session, *, team_id: int | None, priority: str) -> SlaPolicy | None:
    """The most specific active policy: team and priority, team, priority, default."""
    policies = session.exec(select(SlaPolicy).where(col(SlaPolicy.active))
                            .order_by(col(SlaPolicy.id))).all()

    def rank(policy: SlaPolicy) -> int | None:
        if policy.team_id not in (None, team_id):
            return None
        if policy.priority not in (None, priority):
            return None
        return (2 if policy.team_id is not None else 0) + (1 if policy.priority else 0)

    ranked = [(r, p) for p in policies if (r := rank(p)) is not None]
    return max(ranked, key=lambda pair: pair[0])[1] if ranked else None


def due(session: Session, *, ticket: Ticket, policy: SlaPolicy, start: datetime,
        minutes: int) -> datetime:
    """``minutes`` after ``start`` on the policy's clock (the team's open hours or not)."""
    team = session.get(SupportTeam, ticket.team_id) if ticket.team_id else None
    if policy.business_hours and team is not None:
        return hours.add_business_minutes(team.business_hours, team.time_zone, start, minutes)
    return start + timedelta(minutes=minutes)


def start_clocks(session: Session, *, ticket: Ticket, now: datetime) -> None:
    """Pick the ticket's policy and set its first-response and resolution targets."""
    policy = policy_for(session, team_id=ticket.team_id, priority=ticket.priority)
    ticket.sla_policy_id = policy.id if policy else None
    ticket.sla_state = {}
    if policy is None:
        ticket.first_response_due_at = ticket.resolution_due_at = None
        return
    ticket.first_response_due_at = (
        due(session, ticket=ticket, policy=policy, start=now,
            minutes=policy.first_response_minutes)
        if ticket.first_response_at is None else None)
    ticket.resolution_due_at = due(session, ticket=ticket, policy=policy,
                                   start=ticket.created_at, minutes=policy.resolution_minutes)


def driver_wrote(session: Session, *, ticket: Ticket, at: datetime) -> None:
    """A driver's message: once the first reply is out, the next-response clock starts
    (if it is not running already)."""
    if ticket.first_response_at is None or ticket.next_response_due_at is not None:
        return
    policy = session.get(SlaPolicy, ticket.sla_policy_id) if ticket.sla_policy_id else None
    if policy is None:
        return
    ticket.next_response_due_at = due(session, ticket=ticket, policy=policy, start=at,
                                      minutes=policy.next_response_minutes)
    ticket.sla_state = {k: v for k, v in ticket.sla_state.items() if k != "next_response"}


def agent_replied(ticket: Ticket, *, at: datetime) -> None:
    if ticket.first_response_at is None:
        ticket.first_response_at = at
        ticket.first_response_due_at = None
    ticket.next_response_due_at = None
    ticket.sla_state = {k: v for k, v in ticket.sla_state.items() if k != "next_response"}


def stop_clocks(ticket: Ticket) -> None:
    """Resolved or back with the bot: nothing is due any more."""
    ticket.first_response_due_at = None
    ticket.next_response_due_at = None
    ticket.resolution_due_at = None


@dataclass(frozen=True)
class Finding:
    ticket_id: int
    target: str  # one of TARGETS
    level: str  # "warned" or "breached"
    due_at: datetime


def targets(ticket: Ticket) -> dict[str, datetime]:
    """The targets running now. A snoozed ticket waits for the driver: only its
    resolution clock runs."""
    if ticket.status == TicketStatus.open:
        running = {"first_response": ticket.first_response_due_at,
                   "next_response": ticket.next_response_due_at,
                   "resolution": ticket.resolution_due_at}
    elif ticket.status == TicketStatus.snoozed:
        running = {"resolution": ticket.resolution_due_at}
    else:
        running = {}
    return {name: at for name, at in running.items() if at is not None}


def check(session: Session, *, now: datetime) -> list[Finding]:
    """Every target of an open or snoozed ticket that is within its policy's warning time
    (not yet warned) or past due (not yet breached)."""
    policies = {p.id: p for p in session.exec(select(SlaPolicy)).all()}
    horizon = now + timedelta(minutes=max([p.warn_before_minutes for p in policies.values()]
                                          or [0]))
    rows = session.exec(select(Ticket).where(
        col(Ticket.status).in_([TicketStatus.open, TicketStatus.snoozed]),
        or_(col(Ticket.first_response_due_at) <= horizon,
            col(Ticket.next_response_due_at) <= horizon,
            col(Ticket.resolution_due_at) <= horizon))
        .order_by(col(Ticket.id))).all()
    found = []
    for ticket in rows:
        policy = policies.get(ticket.sla_policy_id)
        warn = timedelta(minutes=policy.warn_before_minutes if policy else 0)
        for target, at in targets(ticket).items():
            state = ticket.sla_state.get(target)
            if now >= at and state != "breached":
                found.append(Finding(ticket.id or 0, target, "breached", at))
            elif now >= at - warn and state is None and now < at:
                found.append(Finding(ticket.id or 0, target, "warned", at))
    return found
