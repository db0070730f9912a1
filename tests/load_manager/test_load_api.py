"""REST under /api/v1/load and the plan service the assistant calls, on a live server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from chargedesk.db import session_scope
from load_manager import support
from station_api import service as stations


@pytest.fixture
def charging_session(engine: Any) -> int:
    with session_scope(engine) as session:
        stations.create_site(session, site_id="S", name="Site", time_zone="Europe/Stockholm")
        stations.register_station(session, station_id="A", password=None, site_id="S")
        stations.create_id_tag(session, id_tag="FLEET")
        stations.create_id_tag(session, id_tag="VAN-1", parent_id_tag="FLEET")
        tx, _, _ = stations.start_transaction(
            session, station_id="A", connector_id=1, id_tag="VAN-1", meter_start_wh=1000,
            timestamp=datetime.now(UTC) - timedelta(minutes=10),
        )
        stations.record_meter_values(session, station_id="A", connector_id=1,
                                     transaction_id=tx.id, meter_values=[(
                                         datetime.now(UTC), [{"value": "41.5",
                                                              "measurand": "SoC",
                                                              "unit": "Percent",
                                                              "location": "EV"}])])
        assert tx.id is not None
        return tx.id


def test_every_load_endpoint_needs_a_key(server: Any) -> None:
    with httpx.Client(base_url=server.base_url) as anonymous:
        for method, path in [("GET", "/api/v1/load/sites"), ("GET", "/api/v1/load/sites/S"),
                             ("PUT", "/api/v1/load/sites/S/grid"),
                             ("POST", "/api/v1/load/plans"),
                             ("DELETE", "/api/v1/load/plans/1")]:
            assert anonymous.request(method, path).status_code == 401, path


def test_agents_may_plan_but_not_change_the_grid(server: Any, agent_key: str,
                                                 charging_session: int) -> None:
    with httpx.Client(base_url=server.base_url,
                      headers={"Authorization": f"Bearer {agent_key}"}) as agent:
        refused = agent.put("/api/v1/load/sites/S/grid", json={"phase_limit_a": 32})
        assert refused.status_code == 403
        missing = agent.get(f"/api/v1/load/plans/{charging_session}")
        assert missing.status_code == 404
        assert "no charge plan" in missing.json()["detail"]


def test_grid_is_set_checked_and_shown(api: httpx.Client, charging_session: int) -> None:
    assert api.put("/api/v1/load/sites/S/grid", json={}).status_code == 422
    assert api.put("/api/v1/load/sites/S/grid",
                   json={"phase_limit_a": -3}).status_code == 422
    assert api.put("/api/v1/load/sites/NOPE/grid",
                   json={"phase_limit_a": 32}).status_code == 404
    wiring = api.put("/api/v1/load/connectors/A/1/wiring",
                     json={"phases": 1, "rotation": "SRT", "max_current_a": 32})
    assert wiring.status_code == 200, wiring.text
    assert api.put("/api/v1/load/connectors/A/1/wiring",
                   json={"phases": 2, "max_current_a": 32}).status_code == 422
    grid = api.put("/api/v1/load/sites/S/grid", json={"phase_limit_a": 25, "policy": "priority"})
    assert grid.status_code == 200, grid.text
    assert api.put("/api/v1/load/sites/S/forecast", json=[
        {"starts_at": "2026-01-01T00:00:00Z", "l1_a": 1, "l2_a": 4, "l3_a": 0}]).json() == {
            "points": 1}
    assert api.put("/api/v1/load/tags/FLEET/priority", json={"priority": 5}).status_code == 200

    state = api.get("/api/v1/load/sites/S").json()
    assert state["grid"]["policy"] == "priority"
    assert state["other_load_a"] == [1.0, 4.0, 0.0]
    # Station A is offline: it can't be steered and counts at its 32 A on L2.
    assert state["fail_safe_stations"] == [{"station_id": "A", "reason": "offline"}]
    decision = api.post("/api/v1/load/sites/S/rebalance").json()
    assert decision["available_phase_a"] == [24.0, 0.0, 25.0]
    assert decision["limits"] == []


def test_plans_by_energy_or_state_of_charge(api: httpx.Client, charging_session: int) -> None:
    api.put("/api/v1/load/sites/S/grid", json={"power_limit_kw": 22})
    departure = (datetime.now(UTC) + timedelta(hours=6)).isoformat()
    both = api.post("/api/v1/load/plans", json={
        "transaction_id": charging_session, "departure_at": departure, "energy_wh": 5000,
        "target_soc": 80})
    assert both.status_code == 422
    no_battery = api.post("/api/v1/load/plans", json={
        "transaction_id": charging_session, "departure_at": departure, "target_soc": 80})
    assert no_battery.status_code == 422 and "battery_kwh" in no_battery.text
    by_soc = api.post("/api/v1/load/plans", json={
        "transaction_id": charging_session, "departure_at": departure, "target_soc": 80,
        "battery_kwh": 60})
    assert by_soc.status_code == 201, by_soc.text
    # From 41.5 % to 80 % of 60 kWh.
    assert by_soc.json()["energy_wh"] == 23100
    shown = api.get(f"/api/v1/load/plans/{charging_session}").json()
    assert shown["id"] == by_soc.json()["id"]
    assert api.delete(f"/api/v1/load/plans/{charging_session}").json()["status"] == "cancelled"
    assert api.delete(f"/api/v1/load/plans/{charging_session}").status_code == 404


def test_a_driver_reaches_only_sessions_of_their_own_cards(server: Any,
                                                           charging_session: int) -> None:
    controller = server.runtime.load
    departure = datetime.now(UTC) + timedelta(hours=5)

    async def attempt(tags: list[str]) -> Any:
        return await support.plan_charge(
            controller, transaction_id=charging_session, departure_at=departure,
            energy_wh=4000, requested_by="driver:test", id_tags=tags)

    with pytest.raises(support.NotYours):
        asyncio.run(attempt(["SOMEONE-ELSE"]))
    # The fleet's parent card covers its vans.
    plan = asyncio.run(attempt(["FLEET"]))
    assert plan.energy_wh == 4000 and plan.status == "active"
    with pytest.raises(support.NotYours):
        asyncio.run(support.show_plan(controller, transaction_id=charging_session,
                                      id_tags=["VAN-2"]))
    assert plan.expected_cost_sek is None or plan.expected_cost_sek >= Decimal(0)
