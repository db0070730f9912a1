"""The support desk's test world: the real app (not served unless a test needs it), its
desk on a clock the test moves, teams, agents and SLA policies, and drivers handed over by
the real assistant (a quick-reply payload needs no NLU model)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from assistant.events import BotUttered
from assistant.service import Identity, handle_message
from chargedesk.app import create_app
from chargedesk.db import dispose, session_scope
from chargedesk.settings import Settings
from support import config
from support.models import AgentRole, SupportAgent, Ticket
from tests.assistant.conftest import nlu, training  # noqa: F401  (fixtures)
from tests.billing_api.factories import make_driver
from tests.channels.fixtures import relay, twilio_api  # noqa: F401  (fixtures)

# A Tuesday, 10:00 in Stockholm: every team is open.
TUESDAY_10 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OFFICE = {day: [["08:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
PASSWORD = "correct horse battery"


class Clock:
    """The desk's time, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Desk:
    """The app and what the test set up in it."""

    app: Any
    clock: Clock
    agents: dict[str, int] = field(default_factory=dict)
    teams: dict[str, int] = field(default_factory=dict)
    drivers: dict[str, int] = field(default_factory=dict)
    pushed: list[BotUttered] = field(default_factory=list)

    @property
    def desk(self) -> Any:
        return self.app.state.support

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def engine(self) -> Any:
        return self.runtime.engine

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def online(self, *names: str, at: datetime | None = None) -> None:
        """These agents have their console open (and nobody else)."""
        with session_scope(self.engine) as session:
            for agent in session.exec(select(SupportAgent)).all():
                agent.online = agent.username in names
                agent.last_seen_at = at or self.clock.now
                session.add(agent)

    async def hand_over(self, sender: str, *, driver: str | None = "anna",
                        text: str = "/human_handoff", channel: str = "web") -> Ticket:
        """A driver asks the assistant for a person; the ticket the desk opened."""
        identity = (Identity(driver_id=self.drivers[driver], verified=True, via=channel)
                    if driver else None)
        await handle_message(self.runtime, channel=channel, sender=sender, text=text,
                             identity=identity)
        await self.runtime.bus.join()
        return self.ticket_of(sender)

    def ticket_of(self, sender: str) -> Ticket:
        from assistant.models import Conversation

        with session_scope(self.engine) as session:
            conversation = session.exec(select(Conversation).where(
                Conversation.sender == sender)).one()
            return session.exec(select(Ticket).where(
                Ticket.conversation_id == conversation.id).order_by(Ticket.id.desc())  # type: ignore[union-attr]
            ).first()

    def ticket(self, ticket_id: int) -> Ticket:
        with session_scope(self.engine) as session:
            row = session.get(Ticket, ticket_id)
            assert row is not None
            return row

    async def deliver(self, outgoing: list[Any]) -> list[str]:
        """Send what the desk decided, and wait until the bus has carried it."""
        problems = await self.desk.deliver(outgoing)
        await self.runtime.bus.join()
        return problems

    async def read_inbox(self) -> int:
        read = await self.desk.read_inbox()
        await self.runtime.bus.join()
        return read

    def texts_to(self, sender: str) -> list[str]:
        return [e.message.get("text") for e in self.pushed if e.sender == sender]


def seed_desk(engine: Any, *, hours: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
    """Two teams, three agents and a supervisor, a default SLA policy."""
    with session_scope(engine) as session:
        agents = {}
        for username, role in (("alice", AgentRole.agent), ("bob", AgentRole.agent),
                               ("carol", AgentRole.agent), ("sam", AgentRole.supervisor)):
            agent = config.add_agent(session, username=username, name=username.title(),
                                     password=PASSWORD, role=role)
            agents[username] = agent.id or 0
        technical = config.create_team(
            session, key="technical", name="Technical", categories=["technical", "account",
                                                                     "general"],
            business_hours=hours if hours is not None else {}, reassign_after_minutes=5,
            members=[agents["alice"], agents["bob"], agents["sam"]])
        billing = config.create_team(
            session, key="billing", name="Billing", categories=["billing"],
            business_hours=hours if hours is not None else {},
            members=[agents["carol"], agents["sam"]])
        config.save_policy(session, values={
            "name": "standard", "first_response_minutes": 30, "next_response_minutes": 60,
            "resolution_minutes": 480, "warn_before_minutes": 10, "business_hours": True})
        teams = {"technical": technical.id or 0, "billing": billing.id or 0}
    return {"agents": agents, "teams": teams}


def make_drivers(engine: Any) -> dict[str, int]:
    with session_scope(engine) as session:
        anna = make_driver(session, name="Anna Berg", email="anna@example.se",
                           id_tags=("RFID-ANNA",))
        erik = make_driver(session, name="Erik Lund", email="erik@example.se",
                           id_tags=("RFID-ERIK",))
        return {"anna": anna.id or 0, "erik": erik.id or 0}


@pytest.fixture
def clock() -> Clock:
    return Clock(TUESDAY_10)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """NLU models keyed by the training data's hash, kept between test sessions (training
    costs minutes on a busy machine; a changed data set trains anew)."""
    path = Path(tempfile.gettempdir()) / "chargedesk-test-nlu-models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
async def world(settings: Settings, engine: Any, clock: Clock) -> AsyncIterator[Desk]:
    """The app (not served), its desk on the test's clock, the desk set up, two drivers.
    Tests where drivers write free text also ask for the ``nlu`` fixture."""
    app = create_app(settings)
    app.state.support.clock = clock
    seeded = seed_desk(engine)
    desk = Desk(app, clock, agents=seeded["agents"], teams=seeded["teams"],
                drivers=make_drivers(engine))
    app.state.runtime.bus.subscribe(BotUttered, desk.pushed.append)
    try:
        yield desk
    finally:
        await app.state.runtime.bus.join()
        dispose(app.state.runtime.engine)
