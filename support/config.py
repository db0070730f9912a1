"""How the desk is set up: teams with their hours and members, agent accounts, SLA
policies, canned responses and webhooks. Keyword-only functions taking a session."""

from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session, col, select

from support import hours, service, webhooks
from support.auth import create_agent, set_password
from support.models import (
    AgentRole,
    CannedResponse,
    Category,
    SlaPolicy,
    SupportAgent,
    SupportTeam,
    Ticket,
    Webhook,
)

# ---------------------------------------------------------------- teams


def _categories(values: list[str]) -> list[str]:
    known = {c.value for c in Category}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise service.SupportError(f"unknown categories {unknown}; one of {sorted(known)}")
    return list(dict.fromkeys(values))


def _hours(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return hours.validate(spec)
    except hours.InvalidHours as exc:
        raise service.SupportError(f"business hours: {exc}") from None


def _zone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise service.SupportError(f"unknown time zone {name!r}") from None
    return name


def list_teams(session: Session) -> list[SupportTeam]:
    return list(session.exec(select(SupportTeam).order_by(col(SupportTeam.id))).all())


def create_team(session: Session, *, key: str, name: str, categories: list[str],
                time_zone: str = "Europe/Stockholm", business_hours: dict[str, Any] | None = None,
                reassign_after_minutes: int = 10, members: list[int] | None = None
                ) -> SupportTeam:
    if session.exec(select(SupportTeam).where(SupportTeam.key == key)).first() is not None:
        raise service.Conflict(f"a team {key!r} exists")
    team = SupportTeam(key=key, name=name, categories=_categories(categories),
                       time_zone=_zone(time_zone), business_hours=_hours(business_hours or {}),
                       reassign_after_minutes=reassign_after_minutes)
    session.add(team)
    session.flush()
    if members is not None:
        service.set_members(session, team_id=team.id or 0, agent_ids=members)
    return team


def update_team(session: Session, *, team_id: int, changes: dict[str, Any]) -> SupportTeam:
    team = session.get(SupportTeam, team_id)
    if team is None:
        raise service.NotFound(f"no team {team_id}")
    if "name" in changes:
        team.name = changes["name"]
    if "categories" in changes:
        team.categories = _categories(changes["categories"])
    if "time_zone" in changes:
        team.time_zone = _zone(changes["time_zone"])
    if "business_hours" in changes:
        team.business_hours = _hours(changes["business_hours"] or {})
    if "reassign_after_minutes" in changes:
        team.reassign_after_minutes = int(changes["reassign_after_minutes"])
    session.add(team)
    if changes.get("members") is not None:
        service.set_members(session, team_id=team_id, agent_ids=changes["members"])
    session.flush()
    return team


# ---------------------------------------------------------------- agents


def add_agent(session: Session, *, username: str, name: str, password: str, role: AgentRole,
              email: str | None = None, teams: list[int] | None = None) -> SupportAgent:
    if session.exec(select(SupportAgent).where(
            SupportAgent.username == username.strip().lower())).first() is not None:
        raise service.Conflict(f"an agent {username!r} exists")
    try:
        agent = create_agent(session, username=username, name=name, password=password,
                             role=role, email=email)
    except ValueError as exc:
        raise service.SupportError(str(exc)) from None
    for team_id in teams or []:
        team = session.get(SupportTeam, team_id)
        if team is None:
            raise service.NotFound(f"no team {team_id}")
        from support.models import SupportTeamMember

        session.add(SupportTeamMember(team_id=team_id, agent_id=agent.id or 0))
    session.flush()
    return agent


def update_agent(session: Session, *, agent_id: int, changes: dict[str, Any]) -> SupportAgent:
    agent = session.get(SupportAgent, agent_id)
    if agent is None:
        raise service.NotFound(f"no agent {agent_id}")
    if "name" in changes:
        agent.name = changes["name"]
    if "role" in changes:
        agent.role = AgentRole(changes["role"])
    if "active" in changes:
        agent.active = bool(changes["active"])
        if not agent.active:
            agent.online = False
    if changes.get("password"):
        try:
            set_password(session, agent=agent, password=changes["password"])
        except ValueError as exc:
            raise service.SupportError(str(exc)) from None
    session.add(agent)
    session.flush()
    return agent


# ---------------------------------------------------------------- SLA policies


_POLICY_FIELDS = ("name", "team_id", "priority", "first_response_minutes",
                  "next_response_minutes", "resolution_minutes", "warn_before_minutes",
                  "business_hours", "active")


def list_policies(session: Session) -> list[SlaPolicy]:
    return list(session.exec(select(SlaPolicy).order_by(col(SlaPolicy.id))).all())


def save_policy(session: Session, *, values: dict[str, Any], policy_id: int | None = None
                ) -> SlaPolicy:
    policy = SlaPolicy(name="") if policy_id is None else session.get(SlaPolicy, policy_id)
    if policy is None:
        raise service.NotFound(f"no SLA policy {policy_id}")
    for name in _POLICY_FIELDS:
        if name in values:
            setattr(policy, name, values[name])
    if policy.team_id is not None and session.get(SupportTeam, policy.team_id) is None:
        raise service.NotFound(f"no team {policy.team_id}")
    for name in ("first_response_minutes", "next_response_minutes", "resolution_minutes"):
        if getattr(policy, name) <= 0:
            raise service.SupportError(f"{name} must be positive")
    if not policy.name:
        raise service.SupportError("a policy needs a name")
    session.add(policy)
    session.flush()
    return policy


# ---------------------------------------------------------------- canned responses


_VARIABLE = re.compile(r"\{([a-z_]+)\}")
VARIABLES = ("driver_name", "driver_first_name", "agent_name", "ticket_id", "station_id",
             "connector", "team")


def list_canned(session: Session, *, language: str | None = None, team_id: int | None = None
                ) -> list[CannedResponse]:
    query = select(CannedResponse)
    if language:
        query = query.where(CannedResponse.language == language)
    if team_id is not None:
        query = query.where((col(CannedResponse.team_id).is_(None))
                            | (CannedResponse.team_id == team_id))
    return list(session.exec(query.order_by(col(CannedResponse.shortcut),
                                            col(CannedResponse.language))).all())


def save_canned(session: Session, *, values: dict[str, Any], canned_id: int | None = None
                ) -> CannedResponse:
    row = CannedResponse(shortcut="", language="sv", title="", body="") if canned_id is None \
        else session.get(CannedResponse, canned_id)
    if row is None:
        raise service.NotFound(f"no canned response {canned_id}")
    for name in ("shortcut", "language", "title", "body", "team_id"):
        if name in values:
            setattr(row, name, values[name])
    if row.language not in ("sv", "en"):
        raise service.SupportError("language is sv or en")
    unknown = sorted(set(_VARIABLE.findall(row.body)) - set(VARIABLES))
    if unknown:
        raise service.SupportError(f"unknown variables {unknown}; known: {list(VARIABLES)}")
    clash = session.exec(select(CannedResponse).where(
        CannedResponse.shortcut == row.shortcut, CannedResponse.language == row.language,
        CannedResponse.id != row.id)).first() if row.id else session.exec(
        select(CannedResponse).where(CannedResponse.shortcut == row.shortcut,
                                     CannedResponse.language == row.language)).first()
    if clash is not None:
        raise service.Conflict(f"{row.shortcut!r} exists in {row.language}")
    session.add(row)
    session.flush()
    return row


def delete_canned(session: Session, *, canned_id: int) -> None:
    row = session.get(CannedResponse, canned_id)
    if row is None:
        raise service.NotFound(f"no canned response {canned_id}")
    session.delete(row)


def render(body: str, variables: dict[str, Any]) -> str:
    """Fill ``{name}`` placeholders; unknown or missing ones stay as written. A plain
    substitution, not ``str.format``: a template cannot reach into the values."""
    return _VARIABLE.sub(lambda m: str(variables[m[1]]) if variables.get(m[1]) not in
                         (None, "") else m[0], body)


def variables_for(session: Session, *, ticket_id: int, agent_name: str) -> dict[str, Any]:
    from billing_api.models import Driver

    ticket = service.get_ticket(session, ticket_id=ticket_id)
    driver = session.get(Driver, ticket.driver_id) if ticket.driver_id else None
    team = session.get(SupportTeam, ticket.team_id) if ticket.team_id else None
    escalation = service._latest_escalation(session, ticket_id=ticket_id)
    slots = escalation.slots if escalation else {}
    connector = slots.get("connector")
    return {
        "driver_name": driver.name if driver else None,
        "driver_first_name": driver.name.split()[0] if driver and driver.name else None,
        "agent_name": agent_name, "ticket_id": ticket.id,
        "station_id": slots.get("station_id"),
        "connector": int(float(connector)) if connector not in (None, "") else None,
        "team": team.name if team else None}


def render_canned(session: Session, *, canned_id: int, ticket_id: int, agent_name: str
                  ) -> str:
    row = session.get(CannedResponse, canned_id)
    if row is None:
        raise service.NotFound(f"no canned response {canned_id}")
    return render(row.body, variables_for(session, ticket_id=ticket_id, agent_name=agent_name))


# ---------------------------------------------------------------- webhooks


def add_webhook(session: Session, *, url: str, events: list[str], created_by: str) -> Webhook:
    if not re.match(r"^https?://", url):
        raise service.SupportError("a webhook URL starts with https:// (or http://)")
    unknown = sorted(set(events) - set(webhooks.EVENTS))
    if unknown:
        raise service.SupportError(f"unknown events {unknown}; one of {list(webhooks.EVENTS)}")
    row = Webhook(url=url, secret=webhooks.new_secret(), events=list(dict.fromkeys(events)),
                  created_by=created_by)
    session.add(row)
    session.flush()
    return row


def list_webhooks(session: Session) -> list[Webhook]:
    return list(session.exec(select(Webhook).order_by(col(Webhook.id))).all())


def disable_webhook(session: Session, *, webhook_id: int) -> Webhook:
    row = session.get(Webhook, webhook_id)
    if row is None:
        raise service.NotFound(f"no webhook {webhook_id}")
    row.active = False
    session.add(row)
    return row


def unused(session: Session) -> bool:
    """True before anything is set up (no team): the demo seeds then."""
    return session.exec(select(SupportTeam.id)).first() is None and \
        session.exec(select(Ticket.id)).first() is None
