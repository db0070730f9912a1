"""``POST /model/parse`` over a real server, with site names read from its database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from assistant.nlu.engine import NluEngine
from assistant.nlu.views import router
from chargedesk.app import create_app
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from station_api.models import Site, Station
from tests.conftest import LiveServer


@pytest.fixture
def nlu_server(settings: Settings, nlu: NluEngine) -> Iterator[LiveServer]:
    """The real app; with the NLU router added if chargedesk/app.py does not include it yet."""
    app = create_app(settings)
    if not any(getattr(r, "path", None) == "/model/parse" for r in app.routes):
        app.include_router(router)
    nlu.set_lookup_provider(None)  # bind to this server's database on first request
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield LiveServer(f"http://127.0.0.1:{port}", "", app, server, thread)
    server.should_exit = True
    thread.join(timeout=10)
    nlu.set_lookup_provider(None)


def _seed(engine: Any) -> None:
    with session_scope(engine) as session:
        session.add(Site(id="KIR-GRUV", name="Kiruna gruvan"))
        session.add(Station(id="CP0042", site_id="KIR-GRUV"))


def test_parse_answers_like_rasa_with_database_lookups(
        nlu_server: LiveServer, operator_key: str, engine: Any) -> None:
    _seed(engine)
    with httpx.Client(base_url=nlu_server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {operator_key}"}) as client:
        response = client.post("/model/parse", json={
            "text": "är CP0042 vid Kiruna gruvan ledig?", "message_id": "abc"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "är CP0042 vid Kiruna gruvan ledig?"
    assert body["message_id"] == "abc"
    assert body["intent"]["name"] == "station_status"
    assert body["language"] == "sv"
    assert [(e["entity"], e["value"]) for e in body["entities"]] == [
        ("station_id", "CP0042"), ("site", "KIR-GRUV")]
    assert len(body["intent_ranking"]) == 10


def test_an_agent_key_may_parse(nlu_server: LiveServer, agent_key: str) -> None:
    response = httpx.post(f"{nlu_server.base_url}/model/parse", json={"text": "hi"},
                          headers={"Authorization": f"Bearer {agent_key}"}, timeout=30)
    assert response.status_code == 200
    assert response.json()["intent"]["name"] == "greet"


def test_parse_needs_an_api_key(nlu_server: LiveServer) -> None:
    response = httpx.post(f"{nlu_server.base_url}/model/parse", json={"text": "hej"},
                          timeout=30)
    assert response.status_code == 401
    response = httpx.post(f"{nlu_server.base_url}/model/parse", json={"text": "hej"},
                          headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert response.status_code == 401


def test_parse_validates_its_body(nlu_server: LiveServer, operator_key: str) -> None:
    response = httpx.post(f"{nlu_server.base_url}/model/parse", json={"message": "hej"},
                          headers={"Authorization": f"Bearer {operator_key}"}, timeout=30)
    assert response.status_code == 422
