"""Remote commands through REST, with their outcomes and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from chargedesk.db import session_scope
from station_api import service
from tests.station_api.ocpp_client import station
from tests.station_api.test_central_system import add_tag, eventually, register


@pytest.fixture
async def aapi(server, operator_key):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {operator_key}"}) as client:
        yield client


async def test_an_accepted_command_returns_the_station_answer_and_is_audited(
    server, engine, aapi
) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        answer = await aapi.post("/api/v1/stations/CP-1/commands/UnlockConnector",
                                 json={"connectorId": 1}, params={"reason": "cable stuck"})
        assert cp.received == [("UnlockConnector", {"connector_id": 1})]
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["outcome"] == "accepted"
    assert body["response"] == {"status": "Unlocked"}
    assert body["latency_ms"] > 0
    with session_scope(engine) as session:
        [entry] = service.list_commands(session, station_id="CP-1")
    assert (entry.action, entry.outcome, entry.requested_by, entry.reason) == (
        "UnlockConnector", "accepted", "operator:test-operator", "cable stuck")
    assert entry.payload == {"connectorId": 1} and entry.response == {"status": "Unlocked"}


async def test_a_refusal_is_reported_with_what_the_station_said(server, engine, aapi) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        cp.unlock_status = "UnlockFailed"
        answer = (await aapi.post("/api/v1/stations/CP-1/commands/UnlockConnector",
                                  json={"connectorId": 2})).json()
    assert answer["outcome"] == "rejected"
    assert answer["response"] == {"status": "UnlockFailed"}
    assert "UnlockFailed" in answer["error"]


async def test_a_command_to_an_offline_station_fails_at_once(server, engine, aapi) -> None:
    register(engine)
    started = time.monotonic()
    answer = (await aapi.post("/api/v1/stations/CP-1/commands/Reset",
                              json={"type": "Soft"})).json()
    assert answer["outcome"] == "offline"
    assert time.monotonic() - started < 2


async def test_commands_waiting_for_their_station_hold_no_database_connection(
    server, engine, aapi
) -> None:
    """Otherwise enough slow commands empty the pool, and the worker thread that every
    station's messages go through waits for a connection."""
    ids = [f"CP-{n}" for n in range(1, 9)]
    for station_id in ids:
        register(engine, station_id)
    pool = server.runtime.engine.pool
    async with contextlib.AsyncExitStack() as stack:
        stations = [await stack.enter_async_context(station(server.ws_url, i)) for i in ids]
        for cp in stations:
            cp.silent = True
        # Two per station: one the station swallows, one queued behind it (one CALL at a
        # time per connection).
        waiting = [asyncio.create_task(aapi.post(
            f"/api/v1/stations/{station_id}/commands/Reset", json={"type": "Soft"},
            params={"timeout": 4})) for station_id in ids * 2]
        await eventually(lambda: all(cp.swallowed == 1 for cp in stations))
        # A request still writing its command log holds a connection for a moment; on a
        # busy machine several may be caught at it. While the commands wait, all come back.
        held: list[int] = []

        def settled() -> bool:
            held.append(pool.checkedout())
            return held[-1] < 5 or any(w.done() for w in waiting)

        await eventually(settled)
        assert not any(w.done() for w in waiting), f"connections held while waiting: {held}"
        answers = [(await w).json() for w in waiting]
    assert {a["outcome"] for a in answers} == {"timeout"}


async def test_a_station_that_does_not_answer_times_out_within_the_timeout(
    server, engine, aapi
) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        cp.silent = True
        started = time.monotonic()
        answer = (await aapi.post("/api/v1/stations/CP-1/commands/Reset", json={"type": "Hard"},
                                  params={"timeout": 0.5})).json()
        elapsed = time.monotonic() - started
        assert answer["outcome"] == "timeout"
        assert 0.5 <= elapsed < 2
        # The late answer is not mistaken for the next command's.
        cp.silent = False
        nxt = (await aapi.post("/api/v1/stations/CP-1/commands/GetConfiguration",
                               json={"key": ["HeartbeatInterval"]})).json()
    assert nxt["outcome"] == "accepted"
    assert nxt["response"]["configurationKey"][0]["key"] == "HeartbeatInterval"


async def test_a_connection_lost_mid_command_is_reported_as_offline(server, engine, aapi):
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        cp.silent = True
        pending = asyncio.create_task(aapi.post("/api/v1/stations/CP-1/commands/Reset",
                                                json={"type": "Soft"}))
        await asyncio.sleep(0.3)
        await cp._connection.close()
        answer = (await pending).json()
    assert answer["outcome"] == "offline"
    assert "connection lost" in answer["error"]


async def test_a_callerror_from_the_station_is_an_error_outcome(server, engine, aapi) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1"):
        # The scripted station has no ReserveNow handler: the ocpp library answers CALLERROR.
        answer = (await aapi.post("/api/v1/stations/CP-1/commands/ReserveNow", json={
            "connectorId": 1, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "TAG",
            "reservationId": 7})).json()
    assert answer["outcome"] == "error"
    assert answer["error"].startswith("NotImplemented")


async def test_invalid_commands_are_refused_before_sending(server, engine, aapi) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        unknown = await aapi.post("/api/v1/stations/CP-1/commands/BrewCoffee", json={})
        bad = await aapi.post("/api/v1/stations/CP-1/commands/Reset", json={"type": "Gentle"})
        assert cp.received == []
    assert unknown.status_code == 422 and "not an OCPP 1.6 command" in unknown.json()["detail"]
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("PropertyConstraintViolation")
    with session_scope(engine) as session:
        outcomes = [c.outcome for c in service.list_commands(session, station_id="CP-1")]
    assert outcomes == ["invalid", "invalid"]
    missing = await aapi.post("/api/v1/stations/NOPE/commands/Reset", json={"type": "Soft"})
    assert missing.status_code == 404


async def test_agents_may_send_commands_and_are_named_in_the_audit(server, engine, agent_key):
    register(engine)
    async with station(server.ws_url, "CP-1"), httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {agent_key}"}
    ) as agent:
        answer = await agent.post("/api/v1/stations/CP-1/commands/TriggerMessage",
                                  json={"requestedMessage": "StatusNotification"})
    assert answer.json()["outcome"] == "accepted"
    with session_scope(engine) as session:
        [entry] = service.list_commands(session, station_id="CP-1")
    assert entry.requested_by == "agent:test-agent"


# ---------------------------------------------------------------- REST


def test_api_needs_a_key_and_the_right_role(server, engine, api, agent_key) -> None:
    anonymous = httpx.get(f"{server.base_url}/api/v1/stations")
    assert anonymous.status_code == 401
    wrong = httpx.get(f"{server.base_url}/api/v1/stations",
                      headers={"Authorization": "Bearer cd_not-a-key"})
    assert wrong.status_code == 401
    new = {"id": "CP-2", "password": "a-fine-station-password"}
    as_agent = httpx.post(f"{server.base_url}/api/v1/stations", json=new,
                          headers={"Authorization": f"Bearer {agent_key}"})
    assert as_agent.status_code == 403
    assert api.post("/api/v1/stations", json=new).status_code == 201
    assert api.post("/api/v1/stations", json=new).status_code == 409
    # No password only when asked for explicitly.
    assert api.post("/api/v1/stations", json={"id": "CP-3"}).status_code == 422
    assert api.post("/api/v1/stations", json={"id": "CP-3", "insecure_no_password": True}
                    ).status_code == 201
    metrics = httpx.get(f"{server.base_url}/metrics")
    assert metrics.status_code == 401
    assert "chargedesk_stations_connected" in api.get("/metrics").text
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}


async def test_station_list_and_detail_show_live_state(server, engine, api) -> None:
    register(engine)
    add_tag(engine, "TAG-1")
    from ocpp.v16 import call

    async with station(server.ws_url, "CP-1") as cp:
        await cp.boot()
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Charging"))
        tx = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-1",
                                                 meter_start=100, timestamp="2026-11-24T10:00:00Z"))
        listing = await asyncio.to_thread(api.get, "/api/v1/stations")
        [entry] = listing.json()
        assert entry["online"] is True and entry["vendor"] == "TestVendor"
        assert entry["connectors"][0]["status"] == "Charging"
        assert "password_hash" not in entry
        detail = (await asyncio.to_thread(api.get, "/api/v1/stations/CP-1")).json()
        assert detail["status_history"][0]["status"] == "Charging"
        transactions = (await asyncio.to_thread(
            api.get, "/api/v1/stations/CP-1/transactions", params={"active": True})).json()
        assert [t["id"] for t in transactions] == [tx.transaction_id]


def test_id_tags_can_be_created_blocked_and_parented(api) -> None:
    assert api.post("/api/v1/id-tags", json={"id_tag": "FLEET"}).status_code == 201
    made = api.post("/api/v1/id-tags", json={"id_tag": "CARD-1", "parent_id_tag": "FLEET"})
    assert made.json()["parent_id_tag"] == "FLEET"
    blocked = api.patch("/api/v1/id-tags/CARD-1", json={"status": "Blocked"})
    assert blocked.json()["status"] == "Blocked"
    assert api.post("/api/v1/id-tags", json={"id_tag": "X", "parent_id_tag": "NONE"}
                    ).status_code == 404
    assert api.patch("/api/v1/id-tags/NONE", json={"status": "Blocked"}).status_code == 404


async def test_decommissioned_stations_are_disconnected_and_refused(server, engine, api):
    from websockets.exceptions import InvalidStatus

    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        await cp.boot()
        answer = await asyncio.to_thread(api.post, "/api/v1/stations/CP-1/decommission")
        assert answer.json()["registration"] == "decommissioned"
        await asyncio.sleep(0.2)
        assert cp._connection.close_code is not None
    with pytest.raises(InvalidStatus):
        async with station(server.ws_url, "CP-1"):
            pass
