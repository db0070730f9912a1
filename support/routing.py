"""Who takes a ticket: its category from the intent, a team by category, and within the
team the next online agent in round robin. Also what a driver is told when the team is
closed.

Intents are the assistant's (see DESIGN.md); each falls in one category, and each team
names the categories it takes. A ticket whose category no team takes goes to the team
taking ``general``, else to the first team.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from chargedesk.settings import Settings
from support import hours
from support.models import (
    PRIORITY_ORDER,
    AgentRole,
    Category,
    Priority,
    SupportAgent,
    SupportTeam,
    SupportTeamMember,
)

CATEGORY_OF_INTENT: dict[str, Category] = {
    **dict.fromkeys(
        ("charging_wont_start", "cable_stuck", "stop_charging", "start_charging",
         "charging_status", "station_status", "find_charger", "report_station_problem",
         "schedule_charging"), Category.technical),
    **dict.fromkeys(
        ("price_info", "billing_history", "explain_cost", "dispute_charge", "request_invoice",
         "check_balance", "top_up", "change_payment_method"), Category.billing),
    "lost_card": Category.account,
}


def category_of(intent: str | None) -> Category:
    return CATEGORY_OF_INTENT.get(intent or "", Category.general)


# A driver stuck at a station or a safety refusal is urgent; a damaged station or an
# action that failed is high; a question is normal; a bot that did not understand is low.
_REASON_PRIORITY = {"damage": Priority.high, "safety": Priority.high,
                    "action_failed": Priority.high, "dispute": Priority.normal,
                    "asked": Priority.normal, "fallback": Priority.low}
_URGENT_INTENTS = frozenset({"cable_stuck", "stop_charging"})


def priority_of(reason: str, intent: str | None) -> Priority:
    priority = _REASON_PRIORITY.get(reason, Priority.normal)
    if intent in _URGENT_INTENTS and priority in (Priority.high, Priority.normal):
        return Priority.urgent if reason in ("action_failed", "safety") else Priority.high
    return priority


def raise_priority(priority: Priority) -> Priority:
    index = PRIORITY_ORDER.index(priority)
    return PRIORITY_ORDER[min(index + 1, len(PRIORITY_ORDER) - 1)]


def team_for(session: Session, *, category: Category) -> SupportTeam | None:
    teams = list(session.exec(select(SupportTeam).order_by(col(SupportTeam.id))).all())
    for wanted in (category, Category.general):
        for team in teams:
            if wanted in (team.categories or []):
                return team
    return teams[0] if teams else None


def is_online(agent: SupportAgent, *, now: datetime, settings: Settings) -> bool:
    return bool(agent.active and agent.online and agent.last_seen_at is not None
                and now - agent.last_seen_at <= timedelta(
                    seconds=settings.support_presence_timeout_s))


def team_agents(session: Session, *, team_id: int, role: AgentRole | None = None
                ) -> Sequence[SupportAgent]:
    query = (select(SupportAgent)
             .join(SupportTeamMember, col(SupportTeamMember.agent_id) == SupportAgent.id)
             .where(SupportTeamMember.team_id == team_id, col(SupportAgent.active))
             .order_by(col(SupportAgent.id)))
    if role is not None:
        query = query.where(SupportAgent.role == role)
    return session.exec(query).all()


def next_agent(session: Session, *, team: SupportTeam, now: datetime, settings: Settings,
               exclude: int | None = None, advance: bool = True) -> SupportAgent | None:
    """The team's next online agent after the one who got its last ticket (round robin);
    None when nobody else is online. ``advance`` moves the team's position."""
    online = [a for a in team_agents(session, team_id=team.id or 0)
              if a.id != exclude and is_online(a, now=now, settings=settings)]
    if not online:
        return None
    last = team.last_agent_id or 0
    chosen = next((a for a in online if (a.id or 0) > last), online[0])
    if advance:
        team.last_agent_id = chosen.id
        session.add(team)
    return chosen


def supervisor_for(session: Session, *, team_id: int | None, now: datetime,
                   settings: Settings) -> SupportAgent | None:
    """A supervisor to escalate to: an online one of the team, else any online, else the
    team's, else any at all."""
    everyone = list(session.exec(select(SupportAgent).where(
        SupportAgent.role == AgentRole.supervisor, col(SupportAgent.active))
        .order_by(col(SupportAgent.id))).all())
    own = list(team_agents(session, team_id=team_id, role=AgentRole.supervisor)
               ) if team_id else []
    for group in (own, everyone):
        online = [a for a in group if is_online(a, now=now, settings=settings)]
        if online:
            return online[0]
    return (own or everyone or [None])[0]


# ---------------------------------------------------------------- closed: say when


_CLOSED = {
    "sv": "Vår kundtjänst har stängt just nu. En person svarar dig {when} (svensk tid). "
          "Skriv gärna här under tiden, så ser vi det då.",
    "en": "Our support team is closed right now. A person will answer you {when} "
          "(Swedish time). You can write here meanwhile and we will see it then.",
}


def handoff_note(session: Session, *, intent: str | None, language: str,
                 now: datetime) -> str | None:
    """What to tell a driver being handed over when the team that will take it is
    closed: when a person will answer. None while it is open (or there is no team)."""
    team = team_for(session, category=category_of(intent))
    if team is None or hours.is_open(team.business_hours, team.time_zone, now):
        return None
    opens = hours.next_open(team.business_hours, team.time_zone, now)
    if opens is None:
        return None
    language = language if language in _CLOSED else "sv"
    when = hours.describe(opens, now=now, time_zone=team.time_zone, language=language)
    return _CLOSED[language].format(when=when)
