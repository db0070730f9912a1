"""The driver's preferences endpoint (signed-in web chat token) and the operator's outbox;
and one notification all the way out through the SMS channel to Twilio's API on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from assistant.channels.outbound import channels
from assistant.notifications import service
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver
from tests.channels.fixtures import SID, TOKEN
from tests.conftest import LiveServer, start_server
from tests.notifications.conftest import ANNA_PHONE, SCRIPTED, World
from tests.notifications.test_journeys import START, iso
from tests.station_api.ocpp_client import PASSWORD, station
from tests.station_api.test_central_system import register

PREFS = "/api/v1/me/notification-preferences"


def as_driver(world: World, driver: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token(driver)}"}


async def test_a_driver_sees_the_defaults_then_changes_what_they_want(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.server.base_url) as client:
        with session_scope(world.engine) as session:
            eva = make_driver(session, name="Eva", email="eva@example.se", phone=None,
                              id_tags=("RFID-EVA",))
        world.drivers["eva"] = eva.id or 0
        shown = await client.get(PREFS, headers=as_driver(world, "eva"))
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert {k: body[k] for k in ("channel", "language", "quiet_hours", "enabled", "muted",
                                     "chosen", "time_zone")} == {
            "channel": "email", "language": "sv",
            "quiet_hours": {"start": "22:00:00", "end": "07:00:00"}, "enabled": True,
            "muted": [], "chosen": False, "time_zone": "Europe/Stockholm"}
        assert "debit_failed" in body["kinds"] and "idle_warning" in body["kinds"]

        changed = await client.put(PREFS, headers=as_driver(world, "eva"), json={
            "language": "en", "quiet_hours": {"start": "21:30", "end": "06:45"},
            "muted": ["session_started", "plan_confirmed"]})
        assert changed.status_code == 200, changed.text
        assert {k: changed.json()[k] for k in ("channel", "language", "quiet_hours", "muted",
                                               "chosen")} == {
            "channel": "email", "language": "en",
            "quiet_hours": {"start": "21:30:00", "end": "06:45:00"},
            "muted": ["plan_confirmed", "session_started"], "chosen": True}
        cleared = await client.put(PREFS, headers=as_driver(world, "eva"),
                                   json={"quiet_hours": None, "enabled": False})
        assert (cleared.json()["quiet_hours"], cleared.json()["enabled"],
                cleared.json()["language"]) == (None, False, "en")

        for wrong in ({"channel": "sms"}, {"muted": ["spam"]}, {"language": "de"},
                      {"quiet_hours": {"start": "22:00", "end": "22:00"}}):
            refused = await client.put(PREFS, headers=as_driver(world, "eva"), json=wrong)
            assert refused.status_code == 422, (wrong, refused.text)
        assert "phone number" in (await client.put(
            PREFS, headers=as_driver(world, "eva"), json={"channel": "sms"})).json()["detail"]

        assert (await client.get(PREFS)).status_code == 401
        assert (await client.get(PREFS, headers={"Authorization": "Bearer forged.token"})
                ).status_code == 401
        assert (await client.get(PREFS, headers=as_driver(world, None))).status_code == 403


async def test_operators_and_agents_see_the_outbox(world: World, agent_key: str) -> None:
    world.prefer("anna", muted=["session_finished"])
    async with station(world.server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        from tests.notifications.test_journeys import start
        await start(cp, "RFID-ANNA")
    from tests.station_api.test_central_system import eventually
    await eventually(lambda: len(world.texts(ANNA_PHONE)) == 1)
    await world.settled()
    listed = await world.api.get("/api/v1/notifications/outbox",
                                 params={"driver_id": world.drivers["anna"]})
    assert listed.status_code == 200, listed.text
    (only,) = listed.json()
    assert {k: only[k] for k in ("kind", "status", "attempts", "channel", "address",
                                 "language")} == {
        "kind": "session_started", "status": "sent", "attempts": 1, "channel": "sms",
        "address": ANNA_PHONE, "language": "sv"}
    assert only["text"] == world.texts(ANNA_PHONE)[0]
    async with httpx.AsyncClient(base_url=world.server.base_url) as client:
        agent = await client.get("/api/v1/notifications/outbox/summary",
                                 headers={"Authorization": f"Bearer {agent_key}"})
        assert agent.status_code == 200 and agent.json() == {"sent": 1}
        assert (await client.get("/api/v1/notifications/outbox")).status_code == 401
        retry = await client.post(f"/api/v1/notifications/outbox/{only['id']}/retry",
                                  headers={"Authorization": f"Bearer {agent_key}"})
        assert retry.status_code == 403  # sending again is the operator's


# ---------------------------------------------------------------- through Twilio

OUR_NUMBER = "+46766861001"


@pytest.fixture
def sms_server(settings: Settings, twilio_api: TwilioStub) -> Iterator[LiveServer]:
    live = start_server(settings.model_copy(update={
        "twilio_account_sid": SID, "twilio_auth_token": TOKEN,
        "twilio_from_number": OUR_NUMBER, "twilio_api_base_url": twilio_api.url,
        "public_base_url": "https://support.chargedesk.example"}))
    yield live
    live.stop()


async def test_a_notification_goes_out_through_twilios_messages_api(
        sms_server: LiveServer, engine: Any, twilio_api: TwilioStub) -> None:
    assert "sms" in channels(sms_server.runtime)
    register(engine, SCRIPTED)
    with session_scope(engine) as session:
        anna = make_driver(session, name="Anna Berg", phone=ANNA_PHONE, id_tags=("RFID-ANNA",))
        service.set_preferences(session, driver_id=anna.id or 0, quiet_hours=None)
    async with station(sms_server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        from ocpp.v16 import call
        await cp.call(call.StartTransaction(connector_id=1, id_tag="RFID-ANNA",
                                            meter_start=1000, timestamp=iso(START)))
        (request,) = await asyncio.to_thread(twilio_api.wait_for, 1, to=ANNA_PHONE,
                                             timeout=20)
    assert request.form["From"] == OUR_NUMBER
    assert request.form["Body"] == ("Laddningen har startat vid SE-TST-HAMN-02 uttag 1 kl. "
                                    "09:00. Vi hör av oss när den är klar.")
