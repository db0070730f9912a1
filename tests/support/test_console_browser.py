"""The whole support journey in headless Chromium, against the real server on SQLite and
PostgreSQL, a simulated station on the real OCPP WebSocket and the real assistant:

a driver signed in to the web chat says their cable is stuck; the station refuses to unlock
and the assistant hands over. An agent signs in at /agent, sees the ticket with its context
(the station's refused command, the driver, why it came), unlocks the connector with one
click (recorded as the agent, received by the station), replies with a canned response; the
driver reads it in the chat. The agent resolves; the rating question arrives in the chat,
the driver answers 5 and a comment, and the ticket has them."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import select

from chargedesk.db import make_engine, session_scope
from chargedesk.settings import Settings
from station_api.models import CommandLog
from station_api.simulator import SimulatedStation
from support import config
from support.models import CsatState, Ticket, TicketStatus
from tests.assistant.test_web_channel import ChatServer, start_chat_server
from tests.billing_api.test_mailer import Inbox, free_port
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import register
from tests.support.conftest import PASSWORD as AGENT_PASSWORD
from tests.support.conftest import make_drivers, seed_desk

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium)")
STATION = "SE-TST-DESK-01"
WAIT = 30_000  # ms; a busy two-core machine shared with other test runs


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


class Journey:
    def __init__(self, server: ChatServer, sim: SimulatedStation, ids: dict[str, Any]) -> None:
        self.server, self.sim, self.ids = server, sim, ids
        self.engine = make_engine(server.runtime.settings.resolved_database_url())

    def on_server(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.server.loop).result(timeout)

    def ticket(self) -> Ticket:
        with session_scope(self.engine) as session:
            ticket = session.exec(select(Ticket)).first()
            assert ticket is not None
            return ticket


@pytest.fixture
def journey(database_url: str, tmp_path: Path, inbox: tuple[Inbox, int], nlu: Any
            ) -> Iterator[Journey]:
    engine = make_engine(database_url)
    ids = {**seed_desk(engine), "drivers": make_drivers(engine)}
    with session_scope(engine) as session:
        config.save_canned(session, values={
            "shortcut": "unlocked", "language": "sv", "title": "Kabeln upplåst",
            "body": "Hej {driver_first_name}! Nu har jag låst upp uttag {connector} på "
                    "{station_id}. /{agent_name}"})
    register(engine, STATION)
    engine.dispose()
    settings = Settings(database_url=database_url, data_dir=tmp_path, log_format="console",
                        log_level="WARNING", scheduler=False, support_scheduler=True,
                        support_poll_seconds=0.3, support_sla_tick_seconds=1,
                        nlu_warm_up=False, command_timeout=10, heartbeat_interval=60,
                        smtp_host="127.0.0.1", smtp_port=inbox[1],
                        smtp_from="ChargeDesk <noreply@chargedesk.example>")
    server = start_chat_server(settings)
    sim = SimulatedStation(STATION, f"{server.ws_url}/ocpp", password=PASSWORD, connectors=2,
                           meter_interval=0.5, seed=3)
    live = Journey(server, sim, ids)
    try:
        live.on_server(sim.start())
        live.on_server(asyncio.wait_for(sim.booted.wait(), 20))
        # Anna charged on connector 2 a minute ago; her cable stays locked.
        assert live.on_server(sim.plug_in(2, "RFID-ANNA")) is not None
        live.on_server(sim.stop_charging(2))
        sim.behaviour.unlock_fails = True  # the station will refuse the assistant
        yield live
    finally:
        live.on_server(sim.stop())
        live.engine.dispose()
        server.stop()


def wait_for_code(inbox: Inbox, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in inbox.messages():
            match = re.search(r"\b(\d{6})\b",
                              message.get_body(preferencelist=("plain",)).get_content())
            if match:
                return match.group(1)
        time.sleep(0.1)
    raise AssertionError("no code was e-mailed")


def test_an_agent_solves_a_stuck_cable_and_the_driver_rates_it(
        journey: Journey, inbox: tuple[Inbox, int]) -> None:
    expect = playwright_api.expect
    base = journey.server.base_url
    alice = journey.ids["agents"]["alice"]
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            # ---- the agent opens the console first (and so takes tickets)
            agent = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            agent_errors: list[str] = []
            agent.on("pageerror", lambda exc: agent_errors.append(str(exc)))
            agent.goto(base + "/agent")
            expect(agent).to_have_url(re.compile(r"/agent/login$"))
            agent.get_by_label("Username").fill("alice")
            agent.get_by_label("Password").fill("wrong password!")
            agent.get_by_role("button", name="Sign in").click()
            expect(agent.get_by_role("alert")).to_contain_text("Wrong username or password")
            agent.get_by_label("Password").fill(AGENT_PASSWORD)
            agent.get_by_role("button", name="Sign in").click()
            expect(agent.get_by_role("heading", name="Queue")).to_be_visible()
            expect(agent.get_by_label("Online (take tickets)")).to_be_checked()

            # ---- the driver signs in to the web chat and says the cable is stuck
            driver = browser.new_context(viewport={"width": 360, "height": 740}).new_page()
            driver.goto(base + "/")
            driver.get_by_role("button", name="Logga in").click()
            contact = driver.get_by_label("E-post eller mobilnummer")
            contact.fill("anna@example.se")
            contact.press("Enter")
            code = driver.get_by_label("Kod", exact=True)
            expect(code).to_be_focused(timeout=WAIT)
            code.fill(wait_for_code(inbox[0]))
            code.press("Enter")
            chat = driver.get_by_role("log")
            expect(chat).to_contain_text("Du är inloggad.", timeout=WAIT)
            box = driver.get_by_label("Skriv ditt meddelande")
            box.fill(f"kabeln sitter fast på {STATION} uttag 2")
            box.press("Enter")
            quick = driver.get_by_role("group", name="Snabbsvar")
            expect(quick.last.get_by_role("button", name="Ja")).to_be_visible(timeout=WAIT)
            quick.last.get_by_role("button", name="Ja").click()
            expect(chat).to_contain_text("kunde inte göra det", timeout=WAIT)

            # ---- the ticket is in the agent's queue, with its context
            item = agent.get_by_role("button", name=re.compile(r"Ticket \d+: Anna Berg"))
            expect(item).to_be_visible(timeout=WAIT)
            expect(item).to_contain_text("urgent")
            expect(item).to_contain_text(re.compile(r"first reply in \d+:\d\d"))
            item.click()
            ticket = agent.get_by_role("region", name="Ticket")
            expect(ticket.get_by_role("heading", level=2)).to_contain_text("kabeln sitter fast")
            expect(ticket).to_contain_text("assigned to Alice")
            transcript = agent.get_by_role("log", name="Conversation")
            expect(transcript).to_contain_text("kunde inte göra det")
            station = agent.get_by_role("region", name="Station")
            expect(station).to_contain_text("action_failed")
            expect(station).to_contain_text("cable_stuck")
            expect(station).to_contain_text(f"Station {STATION}")
            refused = station.get_by_role("row").filter(has_text="UnlockConnector")
            expect(refused.first).to_contain_text(
                f"driver:{journey.ids['drivers']['anna']}")
            expect(refused.first).to_contain_text("rejected")
            expect(agent.get_by_role("region", name="Driver")).to_contain_text("Anna Berg")
            expect(agent.get_by_role("region", name="Driver")).to_contain_text("RFID-ANNA")

            # ---- one click: unlock, as the agent, now that the station behaves
            journey.sim.behaviour.unlock_fails = False
            station.get_by_role("button", name="Unlock connector 2").click()
            result = agent.locator("#action-result")
            expect(result).to_contain_text("Unlock connector 2: accepted", timeout=WAIT)
            with session_scope(journey.engine) as session:
                commands = session.exec(select(CommandLog).where(
                    CommandLog.action == "UnlockConnector").order_by(CommandLog.id)).all()  # type: ignore[arg-type]
                assert [c.requested_by for c in commands] == [
                    f"driver:{journey.ids['drivers']['anna']}", f"agent:{alice}"]
                assert [str(c.outcome) for c in commands] == ["rejected", "accepted"]

            # ---- a canned reply with the ticket's details, sent to the web chat
            agent.get_by_label("Canned response").select_option(label="[sv] Kabeln upplåst")
            message = agent.get_by_label("Message")
            expect(message).to_have_value(
                f"Hej Anna! Nu har jag låst upp uttag 2 på {STATION}. /Alice", timeout=WAIT)
            agent.get_by_role("button", name="Send reply").click()
            expect(agent.locator("#composer-result")).to_contain_text("Sent on web",
                                                                      timeout=WAIT)
            expect(chat).to_contain_text(f"Nu har jag låst upp uttag 2 på {STATION}",
                                         timeout=WAIT)
            expect(transcript).to_contain_text("Agent (agent:", timeout=WAIT)

            # ---- resolved: the rating question arrives in the chat
            agent.get_by_role("button", name="Resolve").click()
            expect(result).to_contain_text("Resolve: done", timeout=WAIT)
            expect(chat).to_contain_text("Hur nöjd är du med hjälpen", timeout=WAIT)
            rating = driver.get_by_role("group", name="Snabbsvar").last
            expect(rating.get_by_role("button")).to_have_count(5)
            rating.get_by_role("button", name="5", exact=True).click()
            expect(chat).to_contain_text("Vill du berätta mer?", timeout=WAIT)
            box.fill("Snabb hjälp, tack!")
            box.press("Enter")
            expect(chat).to_contain_text("Tack för ditt svar!", timeout=WAIT)

            done = journey.ticket()
            assert done.status == TicketStatus.resolved
            assert (done.csat_score, done.csat_comment, done.csat_state) == (
                5, "Snabb hjälp, tack!", CsatState.done)
            assert done.first_response_at is not None and done.resolved_by == f"agent:{alice}"
            # The agent sees the rating on the ticket.
            agent.get_by_label("Status").select_option(label="Resolved")
            agent.get_by_role("button", name=re.compile(r"Ticket \d+: Anna Berg")).click()
            expect(agent.locator("#csat")).to_contain_text("5/5: Snabb hjälp, tack!",
                                                           timeout=WAIT)
            assert agent_errors == []
        finally:
            browser.close()


@pytest.fixture
def office(database_url: str, tmp_path: Path) -> Iterator[tuple[ChatServer, dict[str, Any]]]:
    """A served desk with Anna handed over and a 806.25 kr invoice of hers."""
    from datetime import UTC, datetime

    from billing_api import invoicing
    from billing_api.models import Driver
    from tests.billing_api.factories import make_rated_session

    engine = make_engine(database_url)
    ids = {**seed_desk(engine), "drivers": make_drivers(engine)}
    settings = Settings(database_url=database_url, data_dir=tmp_path, log_format="console",
                        log_level="WARNING", scheduler=False, nlu_warm_up=False)
    with session_scope(engine) as session:
        anna = session.get(Driver, ids["drivers"]["anna"])
        assert anna is not None
        make_rated_session(session, driver=anna, energy_wh=200_000,
                           start=datetime(2026, 11, 3, 8, 0, tzinfo=UTC))
        invoice = invoicing.invoice_driver_now(session, driver_id=anna.id or 0,
                                               settings=settings, created_by="test")
        assert invoice is not None
        ids["invoice"] = invoice.id
    engine.dispose()
    server = start_chat_server(settings)
    try:
        from assistant.service import Identity, handle_message

        asyncio.run_coroutine_threadsafe(handle_message(
            server.runtime, channel="web", sender="web-anna", text="/human_handoff",
            identity=Identity(ids["drivers"]["anna"], True, "web")), server.loop).result(30)
        asyncio.run_coroutine_threadsafe(server.runtime.bus.join(), server.loop).result(30)
        yield server, ids
    finally:
        server.stop()


def test_a_supervisor_approves_a_credit_above_an_agents_limit_and_reads_the_reports(
        office: tuple[ChatServer, dict[str, Any]]) -> None:
    import httpx

    server, ids = office
    with httpx.Client(base_url=server.base_url, timeout=30) as alice:
        alice.post("/agent/login", data={"username": "alice", "password": AGENT_PASSWORD})
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', alice.get("/agent").text)
        assert csrf
        [ticket] = alice.get("/api/v1/support/tickets").json()["tickets"]
        asked = alice.post(f"/api/v1/support/tickets/{ticket['id']}/actions/credit_note",
                           headers={"X-CSRF-Token": csrf.group(1)},
                           json={"invoice_id": ids["invoice"], "reason": "Hela laddningen"})
        assert asked.json()["status"] == "pending_approval", asked.text

    expect = playwright_api.expect
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.base_url + "/agent/login")
            page.get_by_label("Username").fill("sam")
            page.get_by_label("Password").fill(AGENT_PASSWORD)
            page.get_by_role("button", name="Sign in").click()

            waiting = page.get_by_role("region", name="Waiting for approval")
            expect(waiting).to_contain_text("credit note 806.25 incl. VAT", timeout=WAIT)
            expect(waiting).to_contain_text(f"agent:{ids['agents']['alice']}")
            waiting.get_by_role("button", name="Approve").click()
            expect(waiting).to_contain_text("Nothing waits.", timeout=WAIT)

            page.get_by_role("link", name="Reports").click()
            expect(page.get_by_role("heading", name="Reports")).to_be_visible()
            expect(page.get_by_role("heading", name="The assistant's containment")).to_be_visible()
            expect(page.locator("table").first).to_be_visible()
            for chart in page.locator("img").all():
                expect(chart).to_have_js_property("complete", True, timeout=WAIT)
                assert chart.evaluate("img => img.naturalWidth") > 0
            assert errors == []
        finally:
            browser.close()
    with session_scope(make_engine(server.runtime.settings.resolved_database_url())) as s:
        from billing_api.models import Invoice, InvoiceKind

        [note] = s.exec(select(Invoice).where(Invoice.kind == InvoiceKind.credit_note)).all()
        assert note.total_ore == -80625 and note.credits_invoice_id == ids["invoice"]
