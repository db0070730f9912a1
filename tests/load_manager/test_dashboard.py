"""The ``/admin`` dashboard: sign in with an operator key, pages and charts, sign out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chargedesk.auth import revoke_api_key
from chargedesk.db import session_scope
from chargedesk.models import ApiKey
from chargedesk.settings import Settings
from load_manager.dashboard import COOKIE
from tests.conftest import LiveServer
from tests.load_manager.test_analytics_api import PERIOD, seed_network, start_server_with_analytics

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    server = start_server_with_analytics(settings)
    yield server
    server.stop()


@pytest.fixture
def browser(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, timeout=60) as client:
        yield client


def sign_in(browser: httpx.Client, key: str) -> httpx.Response:
    return browser.post("/admin/login", data={"api_key": key})


def test_without_a_cookie_pages_redirect_and_assets_refuse(browser: httpx.Client) -> None:
    page = browser.get("/admin")
    chart = browser.get("/admin/charts/bottlenecks.png")
    export = browser.get("/admin/export.csv", params={"kind": "stations"})
    form = browser.get("/admin/login")

    assert page.status_code == 303 and page.headers["location"] == "/admin/login"
    assert chart.status_code == 401 and export.status_code == 401
    assert form.status_code == 200 and 'name="api_key"' in form.text


def test_only_a_live_operator_key_signs_in(browser: httpx.Client, agent_key: str) -> None:
    for key in ("cd_wrong", agent_key, ""):
        refused = sign_in(browser, key)
        assert refused.status_code == 401
        assert "not a live operator key" in refused.text
        assert COOKIE not in browser.cookies


def test_sign_in_sets_a_strict_httponly_cookie_and_shows_the_dashboard(
        browser: httpx.Client, engine: Any, operator_key: str) -> None:
    seed_network(engine)

    signed = sign_in(browser, operator_key)

    assert signed.status_code == 303 and signed.headers["location"] == "/admin"
    cookie = signed.headers["set-cookie"]
    assert f"{COOKIE}={operator_key}" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    page = browser.get("/admin", params=PERIOD)
    assert page.status_code == 200
    html = page.text
    assert "Site A" in html and "Recommendations" in html and "Bottlenecks" in html
    assert 'id="live-load"' in html
    assert "/admin/charts/heatmap.png?" in html and "site_id=SITE-A" in html
    for kind in ("site_hours", "stations", "bottlenecks", "recommendations", "grid",
                 "daily_energy"):
        assert f"kind={kind}" in html
    # Site A's row: 2 connectors, 5 sessions, 16 kWh; too few visits for share bottlenecks.
    assert '<td class="num">2</td><td class="num">' in html
    assert '<td class="num">5</td><td class="num">16.0</td>' in html
    assert "No bottlenecks in this period." in html


def test_charts_are_pngs_and_exports_are_csv(browser: httpx.Client, engine: Any,
                                             operator_key: str) -> None:
    seed_network(engine)
    sign_in(browser, operator_key)

    charts = [browser.get("/admin/charts/heatmap.png", params={**PERIOD, "site_id": "SITE-A"}),
              browser.get("/admin/charts/energy.png", params=PERIOD),
              browser.get("/admin/charts/energy.png", params={**PERIOD, "site_id": "SITE-A"}),
              browser.get("/admin/charts/bottlenecks.png", params=PERIOD)]
    export = browser.get("/admin/export.csv", params={**PERIOD, "kind": "stations"})
    unknown = browser.get("/admin/charts/heatmap.png", params={**PERIOD, "site_id": "NOPE"})

    for chart in charts:
        assert chart.status_code == 200, chart.text
        assert chart.headers["content-type"] == "image/png"
        assert chart.content.startswith(PNG) and len(chart.content) > 5_000
        width, height = (int.from_bytes(chart.content[16:20]), int.from_bytes(chart.content[20:24]))
        assert width > 400 and height > 150
    assert export.status_code == 200 and export.text.startswith("station_id,site_id,")
    assert unknown.status_code == 404


def test_a_revoked_key_is_refused_on_the_next_request(browser: httpx.Client, engine: Any,
                                                      operator_key: str) -> None:
    sign_in(browser, operator_key)
    assert browser.get("/admin", params=PERIOD).status_code == 200

    with session_scope(engine) as session:
        from sqlmodel import select

        key = session.exec(select(ApiKey).where(ApiKey.role == "operator")).one()
        assert revoke_api_key(session, key_id=key.id or 0)

    assert browser.get("/admin", params=PERIOD).status_code == 303
    assert browser.get("/admin/charts/bottlenecks.png").status_code == 401


def test_logout_clears_the_cookie_and_is_post_only(browser: httpx.Client,
                                                   operator_key: str) -> None:
    sign_in(browser, operator_key)

    assert browser.get("/admin/logout").status_code == 405
    cross_site = browser.post("/admin/logout", headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403
    out = browser.post("/admin/logout")

    assert out.status_code == 303 and out.headers["location"] == "/admin/login"
    assert f'{COOKIE}=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers[
        "set-cookie"]
    assert COOKIE not in browser.cookies
    assert browser.get("/admin").status_code == 303


def test_the_dashboard_shows_live_limits_and_fail_safe_stations(
        browser: httpx.Client, engine: Any, operator_key: str) -> None:
    from load_manager import service as load

    seed_network(engine)
    with session_scope(engine) as session:
        load.set_site_grid(session, site_id="SITE-A", phase_limit_a=63.0, power_limit_kw=None)
        load.record_allocation(session, station_id="ST-1", connector_id=1, transaction_id=None,
                               limit_a=12.5, outcome="rejected")
        load.set_fail_safe(session, station_id="ST-1", reason="rejected a charging profile")
    sign_in(browser, operator_key)

    html = browser.get("/admin", params=PERIOD).text

    assert "Load management, live" in html and "63 A per phase" in html
    assert '<td class="num">12.5</td><td>rejected</td>' in html
    assert "ST-1 (rejected a charging profile)" in html
