"""REST for agents and operators under ``/api/v1/support``; the console at ``/agent`` is
built on it. Every endpoint authenticates (:mod:`support.auth`): a console cookie (with
its CSRF token on writes) or a bearer API key. Services do the work; these handlers only
translate.

Who may do what: agents (console agents and agent API keys) read and work tickets (reply,
note, claim, status, actions within their credit limit, merge); supervisors also assign
tickets to others, decide approvals and read reports; operators' keys also set up teams,
agents, SLA policies, canned responses and webhooks.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from chargedesk.auth import SessionDep
from chargedesk.db import run_in_session
from support import actions, config, reports, service, webhooks
from support.auth import Lead, Operator, Staff
from support.models import AgentRole, ApprovalStatus, Priority, TicketStatus

router = APIRouter(prefix="/api/v1/support", tags=["support desk"])


def _desk(request: Request) -> Any:
    return request.app.state.support


def _kick_after_commit(session: Any, request: Request) -> None:
    """Post the webhooks this request owes once its transaction has committed (before,
    the delivery job would not see them yet)."""
    from sqlalchemy import event

    desk = _desk(request)
    event.listen(session, "after_commit", lambda _session: desk.kick_webhooks(), once=True)


# ---------------------------------------------------------------- me


class PresenceIn(BaseModel):
    online: bool


@router.get("/me")
def me(request: Request, session: SessionDep, actor: Staff) -> dict[str, Any]:
    """Who is calling, their role and credit limit (and, for an agent, presence)."""
    desk = _desk(request)
    limit = actor.credit_limit_ore(desk.settings)
    body: dict[str, Any] = {"label": actor.label, "name": actor.name, "role": actor.role,
                            "agent_id": actor.agent_id,
                            "credit_limit": None if limit is None else f"{limit / 100:.2f}"}
    if actor.agent_id is not None:
        agent = next(a for a in service.agents_view(session, now=desk.clock(),
                                                    settings=desk.settings)
                     if a["id"] == actor.agent_id)
        body.update(online=agent["online"], teams=agent["teams"])
    return body


@router.post("/me/presence")
def presence(body: PresenceIn, request: Request, session: SessionDep, actor: Staff
             ) -> dict[str, Any]:
    """An agent takes tickets (online) or not."""
    if actor.agent_id is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "an API key has no presence")
    service.set_presence(session, agent_id=actor.agent_id, online=body.online,
                         now=_desk(request).clock())
    return {"online": body.online}


# ---------------------------------------------------------------- tickets


def _statuses(value: str | None) -> list[TicketStatus] | None:
    if not value:
        return None
    try:
        return [TicketStatus(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"status is one or more of {[s.value for s in TicketStatus]}"
                            ) from None


def _agent_filter(actor: Any, value: str, name: str) -> int:
    """``me`` (the signed-in agent) or an agent id, for a list filter."""
    if value == "me":
        if actor.agent_id is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                "an API key has no tickets of its own")
        return int(actor.agent_id)
    try:
        return int(value)
    except ValueError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"{name} is me or an agent id") from None


@router.get("/tickets")
def list_tickets(
    request: Request, session: SessionDep, actor: Staff,
    status_: Annotated[str | None, Query(alias="status",
                                         description="comma-separated")] = "open,snoozed",
    team_id: int | None = None,
    assignee: Annotated[str | None, Query(description="me, none, or an agent id")] = None,
    priority: Priority | None = None, channel: str | None = None,
    category: str | None = None, driver_id: int | None = None, breached: bool | None = None,
    supervisor: Annotated[str | None, Query(
        description="me or a supervisor's agent id: tickets escalated to them")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Tickets, most urgent first (soonest SLA target, priority, age); ``now`` is the
    server's time, against which the SLA targets count down."""
    assignee_id, unassigned = None, False
    supervisor_id = _agent_filter(actor, supervisor, "supervisor") if supervisor else None
    if assignee == "me":
        assignee_id = _agent_filter(actor, assignee, "assignee")
    elif assignee == "none":
        unassigned = True
    elif assignee:
        try:
            assignee_id = int(assignee)
        except ValueError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                "assignee is me, none or an agent id") from None
    rows = service.list_tickets(
        session, status=_statuses(status_), team_id=team_id, assignee_id=assignee_id,
        unassigned=unassigned, priority=priority, channel=channel, category=category,
        driver_id=driver_id, breached=breached, limit=limit, offset=offset,
        supervisor_id=supervisor_id)
    return {"now": _desk(request).clock().isoformat(),
            "tickets": service.list_view(session, tickets=rows)}


@router.get("/tickets/{ticket_id}")
def get_ticket(ticket_id: int, request: Request, session: SessionDep, actor: Staff
               ) -> dict[str, Any]:
    """A ticket with its transcript (every conversation, agents' replies included), the
    escalation's intent and slots, the driver's profile, cards, recent sessions and
    invoices, the station's state and recent commands, the timeline and the rating."""
    desk = _desk(request)
    detail = service.ticket_detail(session, ticket_id=ticket_id, settings=desk.settings,
                                   now=desk.clock(), online=desk.is_online)
    detail["now"] = desk.clock().isoformat()
    detail["channels_available"] = sorted(
        {c["channel"] for c in detail["conversations"] if desk.deliverable(c["channel"])})
    return detail


class ReplyIn(BaseModel):
    text: str | None = Field(default=None, max_length=4000)
    canned_id: int | None = None
    conversation_id: int | None = None


@router.post("/tickets/{ticket_id}/reply", status_code=status.HTTP_201_CREATED)
async def reply(ticket_id: int, body: ReplyIn, request: Request, actor: Staff
                ) -> dict[str, Any]:
    """Send the driver a message on the conversation's own channel (web chat push, SMS,
    threaded e-mail). 503 when that channel cannot deliver here; nothing is recorded then."""
    from assistant.channels import outbound

    desk = _desk(request)
    engine = desk.engine
    text = (body.text or "").strip()
    if not text and body.canned_id is not None:
        text = await run_in_session(engine, config.render_canned, canned_id=body.canned_id,
                                    ticket_id=ticket_id, agent_name=actor.name)
    if not text:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a reply needs text")
    target = await run_in_session(engine, service.reply_target, ticket_id=ticket_id,
                                  conversation_id=body.conversation_id)
    try:
        await outbound.send(desk.runtime, channel=target.channel, sender=target.sender,
                            messages=[{"text": text}], conversation_id=target.conversation_id)
    except outbound.ChannelUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"not sent: the {target.channel} channel cannot deliver here"
                            f" ({exc})") from None
    recorded = await run_in_session(engine, service.record_reply, target=target, text=text,
                                    actor=actor, now=desk.clock(), settings=desk.settings)
    desk.kick_webhooks()
    return {"delivered": True, "text": text, **recorded}


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


@router.post("/tickets/{ticket_id}/notes", status_code=status.HTTP_201_CREATED)
def add_note(ticket_id: int, body: NoteIn, request: Request, session: SessionDep,
             actor: Staff) -> dict[str, Any]:
    """An internal note on the ticket's timeline; the driver never sees it."""
    row = service.add_note(session, ticket_id=ticket_id, text=body.text, actor=actor,
                           now=_desk(request).clock())
    return {"id": row.id, "kind": row.kind, "actor": row.actor, "text": row.text,
            "at": row.created_at.isoformat()}


class AssignIn(BaseModel):
    agent_id: int | None = None
    team_id: int | None = None


@router.post("/tickets/{ticket_id}/assign")
def assign(ticket_id: int, body: AssignIn, request: Request, session: SessionDep,
           actor: Staff) -> dict[str, Any]:
    """Assign to an agent (a supervisor's call unless it is yourself), unassign, or move
    to another team (``team_id``: its next online agent, or its queue)."""
    desk = _desk(request)
    ticket = service.assign(session, ticket_id=ticket_id, actor=actor, now=desk.clock(),
                            settings=desk.settings, agent_id=body.agent_id,
                            team_id=body.team_id)
    _kick_after_commit(session, request)
    return service.summary(ticket)


@router.post("/tickets/{ticket_id}/claim")
def claim(ticket_id: int, request: Request, session: SessionDep, actor: Staff
          ) -> dict[str, Any]:
    """Take the ticket yourself."""
    desk = _desk(request)
    ticket = service.assign(session, ticket_id=ticket_id, actor=actor, now=desk.clock(),
                            settings=desk.settings, claim=True)
    _kick_after_commit(session, request)
    return service.summary(ticket)


class StatusIn(BaseModel):
    status: TicketStatus
    snooze_until: datetime | None = None
    csat: bool = Field(True, description="after resolving, ask the driver for a rating")


@router.post("/tickets/{ticket_id}/status")
async def set_status(ticket_id: int, body: StatusIn, request: Request, actor: Staff
                     ) -> dict[str, Any]:
    """``open`` (pauses the bot again), ``snoozed`` (until ``snooze_until`` or the
    driver's next message), ``pending`` (hand back to the bot) or ``resolved`` (then the
    rating question goes out on the conversation's channel)."""
    desk = _desk(request)
    until = body.snooze_until
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=ZoneInfo(desk.settings.time_zone))
    outgoing = await run_in_session(
        desk.engine, service.set_status, ticket_id=ticket_id, status=body.status,
        actor=actor, now=desk.clock(), settings=desk.settings, snooze_until=until,
        csat=body.csat, deliverable=desk.deliverable)
    problems = await desk.deliver(outgoing)
    desk.kick_webhooks()
    return {"status": body.status, "messages_sent": len(outgoing) - len(problems),
            "delivery_problems": problems}


class MergeIn(BaseModel):
    into: int


@router.post("/tickets/{ticket_id}/merge")
def merge(ticket_id: int, body: MergeIn, request: Request, session: SessionDep,
          actor: Staff) -> dict[str, Any]:
    """Fold this ticket into another of the same driver (e.g. an SMS and a web chat)."""
    desk = _desk(request)
    target = service.merge(session, ticket_id=ticket_id, into_id=body.into, actor=actor,
                           now=desk.clock())
    _kick_after_commit(session, request)
    return service.summary(target)


@router.post("/tickets/{ticket_id}/actions/{action}")
async def run_action(ticket_id: int, action: str, request: Request, actor: Staff,
                     params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One click through the domain services, recorded as you: ``unlock_connector``
    ``{station_id, connector_id}``, ``soft_reset`` ``{station_id}``, ``remote_stop``
    ``{transaction_id}``, ``credit_note`` ``{invoice_id, amount? (net), vat_rate?,
    reason}``, ``refund`` ``{amount, reason}``, ``block_card`` ``{id_tag}``. Money above
    your limit answers ``pending_approval``."""
    from station_api.central import InvalidCommand

    desk = _desk(request)
    try:
        return await actions.run(desk.runtime, ticket_id=ticket_id, action=action,
                                 params=params or {}, actor=actor, now=desk.clock())
    except InvalidCommand as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


# ---------------------------------------------------------------- approvals


@router.get("/approvals")
def list_approvals(session: SessionDep, actor: Staff,
                   status_: Annotated[ApprovalStatus | None, Query(alias="status")] =
                   ApprovalStatus.pending) -> list[dict[str, Any]]:
    return [row.model_dump() | {"amount_incl_vat": f"{row.amount_ore / 100:.2f}"}
            for row in actions.list_approvals(session, status=status_)]


class DecisionIn(BaseModel):
    approve: bool


@router.post("/approvals/{approval_id}/decision")
async def decide(approval_id: int, body: DecisionIn, request: Request, actor: Lead
                 ) -> dict[str, Any]:
    """Approve (carried out as you) or reject a credit or refund above someone's limit."""
    desk = _desk(request)
    return await actions.decide(desk.runtime, approval_id=approval_id, approve=body.approve,
                                actor=actor, now=desk.clock())


# ---------------------------------------------------------------- canned responses


class CannedIn(BaseModel):
    shortcut: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_\-]+$")
    language: Literal["sv", "en"]
    title: str = Field(min_length=1, max_length=120)
    body: str = Field(min_length=1, max_length=4000)
    team_id: int | None = None


@router.get("/canned-responses")
def list_canned(session: SessionDep, actor: Staff, language: str | None = None,
                team_id: int | None = None) -> list[dict[str, Any]]:
    return [row.model_dump() for row in config.list_canned(session, language=language,
                                                           team_id=team_id)]


@router.post("/canned-responses", status_code=status.HTTP_201_CREATED)
def create_canned(body: CannedIn, session: SessionDep, actor: Lead) -> dict[str, Any]:
    return config.save_canned(session, values=body.model_dump()).model_dump()


@router.put("/canned-responses/{canned_id}")
def update_canned(canned_id: int, body: CannedIn, session: SessionDep, actor: Lead
                  ) -> dict[str, Any]:
    return config.save_canned(session, values=body.model_dump(),
                              canned_id=canned_id).model_dump()


@router.delete("/canned-responses/{canned_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_canned(canned_id: int, session: SessionDep, actor: Lead) -> None:
    config.delete_canned(session, canned_id=canned_id)


class RenderIn(BaseModel):
    ticket_id: int


@router.post("/canned-responses/{canned_id}/render")
def render_canned(canned_id: int, body: RenderIn, session: SessionDep, actor: Staff
                  ) -> dict[str, str]:
    """The response with this ticket's variables filled in (the agent may edit it)."""
    return {"text": config.render_canned(session, canned_id=canned_id,
                                         ticket_id=body.ticket_id, agent_name=actor.name)}


# ---------------------------------------------------------------- teams and agents


class TeamIn(BaseModel):
    key: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_\-]+$")
    name: str = Field(min_length=1, max_length=120)
    categories: list[str] = Field(default_factory=list)
    time_zone: str = "Europe/Stockholm"
    business_hours: dict[str, Any] = Field(default_factory=dict)
    reassign_after_minutes: int = Field(10, ge=1, le=24 * 60)
    members: list[int] | None = None


class TeamPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=120)
    categories: list[str] | None = None
    time_zone: str | None = None
    business_hours: dict[str, Any] | None = None
    reassign_after_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    members: list[int] | None = None


def _team_out(session: Any, team: Any, now: datetime) -> dict[str, Any]:
    from support import hours, routing

    members = routing.team_agents(session, team_id=team.id)
    opens = hours.next_open(team.business_hours, team.time_zone, now)
    return team.model_dump() | {
        "members": [a.id for a in members],
        "open_now": hours.is_open(team.business_hours, team.time_zone, now),
        "next_open": opens.isoformat() if opens else None}


@router.get("/teams")
def list_teams(request: Request, session: SessionDep, actor: Staff) -> list[dict[str, Any]]:
    now = _desk(request).clock()
    return [_team_out(session, t, now) for t in config.list_teams(session)]


@router.post("/teams", status_code=status.HTTP_201_CREATED)
def create_team(body: TeamIn, request: Request, session: SessionDep, actor: Operator
                ) -> dict[str, Any]:
    team = config.create_team(session, **body.model_dump())
    return _team_out(session, team, _desk(request).clock())


@router.patch("/teams/{team_id}")
def update_team(team_id: int, body: TeamPatch, request: Request, session: SessionDep,
                actor: Operator) -> dict[str, Any]:
    team = config.update_team(session, team_id=team_id,
                              changes=body.model_dump(exclude_unset=True))
    return _team_out(session, team, _desk(request).clock())


class AgentIn(BaseModel):
    username: str = Field(min_length=2, max_length=80, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = Field(min_length=1, max_length=120)
    password: str = Field(min_length=10, max_length=200)
    role: AgentRole = AgentRole.agent
    email: str | None = Field(default=None, max_length=254)
    teams: list[int] = Field(default_factory=list)


class AgentPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=120)
    role: AgentRole | None = None
    active: bool | None = None
    password: str | None = Field(default=None, min_length=10, max_length=200)


@router.get("/agents")
def list_agents(request: Request, session: SessionDep, actor: Staff) -> list[dict[str, Any]]:
    desk = _desk(request)
    return service.agents_view(session, now=desk.clock(), settings=desk.settings)


@router.post("/agents", status_code=status.HTTP_201_CREATED)
def create_agent(body: AgentIn, session: SessionDep, actor: Operator) -> dict[str, Any]:
    """A console account; the password is kept only as an scrypt hash."""
    agent = config.add_agent(session, **body.model_dump())
    return agent.model_dump(exclude={"password_hash"})


@router.patch("/agents/{agent_id}")
def update_agent(agent_id: int, body: AgentPatch, session: SessionDep, actor: Operator
                 ) -> dict[str, Any]:
    agent = config.update_agent(session, agent_id=agent_id,
                                changes=body.model_dump(exclude_unset=True))
    return agent.model_dump(exclude={"password_hash"})


# ---------------------------------------------------------------- SLA policies


class PolicyIn(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    team_id: int | None = None
    priority: Priority | None = None
    first_response_minutes: int = Field(60, ge=1)
    next_response_minutes: int = Field(120, ge=1)
    resolution_minutes: int = Field(24 * 60, ge=1)
    warn_before_minutes: int = Field(10, ge=0)
    business_hours: bool = True
    active: bool = True


@router.get("/sla-policies")
def list_policies(session: SessionDep, actor: Staff) -> list[dict[str, Any]]:
    return [p.model_dump() for p in config.list_policies(session)]


@router.post("/sla-policies", status_code=status.HTTP_201_CREATED)
def create_policy(body: PolicyIn, session: SessionDep, actor: Operator) -> dict[str, Any]:
    return config.save_policy(session, values=body.model_dump()).model_dump()


@router.put("/sla-policies/{policy_id}")
def update_policy(policy_id: int, body: PolicyIn, session: SessionDep, actor: Operator
                  ) -> dict[str, Any]:
    return config.save_policy(session, values=body.model_dump(),
                              policy_id=policy_id).model_dump()


# ---------------------------------------------------------------- reports


def report_period(request: Request, start: date | None, end: date | None) -> reports.Period:
    """[from, to] as local dates (both inclusive); the last 30 days by default."""
    desk = _desk(request)
    zone = ZoneInfo(desk.settings.time_zone)
    today = desk.clock().astimezone(zone).date()
    end = end or today
    start = start or end - timedelta(days=29)
    if end < start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "to comes before from")
    if (end - start).days > 366:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "at most a year at a time")
    return reports.Period(datetime.combine(start, time(0), zone).astimezone(UTC),
                          datetime.combine(end + timedelta(days=1), time(0), zone)
                          .astimezone(UTC))


@router.get("/reports")
def get_report(request: Request, session: SessionDep, actor: Lead,
               start: Annotated[date | None, Query(alias="from")] = None,
               end: Annotated[date | None, Query(alias="to")] = None) -> dict[str, Any]:
    """First-response and resolution times, backlog, satisfaction, SLA breaches and the
    assistant's containment rate by channel and intent, over [from, to] (local dates)."""
    period = report_period(request, start, end)
    return reports.build(session, period=period, now=_desk(request).clock())


# ---------------------------------------------------------------- webhooks


class WebhookIn(BaseModel):
    url: str = Field(min_length=8, max_length=500)
    events: list[str] = Field(default_factory=list,
                              description=f"any of {list(webhooks.EVENTS)}; empty: all")


@router.get("/webhooks")
def list_webhooks(session: SessionDep, actor: Operator) -> list[dict[str, Any]]:
    return [w.model_dump(exclude={"secret"}) for w in config.list_webhooks(session)]


@router.post("/webhooks", status_code=status.HTTP_201_CREATED)
def create_webhook(body: WebhookIn, session: SessionDep, actor: Operator) -> dict[str, Any]:
    """A new endpoint; its signing secret is in this answer only."""
    row = config.add_webhook(session, url=body.url, events=body.events,
                             created_by=actor.label)
    return row.model_dump()


@router.delete("/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def disable_webhook(webhook_id: int, session: SessionDep, actor: Operator) -> None:
    config.disable_webhook(session, webhook_id=webhook_id)


@router.get("/webhooks/{webhook_id}/deliveries")
def list_deliveries(webhook_id: int, session: SessionDep, actor: Operator
                    ) -> list[dict[str, Any]]:
    return [d.model_dump(exclude={"body"}) for d in
            webhooks.list_deliveries(session, webhook_id=webhook_id)]
