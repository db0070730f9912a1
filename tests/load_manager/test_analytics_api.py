"""``/api/v1/analytics`` over a real server, with real keys, on both databases."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn

from chargedesk.app import create_app
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from load_manager.models import ConnectorWiring, SiteGrid, UsageOutcome, UsageSession
from station_api import service
from tests.conftest import LiveServer

MONDAY = datetime(2026, 3, 2, tzinfo=ZoneInfo("Europe/Stockholm"))
PERIOD = {"from": MONDAY.isoformat(), "to": (MONDAY + timedelta(days=7)).isoformat()}


def local(day: int, hour: float) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour)


def start_server_with_analytics(settings: Settings) -> LiveServer:
    """The real app, with the analytics and dashboard routers added if the composition root
    does not include them yet."""
    from load_manager.analytics_views import router as analytics_router
    from load_manager.dashboard import router as dashboard_router

    app = create_app(settings)
    paths = {getattr(route, "path", "") for route in app.routes}
    if "/api/v1/analytics/sites" not in paths:
        app.include_router(analytics_router)
    if "/admin/login" not in paths:
        app.include_router(dashboard_router)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ocpp", app, server,
                      thread)


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    server = start_server_with_analytics(settings)
    yield server
    server.stop()


def seed_network(engine: Any) -> None:
    """Site A: two connectors, 11 kW limit. A 2 h 40 min visit on Monday morning, three
    failed starts and a fault on ST-2 in the evening."""
    with session_scope(engine) as session:
        service.create_site(session, site_id="SITE-A", name="Site A")
        service.register_station(session, station_id="ST-1", password=None, site_id="SITE-A")
        service.register_station(session, station_id="ST-2", password=None, site_id="SITE-A")
        session.add(ConnectorWiring(station_id="ST-1", connector_id=1))
        session.add(ConnectorWiring(station_id="ST-2", connector_id=1))
        session.add(SiteGrid(site_id="SITE-A", power_limit_kw=11.0))
        session.add(UsageSession(
            station_id="ST-1", connector_id=1, site_id="SITE-A", transaction_id=1,
            plugged_in_at=local(0, 10.5), unplugged_at=local(0, 13 + 1 / 6), charging_s=7200,
            idle_s=1800, energy_wh=14_000, outcome=UsageOutcome.completed))
        for k in range(3):
            session.add(UsageSession(
                station_id="ST-2", connector_id=1, site_id="SITE-A",
                plugged_in_at=local(k, 20), unplugged_at=local(k, 20.1),
                outcome=UsageOutcome.failed_start))
        session.add(UsageSession(
            station_id="ST-2", connector_id=1, site_id="SITE-A", transaction_id=2,
            plugged_in_at=local(4, 20), unplugged_at=local(4, 21), charging_s=1800,
            energy_wh=2_000, outcome=UsageOutcome.faulted))


def test_every_endpoint_needs_a_key(live: LiveServer, agent_key: str) -> None:
    with httpx.Client(base_url=live.base_url, timeout=30) as anonymous:
        for path in ("/api/v1/analytics/sites", "/api/v1/analytics/stations",
                     "/api/v1/analytics/bottlenecks", "/api/v1/analytics/capacity",
                     "/api/v1/analytics/recommendations",
                     "/api/v1/analytics/sites/SITE-A/hours",
                     "/api/v1/analytics/stations/ST-1/hours",
                     "/api/v1/analytics/export.csv?kind=stations"):
            assert anonymous.get(path).status_code == 401, path
        wrong = anonymous.get("/api/v1/analytics/sites",
                              headers={"Authorization": "Bearer cdk_not_a_key"})
        assert wrong.status_code == 401
        # Agents may read analytics too.
        agent = anonymous.get("/api/v1/analytics/sites",
                              headers={"Authorization": f"Bearer {agent_key}"})
        assert agent.status_code == 200


def test_site_hours_and_station_stats(live: LiveServer, engine: Any, operator_key: str) -> None:
    seed_network(engine)
    with httpx.Client(base_url=live.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {operator_key}"}) as api:
        sites = api.get("/api/v1/analytics/sites", params=PERIOD)
        hours = api.get("/api/v1/analytics/sites/SITE-A/hours", params=PERIOD)
        stations = api.get("/api/v1/analytics/stations", params=PERIOD)
        one = api.get("/api/v1/analytics/stations/ST-1/hours", params=PERIOD)
        missing = api.get("/api/v1/analytics/sites/NOPE/hours", params=PERIOD)

    assert sites.status_code == 200, sites.text
    [site] = sites.json()["sites"]
    assert site["site_id"] == "SITE-A" and site["connectors"] == 2 and site["sessions"] == 5
    assert site["energy_kwh"] == 16.0
    body = hours.json()
    assert body["visits"] == 5 and body["time_zone"] == "Europe/Stockholm"
    cells = body["hours"]
    assert len(cells) == 168
    assert cells[11]["utilisation"] == 0.5 and cells[10]["utilisation"] == 0.25
    assert cells[10]["sessions"] == 1 and cells[10]["mean_duration_h"] == pytest.approx(2.6667)
    assert cells[20]["failed_start_share"] == 1.0
    by_id = {s["station_id"]: s for s in stations.json()["stations"]}
    assert by_id["ST-2"]["failed_start_share"] == 0.75 and by_id["ST-2"]["fault_rate"] == 0.25
    assert by_id["ST-1"]["energy_kwh"] == 14.0
    assert one.status_code == 200 and one.json()["hours"][12]["utilisation"] == 1.0
    assert missing.status_code == 404


def test_bottlenecks_capacity_and_recommendations(live: LiveServer, engine: Any,
                                                  operator_key: str) -> None:
    seed_network(engine)
    with httpx.Client(base_url=live.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {operator_key}"}) as api:
        found = api.get("/api/v1/analytics/bottlenecks", params=PERIOD).json()
        capacity = api.get("/api/v1/analytics/capacity",
                           params={**PERIOD, "target": 0.1, "extra_kw": 5}).json()
        recs = api.get("/api/v1/analytics/recommendations", params=PERIOD).json()

    assert found["thresholds"]["failed_share"] == 0.1
    assert capacity["target_p_wait"] == 0.1 and capacity["extra_kw"] == 5
    [site] = capacity["sites"]
    assert site["connectors"] == 2
    [grid] = capacity["grid"]
    assert grid["site_id"] == "SITE-A" and grid["limit_kw"] == 11.0
    assert isinstance(recs["recommendations"], list)
    for finding in found["bottlenecks"] + recs["recommendations"]:
        assert {"kind", "scope", "id", "severity", "text", "reason"} <= finding.keys()


def test_periods_are_validated(api: httpx.Client, live: LiveServer) -> None:
    api.base_url = httpx.URL(live.base_url)
    reversed_ = api.get("/api/v1/analytics/sites",
                        params={"from": PERIOD["to"], "to": PERIOD["from"]})
    naive = api.get("/api/v1/analytics/sites", params={"from": "2026-03-01T00:00:00"})
    too_long = api.get("/api/v1/analytics/sites",
                       params={"from": "2024-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    garbage = api.get("/api/v1/analytics/sites", params={"from": "yesterday"})
    bad_kind = api.get("/api/v1/analytics/export.csv", params={**PERIOD, "kind": "secrets"})
    bad_target = api.get("/api/v1/analytics/capacity", params={**PERIOD, "target": 1.5})

    assert reversed_.status_code == 422 and "before" in reversed_.text
    assert naive.status_code == 422 and "offset" in naive.text
    assert too_long.status_code == 422 and "400 days" in too_long.text
    assert garbage.status_code == 422
    assert bad_kind.status_code == 422 and "site_hours" in bad_kind.text
    assert bad_target.status_code == 422


def test_csv_export(live: LiveServer, engine: Any, operator_key: str) -> None:
    seed_network(engine)
    with httpx.Client(base_url=live.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {operator_key}"}) as api:
        stations = api.get("/api/v1/analytics/export.csv", params={**PERIOD, "kind": "stations"})
        hours = api.get("/api/v1/analytics/export.csv",
                        params={**PERIOD, "kind": "site_hours", "site_id": "SITE-A"})
        daily = api.get("/api/v1/analytics/export.csv",
                        params={**PERIOD, "kind": "daily_energy"})

    assert stations.status_code == 200
    assert stations.headers["content-type"] == "text/csv; charset=utf-8"
    assert stations.headers["content-disposition"] == (
        'attachment; filename="chargedesk-stations-20260302-20260309.csv"')
    table = list(csv.DictReader(io.StringIO(stations.text)))
    assert {r["station_id"]: r["sessions"] for r in table} == {"ST-1": "1", "ST-2": "4"}
    assert stations.text.endswith("\r\n")
    cells = list(csv.DictReader(io.StringIO(hours.text)))
    assert len(cells) == 168 and cells[11]["utilisation"] == "0.5"
    assert "SITE-A" in hours.headers["content-disposition"]
    days = list(csv.DictReader(io.StringIO(daily.text)))
    assert {(d["date"], d["energy_kwh"]) for d in days} == {("2026-03-02", "14.0"),
                                                            ("2026-03-06", "2.0")}
