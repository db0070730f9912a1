"""Messages that answer nothing, end to end: an agent's reply on a support ticket reaches
the driver on the conversation's own channel.

One real server has both channels: SMS through the official Twilio client to the stand-in
for api.twilio.com on loopback (which records the exact API requests), e-mail into the
inbound SMTP server and out to a capturing SMTP relay on loopback. The agent replies through
``POST /api/v1/support/tickets/{id}/reply`` with an agent API key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select

from assistant.channels.email_models import InboundEmail, InboundStatus, OutboundEmail
from assistant.channels.models import SmsDirection, SmsMessage, SmsStatus
from assistant.channels.twilio import sms
from assistant.channels.twilio.segments import split_message
from assistant.models import Conversation
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.models import Role
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from support.models import Ticket
from tests.billing_api.factories import make_driver
from tests.channels.test_email import Relay, free_port, mail, send, start_mail_server
from tests.channels.test_sms import (
    OUR_NUMBER,
    PUBLIC,
    SID,
    STATUS,
    TOKEN,
    eventually,
    number,
    text,
    twilio_settings,
)
from tests.conftest import LiveServer, make_key
from tests.support.conftest import seed_desk

SUPPORT_HEADER = "ChargeDesk Support <support@chargedesk.test>"
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"


def channel_settings(settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int],
                     data_dir: Path, **changes: Any) -> Settings:
    return twilio_settings(settings, twilio_api, **{
        "data_dir": data_dir, "smtp_inbound_port": free_port(),
        "support_address": SUPPORT_HEADER, "smtp_host": "127.0.0.1", "smtp_port": relay[1],
        **changes})


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int],
         tmp_path: Path, nlu: Any) -> Iterator[LiveServer]:
    server = start_mail_server(channel_settings(settings, twilio_api, relay, tmp_path))
    seed_desk(server.runtime.engine)
    yield server
    server.stop()


@pytest.fixture
def agent(live: LiveServer) -> httpx.Client:
    key = make_key(live.runtime.engine, Role.agent)
    return httpx.Client(base_url=live.base_url, timeout=30,
                        headers={"Authorization": f"Bearer {key}"})


def ticket_of(engine: Any, channel: str, sender: str) -> int | None:
    with Session(engine) as session:
        conversation = session.exec(select(Conversation).where(
            Conversation.channel == channel, Conversation.sender == sender)).first()
        if conversation is None:
            return None
        return session.exec(select(Ticket.id).where(
            Ticket.conversation_id == conversation.id)).first()


def outbound_rows(engine: Any, phone: str) -> list[SmsMessage]:
    with Session(engine) as session:
        return list(session.exec(select(SmsMessage).where(
            col(SmsMessage.phone) == phone, SmsMessage.direction == SmsDirection.outbound)
            .order_by(col(SmsMessage.id))).all())


def all_sent(engine: Any, phone: str) -> list[SmsMessage]:
    """The outbound texts to ``phone``, once every one has Twilio's answer."""
    rows = outbound_rows(engine, phone)
    return rows if rows and all(r.message_sid for r in rows) else []


def handed_over_by_sms(live: LiveServer, twilio_api: TwilioStub) -> tuple[str, int, int]:
    """A driver texts for a person: their number, the ticket, the texts sent so far."""
    phone = number()
    with session_scope(live.runtime.engine) as session:
        make_driver(session, name="Anna Lindqvist", email=None, phone=phone)
    text(live, phone, "/human_handoff")
    ticket_id = eventually(lambda: ticket_of(live.runtime.engine, "sms", phone))
    sent = eventually(lambda: all_sent(live.runtime.engine, phone))
    twilio_api.wait_for(len(sent), to=phone)
    return phone, ticket_id, len(sent)


# ---------------------------------------------------------------- SMS


def test_an_agents_reply_to_an_sms_conversation_is_one_twilio_api_request(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client) -> None:
    phone, ticket_id, before = handed_over_by_sms(live, twilio_api)
    answer = "Hej Anna! Jag har startat om laddaren åt dig, prova igen nu."

    response = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply", json={"text": answer})

    assert response.status_code == 201, response.text
    assert response.json()["channel"] == "sms"
    requests = twilio_api.wait_for(before + 1, to=phone)
    assert len(requests) == before + 1
    request = requests[-1]
    assert (request.method, request.path, request.auth) == ("POST", MESSAGES, (SID, TOKEN))
    assert request.form == {"To": phone, "From": OUR_NUMBER, "Body": answer,
                            "StatusCallback": PUBLIC + STATUS}
    row = outbound_rows(live.runtime.engine, phone)[-1]
    assert (row.body, row.reply_to_id, row.status, row.attempts) == (
        answer, None, SmsStatus.queued, 1)
    assert row.message_sid is not None and row.message_sid.startswith("SM")


def test_a_long_agent_reply_goes_in_numbered_parts_in_order(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client) -> None:
    phone, ticket_id, before = handed_over_by_sms(live, twilio_api)
    answer = " ".join(f"Steg {n}: koppla ur kabeln, vänta en stund och koppla in den igen."
                      for n in range(1, 12))
    parts = split_message(answer)
    assert len(parts) == 2

    response = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply", json={"text": answer})

    assert response.status_code == 201, response.text
    requests = twilio_api.wait_for(before + 2, to=phone)[before:]
    assert [r.form["Body"] for r in requests] == parts
    assert parts[0].endswith("(1/2)") and parts[1].endswith("(2/2)")
    assert {r.form["StatusCallback"] for r in requests} == {PUBLIC + STATUS}


def test_no_agent_reply_reaches_a_number_that_said_stop(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client) -> None:
    phone, ticket_id, before = handed_over_by_sms(live, twilio_api)
    text(live, phone, "STOPP")
    twilio_api.wait_for(before + 1, to=phone)  # our confirmation of the Swedish keyword

    response = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply",
                          json={"text": "Är du kvar?"})

    assert response.status_code == 503
    assert "opted out" in response.json()["detail"]
    assert len(twilio_api.sent(phone)) == before + 1
    assert outbound_rows(live.runtime.engine, phone)[-1].status == SmsStatus.suppressed


def test_a_message_of_ours_with_choices_is_answered_with_a_number(engine: Any) -> None:
    phone = number()
    with session_scope(engine) as session:
        parts, opted_out = sms.queue_message(
            session, phone=phone, from_number=OUR_NUMBER,
            messages=[{"text": "Hur nöjd är du?",
                       "buttons": [{"title": "Bra", "payload": "/csat{\"score\": 5}"},
                                   {"title": "Dålig", "payload": "/csat{\"score\": 1}"}]}])
    assert not opted_out
    assert [p.body for p in parts] == ["Hur nöjd är du?\n1) Bra\n2) Dålig\n\n"
                                       "Svara med siffran för ditt val."]
    assert parts[0].our_number == OUR_NUMBER
    sid = "SM" + uuid.uuid4().hex
    fields = {"MessageSid": sid, "From": phone, "To": OUR_NUMBER, "Body": "2"}
    with session_scope(engine) as session:
        [message_id] = sms.record_inbound(session, messages=[fields], now=utcnow())
    with session_scope(engine) as session:
        inbound = sms.begin_inbound(session, message_id=message_id or 0, settings=Settings())
    assert inbound is not None and inbound.text == "/csat{\"score\": 1}"


# ---------------------------------------------------------------- e-mail


def test_an_agents_reply_to_an_email_conversation_is_threaded_under_the_drivers_mail(
        live: LiveServer, relay: tuple[Relay, int], agent: httpx.Client) -> None:
    question = "Kan jag få prata med en person?"
    send(live, mail(subject=question, text=question, message_id="<q1@example.com>",
                    sender="Kim Berg <kim.berg@example.com>"))
    eventually(lambda: len(relay[0].envelopes) >= 1)
    [handoff] = relay[0].messages()
    engine = live.runtime.engine
    with Session(engine) as session:
        [thread_token] = {t for t in session.exec(select(Conversation.sender).where(
            Conversation.channel == "email")).all()}
    ticket_id = eventually(lambda: ticket_of(engine, "email", thread_token))
    # The driver writes again in the thread; people have it now, so the bot stays quiet.
    send(live, mail(subject=f"Re: {question}", text="Laddaren på Odenplan startar inte.",
                    message_id="<q2@example.com>", sender="Kim Berg <kim.berg@example.com>",
                    to=f"reply+{thread_token}@chargedesk.test",
                    headers={"In-Reply-To": handoff["Message-ID"],
                             "References": f"<q1@example.com> {handoff['Message-ID']}"}))
    eventually(lambda: [r for r in rows_of(engine, InboundEmail)
                        if r.message_id == "q2@example.com"
                        and r.status == InboundStatus.no_answer])

    answer = "Hej Kim! Jag har startat om laddaren, prova igen."
    response = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply", json={"text": answer})

    assert response.status_code == 201, response.text
    assert response.json()["channel"] == "email"
    eventually(lambda: len(relay[0].envelopes) >= 2)
    reply = relay[0].messages()[1]
    assert reply["From"] == SUPPORT_HEADER
    assert reply["To"] == "Kim Berg <kim.berg@example.com>"
    assert reply["Subject"] == f"Re: {question}"
    assert reply["In-Reply-To"] == "<q2@example.com>"
    assert reply["References"] == f"<q1@example.com> {handoff['Message-ID']} <q2@example.com>"
    assert reply["Reply-To"] == f"ChargeDesk Support <reply+{thread_token}@chargedesk.test>"
    assert reply.get_body(("plain",)).get_content().strip() == answer  # type: ignore[union-attr]
    assert [p.get_content_type() for p in reply.iter_parts()] == ["text/plain", "text/html"]
    envelope = relay[0].envelopes[1]
    assert (envelope.mail_from, envelope.rcpt_tos) == ("support@chargedesk.test",
                                                      ["kim.berg@example.com"])
    # Our message is known to the thread: the driver's answer to it threads back in.
    ours = rows_of(engine, OutboundEmail)[-1]
    assert f"<{ours.message_id}>" == reply["Message-ID"]


def test_a_message_to_an_address_starts_a_thread_the_drivers_reply_continues(
        live: LiveServer, relay: tuple[Relay, int]) -> None:
    import asyncio

    from assistant.channels import outbound

    runtime = live.runtime
    future = asyncio.run_coroutine_threadsafe(outbound.send(
        runtime, channel="email", sender="Kim Berg <kim.berg@example.com>",
        messages=[{"subject": "Din laddning är klar", "text": "Laddningen är klar: 12,5 kWh."}]),
        _loop(live))
    future.result(30)
    eventually(lambda: len(relay[0].envelopes) >= 1)
    [notice] = relay[0].messages()
    assert notice["Subject"] == "Din laddning är klar"
    assert notice["In-Reply-To"] is None and notice["References"] is None
    token = str(notice["Reply-To"]).split("reply+")[1].split("@")[0]
    with pytest.raises(outbound.ChannelUnavailable):
        asyncio.run_coroutine_threadsafe(outbound.send(
            runtime, channel="email", sender="nosuchthread0000", messages=[{"text": "x"}]),
            _loop(live)).result(30)
    send(live, mail(subject="Re: Din laddning är klar", text="Tack! Kan jag prata med en person?",
                    sender="kim.berg@example.com", to=f"reply+{token}@chargedesk.test",
                    headers={"In-Reply-To": notice["Message-ID"]}))
    eventually(lambda: len(relay[0].envelopes) >= 2)
    answer = relay[0].messages()[1]
    assert answer["In-Reply-To"] is not None and answer["Subject"] == "Re: Din laddning är klar"
    assert notice["Message-ID"] in str(answer["References"])


def _loop(live: LiveServer) -> Any:
    """The served app's event loop (outbound.send runs where the channels live)."""
    return live.server.servers[0].get_loop()


def rows_of(engine: Any, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model).order_by(col(model.id))).all())
