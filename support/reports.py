"""How the desk and the assistant are doing over a period: first-response and resolution
times, the backlog now, satisfaction, SLA breaches, and the assistant's containment rate
(conversations the bot finished without a person) by channel and by intent.

Durations are in minutes, as medians, 90th percentiles and means: a few slow tickets move a
mean, not a median. The containment rate counts bot sessions (a conversation's session of
activity, see ``conversation_event.session_number``) that had a driver message in the
period; a session is contained when no escalation was recorded during it. Its intent is the
first request in it that is not small talk.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from assistant.models import Conversation, ConversationEvent, Escalation
from support.models import Ticket, TicketEvent, TicketStatus

SMALL_TALK = frozenset({"affirm", "deny", "nlu_fallback", "greet", "thanks", "goodbye",
                        "out_of_scope", "csat", "csat_skip"})
# An escalation recorded this long after a session's last message still belongs to it.
ESCALATION_SLACK = timedelta(minutes=2)


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": None, "p90": None, "mean": None}
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {"count": len(ordered), "median": round(statistics.median(ordered), 1),
            "p90": round(p90, 1), "mean": round(statistics.fmean(ordered), 1)}


def intent_of(ticket: Ticket) -> str:
    """The ticket's intent as reports group it."""
    return ticket.intent or "(none)"


def _minutes(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 60


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


def _grouped(rows: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in rows:
        groups[key].append(value)
    return {key: stats(values) for key, values in sorted(groups.items())}


def response_times(session: Session, *, period: Period, teams: dict[int, str]
                   ) -> dict[str, Any]:
    """First-response times of tickets opened in the period, resolution times of tickets
    resolved in it (merged ones left out), overall and by team, channel, intent and
    priority."""
    opened = session.exec(select(Ticket).where(
        col(Ticket.created_at) >= period.start, col(Ticket.created_at) < period.end,
        col(Ticket.merged_into_id).is_(None))).all()
    resolved = session.exec(select(Ticket).where(
        col(Ticket.resolved_at) >= period.start, col(Ticket.resolved_at) < period.end,
        col(Ticket.merged_into_id).is_(None))).all()
    first = [(t, _minutes(t.first_response_at, t.created_at)) for t in opened
             if t.first_response_at is not None]
    resolution = [(t, _minutes(t.resolved_at, t.created_at)) for t in resolved
                  if t.resolved_at is not None]

    def by(rows: list[tuple[Ticket, float]], key: Any) -> dict[str, dict[str, Any]]:
        return _grouped([(key(t), minutes) for t, minutes in rows])

    def team(t: Ticket) -> str:
        return teams.get(t.team_id or 0, "no team")

    return {
        "tickets_opened": len(opened), "tickets_resolved": len(resolution),
        "unanswered": sum(1 for t in opened if t.first_response_at is None),
        "first_response": stats([m for _, m in first]),
        "first_response_by_team": by(first, team),
        "first_response_by_channel": by(first, lambda t: t.channel),
        "first_response_by_intent": by(first, intent_of),
        "first_response_by_priority": by(first, lambda t: str(t.priority)),
        "resolution": stats([m for _, m in resolution]),
        "resolution_by_team": by(resolution, team),
        "resolution_by_channel": by(resolution, lambda t: t.channel),
        "resolution_by_intent": by(resolution, intent_of),
    }


def backlog(session: Session, *, now: datetime, teams: dict[int, str]) -> dict[str, Any]:
    """Tickets waiting now: by team and status, open ones by channel, intent and priority,
    unassigned, past an SLA target, oldest."""
    rows = session.exec(select(Ticket).where(
        col(Ticket.status).in_([TicketStatus.open, TicketStatus.snoozed, TicketStatus.pending]),
        col(Ticket.merged_into_id).is_(None))).all()
    by_team: dict[str, Counter[str]] = defaultdict(Counter)
    for t in rows:
        by_team[teams.get(t.team_id or 0, "no team")][str(t.status)] += 1
    waiting = [t for t in rows if t.status == TicketStatus.open]
    ages = sorted((_minutes(now, t.created_at) for t in waiting), reverse=True)
    return {
        "total": len(rows),
        "by_status": dict(Counter(str(t.status) for t in rows)),
        "by_team": {team: dict(counts) for team, counts in sorted(by_team.items())},
        "by_priority": dict(Counter(str(t.priority) for t in waiting)),
        "by_channel": dict(sorted(Counter(t.channel for t in waiting).items())),
        "by_intent": dict(Counter(intent_of(t) for t in waiting).most_common()),
        "unassigned": sum(1 for t in waiting if t.assignee_id is None),
        "escalated": sum(1 for t in rows if t.escalated_at is not None),
        "oldest_open_minutes": round(ages[0], 1) if ages else None,
    }


def satisfaction(session: Session, *, period: Period) -> dict[str, Any]:
    """Ratings of tickets resolved in the period: mean, spread, share 4-5, answer rate,
    overall and by channel and intent."""
    rows = session.exec(select(Ticket).where(
        col(Ticket.resolved_at) >= period.start, col(Ticket.resolved_at) < period.end,
        col(Ticket.csat_asked_at).is_not(None))).all()
    scores = [t.csat_score for t in rows if t.csat_score is not None]
    return {
        "asked": len(rows), "answered": len(scores),
        "response_rate": round(len(scores) / len(rows), 3) if rows else None,
        "mean": round(statistics.fmean(scores), 2) if scores else None,
        "satisfied_share": round(sum(1 for s in scores if s >= 4) / len(scores), 3)
        if scores else None,
        "distribution": {str(n): scores.count(n) for n in range(1, 6)},
        "by_channel": _ratings(rows, lambda t: t.channel),
        "by_intent": _ratings(rows, intent_of),
        "comments": [{"ticket_id": t.id, "score": t.csat_score, "comment": t.csat_comment}
                     for t in rows if t.csat_comment][:20],
    }


def _ratings(rows: Any, key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Ticket]] = defaultdict(list)
    for ticket in rows:
        groups[key(ticket)].append(ticket)
    out = {}
    for name, tickets in sorted(groups.items()):
        scores = [t.csat_score for t in tickets if t.csat_score is not None]
        out[name] = {"asked": len(tickets), "answered": len(scores),
                     "mean": round(statistics.fmean(scores), 2) if scores else None}
    return out


def breaches(session: Session, *, period: Period) -> dict[str, int]:
    rows = session.exec(select(TicketEvent).where(
        TicketEvent.kind == "sla_breach", col(TicketEvent.created_at) >= period.start,
        col(TicketEvent.created_at) < period.end)).all()
    return dict(Counter(str(r.data.get("target")) for r in rows))


def containment(session: Session, *, period: Period) -> dict[str, Any]:
    """Bot sessions with a driver message in the period, and how many no person had to
    take, overall and by channel and intent."""
    rows = session.exec(
        select(ConversationEvent.conversation_id, ConversationEvent.session_number,
               ConversationEvent.timestamp, ConversationEvent.data, Conversation.channel)
        .join(Conversation, col(Conversation.id) == ConversationEvent.conversation_id)
        .where(ConversationEvent.type == "user",
               col(ConversationEvent.timestamp) >= period.start,
               col(ConversationEvent.timestamp) < period.end)
        .order_by(col(ConversationEvent.id))).all()
    sessions: dict[tuple[int, int], dict[str, Any]] = {}
    for conversation_id, number, at, data, channel in rows:
        entry = sessions.setdefault((conversation_id, number), {
            "channel": channel, "first": at, "last": at, "intent": None})
        entry["last"] = at
        intent = (((data or {}).get("parse_data") or {}).get("intent") or {}).get("name")
        if entry["intent"] is None and intent and intent not in SMALL_TALK:
            entry["intent"] = intent
    escalations: dict[int, list[datetime]] = defaultdict(list)
    ids = sorted({key[0] for key in sessions})
    for start in range(0, len(ids), 500):
        # A session begun before the period (the driver writing on to a person) starts
        # where it really began, so an escalation before the period still counts.
        for conversation_id, number, began in session.exec(
                select(ConversationEvent.conversation_id, ConversationEvent.session_number,
                       func.min(ConversationEvent.timestamp))
                .where(col(ConversationEvent.conversation_id).in_(ids[start:start + 500]),
                       ConversationEvent.type == "user",
                       col(ConversationEvent.timestamp) < period.start)
                .group_by(col(ConversationEvent.conversation_id),
                          col(ConversationEvent.session_number))).all():
            entry = sessions.get((conversation_id, number))
            if entry is not None and began < entry["first"]:
                entry["first"] = began
        for conversation_id, at in session.exec(
                select(Escalation.conversation_id, Escalation.created_at).where(
                    col(Escalation.conversation_id).in_(ids[start:start + 500]))).all():
            escalations[conversation_id].append(at)
    by_channel: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_intent: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = [0, 0]
    for (conversation_id, _), entry in sessions.items():
        handed = any(entry["first"] - timedelta(seconds=1) <= at
                     <= entry["last"] + ESCALATION_SLACK
                     for at in escalations.get(conversation_id, ()))
        for counts in (total, by_channel[entry["channel"]],
                       by_intent[entry["intent"] or "(small talk only)"]):
            counts[0] += 1
            counts[1] += 0 if handed else 1

    def rate(counts: list[int]) -> dict[str, Any]:
        return {"sessions": counts[0], "contained": counts[1],
                "rate": round(counts[1] / counts[0], 3) if counts[0] else None}

    return {"overall": rate(total),
            "by_channel": {k: rate(v) for k, v in sorted(by_channel.items())},
            "by_intent": {k: rate(v) for k, v in sorted(by_intent.items(),
                                                         key=lambda kv: -kv[1][0])}}


def build(session: Session, *, period: Period, now: datetime) -> dict[str, Any]:
    """The whole report, as the REST API returns it and the console draws it."""
    from support.service import team_names

    teams = team_names(session)
    return {
        "from": period.start.isoformat(), "to": period.end.isoformat(),
        "generated_at": now.isoformat(),
        "times": response_times(session, period=period, teams=teams),
        "backlog": backlog(session, now=now, teams=teams),
        "csat": satisfaction(session, period=period),
        "sla_breaches": breaches(session, period=period),
        "containment": containment(session, period=period),
    }
