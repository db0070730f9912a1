"""POST /webhook: Rasa's action-server protocol over our actions, for an external Rasa."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from assistant.actions.context import configure
from assistant.actions.server import router
from tests.station_api.test_central_system import register


@pytest.fixture
async def api(server: Any, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    # chargedesk.app does not mount the router yet: mount it on an app sharing the runtime.
    configure(server.runtime)
    register(engine, "CP-1")
    app = FastAPI()
    app.state.runtime = server.runtime
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        yield client


def call(name: str, slots: dict[str, Any]) -> dict[str, Any]:
    return {"next_action": name, "sender_id": "rasa-user-1", "version": "3.21.0",
            "domain": {"version": "3.1"},
            "tracker": {"sender_id": "rasa-user-1", "slots": {"language": "en", **slots},
                        "latest_message": {"text": "is CP-1 working?"}, "events": [],
                        "paused": False, "active_loop": {}}}


async def test_an_action_answers_with_events_and_responses(api, operator_key) -> None:
    answer = await api.post("/webhook", json=call("action_station_status",
                                                  {"station_id": "CP-1"}),
                            headers={"Authorization": f"Bearer {operator_key}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["events"] == []
    [response] = body["responses"]
    assert response["response"] == "utter_station_offline"
    assert response["station_id"] == "CP-1"


async def test_the_webhook_needs_an_api_key(api) -> None:
    answer = await api.post("/webhook", json=call("action_station_status", {}))
    wrong = await api.post("/webhook", json=call("action_station_status", {}),
                           headers={"Authorization": "Bearer not-a-key"})
    assert (answer.status_code, wrong.status_code) == (401, 401)


async def test_an_unknown_action_is_404_as_rasa_sdk_answers(api, agent_key) -> None:
    answer = await api.post("/webhook", json=call("action_nope", {}),
                            headers={"Authorization": f"Bearer {agent_key}"})
    assert answer.status_code == 404
    assert answer.json() == {"error": "No registered action found for name 'action_nope'.",
                             "action_name": "action_nope"}
