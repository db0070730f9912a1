"""A driver's message the desk takes in without answering is announced at once: the desk
posts its ``message.created`` webhook as it reads the message, not at the next run of the
periodic webhook job. One real server (SQLite and PostgreSQL) with the desk's own jobs
running, except that the periodic webhook job's interval is an hour, so a delivery that
arrives came by the desk's own trigger (the path under test), never by the job. Calls and
texts are signed as Twilio signs them, texts out go to the stand-in for api.twilio.com on
loopback, and webhooks to a real HTTP receiver on loopback that checks each signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select

from chargedesk.bench.sms import TwilioStub
from chargedesk.settings import Settings
from support import scheduled
from support.models import CsatState, DeliveryStatus, TicketStatus, WebhookDelivery
from tests.channels.test_sms import eventually, text, twilio_settings
from tests.conftest import LiveServer, start_server
from tests.support.conftest import seed_desk
from tests.support.test_csat_after_call import (  # noqa: F401  (fixtures)
    agent,
    called_for_a_person,
    receiver,
    signed_rating_messages,
    subscribe,
    ticket_row,
)
from tests.support.test_webhooks import Receiver

HOUR = 3600.0


@pytest.fixture
def live(settings: Settings, twilio_api: TwilioStub, nlu: Any,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """Voice, SMS and the desk's jobs (inbox every 0.3 s; webhooks only once an hour)."""
    monkeypatch.setattr(scheduled, "WEBHOOK_SECONDS", HOUR)
    server = start_server(twilio_settings(settings, twilio_api, support_scheduler=True,
                                          support_poll_seconds=0.3))
    seed_desk(server.runtime.engine)
    yield server
    server.stop()


def deliveries(engine: Any) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(session.exec(select(WebhookDelivery).where(
            WebhookDelivery.event == "message.created")
            .order_by(col(WebhookDelivery.id))).all())


def texted(endpoint: Receiver) -> list[dict[str, Any]]:
    """The messages announced from the SMS conversation."""
    messages = [json.loads(body)["data"]["message"] for _, body in endpoint.requests]
    return [m for m in messages if m["channel"] == "sms"]


def test_the_periodic_webhook_job_is_off_in_these_tests(live: LiveServer) -> None:
    jobs = scheduled.build_scheduler(live.app.state.support).get_jobs()
    [webhook_job] = [job for job in jobs if job.id == "support-webhooks"]
    assert webhook_job.trigger.interval.total_seconds() == HOUR


def test_a_new_score_while_a_comment_is_awaited_is_announced_at_once(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client,  # noqa: F811
        receiver: Receiver) -> None:  # noqa: F811
    engine = live.runtime.engine
    secret = subscribe(engine, receiver.url)
    caller, ticket_id = called_for_a_person(live)
    agent.post(f"/api/v1/support/tickets/{ticket_id}/status", json={"status": "resolved"})
    twilio_api.wait_for(1, to=caller)  # the rating question

    text(live, caller, "4")  # answered: "a comment? (NO to skip)"
    twilio_api.wait_for(2, to=caller)
    eventually(lambda: len(signed_rating_messages(receiver, secret)) == 1)

    text(live, caller, "5")  # the driver thinks better of it: no answer to that

    announced = eventually(lambda: signed_rating_messages(receiver, secret)[1:])
    assert [(m["data"]["message"]["text"], m["data"]["message"]["csat"]) for m in announced
            ] == [("5", {"state": "comment", "score": 5, "comment": None})]
    row = ticket_row(engine, ticket_id)
    assert (row.csat_state, row.csat_score) == (CsatState.comment, 5)
    assert len(twilio_api.sent(caller)) == 2  # the desk said nothing to it
    # Each recorded as delivered once its receiver answered (nothing left for the job).
    eventually(lambda: {d.status for d in deliveries(engine)} == {DeliveryStatus.delivered})


def test_a_text_that_reopens_the_ticket_instead_of_rating_it_is_announced_at_once(
        live: LiveServer, twilio_api: TwilioStub, agent: httpx.Client,  # noqa: F811
        receiver: Receiver) -> None:  # noqa: F811
    engine = live.runtime.engine
    subscribe(engine, receiver.url)
    caller, ticket_id = called_for_a_person(live)
    agent.post(f"/api/v1/support/tickets/{ticket_id}/status", json={"status": "resolved"})
    twilio_api.wait_for(1, to=caller)

    said = "The charger at Odenplan still won't start"
    text(live, caller, said)  # not a rating: the driver still has a problem

    announced = eventually(lambda: texted(receiver))
    assert [(m["from"], m["channel"], m["text"]) for m in announced] == [
        ("driver", "sms", said)]
    row = ticket_row(engine, ticket_id)
    assert (row.status, row.csat_state) == (TicketStatus.open, CsatState.cancelled)
    assert len(twilio_api.sent(caller)) == 1  # nothing said back by the desk
