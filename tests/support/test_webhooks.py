"""Outgoing webhooks, on SQLite and PostgreSQL, posted to a real HTTP server on loopback:
signed with HMAC-SHA256 over the timestamp and the exact body, retried with growing pauses
on the desk's clock, given up after the last attempt, and only the events asked for."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlmodel import select

from chargedesk.db import run_in_session, session_scope
from support import config, service, webhooks
from support.auth import Actor
from support.models import DeliveryStatus, TicketStatus, WebhookDelivery
from tests.support.conftest import Desk


class Receiver:
    """A webhook endpoint: keeps every request, answers with the next scripted status."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()},
                                          body))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/chargedesk"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [headers["x-chargedesk-event"] for headers, _ in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    yield endpoint
    endpoint.stop()


def subscribe(world: Desk, url: str, events: list[str] | None = None) -> tuple[int, str]:
    with session_scope(world.engine) as session:
        hook = config.add_webhook(session, url=url, events=events or [],
                                  created_by="operator:ops")
        return hook.id or 0, hook.secret


def deliveries(world: Desk) -> list[WebhookDelivery]:
    with session_scope(world.engine) as session:
        return list(session.exec(select(WebhookDelivery).order_by(
            WebhookDelivery.id)).all())  # type: ignore[arg-type]


async def test_a_new_ticket_is_announced_signed_with_the_webhooks_secret(
        world: Desk, receiver: Receiver) -> None:
    _, secret = subscribe(world, receiver.url)
    world.online("alice")

    ticket = await world.hand_over("web-anna")
    report = await world.desk.push_webhooks()

    assert report.delivered == 2 and receiver.events() == [
        "conversation.created", "conversation.assigned"]
    headers, body = receiver.requests[0]
    payload = json.loads(body)
    assert payload["event"] == "conversation.created"
    assert payload["data"]["ticket"]["id"] == ticket.id
    assert payload["data"]["ticket"]["status"] == "open"
    assert headers["x-chargedesk-delivery"] == str(payload["id"])
    # The receiver's check, done by hand: HMAC-SHA256 of "<t>.<raw body>".
    parts = dict(part.split("=", 1) for part in headers["x-chargedesk-signature"].split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert int(parts["t"]) == int(world.clock.now.timestamp())
    now = world.clock.now.timestamp()
    assert webhooks.verify(secret, headers["x-chargedesk-signature"], body, now=now)
    assert not webhooks.verify(secret, headers["x-chargedesk-signature"],
                               body.replace(b"open", b"shut"), now=now)
    assert not webhooks.verify("whsec_other", headers["x-chargedesk-signature"], body, now=now)
    assert not webhooks.verify(secret, headers["x-chargedesk-signature"], body,
                               now=now + 3600)  # a replay an hour later


async def test_a_failed_delivery_is_retried_after_a_pause_with_the_same_body(
        world: Desk, receiver: Receiver) -> None:
    subscribe(world, receiver.url, ["conversation.created"])
    receiver.statuses = [500, 503]
    await world.hand_over("web-anna")

    assert (await world.desk.push_webhooks()).failed == 1
    [row] = deliveries(world)
    assert (row.status, row.attempts, row.last_status_code) == (DeliveryStatus.pending, 1, 500)
    assert row.next_attempt_at == world.clock.now + webhooks.BACKOFF[0]
    assert (await world.desk.push_webhooks()).failed == 0  # not due yet: nothing sent
    assert len(receiver.requests) == 1

    world.clock.advance(seconds=11)
    assert (await world.desk.push_webhooks()).failed == 1  # 503
    world.clock.advance(seconds=31)
    assert (await world.desk.push_webhooks()).delivered == 1

    [row] = deliveries(world)
    assert (row.status, row.attempts) == (DeliveryStatus.delivered, 3)
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # every attempt carried the same bytes


async def test_a_delivery_is_given_up_after_the_last_attempt(
        world: Desk, receiver: Receiver) -> None:
    subscribe(world, receiver.url, ["conversation.created"])
    receiver.statuses = [500] * 20
    await world.hand_over("web-anna")

    for pause in (timedelta(0), *webhooks.BACKOFF):
        world.clock.now += pause
        await world.desk.push_webhooks()

    [row] = deliveries(world)
    assert (row.status, row.attempts) == (DeliveryStatus.failed, webhooks.MAX_ATTEMPTS)
    world.clock.advance(days=1)
    await world.desk.push_webhooks()
    assert len(receiver.requests) == webhooks.MAX_ATTEMPTS


async def test_messages_and_status_changes_reach_those_who_asked_for_them(
        world: Desk, receiver: Receiver, nlu: Any) -> None:
    subscribe(world, receiver.url, ["message.created", "conversation.status_changed"])
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    alice = Actor(role="agent", name="Alice", label=f"agent:{world.agents['alice']}",
                  agent_id=world.agents["alice"])

    target = await run_in_session(world.engine, service.reply_target, ticket_id=ticket.id)
    await run_in_session(world.engine, service.record_reply, target=target,
                         text="Hej Anna, vad kan jag hjälpa till med?", actor=alice,
                         now=world.clock.now, settings=world.settings)
    from assistant.service import Identity, handle_message

    await handle_message(world.runtime, channel="web", sender="web-anna",
                         text="Min laddning startar inte",
                         identity=Identity(world.drivers["anna"], True, "web"))
    await world.read_inbox()
    await run_in_session(world.engine, service.set_status, ticket_id=ticket.id,
                         status=TicketStatus.resolved, actor=alice,
                         now=world.clock.now, settings=world.settings)
    await world.desk.push_webhooks()

    assert receiver.events() == ["message.created", "message.created",
                                 "conversation.status_changed"]
    agent, driver, status = (json.loads(body)["data"] for _, body in receiver.requests)
    assert (agent["message"]["from"], agent["message"]["by"]) == ("agent", alice.label)
    assert (driver["message"]["from"], driver["message"]["text"]) == (
        "driver", "Min laddning startar inte")
    assert (status["previous_status"], status["ticket"]["status"]) == ("open", "resolved")


async def test_a_change_made_in_a_worker_thread_is_posted_at_once(
        world: Desk, receiver: Receiver) -> None:
    """Plain ``def`` endpoints run in worker threads: their changes are still posted right
    away, on the service's loop, when the desk's jobs run."""
    import asyncio

    import httpx

    from chargedesk.models import Role
    from tests.conftest import make_key

    subscribe(world, receiver.url, ["conversation.assigned"])
    ticket = await world.hand_over("web-anna")
    world.runtime.settings = world.settings.model_copy(update={"support_scheduler": True})
    world.desk.loop = asyncio.get_running_loop()
    key = make_key(world.engine, Role.operator)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=world.app),
                                 base_url="http://testserver",
                                 headers={"Authorization": f"Bearer {key}"}) as operator:
        response = await operator.post(f"/api/v1/support/tickets/{ticket.id}/assign",
                                       json={"agent_id": world.agents["bob"]})
    assert response.status_code == 200

    for _ in range(200):  # no push_webhooks() here: the desk kicked the delivery itself
        if receiver.requests:
            break
        await asyncio.sleep(0.05)
    assert receiver.events() == ["conversation.assigned"]
    assert json.loads(receiver.requests[0][1])["data"]["ticket"]["assignee_id"] == \
        world.agents["bob"]
