"""A one-time code used inside a conversation (the assistant's own verification, not the web
chat's sign-in endpoints) proves the driver there and then, on one real server (SQLite and
PostgreSQL): codes are mailed to a capturing SMTP relay on loopback, texts go through the
official Twilio client to the stand-in for api.twilio.com on loopback, SMS webhooks are
signed as Twilio signs them.

- An anonymous web chat whose driver verifies in the dialogue is the driver's at once, as a
  signed-in chat is: their contact, one history for agents, their open ticket from another
  channel joined (the driver told so in the same answer).
- The message carrying the code is already linked: a number nobody knew that verifies by
  SMS joins the driver's contact (its anonymous contact merged) before anything else is
  said.
- A code asked for to a number that sent STOP is never said to be sent: the driver is told
  the number opted out and how to opt back in, and the code goes to the account's e-mail
  address instead when it has one (said so), in the driver's language.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from assistant import contacts
from assistant.channels.models import SmsOptOut
from assistant.contact_models import Contact
from assistant.dialogue import store
from assistant.models import ConversationEvent
from billing_api.models import Language
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.models import Role
from chargedesk.settings import Settings
from support.models import TicketConversation
from tests.billing_api.factories import make_driver
from tests.channels.fixtures import Relay
from tests.channels.test_sms import eventually, number, text, twilio_settings
from tests.conftest import LiveServer, make_key, start_server
from tests.support.conftest import seed_desk


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int], tmp_path: Path,
         nlu: Any) -> Iterator[LiveServer]:
    server = start_server(twilio_settings(
        settings, twilio_api, data_dir=tmp_path, smtp_host="127.0.0.1",
        smtp_port=relay[1]))
    seed_desk(server.runtime.engine)
    yield server
    server.stop()


class Chat:
    """An anonymous web chat, as the widget opens one."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        opened = httpx.post(live.base_url + "/chat/session", timeout=30).json()
        self.sender = opened["sender"]
        self.headers = {"Authorization": f"Bearer {opened['token']}"}

    def say(self, message: str) -> list[str]:
        response = httpx.post(self.live.base_url + "/webhooks/rest/webhook", timeout=60,
                              headers=self.headers,
                              json={"sender": self.sender, "message": message})
        assert response.status_code == 200, response.text
        return [str(m.get("text")) for m in response.json()]


def code_mailed_to(relay: tuple[Relay, int], address: str, count: int = 1) -> str:
    """The code in the ``count``-th code mail to ``address``."""
    def mails() -> list[Any]:
        return [m for m in relay[0].messages() if address in str(m["To"])]

    found = eventually(lambda: len(mails()) >= count and mails())
    body = str(found[count - 1].get_body(("plain",)).get_content())
    code = re.search(r"\b(\d{6})\b", body)
    assert code is not None, body
    return code.group(1)


def ticket_of(engine: Any, channel: str, sender: str) -> int | None:
    with Session(engine) as session:
        conversation = store.get_conversation(session, channel=channel, sender=sender)
        if conversation is None:
            return None
        link = session.get(TicketConversation, conversation.id)
        return link.ticket_id if link is not None else None


def contact_ids(engine: Any, channel: str, sender: str, driver_id: int) -> tuple[Any, Any]:
    """The conversation's contact, and the driver's."""
    with Session(engine) as session:
        own = contacts.contact_of(session, channel=channel, sender=sender)
        driver = contacts.find(session, driver_id=driver_id)
        return own, driver.id if driver is not None else None


# ---------------------------------------------------------------- the web chat


def test_a_web_chat_verified_in_the_dialogue_joins_the_drivers_contact_and_ticket_at_once(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    phone = number()
    with session_scope(engine) as session:
        sam = make_driver(session, name="Sam Reed", email="sam.reed@example.se",
                          phone=phone).id
    # Sam asked for a person by SMS; people have his case.
    text(live, phone, "Can I talk to a person please?")
    ticket_id = eventually(lambda: ticket_of(engine, "sms", phone))
    twilio_api.wait_for(1, to=phone)

    # Later he opens the web chat, anonymous, and asks about his account.
    chat = Chat(live)
    asked = chat.say("What's my balance?")
    assert any("e-mail address on your account" in line for line in asked), asked
    assert ticket_of(engine, "web", chat.sender) is None
    assert "I've sent a code" in chat.say("sam.reed@example.se")[-1]

    code = code_mailed_to(relay, "sam.reed@example.se")
    answered = chat.say(code)

    # That very answer says people have his case: the chat joined his ticket, paused.
    assert answered[-1] == (f"Thank you! An agent already has your case (no. {ticket_id}) "
                            "and will answer you here.")
    assert ticket_of(engine, "web", chat.sender) == ticket_id
    with Session(engine) as session:
        web = store.get_conversation(session, channel="web", sender=chat.sender)
        assert web is not None and web.paused
    own, drivers = contact_ids(engine, "web", chat.sender, sam)
    assert own == drivers is not None
    # The ticket's inbox starts past the code: it is not handed to agents as a message.
    with Session(engine) as session:
        typed = session.exec(select(ConversationEvent.id).where(
            ConversationEvent.conversation_id == web.id, ConversationEvent.type == "user",
            ConversationEvent.data["text"].as_string() == code)).one()
        link = session.get(TicketConversation, web.id)
        assert link is not None and link.last_event_id > (typed or 0)

    # What he writes next goes to the people who have his case, not to the bot, and
    # their answer comes back to the chat, where he wrote last.
    assert chat.say("Is anyone there?") == []
    agent = httpx.Client(base_url=live.base_url, timeout=30, headers={
        "Authorization": f"Bearer {make_key(engine, Role.agent)}"})
    replied = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply",
                         json={"text": "Yes, I'm here. How can I help?"})
    assert replied.status_code == 201, replied.text
    assert replied.json()["channel"] == "web"

    # One history: SMS and the whole chat, from before he was known, in time order.
    view = agent.get(f"/api/v1/support/tickets/{ticket_id}/history").json()
    assert view["channels"] == ["sms", "web"]
    assert [c["driver_id"] for c in view["contacts"]] == [sam]
    lines = view["history"]
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)
    said = [(line["channel"], line["text"]) for line in lines if line["from"] == "driver"]
    assert said[0] == ("sms", "Can I talk to a person please?")
    assert ("web", "What's my balance?") in said and said[-1] == ("web", "Is anyone there?")


# ---------------------------------------------------------------- SMS


def test_the_message_with_the_code_already_joins_the_number_to_the_driver(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    linked: list[contacts.ContactLinked] = []
    live.runtime.bus.subscribe(contacts.ContactLinked, linked.append)
    with session_scope(engine) as session:
        eva = make_driver(session, name="Eva Holm", email="eva.holm@example.se",
                          phone=number()).id
    borrowed = number()  # a phone that is on no account: an anonymous contact of its own
    text(live, borrowed, "Vad är mitt saldo?")
    twilio_api.wait_for(1, to=borrowed)
    anonymous, _ = contact_ids(engine, "sms", borrowed, eva)
    assert anonymous is not None
    text(live, borrowed, "eva.holm@example.se")
    twilio_api.wait_for(2, to=borrowed)

    text(live, borrowed, code_mailed_to(relay, "eva.holm@example.se"))
    twilio_api.wait_for(3, to=borrowed)

    # Nothing more written: the conversation, and the number's proven contact, are hers.
    own, hers = contact_ids(engine, "sms", borrowed, eva)
    assert own == hers and own != anonymous
    with Session(engine) as session:
        merged = session.get(Contact, anonymous)
        assert merged is not None and merged.merged_into_id == hers
        found = contacts.find(session, phone=borrowed)
        assert found is not None and found.id == hers
    assert eventually(lambda: [e for e in linked if e.driver_id == eva
                               and e.previous_contact_id == anonymous])


# ---------------------------------------------------------------- a number that said STOP


def test_a_code_for_a_number_that_said_stop_goes_by_e_mail_and_the_driver_is_told_so(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    phone = number()
    with session_scope(engine) as session:
        make_driver(session, name="Karin Ek", email="karin.ek@example.se", phone=phone)
    text(live, phone, "STOP")  # Twilio's own keyword: stored, not answered by us
    eventually(lambda: _opted_out(engine, phone))

    chat = Chat(live)
    chat.say("Vad är mitt saldo?")
    national = "0" + phone[3:6] + "-" + phone[6:9] + " " + phone[9:]
    told = chat.say(national)[-1]

    assert told.startswith(f"Numret {phone} har stängt av sms från oss (STOP)"), told
    assert "skickat koden till e-postadressen på ditt konto i stället" in told
    assert "svara START" in told
    assert "har jag skickat en kod dit" not in told
    code = code_mailed_to(relay, "karin.ek@example.se")
    assert twilio_api.sent(phone) == []  # nothing texted to a number that said STOP
    answered = chat.say(code)
    assert not any("stämmer inte" in line for line in answered), answered
    # Signing in from the widget says the same: by e-mail.
    other = Chat(live)
    started = httpx.post(live.base_url + "/chat/verify/start", headers=other.headers,
                         json={"contact": phone}, timeout=30)
    assert (started.status_code, started.json()["via"]) == (200, "email"), started.text
    code_mailed_to(relay, "karin.ek@example.se", count=2)
    assert twilio_api.sent(phone) == []
    with Session(engine) as session:
        web = store.get_conversation(session, channel="web", sender=chat.sender)
        assert web is not None and web.verified


def test_a_code_for_a_number_that_said_stop_and_no_e_mail_is_not_said_to_be_sent(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    phone = number()
    with session_scope(engine) as session:
        make_driver(session, name="Tom Lee", email=None, phone=phone, language=Language.en)
    text(live, phone, "STOP")
    eventually(lambda: _opted_out(engine, phone))

    chat = Chat(live)
    chat.say("What's my balance?")
    told = chat.say(phone)

    assert told[0] == (f"The number {phone} has opted out of texts from us (STOP), so I "
                       "haven't sent a code. To get texts again, reply START to one of our "
                       "texts. You can also give me the e-mail address on your account.")
    assert not any("sent a code" in line and "haven't" not in line for line in told), told
    assert "e-mail address on your account" in told[-1]  # asked again
    assert twilio_api.sent(phone) == [] and relay[0].envelopes == []
    # Signing in from the widget is refused with the reason, not answered "sent".
    started = httpx.post(live.base_url + "/chat/verify/start", headers=Chat(live).headers,
                         json={"contact": phone}, timeout=30)
    assert started.status_code == 409 and "opted out" in started.json()["detail"]
    assert twilio_api.sent(phone) == [] and relay[0].envelopes == []


def _opted_out(engine: Any, phone: str) -> bool:
    with Session(engine) as session:
        row = session.exec(select(SmsOptOut).where(SmsOptOut.phone == phone)).first()
        return row is not None and row.opted_out
