"""One-click actions from a ticket through the real services, on SQLite and PostgreSQL: a
served app, a simulated station connected to its OCPP central system over a real
WebSocket, an agent signed in to the console's API. Remote commands reach the station and
its command log names the agent; a lost card is blocked in the registry and on the
stations' lists as the agent; a prepaid driver's refund is in the wallet's ledger."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from assistant.actions import safety
from assistant.actions.models import LocalListPush
from assistant.service import Identity, handle_message
from billing_api.models import Driver, LedgerEntry, PaymentMethod
from chargedesk.db import session_scope
from station_api.models import CommandLog, IdTag, IdTagStatus, Transaction
from station_api.simulator import SimulatedStation
from station_api.simulator.protocol import StationProtocol
from support.models import Ticket, TicketEvent
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import eventually, register
from tests.support.conftest import PASSWORD as AGENT_PASSWORD
from tests.support.conftest import make_drivers, seed_desk

STATION = "SE-TST-DESK-01"


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every CALL the simulated station receives, read off its end of the WebSocket."""
    calls: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    original = StationProtocol.route_message

    async def recording(self: StationProtocol, raw_msg: str) -> None:
        frame = json.loads(raw_msg)
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2:
            calls[self.station.station_id].append((frame[2], frame[3]))
        await original(self, raw_msg)

    monkeypatch.setattr(StationProtocol, "route_message", recording)
    return calls


class Scene:
    def __init__(self, server: Any, engine: Any, sim: SimulatedStation, agent: httpx.AsyncClient,
                 ids: dict[str, Any]) -> None:
        self.server, self.engine, self.sim, self.agent, self.ids = server, engine, sim, agent, ids

    async def on_server(self, coroutine: Any) -> Any:
        loop = self.server.server.servers[0].get_loop()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    async def hand_over(self, sender: str, driver: str) -> int:
        runtime = self.server.runtime
        await self.on_server(handle_message(
            runtime, channel="web", sender=sender, text="/human_handoff",
            identity=Identity(self.ids["drivers"][driver], True, "web")))
        await self.on_server(runtime.bus.join())
        with session_scope(self.engine) as session:
            from assistant.models import Conversation

            conversation = session.exec(select(Conversation).where(
                Conversation.sender == sender)).one()
            ticket = session.exec(select(Ticket).where(
                Ticket.conversation_id == conversation.id)).one()
            return ticket.id or 0

    async def act(self, ticket_id: int, action: str, **params: Any) -> dict[str, Any]:
        response = await self.agent.post(
            f"/api/v1/support/tickets/{ticket_id}/actions/{action}", json=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def commands(self, action: str) -> list[CommandLog]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(CommandLog).where(
                CommandLog.action == action)).all())


@pytest.fixture
async def scene(server: Any, engine: Any, received: Any) -> AsyncIterator[Scene]:
    safety.LIMITS.reset()
    ids = {**seed_desk(engine), "drivers": make_drivers(engine)}
    with session_scope(engine) as session:
        erik = session.get(Driver, ids["drivers"]["erik"])
        assert erik is not None
        erik.payment_method = PaymentMethod.prepaid
        session.add(erik)
    register(engine, STATION)
    sim = SimulatedStation(STATION, server.ws_url, password=PASSWORD, connectors=2,
                           meter_interval=0.2, seed=7)
    await sim.start()
    await asyncio.wait_for(sim.booted.wait(), 20)
    agent = httpx.AsyncClient(base_url=server.base_url, timeout=30)
    signed = await agent.post("/agent/login", data={"username": "alice",
                                                    "password": AGENT_PASSWORD})
    assert signed.status_code == 303
    page = await agent.get("/agent")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf
    agent.headers["X-CSRF-Token"] = csrf.group(1)
    try:
        yield Scene(server, engine, sim, agent, ids)
    finally:
        await agent.aclose()
        await sim.stop()


async def test_unlock_and_soft_reset_reach_the_station_recorded_as_the_agent(
        scene: Scene, received: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    tx = await scene.sim.plug_in(2, "RFID-ANNA")
    assert tx is not None
    await scene.sim.stop_charging(2)
    ticket = await scene.hand_over("web-anna", "anna")
    label = f"agent:{scene.ids['agents']['alice']}"

    unlocked = await scene.act(ticket, "unlock_connector", station_id=STATION,
                               connector_id=2)

    assert (unlocked["status"], unlocked["outcome"]) == ("done", "accepted")
    assert ("UnlockConnector", {"connectorId": 2}) in received[STATION]
    [command] = scene.commands("UnlockConnector")
    assert command.requested_by == label
    assert command.reason == f"support ticket {ticket}"

    reset = await scene.act(ticket, "soft_reset", station_id=STATION)
    assert ("Reset", {"type": "Soft"}) in received[STATION]
    # The simulator reboots the moment it has answered; the central system may see the
    # socket close before it reads the answer, and then records the station as offline.
    assert reset["outcome"] in ("accepted", "offline"), reset
    assert scene.commands("Reset")[0].requested_by == label

    with session_scope(scene.engine) as session:
        recorded = session.exec(select(TicketEvent).where(
            TicketEvent.ticket_id == ticket, TicketEvent.kind == "action")).all()
        assert [e.data["action"] for e in recorded] == ["unlock_connector", "soft_reset"]
        assert {e.actor for e in recorded} == {label}


async def test_a_remote_stop_ends_the_drivers_session(
        scene: Scene, received: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    tx = await scene.sim.plug_in(1, "RFID-ANNA")
    assert tx is not None
    ticket = await scene.hand_over("web-anna", "anna")

    stopped = await scene.act(ticket, "remote_stop", transaction_id=tx)

    assert stopped["outcome"] == "accepted"
    assert ("RemoteStopTransaction", {"transactionId": tx}) in received[STATION]

    def ended() -> bool:
        with session_scope(scene.engine) as session:
            row = session.get(Transaction, tx)
            return row is not None and row.stop_timestamp is not None

    await eventually(ended, timeout=20)
    again = await scene.agent.post(f"/api/v1/support/tickets/{ticket}/actions/remote_stop",
                                   json={"transaction_id": tx})
    assert again.status_code == 422  # already stopped: nothing sent


async def test_blocking_a_card_reaches_the_registry_and_the_stations_list(
        scene: Scene, received: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    ticket = await scene.hand_over("web-anna", "anna")
    label = f"agent:{scene.ids['agents']['alice']}"

    blocked = await scene.act(ticket, "block_card", id_tag="RFID-ANNA")

    assert blocked["outcome"] == "blocked" and blocked["stations_updated"] == 1
    with session_scope(scene.engine) as session:
        tag = session.get(IdTag, "RFID-ANNA")
        assert tag is not None and tag.status == IdTagStatus.blocked
        pushes = session.exec(select(LocalListPush)).all()
        assert {p.requested_by for p in pushes} == {label}
        assert all(p.delivered_at is not None for p in pushes)
    sent = [payload for action, payload in received[STATION] if action == "SendLocalList"]
    assert sent and sent[-1]["localAuthorizationList"] == [
        {"idTag": "RFID-ANNA", "idTagInfo": {"status": "Blocked"}}]
    # Erik's card is not Anna's ticket's to block.
    other = await scene.agent.post(f"/api/v1/support/tickets/{ticket}/actions/block_card",
                                   json={"id_tag": "RFID-ERIK"})
    assert other.status_code == 422


async def test_a_refund_goes_to_a_prepaid_drivers_wallet(scene: Scene) -> None:
    ticket = await scene.hand_over("web-erik", "erik")

    refunded = await scene.act(ticket, "refund", amount="45.50", reason="Trasig kabel")

    assert refunded["status"] == "done" and refunded["amount"] == "45.50"
    with session_scope(scene.engine) as session:
        [entry] = session.exec(select(LedgerEntry).where(
            LedgerEntry.driver_id == scene.ids["drivers"]["erik"])).all()
        assert entry.amount_ore == 4550
        assert entry.created_by == f"agent:{scene.ids['agents']['alice']}"
        assert "support ticket" in (entry.note or "")
    anna = await scene.hand_over("web-anna", "anna")
    refused = await scene.agent.post(f"/api/v1/support/tickets/{anna}/actions/refund",
                                     json={"amount": "10.00", "reason": "x"})
    assert refused.status_code == 422  # Anna pays by invoice: a credit note, not a refund
