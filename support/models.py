"""The support desk's tables: teams and agents, tickets made from the assistant's
escalations, their timeline, SLA policies, canned responses, approvals, webhooks.

A ticket is one driver's problem in the hands of people. It links one or more
conversations (merging moves a conversation to another ticket of the same driver) and the
escalations that opened or reopened it. What was said stays in the assistant's
``conversation_event`` log (agents' replies are appended there too); the ticket keeps the
work around it: who has it, its timers, notes, actions and the driver's rating.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class AgentRole(StrEnum):
    agent = "agent"
    supervisor = "supervisor"


class TicketStatus(StrEnum):
    pending = "pending"  # the bot has the conversation (handed back)
    open = "open"  # waiting for a person
    snoozed = "snoozed"  # put aside until ``snoozed_until`` or the driver's next message
    resolved = "resolved"


ACTIVE_STATUSES = (TicketStatus.open, TicketStatus.snoozed, TicketStatus.pending)


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    urgent = "urgent"


PRIORITY_ORDER = (Priority.low, Priority.normal, Priority.high, Priority.urgent)


class Category(StrEnum):
    technical = "technical"
    billing = "billing"
    account = "account"
    general = "general"


class CsatState(StrEnum):
    none = "none"
    asked = "asked"  # the 1-5 question was sent
    comment = "comment"  # a score came; a comment is welcome
    done = "done"
    expired = "expired"  # no answer in time
    cancelled = "cancelled"  # the driver wrote about something else: the ticket reopened


class SupportTeam(SQLModel, table=True):
    """A group of agents taking one kind of problem, with its opening hours."""

    __tablename__ = "support_team"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=40, unique=True)
    name: str = Field(max_length=120)
    # Names of :class:`Category` this team takes (routing by the intent's category).
    categories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    time_zone: str = Field(default="Europe/Stockholm", max_length=64)
    # {"mon": [["08:00", "17:00"]], ..., "closed": ["2026-12-24"]}; empty: always open.
    business_hours: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False))
    # An assigned ticket without a first reply this long goes to the next online agent.
    reassign_after_minutes: int = 10
    # The round robin's position: the agent who got the team's last ticket.
    last_agent_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SupportAgent(SQLModel, table=True):
    """A person signing in to the console at ``/agent``."""

    __tablename__ = "support_agent"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=80, unique=True)
    name: str = Field(max_length=120)
    email: str | None = Field(default=None, max_length=254)
    role: AgentRole = Field(default=AgentRole.agent, sa_type=EnumText(AgentRole))
    password_hash: str = Field(max_length=200)
    active: bool = True
    # Taking tickets: set at sign-in and by the console's switch; counts only while the
    # console keeps ``last_seen_at`` fresh (see settings.support_presence_timeout_s).
    online: bool = False
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SupportTeamMember(SQLModel, table=True):
    __tablename__ = "support_team_member"

    team_id: int = Field(foreign_key="support_team.id", primary_key=True)
    agent_id: int = Field(foreign_key="support_agent.id", primary_key=True)


class SupportAgentSession(SQLModel, table=True):
    """A signed-in console: the cookie carries a random token, only its hash is kept."""

    __tablename__ = "support_agent_session"

    id: int | None = Field(default=None, primary_key=True)
    agent_id: int = Field(foreign_key="support_agent.id", index=True)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SlaPolicy(SQLModel, table=True):
    """Response and resolution targets. A ticket takes the most specific active policy:
    its team and priority, then its team, then its priority, then the default (neither)."""

    __tablename__ = "support_sla_policy"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=120)
    team_id: int | None = Field(default=None, foreign_key="support_team.id")
    priority: Priority | None = Field(default=None, sa_type=EnumText(Priority))
    first_response_minutes: int = 60
    next_response_minutes: int = 120
    resolution_minutes: int = 24 * 60
    # Warn the assignee this long before a target is missed.
    warn_before_minutes: int = 10
    # Count only the team's business hours (else the clock runs round the clock).
    business_hours: bool = True
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Ticket(SQLModel, table=True):
    __tablename__ = "support_ticket"
    __table_args__ = (
        Index("ix_support_ticket_status_team_id", "status", "team_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # The conversation replies go to unless the agent picks another of the ticket's.
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    channel: str = Field(max_length=20)
    driver_id: int | None = Field(default=None, foreign_key="driver.id", index=True)
    status: TicketStatus = Field(default=TicketStatus.open, sa_type=EnumText(TicketStatus))
    priority: Priority = Field(default=Priority.normal, sa_type=EnumText(Priority))
    category: Category = Field(default=Category.general, sa_type=EnumText(Category))
    intent: str | None = Field(default=None, max_length=80)
    reason: str = Field(max_length=20)
    subject: str = Field(default="", max_length=200)
    language: str = Field(default="sv", max_length=2)
    team_id: int | None = Field(default=None, foreign_key="support_team.id", index=True)
    assignee_id: int | None = Field(default=None, foreign_key="support_agent.id", index=True)
    assigned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reassignments: int = 0
    # SLA: the policy, the targets, and what was warned or missed.
    sla_policy_id: int | None = Field(default=None, foreign_key="support_sla_policy.id")
    first_response_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_response_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolution_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # {"first_response": "warned" | "breached", ...}
    sla_state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    escalated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    supervisor_id: int | None = Field(default=None, foreign_key="support_agent.id")
    first_response_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_driver_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_agent_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    snoozed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_by: str | None = Field(default=None, max_length=120)
    merged_into_id: int | None = Field(default=None, foreign_key="support_ticket.id")
    csat_state: CsatState = Field(default=CsatState.none, sa_type=EnumText(CsatState))
    csat_asked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    csat_score: int | None = None
    csat_comment: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TicketConversation(SQLModel, table=True):
    """A conversation a ticket follows; ``last_event_id`` is how far its driver messages
    have been read (the inbox job reads on from there)."""

    __tablename__ = "support_ticket_conversation"

    conversation_id: int = Field(foreign_key="conversation.id", primary_key=True)
    ticket_id: int = Field(foreign_key="support_ticket.id", index=True)
    last_event_id: int = Field(default=0, sa_type=BigInteger)


class TicketEscalation(SQLModel, table=True):
    """Which escalation opened (or reopened) which ticket: one ticket per escalation."""

    __tablename__ = "support_ticket_escalation"

    escalation_id: int = Field(foreign_key="escalation.id", primary_key=True)
    ticket_id: int = Field(foreign_key="support_ticket.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TicketEvent(SQLModel, table=True):
    """The ticket's timeline: created, assigned, replies, internal notes, actions, SLA
    warnings and breaches, status changes, merges, the rating."""

    __tablename__ = "support_ticket_event"
    __table_args__ = (Index("ix_support_ticket_event_ticket_id_id", "ticket_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="support_ticket.id")
    kind: str = Field(max_length=30)
    # "agent:<id>", an API key's "role:name", "driver:<id>" or "system".
    actor: str = Field(max_length=120)
    text: str | None = Field(default=None, sa_column=Column(Text))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CannedResponse(SQLModel, table=True):
    """A reply agents insert with variables filled in: ``{driver_name}``, ``{agent_name}``,
    ``{ticket_id}``, ``{station_id}``, ``{connector}``, ``{team}``."""

    __tablename__ = "support_canned_response"
    __table_args__ = (UniqueConstraint("shortcut", "language"),)

    id: int | None = Field(default=None, primary_key=True)
    shortcut: str = Field(max_length=40)
    language: str = Field(max_length=2)
    title: str = Field(max_length=120)
    body: str = Field(sa_column=Column(Text, nullable=False))
    team_id: int | None = Field(default=None, foreign_key="support_team.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ApprovalStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    failed = "failed"


class Approval(SQLModel, table=True):
    """A credit note or refund above the requester's limit, waiting for someone whose
    limit covers it."""

    __tablename__ = "support_approval"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="support_ticket.id", index=True)
    action: str = Field(max_length=30)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # What the limit is measured on: the amount including VAT, in öre.
    amount_ore: int = Field(sa_type=BigInteger)
    requested_by: str = Field(max_length=120)
    status: ApprovalStatus = Field(
        default=ApprovalStatus.pending, sa_type=EnumText(ApprovalStatus), index=True)
    decided_by: str | None = Field(default=None, max_length=120)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Webhook(SQLModel, table=True):
    """An endpoint told about tickets, signed with its own secret (HMAC-SHA256)."""

    __tablename__ = "support_webhook"

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=500)
    secret: str = Field(max_length=100)
    # Event names it wants; empty: all.
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    active: bool = True
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # gave up after the last retry


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook, written in the transaction that made the change and
    sent (and retried) by the delivery job."""

    __tablename__ = "support_webhook_delivery"
    __table_args__ = (Index("ix_support_webhook_delivery_status_next", "status",
                            "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = Field(foreign_key="support_webhook.id", index=True)
    event: str = Field(max_length=60)
    # The exact body sent (and signed), so every retry carries the same bytes.
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: DeliveryStatus = Field(
        default=DeliveryStatus.pending, sa_type=EnumText(DeliveryStatus))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
