"""The satisfaction survey on the channel the driver used, end to end on one real server
(SQLite and PostgreSQL) with the desk's own APScheduler jobs running: SMS through the
official Twilio client to the stand-in for api.twilio.com on loopback, e-mail out through a
capturing SMTP relay and in through the inbound SMTP server. An agent resolves the ticket
through ``/api/v1/support``; the question arrives by text or in the mail thread; the
driver's answer on that channel is the rating and the comment, never a turn for the bot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from assistant.channels.email_models import InboundEmail, InboundStatus
from assistant.models import Conversation
from chargedesk.bench.sms import TwilioStub
from chargedesk.models import Role
from chargedesk.settings import Settings
from support.models import CsatState, Ticket
from tests.channels.test_email import Relay, mail, send, start_mail_server
from tests.channels.test_outbound import channel_settings, handed_over_by_sms, rows_of, ticket_of
from tests.channels.test_sms import eventually, text
from tests.conftest import LiveServer, make_key
from tests.support.conftest import seed_desk


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, relay: tuple[Relay, int],
         tmp_path: Path, nlu: Any) -> Iterator[LiveServer]:
    """Both channels and the desk's jobs (inbox every 0.3 s) on one server."""
    server = start_mail_server(channel_settings(
        settings, twilio_api, relay, tmp_path, support_scheduler=True,
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


def ticket(engine: Any, ticket_id: int) -> Ticket:
    with Session(engine) as session:
        row = session.get(Ticket, ticket_id)
        assert row is not None
        return row


def paused(engine: Any, channel: str, sender: str) -> bool:
    with Session(engine) as session:
        return session.exec(select(Conversation.paused).where(
            Conversation.channel == channel, Conversation.sender == sender)).one()


def resolve(agent: httpx.Client, ticket_id: int) -> None:
    response = agent.post(f"/api/v1/support/tickets/{ticket_id}/status",
                          json={"status": "resolved"})
    assert response.status_code == 200, response.text
    assert response.json()["messages_sent"] == 1, response.json()


# ---------------------------------------------------------------- SMS


def test_the_survey_goes_by_sms_and_a_texted_score_with_words_is_rating_and_comment(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client) -> None:
    engine = live.runtime.engine
    phone, ticket_id, before = handed_over_by_sms(live, twilio_api)

    resolve(agent, ticket_id)

    [question] = twilio_api.wait_for(before + 1, to=phone)[before:]
    assert "Hur nöjd är du" in question.form["Body"]
    # The text asks for a digit itself: no numbered list of 1..5 doubling its length.
    assert "1) 1" not in question.form["Body"]
    assert len(question.form["Body"]) <= 160
    assert ticket(engine, ticket_id).csat_state == CsatState.asked
    assert paused(engine, "sms", phone)

    text(live, phone, "4 bra service")

    rated = eventually(lambda: (t := ticket(engine, ticket_id)).csat_state == CsatState.done
                       and t)
    assert (rated.csat_score, rated.csat_comment) == (4, "bra service")
    [thanks] = twilio_api.wait_for(before + 2, to=phone)[before + 1:]
    assert thanks.form["Body"].startswith("Tack för ditt svar")
    # The bot has the number again, and it answered nothing of the rating.
    assert not paused(engine, "sms", phone)
    assert len(twilio_api.sent(phone)) == before + 2


def test_a_texted_digit_is_the_score_then_the_next_text_the_comment(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client) -> None:
    engine = live.runtime.engine
    phone, ticket_id, before = handed_over_by_sms(live, twilio_api)
    resolve(agent, ticket_id)
    twilio_api.wait_for(before + 1, to=phone)

    text(live, phone, "2")

    [prompt] = twilio_api.wait_for(before + 2, to=phone)[before + 1:]
    assert "kommentar" in prompt.form["Body"]
    scored = ticket(engine, ticket_id)
    assert (scored.csat_score, scored.csat_state) == (2, CsatState.comment)

    text(live, phone, "Det tog för lång tid innan någon svarade")

    done = eventually(lambda: (t := ticket(engine, ticket_id)).csat_state == CsatState.done
                      and t)
    assert (done.csat_score, done.csat_comment) == (
        2, "Det tog för lång tid innan någon svarade")
    twilio_api.wait_for(before + 3, to=phone)


# ---------------------------------------------------------------- e-mail


def test_the_survey_comes_in_the_mail_thread_and_the_drivers_replies_rate_it(
        live: LiveServer, relay: tuple[Relay, int], agent: httpx.Client) -> None:
    engine = live.runtime.engine
    outbox = relay[0]
    question = "Kan jag få prata med en person?"
    send(live, mail(subject=question, text=question, message_id="<c1@example.com>",
                    sender="Kim Berg <kim.berg@example.com>"))
    eventually(lambda: len(outbox.envelopes) >= 1)
    with Session(engine) as session:
        [token] = session.exec(select(Conversation.sender).where(
            Conversation.channel == "email")).all()
    ticket_id = eventually(lambda: ticket_of(engine, "email", token))

    resolve(agent, ticket_id)

    eventually(lambda: len(outbox.envelopes) >= 2)
    handoff, survey = outbox.messages()[:2]
    assert survey["Subject"] == f"Re: {question}"
    assert survey["In-Reply-To"] == "<c1@example.com>"
    assert survey["Reply-To"].addresses[0].addr_spec == f"reply+{token}@chargedesk.test"
    body = survey.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hur nöjd är du" in body and "5. 5" in body  # the options, numbered

    # The driver answers from a mail client: the option's number above the quoted mail.
    quoted = "\n".join("> " + line for line in body.splitlines())
    attribution = f"Den tis 1 dec. 2026 kl. 10:05 skrev ChargeDesk <reply+{token}@chargedesk.test>:"
    send(live, mail(subject=f"Re: {question}", text=f"5\n\n{attribution}\n{quoted}\n",
                    message_id="<c2@example.com>", sender="Kim Berg <kim.berg@example.com>",
                    to=f"reply+{token}@chargedesk.test",
                    headers={"In-Reply-To": survey["Message-ID"],
                             "References": f"<c1@example.com> {survey['Message-ID']}"}))

    eventually(lambda: len(outbox.envelopes) >= 3)
    prompt = outbox.messages()[2]
    assert "kommentar" in prompt.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert prompt["In-Reply-To"] == "<c2@example.com>"
    scored = ticket(engine, ticket_id)
    assert (scored.csat_score, scored.csat_state) == (5, CsatState.comment)

    send(live, mail(subject=f"Re: {question}", text="Snabbt och vänligt, tack!",
                    message_id="<c3@example.com>", sender="Kim Berg <kim.berg@example.com>",
                    to=f"reply+{token}@chargedesk.test",
                    headers={"In-Reply-To": prompt["Message-ID"]}))

    done = eventually(lambda: (t := ticket(engine, ticket_id)).csat_state == CsatState.done
                      and t)
    assert (done.csat_score, done.csat_comment) == (5, "Snabbt och vänligt, tack!")
    eventually(lambda: len(outbox.envelopes) >= 4)
    thanks = outbox.messages()[3]
    assert "Tack för ditt svar" in thanks.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # None of the driver's answers was a turn for the bot: it wrote no answer of its own.
    answered = [r.message_id for r in rows_of(engine, InboundEmail)
                if r.status == InboundStatus.answered]
    assert answered == ["c1@example.com"]
    assert handoff["In-Reply-To"] == "<c1@example.com>"
