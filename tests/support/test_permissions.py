"""Who may do what at the desk, on SQLite and PostgreSQL, through the real app: agents sign
in with a password and get a signed HttpOnly cookie; writes with the cookie need the CSRF
token; agents, supervisors, operators' and agents' API keys each may do their part; money
above an agent's limit waits for a supervisor, who carries it out as themselves."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlmodel import select

from billing_api import invoicing
from billing_api.models import Invoice, InvoiceKind
from chargedesk.db import session_scope
from chargedesk.models import Role
from support.auth import COOKIE
from tests.billing_api.factories import make_rated_session
from tests.conftest import make_key
from tests.support.conftest import PASSWORD, Desk

BASE = "http://testserver"


async def client(world: Desk) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=world.app), base_url=BASE,
                             timeout=30)


async def sign_in(world: Desk, username: str) -> tuple[httpx.AsyncClient, str]:
    """A browser-like client signed in as ``username``, and its CSRF token."""
    http = await client(world)
    response = await http.post("/agent/login", data={"username": username,
                                                     "password": PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/agent"
    page = await http.get("/agent")
    assert page.status_code == 200
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match
    return http, match.group(1)


@pytest.fixture
async def people(world: Desk) -> AsyncIterator[dict[str, Any]]:
    alice, alice_csrf = await sign_in(world, "alice")
    sam, sam_csrf = await sign_in(world, "sam")
    operator = await client(world)
    operator.headers["Authorization"] = f"Bearer {make_key(world.engine, Role.operator)}"
    agent_key = await client(world)
    agent_key.headers["Authorization"] = f"Bearer {make_key(world.engine, Role.agent)}"
    anonymous = await client(world)
    alice.headers["X-CSRF-Token"] = alice_csrf
    sam.headers["X-CSRF-Token"] = sam_csrf
    yield {"alice": alice, "sam": sam, "operator": operator, "agent_key": agent_key,
           "anonymous": anonymous}
    for http in (alice, sam, operator, agent_key, anonymous):
        await http.aclose()


async def test_signing_in_sets_a_signed_http_only_lax_cookie(world: Desk) -> None:
    http = await client(world)
    wrong = await http.post("/agent/login", data={"username": "alice",
                                                  "password": "not the password"})
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    assert (await http.get("/agent")).status_code == 303  # back to the sign-in page

    right = await http.post("/agent/login", data={"username": "Alice", "password": PASSWORD})

    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower() and "Path=/" in cookie
    me = (await http.get("/api/v1/support/me")).json()
    assert (me["role"], me["label"], me["online"]) == (
        "agent", f"agent:{world.agents['alice']}", True)

    # A cookie altered by one character is refused.
    value = http.cookies[COOKIE]
    http.cookies.set(COOKIE, value[:-1] + ("A" if value[-1] != "A" else "B"))
    assert (await http.get("/api/v1/support/me")).status_code == 401
    await http.aclose()


async def test_writes_with_the_cookie_need_the_csrf_token_and_our_origin(
        world: Desk, people: dict[str, Any]) -> None:
    alice = people["alice"]
    token = alice.headers.pop("X-CSRF-Token")
    url = "/api/v1/support/me/presence"

    assert (await alice.post(url, json={"online": False})).status_code == 403
    assert (await alice.post(url, json={"online": False},
                             headers={"X-CSRF-Token": "forged"})).status_code == 403
    assert (await alice.post(url, json={"online": False}, headers={
        "X-CSRF-Token": token, "Origin": "https://evil.example"})).status_code == 403
    assert (await alice.post(url, json={"online": False},
                             headers={"X-CSRF-Token": token})).status_code == 200

    # Signing out needs the token too, and ends the session for good.
    assert (await alice.post("/agent/logout", data={"csrf_token": "x"})).status_code == 403
    out = await alice.post("/agent/logout", data={"csrf_token": token})
    assert out.status_code == 303
    alice.cookies.clear()
    assert (await alice.get("/api/v1/support/me")).status_code == 401


async def test_every_endpoint_needs_a_caller(world: Desk, people: dict[str, Any]) -> None:
    anonymous = people["anonymous"]
    for method, path in (("GET", "/api/v1/support/tickets"), ("GET", "/api/v1/support/teams"),
                         ("GET", "/api/v1/support/tickets/1"),
                         ("POST", "/api/v1/support/tickets/1/reply"),
                         ("GET", "/api/v1/support/reports"),
                         ("GET", "/api/v1/support/canned-responses"),
                         ("GET", "/api/v1/support/sla-policies"),
                         ("GET", "/api/v1/support/webhooks"),
                         ("GET", "/agent/reports/charts/csat.png")):
        response = await anonymous.request(method, path, json={})
        assert response.status_code in (401, 303), (method, path, response.status_code)
    revoked = await client(world)
    revoked.headers["Authorization"] = "Bearer cd_not_a_key"
    assert (await revoked.get("/api/v1/support/tickets")).status_code == 401
    await revoked.aclose()


async def test_what_each_role_may_do(world: Desk, people: dict[str, Any]) -> None:
    world.online("alice", "bob", "sam")
    ticket = await world.hand_over("web-anna")
    alice, sam, operator, agent_key = (people[k] for k in ("alice", "sam", "operator",
                                                          "agent_key"))
    path = f"/api/v1/support/tickets/{ticket.id}"
    bob = world.agents["bob"]

    # Everyone on staff reads the queue and the ticket.
    for http in (alice, sam, operator, agent_key):
        assert (await http.get("/api/v1/support/tickets")).status_code == 200
        assert (await http.get(path)).status_code == 200

    # An agent claims for themselves, but may not hand a ticket to someone else.
    assert (await alice.post(f"{path}/claim")).status_code == 200
    assert (await alice.post(f"{path}/assign", json={"agent_id": bob})).status_code == 403
    # A supervisor may; then the agent may not take it back.
    assert (await sam.post(f"{path}/assign", json={"agent_id": bob})).status_code == 200
    assert world.ticket(ticket.id).assignee_id == bob
    assert (await alice.post(f"{path}/claim")).status_code == 403
    # An API key is nobody: it cannot claim, but an operator may assign by id.
    assert (await agent_key.post(f"{path}/claim")).status_code == 409
    assert (await operator.post(f"{path}/assign",
                                json={"agent_id": world.agents["alice"]})).status_code == 200

    # Reports: supervisors and operators.
    assert (await alice.get("/api/v1/support/reports")).status_code == 403
    assert (await agent_key.get("/api/v1/support/reports")).status_code == 403
    assert (await sam.get("/api/v1/support/reports")).status_code == 200
    assert (await operator.get("/api/v1/support/reports")).status_code == 200
    assert (await alice.get("/agent/reports")).status_code == 403
    assert (await sam.get("/agent/reports")).status_code == 200
    chart = await sam.get("/agent/reports/charts/containment.png")
    assert chart.status_code == 200 and chart.content.startswith(b"\x89PNG")

    # Canned responses: supervisors write them; teams, agents, SLA, webhooks: operators.
    canned = {"shortcut": "hello", "language": "en", "title": "Hello",
              "body": "Hi {driver_first_name}, this is {agent_name}."}
    assert (await alice.post("/api/v1/support/canned-responses", json=canned)
            ).status_code == 403
    assert (await sam.post("/api/v1/support/canned-responses", json=canned)).status_code == 201
    team = {"key": "field", "name": "Field service", "categories": ["technical"]}
    assert (await sam.post("/api/v1/support/teams", json=team)).status_code == 403
    assert (await operator.post("/api/v1/support/teams", json=team)).status_code == 201
    new_agent = {"username": "dana", "name": "Dana", "password": "a long enough one"}
    assert (await sam.post("/api/v1/support/agents", json=new_agent)).status_code == 403
    created = await operator.post("/api/v1/support/agents", json=new_agent)
    assert created.status_code == 201 and "password_hash" not in created.json()
    policy = {"name": "urgent", "priority": "urgent", "first_response_minutes": 5}
    assert (await sam.post("/api/v1/support/sla-policies", json=policy)).status_code == 403
    assert (await operator.post("/api/v1/support/sla-policies", json=policy)
            ).status_code == 201
    hook = {"url": "https://example.com/hook", "events": ["message.created"]}
    assert (await sam.post("/api/v1/support/webhooks", json=hook)).status_code == 403
    assert (await operator.post("/api/v1/support/webhooks", json=hook)).status_code == 201

    # Everyone works the ticket: notes, replies.
    note = await alice.post(f"{path}/notes", json={"text": "Ringde föraren, inget svar."})
    assert note.status_code == 201 and note.json()["actor"] == f"agent:{world.agents['alice']}"
    reply = await alice.post(f"{path}/reply", json={"text": "Hej Anna!"})
    assert reply.status_code == 201 and reply.json()["channel"] == "web"
    rendered = await alice.post("/api/v1/support/canned-responses/1/render",
                                json={"ticket_id": ticket.id})
    assert rendered.json()["text"] == "Hi Anna, this is Alice."


async def test_a_channel_that_cannot_deliver_is_said_and_nothing_is_recorded(
        world: Desk, people: dict[str, Any]) -> None:
    ticket = await world.hand_over("+46701234567", channel="sms")
    world.runtime.outbound_channels.pop("sms", None)  # Twilio not configured here

    response = await people["alice"].post(f"/api/v1/support/tickets/{ticket.id}/reply",
                                          json={"text": "Hej!"})

    assert response.status_code == 503
    assert "sms channel cannot deliver here" in response.json()["detail"]
    assert world.ticket(ticket.id).first_response_at is None


def invoiced_driver(world: Desk, kwh: int) -> int:
    """Anna's session of ``kwh`` invoiced for real; the invoice's id."""
    with session_scope(world.engine) as session:
        from billing_api.models import Driver

        driver = session.get(Driver, world.drivers["anna"])
        assert driver is not None
        make_rated_session(session, driver=driver, energy_wh=kwh * 1000,
                           start=datetime(2026, 11, 3, 8, 0, tzinfo=UTC))
        invoice = invoicing.invoice_driver_now(session, driver_id=driver.id or 0,
                                               settings=world.settings, created_by="test")
        assert invoice is not None
        return invoice.id or 0


async def test_credit_above_an_agents_limit_waits_for_a_supervisor(
        world: Desk, people: dict[str, Any]) -> None:
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    invoice_id = invoiced_driver(world, kwh=200)  # 5 + 200 x 3.20 = 645.00 net, 806.25 total
    alice, sam = people["alice"], people["sam"]
    path = f"/api/v1/support/tickets/{ticket.id}/actions/credit_note"

    small = await alice.post(path, json={"invoice_id": invoice_id, "amount": "100.00",
                                         "reason": "Laddaren strulade"})
    assert small.status_code == 200, small.text
    assert small.json()["status"] == "done" and small.json()["total"] == "-125.00"

    large = await alice.post(path, json={"invoice_id": invoice_id, "amount": "450.00",
                                         "reason": "Hela laddningen"})
    assert large.json()["status"] == "pending_approval"
    assert large.json()["amount_incl_vat"] == "562.50" and large.json()["limit"] == "500.00"
    approval_id = large.json()["approval_id"]
    assert (await alice.post(f"/api/v1/support/approvals/{approval_id}/decision",
                             json={"approve": True})).status_code == 403

    decided = await sam.post(f"/api/v1/support/approvals/{approval_id}/decision",
                             json={"approve": True})

    assert decided.status_code == 200 and decided.json()["status"] == "done"
    with session_scope(world.engine) as session:
        notes = session.exec(select(Invoice).where(Invoice.kind == InvoiceKind.credit_note)
                             .order_by(Invoice.id)).all()  # type: ignore[arg-type]
        assert [n.total_ore for n in notes] == [-12500, -56250]
        assert all(n.credits_invoice_id == invoice_id for n in notes)
    again = await sam.post(f"/api/v1/support/approvals/{approval_id}/decision",
                           json={"approve": True})
    assert again.status_code == 409
    # Someone else's invoice is refused outright.
    with session_scope(world.engine) as session:
        from billing_api.models import Driver

        erik = session.get(Driver, world.drivers["erik"])
        assert erik is not None
        make_rated_session(session, driver=erik, energy_wh=1000,
                           start=datetime(2026, 11, 4, 8, 0, tzinfo=UTC))
        erik_invoice = invoicing.invoice_driver_now(session, driver_id=erik.id or 0,
                                                    settings=world.settings, created_by="t")
        assert erik_invoice is not None
        erik_invoice_id = erik_invoice.id
    refused = await alice.post(path, json={"invoice_id": erik_invoice_id, "amount": "1.00",
                                           "reason": "x"})
    assert refused.status_code == 422


async def test_each_role_has_its_own_limit_and_the_timeline_names_who_did_what(
        world: Desk, people: dict[str, Any]) -> None:
    from decimal import Decimal

    from support.models import Approval, TicketEvent

    world.runtime.settings = world.settings.model_copy(update={
        "support_agent_credit_limit": Decimal("150.00"),
        "support_supervisor_credit_limit": Decimal("700.00")})
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    invoice_id = invoiced_driver(world, kwh=200)  # 806.25 incl. VAT
    alice, sam, operator, agent_key = (people[k] for k in ("alice", "sam", "operator",
                                                          "agent_key"))
    path = f"/api/v1/support/tickets/{ticket.id}/actions/credit_note"
    limits = {who: (await people[who].get("/api/v1/support/me")).json()["credit_limit"]
              for who in ("alice", "sam", "operator", "agent_key")}
    assert limits == {"alice": "150.00", "sam": "700.00", "operator": None,
                      "agent_key": "150.00"}

    # 120.00 net is 150.00 with VAT: exactly an agent's limit, done at once. An agent's API
    # key is held to the same limit: 120.04 net is 150.05, over it.
    own = await alice.post(path, json={"invoice_id": invoice_id, "amount": "120.00",
                                       "reason": "Avbruten laddning"})
    assert own.json()["status"] == "done", own.text
    keyed = await agent_key.post(path, json={"invoice_id": invoice_id, "amount": "120.04",
                                             "reason": "Avbruten laddning"})
    assert keyed.json()["status"] == "pending_approval"
    assert keyed.json()["amount_incl_vat"] == "150.05"
    # A supervisor goes further, but not past their own limit: the rest of the invoice
    # (525.00 net, 656.25) is within it, all of it (645.00 net, 806.25) would not be.
    big = await sam.post(path, json={"invoice_id": invoice_id, "amount": "645.00",
                                     "reason": "Hela laddningen"})
    assert big.json()["status"] == "pending_approval" and big.json()["limit"] == "700.00"
    # Nobody approves above their own limit; an operator has none.
    refused = await sam.post(f"/api/v1/support/approvals/{big.json()['approval_id']}/decision",
                             json={"approve": True})
    assert refused.status_code == 403
    assert (await operator.post(
        f"/api/v1/support/approvals/{keyed.json()['approval_id']}/decision",
        json={"approve": False})).json()["status"] == "rejected"
    rest = await sam.post(path, json={"invoice_id": invoice_id, "amount": "525.00",
                                      "reason": "Resten"})
    assert rest.json()["status"] == "done", rest.text

    alice_label, sam_label = (f"agent:{world.agents[u]}" for u in ("alice", "sam"))
    with session_scope(world.engine) as session:
        notes = session.exec(select(Invoice).where(Invoice.kind == InvoiceKind.credit_note)
                             .order_by(Invoice.id)).all()  # type: ignore[arg-type]
        assert [n.total_ore for n in notes] == [-15000, -65625]
        assert all(f"support ticket {ticket.id}" in (n.reason or "") for n in notes)
        timeline = session.exec(select(TicketEvent).where(
            TicketEvent.ticket_id == ticket.id,
            TicketEvent.kind.in_(["action", "approval_requested", "approval"]))  # type: ignore[attr-defined]
            .order_by(TicketEvent.id)).all()  # type: ignore[arg-type]
        assert [(e.kind, e.actor) for e in timeline] == [
            ("action", alice_label), ("approval_requested", "agent:test-agent"),
            ("approval_requested", sam_label), ("approval", "operator:test-operator"),
            ("action", sam_label)]
        approvals = session.exec(select(Approval).order_by(Approval.id)).all()  # type: ignore[arg-type]
        assert [(a.requested_by, str(a.status), a.decided_by) for a in approvals] == [
            ("agent:test-agent", "rejected", "operator:test-operator"),
            (sam_label, "pending", None)]
