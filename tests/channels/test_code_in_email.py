"""A one-time code mailed back in an e-mail thread proves the driver in that same mail, on
one real server (SQLite and PostgreSQL): the driver's mail comes in over SMTP to the
service's inbound server on loopback, codes and replies go out to a capturing SMTP relay on
loopback, texts go through the official Twilio client to the stand-in for api.twilio.com.

A driver people already have by SMS writes from an address the service cannot vouch for
(no trusted DMARC pass), verifies in the thread with the code mailed to their account, and
the reply to the mail carrying the code already says an agent has their case: the thread is
on their ticket, paused, before they write again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select

from assistant import contacts
from assistant.channels.email_models import EmailThread, InboundEmail, InboundStatus
from assistant.dialogue import store
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.models import Role
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver
from tests.channels.test_code_in_conversation import contact_ids, ticket_of
from tests.channels.test_email import (
    SUPPORT,
    SUPPORT_HEADER,
    Relay,
    body,
    free_port,
    mail,
    send,
    start_mail_server,
)
from tests.channels.test_sms import eventually, number, text, twilio_settings
from tests.conftest import LiveServer, make_key
from tests.support.conftest import seed_desk

WORK = "sam.reed@work.example"  # where Sam writes from: on no account, vouched by nobody
ACCOUNT = "sam.reed@example.se"


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int], tmp_path: Path,
         nlu: Any) -> Iterator[LiveServer]:
    server = start_mail_server(twilio_settings(
        settings, twilio_api, data_dir=tmp_path, smtp_host="127.0.0.1",
        smtp_port=relay[1], smtp_inbound_port=free_port(),
        support_address=SUPPORT_HEADER))
    seed_desk(server.runtime.engine)
    yield server
    server.stop()


def mails_to(outbox: Relay, address: str) -> list[EmailMessage]:
    return [m for m in outbox.messages() if address in str(m["To"])]


def nth_mail_to(outbox: Relay, address: str, count: int) -> EmailMessage:
    found = eventually(lambda: len(mails_to(outbox, address)) >= count
                       and mails_to(outbox, address))
    return found[count - 1]


def reply_to(previous: EmailMessage, said: str) -> EmailMessage:
    """Sam's answer in the thread, as a mail client writes one."""
    return mail(sender=f"Sam Reed <{WORK}>", subject="Re: " + str(previous["Subject"]),
                text=said, headers={"In-Reply-To": str(previous["Message-ID"])})


def inbound_statuses(engine: Any) -> list[InboundStatus]:
    with Session(engine) as session:
        return list(session.exec(select(InboundEmail.status).where(
            InboundEmail.from_address == WORK).order_by(col(InboundEmail.id))).all())


def test_the_mail_with_the_code_joins_the_thread_to_the_drivers_open_ticket_at_once(
        live: LiveServer, twilio_api: TwilioStub, relay: tuple[Relay, int]) -> None:
    engine = live.runtime.engine
    phone = number()
    with session_scope(engine) as session:
        sam = make_driver(session, name="Sam Reed", email=ACCOUNT, phone=phone).id
    # Sam asked for a person by SMS; people have his case.
    text(live, phone, "Can I talk to a person please?")
    ticket_id = eventually(lambda: ticket_of(engine, "sms", phone))
    twilio_api.wait_for(1, to=phone)

    # Later he e-mails from work about his account: nothing proves who he is.
    send(live, mail(sender=f"Sam Reed <{WORK}>", subject="My account",
                    text="What's my balance?"))
    asked = nth_mail_to(relay[0], WORK, 1)
    assert "e-mail address on your account" in body(asked), body(asked)
    with Session(engine) as session:
        [thread] = session.exec(select(EmailThread).where(EmailThread.address == WORK)).all()
        token = thread.token
    assert ticket_of(engine, "email", token) is None

    send(live, reply_to(asked, ACCOUNT))
    told = nth_mail_to(relay[0], WORK, 2)
    assert "I've sent a code" in body(told), body(told)
    mailed = body(nth_mail_to(relay[0], ACCOUNT, 1))
    code = re.search(r"\b(\d{6})\b", mailed)
    assert code is not None, mailed

    send(live, reply_to(told, code.group(1)))
    answered = body(nth_mail_to(relay[0], WORK, 3))

    # The reply to that very mail says people have his case: the thread joined his
    # ticket, paused, and it is his contact's.
    assert (f"Thank you! An agent already has your case (no. {ticket_id}) and will answer "
            "you here.") in answered, answered
    assert ticket_of(engine, "email", token) == ticket_id
    with Session(engine) as session:
        conversation = store.get_conversation(session, channel="email", sender=token)
        assert conversation is not None and conversation.paused
    own, his = contact_ids(engine, "email", token, sam)
    assert own == his is not None
    with Session(engine) as session:  # the code proves Sam, not the address he wrote from
        assert contacts.find(session, email=WORK) is None
    assert inbound_statuses(engine) == [InboundStatus.answered] * 3

    # His next mail goes to the people who have his case, not to the bot; their answer
    # goes to the thread, where he wrote last.
    send(live, reply_to(nth_mail_to(relay[0], WORK, 3), "Is anyone there?"))
    eventually(lambda: inbound_statuses(engine)[3:] == [InboundStatus.no_answer])
    assert len(mails_to(relay[0], WORK)) == 3
    agent = httpx.Client(base_url=live.base_url, timeout=30, headers={
        "Authorization": f"Bearer {make_key(engine, Role.agent)}"})
    replied = agent.post(f"/api/v1/support/tickets/{ticket_id}/reply",
                         json={"text": "Yes, I'm here. How can I help?"})
    assert replied.status_code == 201, replied.text
    assert replied.json()["channel"] == "email"
    answer = nth_mail_to(relay[0], WORK, 4)
    assert "Yes, I'm here." in body(answer) and SUPPORT in str(answer["From"])
