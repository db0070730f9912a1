"""The rating of a ticket that came from a phone call, end to end on one real server (SQLite
and PostgreSQL) with the desk's own jobs running: the caller asks for a person on a call
signed as Twilio signs it, an agent resolves the ticket through ``/api/v1/support``, the
rating question goes out by SMS through the official Twilio client to the stand-in for
api.twilio.com on loopback, and the driver's texted answer is the ticket's rating (never a
question for the bot). Every answer is announced by the signed ``message.created`` webhook
to a real HTTP receiver on loopback, which checks the HMAC itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from assistant.models import Conversation, ConversationEvent
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import run_in_session, session_scope
from chargedesk.models import Role
from chargedesk.settings import Settings
from support import config, service
from support.auth import Actor
from support.models import CsatState, Ticket, TicketStatus
from tests.billing_api.factories import make_driver
from tests.channels.test_sms import eventually, number, text, twilio_settings
from tests.channels.test_voice import Call
from tests.conftest import LiveServer, make_key, start_server
from tests.support.conftest import Desk, seed_desk
from tests.support.test_webhooks import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, nlu: Any) -> Iterator[LiveServer]:
    """Voice and SMS and the desk's jobs (inbox every 0.3 s) on one server."""
    server = start_server(twilio_settings(settings, twilio_api, support_scheduler=True,
                                          support_poll_seconds=0.3))
    seed_desk(server.runtime.engine)
    yield server
    server.stop()


@pytest.fixture
def agent(live: LiveServer) -> Iterator[httpx.Client]:
    key = make_key(live.runtime.engine, Role.agent)
    with httpx.Client(base_url=live.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def subscribe(engine: Any, url: str) -> str:
    with session_scope(engine) as session:
        return config.add_webhook(session, url=url, events=["message.created"],
                                  created_by="operator:ops").secret


def ticket_row(engine: Any, ticket_id: int) -> Ticket:
    with Session(engine) as session:
        row = session.get(Ticket, ticket_id)
        assert row is not None
        return row


def voice_ticket(engine: Any, caller: str) -> int | None:
    with Session(engine) as session:
        conversation = session.exec(select(Conversation).where(
            Conversation.channel == "voice", Conversation.sender == caller)).first()
        if conversation is None:
            return None
        return session.exec(select(Ticket.id).where(
            Ticket.conversation_id == conversation.id)).first()


def sms_conversation(engine: Any, phone: str) -> Conversation | None:
    with Session(engine) as session:
        return session.exec(select(Conversation).where(
            Conversation.channel == "sms", Conversation.sender == phone)).first()


def bot_lines(engine: Any, phone: str) -> list[str]:
    """What the assistant itself (not the desk) said in the number's SMS conversation."""
    conversation = sms_conversation(engine, phone)
    if conversation is None:
        return []
    with Session(engine) as session:
        events = session.exec(select(ConversationEvent).where(
            ConversationEvent.conversation_id == conversation.id,
            ConversationEvent.type == "bot")).all()
    return [str(e.data.get("text")) for e in events
            if not (e.data.get("metadata") or {}).get("support")]


def signed_rating_messages(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """The ``message.created`` payloads carrying a rating, each signature checked as a
    receiver does: HMAC-SHA256 of "<t>.<raw body>" with the webhook's secret."""
    found = []
    for headers, body in receiver.requests:
        parts = dict(p.split("=", 1) for p in headers["x-chargedesk-signature"].split(","))
        expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        assert hmac.compare_digest(parts["v1"], expected)
        payload = json.loads(body)
        assert headers["x-chargedesk-event"] == payload["event"] == "message.created"
        if "csat" in payload["data"]["message"]:
            found.append(payload)
    return found


def called_for_a_person(live: LiveServer) -> tuple[str, int]:
    """A driver (of a known number, English) calls and asks for a person: the ticket."""
    caller = number()
    with session_scope(live.runtime.engine) as session:
        make_driver(session, name="Sam Reed", email=None, phone=caller)
    call = Call(live, caller)
    call.start()
    call.say("English")
    call.say("I want to talk to a person")
    return caller, eventually(lambda: voice_ticket(live.runtime.engine, caller))


@pytest.mark.parametrize(("answer", "score", "comment"), [
    ("5 great help", 5, "great help"),
    ("1 \u2013 slow", 1, "slow"),  # an en dash, as phones type it
    ("4", 4, None),
])
def test_a_texted_answer_to_the_rating_question_after_a_call_is_the_rating(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client, receiver: Receiver,
        answer: str, score: int, comment: str | None) -> None:
    engine = live.runtime.engine
    secret = subscribe(engine, receiver.url)
    caller, ticket_id = called_for_a_person(live)

    resolved = agent.post(f"/api/v1/support/tickets/{ticket_id}/status",
                          json={"status": "resolved"})

    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["messages_sent"] == 1
    [question] = twilio_api.wait_for(1, to=caller)
    assert "How satisfied are you" in question.form["Body"]
    assert ticket_row(engine, ticket_id).csat_state == CsatState.asked

    text(live, caller, answer)

    if comment is None:  # a digit alone: asked for a comment, which "NO" skips
        [prompt] = twilio_api.wait_for(2, to=caller)[1:]
        assert "NO to skip" in prompt.form["Body"]
        assert ticket_row(engine, ticket_id).csat_state == CsatState.comment
        text(live, caller, "NO")
    rated = eventually(lambda: (t := ticket_row(engine, ticket_id)).csat_state
                       == CsatState.done and t)
    assert (rated.csat_score, rated.csat_comment, rated.status) == (
        score, comment, TicketStatus.resolved)
    sent = 3 if comment is None else 2
    thanks = twilio_api.wait_for(sent, to=caller)[-1]
    assert thanks.form["Body"].startswith("Thanks for your feedback")
    # The bot answered none of it: every text to the number was the desk's.
    assert bot_lines(engine, caller) == []
    # The answer was announced like any driver's message, signed with the hook's secret.
    announced = eventually(lambda: signed_rating_messages(receiver, secret))
    first = announced[0]["data"]
    assert first["ticket"]["id"] == ticket_id
    assert (first["message"]["from"], first["message"]["channel"], first["message"]["text"],
            first["message"]["csat"]["score"]) == ("driver", "sms", answer, score)

    # A later text is the bot's again, answered as any other.
    text(live, caller, "What does it cost to charge at Odenplan?")
    eventually(lambda: len(twilio_api.sent(caller)) == sent + 1)
    assert bot_lines(engine, caller)
    conversation = sms_conversation(engine, caller)
    assert conversation is not None and not conversation.paused
    assert ticket_row(engine, ticket_id).status == TicketStatus.resolved


def test_a_text_from_another_number_is_not_taken_for_the_rating(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client) -> None:
    engine = live.runtime.engine
    caller, ticket_id = called_for_a_person(live)
    agent.post(f"/api/v1/support/tickets/{ticket_id}/status", json={"status": "resolved"})
    twilio_api.wait_for(1, to=caller)

    stranger = number()
    text(live, stranger, "5")

    eventually(lambda: twilio_api.sent(stranger))  # the bot answered the stranger
    assert bot_lines(engine, stranger)
    assert ticket_row(engine, ticket_id).csat_state == CsatState.asked


# ---------------------------------------------------------------- any channel


async def test_a_rating_answered_in_the_web_chat_fires_a_signed_message_created(
        world: Desk, receiver: Receiver) -> None:
    from assistant.service import Identity, handle_message

    with session_scope(world.engine) as session:
        secret = config.add_webhook(session, url=receiver.url, events=["message.created"],
                                    created_by="operator:ops").secret
    ticket = await world.hand_over("web-anna")
    alice = Actor(role="agent", name="Alice", label=f"agent:{world.agents['alice']}",
                  agent_id=world.agents["alice"])
    await world.deliver(await run_in_session(
        world.engine, service.set_status, ticket_id=ticket.id, status=TicketStatus.resolved,
        actor=alice, now=world.clock.advance(minutes=5), settings=world.settings))

    await handle_message(world.runtime, channel="web", sender="web-anna",
                         text="4 bra hjälp", identity=Identity(world.drivers["anna"], True,
                                                                "web"))
    await world.read_inbox()
    report = await world.desk.push_webhooks()

    assert report.delivered == 1
    [payload] = signed_rating_messages(receiver, secret)
    assert payload["data"]["ticket"]["id"] == ticket.id
    message = payload["data"]["message"]
    assert (message["from"], message["channel"], message["text"]) == (
        "driver", "web", "4 bra hjälp")
    assert message["csat"] == {"state": "done", "score": 4, "comment": "bra hjälp"}
