"""The support desk `chargedesk serve --demo` prepares, on SQLite and PostgreSQL: teams,
agents with fresh passwords each start, SLA policies, canned responses in both languages and
three handed-over drivers (web chat, SMS, e-mail) as tickets with their context."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlmodel import select

from chargedesk import demo
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from support import service
from support.auth import check_credentials
from support.models import CannedResponse, SlaPolicy, SupportAgent, SupportTeam, Ticket


def test_the_demo_desk_is_seeded_once_with_fresh_passwords(engine: Any,
                                                          settings: Settings) -> None:
    network = demo.load_demo()
    with session_scope(engine) as session:
        demo.seed(session, network)
        demo.seed_drivers(session, network, settings=settings)

    first = demo.prepare_support(engine, settings=settings)
    second = demo.prepare_support(engine, settings=settings)

    assert [(u, r) for u, r, _ in first] == [("lisa", "agent"), ("omar", "agent"),
                                             ("maja", "agent"), ("sara", "supervisor")]
    with session_scope(engine) as session:
        for (username, _, old), (_, _, new) in zip(first, second, strict=True):
            assert old != new
            assert check_credentials(session, username=username, password=old) is None
            assert check_credentials(session, username=username, password=new) is not None
        assert len(session.exec(select(SupportAgent)).all()) == 4
        teams = session.exec(select(SupportTeam)).all()
        assert {t.key for t in teams} == {"technical", "billing"}
        assert all(t.business_hours["mon"] for t in teams)
        assert len(session.exec(select(SlaPolicy)).all()) == 3
        canned = Counter(c.shortcut for c in session.exec(select(CannedResponse)).all())
        assert set(canned.values()) == {2}  # each in Swedish and English
        tickets = session.exec(select(Ticket).order_by(Ticket.id)).all()  # type: ignore[arg-type]
        assert [(t.channel, t.category, t.priority) for t in tickets] == [
            ("web", "technical", "urgent"), ("sms", "billing", "normal"),
            ("email", "billing", "normal")]
        assert tickets[0].subject.startswith("kabeln sitter fast")
        detail = service.ticket_detail(session, ticket_id=tickets[0].id or 0,
                                       settings=settings, now=utcnow())
        assert detail["station"]["id"] == "SE-STO-CITY-01"
        assert detail["driver_context"]["profile"]["name"] == "Anna Lindqvist"
        assert detail["transcript"][0]["text"].startswith("kabeln sitter fast")
        # The e-mail one is in a thread of its own with the driver, so a reply reaches her.
        from assistant.channels.email_models import EmailThread

        mail = service.ticket_detail(session, ticket_id=tickets[2].id or 0,
                                     settings=settings, now=utcnow())
        assert mail["driver_context"]["profile"]["name"] == "Sara Berg"
        assert (tickets[2].language, tickets[2].intent) == ("en", "explain_cost")
        [thread] = session.exec(select(EmailThread)).all()
        assert thread.address == "sara.berg@example.com"
        assert mail["conversations"][0]["sender"] == thread.token
