"""One driver, one history, end to end on a served app: a driver signs in to the web chat
with a one-time code (mailed to a capturing SMTP relay on loopback), asks for a person,
then goes on by SMS (Twilio-signed webhooks; replies through the official client to the
stand-in for api.twilio.com on loopback). The ticket follows her to SMS, the agent's reply
goes there, and the agent reads one history of both channels, in time order, each message
marked with its channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from assistant.dialogue import store
from assistant.models import Conversation
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.models import Role
from chargedesk.settings import Settings
from support.models import Ticket, TicketConversation
from tests.billing_api.factories import make_driver
from tests.channels.test_email import Relay, free_port
from tests.channels.test_sms import (
    OUR_NUMBER,
    PUBLIC,
    STATUS,
    eventually,
    number,
    text,
    twilio_settings,
)
from tests.conftest import LiveServer, make_key, start_server
from tests.support.conftest import PASSWORD, seed_desk


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int],
         tmp_path: Path, nlu: Any) -> Iterator[LiveServer]:
    server = start_server(twilio_settings(settings, twilio_api, data_dir=tmp_path,
                                          smtp_host="127.0.0.1", smtp_port=relay[1]))
    seed_desk(server.runtime.engine)
    yield server
    server.stop()


def ticket_of(engine: Any, channel: str, sender: str) -> int | None:
    with Session(engine) as session:
        conversation = session.exec(select(Conversation).where(
            Conversation.channel == channel, Conversation.sender == sender)).first()
        if conversation is None:
            return None
        link = session.get(TicketConversation, conversation.id)
        return link.ticket_id if link is not None else None


def signed_in_chat(live: LiveServer, relay: tuple[Relay, int], email: str
                   ) -> tuple[str, dict[str, str]]:
    """A web chat session signed in with the code mailed to ``email``."""
    sender, bearer, _ = sign_in(live, relay, email)
    return sender, bearer


def sign_in(live: LiveServer, relay: tuple[Relay, int], email: str
            ) -> tuple[str, dict[str, str], dict[str, Any]]:
    """:func:`signed_in_chat`, and the sign-in's answer."""
    chat = httpx.post(live.base_url + "/chat/session", timeout=30).json()
    bearer = {"Authorization": f"Bearer {chat['token']}"}
    started = httpx.post(live.base_url + "/chat/verify/start", json={"contact": email},
                         headers=bearer, timeout=30)
    assert started.status_code == 200, started.text
    eventually(lambda: relay[0].envelopes)
    [code_mail] = relay[0].messages()
    code = re.search(r"\b(\d{6})\b", str(code_mail.get_body(("plain",)).get_content()))  # type: ignore[union-attr]
    assert code is not None
    checked = httpx.post(live.base_url + "/chat/verify/check", json={"code": code.group(1)},
                         headers=bearer, timeout=30)
    assert checked.status_code == 200, checked.text
    return (chat["sender"], {"Authorization": f"Bearer {checked.json()['token']}"},
            checked.json())


def test_a_driver_who_goes_on_by_sms_keeps_one_ticket_and_one_history(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    phone = number()
    with session_scope(engine) as session:
        anna = make_driver(session, name="Anna Berg", email="anna.berg@example.se",
                           phone=phone).id
    sender, bearer = signed_in_chat(live, relay, "anna.berg@example.se")
    asked = httpx.post(live.base_url + "/webhooks/rest/webhook", headers=bearer, timeout=30,
                       json={"sender": sender, "message": "Kan jag få prata med en person?"})
    assert asked.status_code == 200, asked.text
    ticket_id = eventually(lambda: ticket_of(engine, "web", sender))

    # Later, at the charger, she texts instead: the same driver, so the same ticket. The
    # conversation joins it before the assistant sees her text: the bot does not answer
    # it, she is told that an agent has her case, in the language she wrote.
    text(live, phone, "Jag står vid laddaren nu och den blinkar rött")
    assert eventually(lambda: ticket_of(engine, "sms", phone)) == ticket_id
    (told,) = twilio_api.wait_for(1, to=phone)
    assert told.form == {
        "To": phone, "From": OUR_NUMBER, "StatusCallback": PUBLIC + STATUS,
        "Body": f"Tack! En handläggare har redan ditt ärende (nr {ticket_id}) och svarar "
                "dig här."}
    with Session(engine) as session:
        sms_conversation = session.exec(select(Conversation).where(
            Conversation.channel == "sms", Conversation.sender == phone)).one()
        assert sms_conversation.paused  # people have her now: the bot leaves SMS to them
        assert session.get(Ticket, ticket_id).driver_id == anna  # type: ignore[union-attr]
        said = [(e.type, (e.data.get("metadata") or {}).get("support", {}).get("by"))
                for e in store.list_events(session, conversation_id=sms_conversation.id or 0,
                                           types=("user", "bot"))]
    assert said == [("user", None), ("bot", "system")]  # nothing from the assistant
    sent_before = 1

    agent = httpx.Client(base_url=live.base_url, timeout=30, headers={
        "Authorization": f"Bearer {make_key(engine, Role.agent)}"})
    answer = "Hej Anna! Jag startar om laddaren nu, vänta en minut."
    replied = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply", json={"text": answer})

    assert replied.status_code == 201, replied.text
    assert replied.json()["channel"] == "sms"  # where she wrote last
    request = twilio_api.wait_for(sent_before + 1, to=phone)[-1]
    assert request.form == {"To": phone, "From": OUR_NUMBER, "Body": answer,
                            "StatusCallback": PUBLIC + STATUS}

    view = agent.get(f"/api/v1/support/tickets/{ticket_id}/history").json()
    assert view["channels"] == ["sms", "web"]
    [contact] = view["contacts"]
    assert contact["driver_id"] == anna
    assert {(a["kind"], a["proven"]) for a in contact["addresses"]} == {
        ("web", True), ("phone", True)}
    lines = view["history"]
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)
    drivers = [(line["channel"], line["text"]) for line in lines if line["from"] == "driver"]
    assert drivers == [("web", "Kan jag få prata med en person?"),
                       ("sms", "Jag står vid laddaren nu och den blinkar rött")]
    assert [line["from"] for line in lines if line["channel"] == "sms"] == [
        "driver", "system", "agent"]
    assert (lines[-1]["channel"], lines[-1]["from"], lines[-1]["text"]) == (
        "sms", "agent", answer)
    assert lines[0]["channel"] == "web" and {line["channel"] for line in lines[:2]} == {"web"}
    # The same history from the contact, found by her proven number.
    found = agent.get("/api/v1/support/contacts", params={"phone": phone}).json()
    by_contact = agent.get(f"/api/v1/support/contacts/{found['id']}").json()
    assert [line["id"] for line in by_contact["history"]] == [line["id"] for line in lines]

    # And as a page of the console.
    with httpx.Client(base_url=live.base_url, timeout=30) as alice:
        alice.post("/agent/login", data={"username": "alice", "password": PASSWORD})
        page = alice.get(f"/agent/tickets/{ticket_id}/history")
    assert page.status_code == 200
    assert "[web]" in page.text and "[sms]" in page.text and answer in page.text


def test_a_driver_who_signs_in_to_the_web_chat_finds_their_ticket_there(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    phone = number()
    with session_scope(engine) as session:
        make_driver(session, name="Sam Reed", email="sam.reed@example.se", phone=phone)
    text(live, phone, "Can I talk to a person please?")
    ticket_id = eventually(lambda: ticket_of(engine, "sms", phone))
    twilio_api.wait_for(1, to=phone)  # the handoff's answer

    # He signs in to the web chat before writing anything there: the ticket follows him
    # at once, and the chat says so in the language of his case.
    sender, bearer, signed_in = sign_in(live, relay, "sam.reed@example.se")
    assert signed_in["messages"] == [{
        "recipient_id": sender,
        "text": f"Thank you! An agent already has your case (no. {ticket_id}) and will "
                "answer you here."}]
    assert ticket_of(engine, "web", sender) == ticket_id
    with Session(engine) as session:
        web = store.get_conversation(session, channel="web", sender=sender)
        assert web is not None and web.paused

    # What he writes there goes to the people who have his case, not to the bot...
    asked = httpx.post(live.base_url + "/webhooks/rest/webhook", headers=bearer, timeout=30,
                       json={"sender": sender, "message": "Is anyone there?"})
    assert (asked.status_code, asked.json()) == (200, [])
    # ...and their answer comes back where he wrote last.
    agent = httpx.Client(base_url=live.base_url, timeout=30, headers={
        "Authorization": f"Bearer {make_key(engine, Role.agent)}"})
    replied = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply",
                         json={"text": "Yes, I'm here. Which station are you at?"})
    assert replied.status_code == 201, replied.text
    assert replied.json()["channel"] == "web"
    lines = agent.get(f"/api/v1/support/tickets/{ticket_id}/history").json()["history"]
    assert [(line["channel"], line["from"]) for line in lines][-3:] == [
        ("web", "system"), ("web", "driver"), ("web", "agent")]


def test_a_driver_whose_mail_server_vouches_for_them_is_told_by_mail_that_people_have_it(
        settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int], tmp_path: Path,
        nlu: Any) -> None:
    from email.message import EmailMessage

    from tests.channels.test_email import SUPPORT_HEADER, body, mail, send, start_mail_server

    live = start_mail_server(twilio_settings(
        settings, twilio_api, data_dir=tmp_path, smtp_host="127.0.0.1", smtp_port=relay[1],
        smtp_inbound_port=free_port(), support_address=SUPPORT_HEADER,
        email_trusted_authserv_id="mx.chargedesk.test"))
    try:
        engine = live.runtime.engine
        seed_desk(engine)
        phone = number()
        with session_scope(engine) as session:
            make_driver(session, name="Eva Holm", email="eva.holm@example.se", phone=phone)
        text(live, phone, "Kan jag få prata med en person?")
        ticket_id = eventually(lambda: ticket_of(engine, "sms", phone))
        # She writes from her own address, in English; the support domain's MX vouches
        # for it (DMARC pass): she is the driver, so her case follows her to e-mail.
        send(live, mail(sender="Eva Holm <eva.holm@example.se>", subject="Charger 4",
                        text="I'm still waiting at the charger.",
                        headers={"Authentication-Results":
                                 "mx.chargedesk.test; dmarc=pass header.from=example.se"}))
        eventually(lambda: relay[0].envelopes)
        [reply] = [m for m in relay[0].messages() if m["To"] and "eva.holm" in m["To"]]
        assert body(reply).startswith(
            f"Thank you! An agent already has your case (no. {ticket_id}) and will answer "
            "you here.")
        assert reply["Subject"] == "Re: Charger 4"
        with Session(engine) as session:
            thread = session.exec(select(Conversation).where(
                Conversation.channel == "email")).one()
        assert ticket_of(engine, "email", thread.sender) == ticket_id
        assert thread.paused
        # The same From without the MX's word is anyone's: a thread of its own, answered
        # by the bot, on no ticket.
        forged: EmailMessage = mail(sender="eva.holm@example.se", subject="Invoice",
                                    text="What is my balance?")
        send(live, forged)
        eventually(lambda: len(relay[0].envelopes) >= 2)
        with Session(engine) as session:
            threads = session.exec(select(Conversation).where(
                Conversation.channel == "email")).all()
        assert len(threads) == 2
        other = next(t for t in threads if t.sender != thread.sender)
        assert ticket_of(engine, "email", other.sender) is None and not other.paused
    finally:
        live.stop()


def test_the_history_is_for_staff_only(live: LiveServer) -> None:
    assert httpx.get(live.base_url + "/api/v1/support/tickets/1/history",
                     timeout=30).status_code == 401
    page = httpx.get(live.base_url + "/agent/tickets/1/history", timeout=30)
    assert (page.status_code, page.headers["location"]) == (303, "/agent/login")


def test_the_demo_shows_a_driver_who_went_on_by_sms(engine: Any, settings: Settings) -> None:
    from chargedesk import demo
    from support.contacts import DEMO_TEXT, ticket_history

    network = demo.load_demo()
    with session_scope(engine) as session:
        demo.seed(session, network)
        demo.seed_drivers(session, network, settings=settings)
    demo.prepare_support(engine, settings=settings)
    demo.prepare_support(engine, settings=settings)  # a second start adds nothing

    with session_scope(engine) as session:
        web_ticket = session.exec(select(Ticket).where(Ticket.channel == "web")).one()
        view = ticket_history(session, ticket_id=web_ticket.id or 0)
    assert view["channels"] == ["sms", "web"]
    assert [c["driver_id"] for c in view["contacts"]] == [web_ticket.driver_id]
    drivers = [(line["channel"], line["text"]) for line in view["history"]
               if line["from"] == "driver"]
    assert drivers[0][0] == "web" and drivers[-1] == ("sms", DEMO_TEXT[0])
    assert len([d for d in drivers if d[0] == "sms"]) == 1


async def test_a_ticket_from_an_unproven_address_does_not_show_the_drivers_history(
        world: Any) -> None:
    from assistant import contacts
    from assistant.service import Identity, handle_message
    from chargedesk.db import run_in_session
    from support.contacts import ticket_history

    anna = world.drivers["anna"]
    # Anna's own texts, proven by Twilio's signature.
    await handle_message(world.runtime, channel="sms", sender="+46701110000",
                         text="/greet", identity=Identity(anna, True, "sms"))
    await run_in_session(world.engine, contacts.link, channel="sms", sender="+46701110000",
                         address="+46701110000", driver_id=anna, proven=True)
    # A mail whose From says anna@example.se, with nothing vouching for it; the e-mail
    # channel without a trusted mail server still names her to the assistant.
    ticket = await world.hand_over("thread00000000aa", channel="email")
    await run_in_session(world.engine, contacts.link, channel="email",
                         sender="thread00000000aa", address="anna@example.se",
                         driver_id=anna, proven=False)

    view = await run_in_session(world.engine, ticket_history, ticket_id=ticket.id)

    assert ticket.driver_id == anna
    [contact] = view["contacts"]
    assert contact["anonymous"] and contact["addresses"][0]["proven"] is False
    assert view["channels"] == ["email"]
    assert {line["proven"] for line in view["history"]} == {False}


async def test_a_ticket_handed_back_to_the_bot_gains_the_channel_and_the_bot_answers(
        world: Any) -> None:
    from assistant import contacts
    from assistant.service import Identity, handle_message
    from support.models import TicketStatus

    anna, phone = world.drivers["anna"], "+46701110000"
    ticket = await world.hand_over("web-anna-1")
    with session_scope(world.engine) as session:  # an agent handed it back to the bot
        row = session.get(Ticket, ticket.id)
        assert row is not None
        row.status = TicketStatus.pending
        session.add(row)

    joined = await contacts.join(world.runtime, channel="sms", sender=phone, address=phone,
                                 driver_id=anna, proven=True)
    answer = await handle_message(world.runtime, channel="sms", sender=phone, text="/greet",
                                  identity=Identity(anna, True, "sms"))

    assert joined is not None and joined.followed == contacts.Followed(
        ticket_id=ticket.id or 0, paused=False, language=ticket.language)
    assert answer  # the bot has her again, on every channel
    assert await contacts.acknowledge(world.runtime, channel="sms", sender=phone,
                                      joined=joined) == []
    assert ticket_of(world.engine, "sms", phone) == ticket.id
    # Once on the ticket, her next messages join nothing new.
    again = await contacts.join(world.runtime, channel="sms", sender=phone, address=phone,
                                driver_id=anna, proven=True)
    assert again is not None and again.followed is None
