"""The assistant's actions through the action-server protocol (registry.execute), against a
real server with simulated stations, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from assistant.actions import registry, safety
from assistant.actions.context import configure
from assistant.dialogue.domain import load as load_domain
from billing_api.models import PaymentMethod
from chargedesk.db import session_scope
from station_api import service
from station_api.models import CommandLog, IdTagStatus
from station_api.simulator import SimulatedStation
from tests.billing_api.factories import make_driver, make_rated_session
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import eventually, register

ACTIONS_DIR = Path(__file__).resolve().parents[2] / "assistant" / "actions"


def tracker(slots: dict[str, Any], text: str = "") -> dict[str, Any]:
    return {"sender_id": "driver-chat", "slots": {"language": "sv", **slots},
            "latest_message": {"text": text, "intent": {}, "entities": []},
            "events": [], "paused": False, "followup_action": None, "active_loop": {},
            "latest_action_name": "action_listen"}


async def run(server: Any, name: str, slots: dict[str, Any], text: str = "") -> dict[str, Any]:
    """Execute on the server's event loop, where the stations' connections live, as the
    dialogue engine and POST /webhook do."""
    payload = {"next_action": name, "sender_id": "driver-chat", "tracker": tracker(slots, text),
               "domain": {"version": "3.1"}, "version": "3.21.0"}
    loop = server.server.servers[0].get_loop()
    future = asyncio.run_coroutine_threadsafe(registry.execute(payload), loop)
    return await asyncio.wrap_future(future)


def said(result: dict[str, Any]) -> list[str]:
    return [r["response"] for r in result["responses"]]


def paused_for(result: dict[str, Any]) -> str | None:
    events = result["events"]
    if not any(e["event"] == "pause" for e in events):
        return None
    return next(e["value"] for e in events
                if e["event"] == "slot" and e["name"] == "handoff_reason")


def commands(engine: Any, action: str) -> list[CommandLog]:
    with session_scope(engine) as session:
        return list(session.exec(select(CommandLog).where(CommandLog.action == action)
                                 .order_by(CommandLog.id)).all())


def live_connectors(engine: Any) -> dict[int, str]:
    with session_scope(engine) as session:
        return {c.connector_id: c.status
                for c in service.list_connectors(session, station_ids=["SIM-1"])}


@pytest.fixture
def drivers(engine: Any) -> dict[str, Any]:
    register(engine, "SIM-1")
    with session_scope(engine) as session:
        anna = make_driver(session, name="Anna", id_tags=("RFID-ANNA",))
        erik = make_driver(session, name="Erik", email="erik@example.se", id_tags=("RFID-ERIK",),
                           payment_method=PaymentMethod.prepaid)
        return {"anna": {"driver_id": anna.id, "verified": True, "id_tags": ["RFID-ANNA"]},
                "erik": {"driver_id": erik.id, "verified": True, "id_tags": ["RFID-ERIK"]}}


@pytest.fixture
async def sim(server: Any, engine: Any, drivers: Any) -> AsyncIterator[SimulatedStation]:
    configure(server.runtime)
    safety.LIMITS.reset()
    station = SimulatedStation("SIM-1", server.ws_url, password=PASSWORD, connectors=2,
                               meter_interval=0.2, seed=3)
    await station.start()
    await asyncio.wait_for(station.booted.wait(), 10)
    await eventually(lambda: len(live_connectors(engine)) == 3)  # the station and two
    yield station
    await station.stop()
    safety.LIMITS.reset()


async def test_a_stuck_cable_is_unlocked_at_the_station(server, engine, sim, drivers) -> None:
    tx = await sim.plug_in(1, "RFID-ANNA")
    assert tx is not None
    await sim.stop_charging(1)  # the session ended, the cable stays locked
    result = await run(server, "action_cable_stuck",
                       {**drivers["anna"], "station_id": "SIM-1", "connector": 1.0})
    assert said(result) == ["utter_cable_unlocked"]
    [unlock] = commands(engine, "UnlockConnector")
    assert (unlock.outcome, unlock.response) == ("accepted", {"status": "Unlocked"})
    assert unlock.requested_by == f"driver:{drivers['anna']['driver_id']}"
    assert unlock.payload == {"connectorId": 1} and unlock.reason


async def test_a_driver_cannot_unlock_someone_elses_connector(server, engine, sim,
                                                             drivers) -> None:
    assert await sim.plug_in(2, "RFID-ERIK") is None  # prepaid without funds: refused
    assert await sim.plug_in(1, "RFID-ANNA") is not None
    result = await run(server, "action_cable_stuck",
                       {**drivers["erik"], "station_id": "SIM-1", "connector": 1.0})
    assert said(result) == ["utter_refused_not_yours"]
    assert paused_for(result) == "safety"
    assert commands(engine, "UnlockConnector") == []
    assert sim.connectors[1].session is not None  # Anna still charges


async def test_the_fourth_remote_command_is_refused(server, engine, sim, drivers) -> None:
    assert await sim.plug_in(1, "RFID-ANNA") is not None
    slots = {**drivers["anna"], "station_id": "SIM-1", "connector": 1.0}
    answers = [said(await run(server, "action_cable_stuck", slots)) for _ in range(4)]
    assert answers[:3] == [["utter_cable_unlocked"]] * 3
    assert answers[3] == ["utter_refused_rate_limited"]
    assert len(commands(engine, "UnlockConnector")) == 3


async def test_a_lost_card_is_blocked_everywhere_at_once(server, engine, sim, drivers) -> None:
    result = await run(server, "action_lost_card", drivers["anna"])
    assert said(result) == ["utter_card_now_blocked"]
    assert result["responses"][0]["stations"] == 1 and result["responses"][0]["later"] == 0
    with session_scope(engine) as session:
        assert service.authorize(session, station_id="SIM-1",
                                 id_tag="RFID-ANNA").status == IdTagStatus.blocked
    assert sim.local_list["RFID-ANNA"]["status"] == "Blocked"
    # At the station, the card is refused: Authorize answers Blocked.
    assert await sim.plug_in(1, "RFID-ANNA") is None
    assert sim.auth_cache["RFID-ANNA"]["status"] == "Blocked"
    [push] = commands(engine, "SendLocalList")
    assert push.outcome == "accepted" and push.payload["updateType"] == "Differential"


async def test_a_block_reaches_stations_offline_at_the_time_when_they_connect(
        server, engine, sim, drivers) -> None:
    from assistant.actions.models import LocalListPush

    register(engine, "SIM-2")
    register(engine, "SIM-3")
    result = await run(server, "action_lost_card", drivers["anna"])
    assert result["responses"][0]["stations"] == 1 and result["responses"][0]["tried"] == 1
    assert result["responses"][0]["later"] == 2  # SIM-2 and SIM-3 are offline

    # SIM-2 keeps a local list; SIM-3 has none, so its authorization cache is cleared.
    with_list = SimulatedStation("SIM-2", server.ws_url, password=PASSWORD, connectors=1, seed=4)
    without = SimulatedStation("SIM-3", server.ws_url, password=PASSWORD, connectors=1, seed=5)
    without.config["LocalAuthListEnabled"].value = "false"
    without.auth_cache["RFID-ANNA"] = {"status": "Accepted"}
    for station in (with_list, without):
        await station.start()
    try:
        await eventually(lambda: with_list.local_list.get("RFID-ANNA", {}).get("status")
                         == "Blocked")
        await eventually(lambda: without.auth_cache == {})
        await eventually(lambda: len(commands(engine, "ClearCache")) == 1)

        def delivered() -> set[str]:
            with session_scope(engine) as session:
                return {p.station_id for p in session.exec(select(LocalListPush)).all()
                        if p.delivered_at is not None}

        await eventually(lambda: delivered() == {"SIM-1", "SIM-2", "SIM-3"})
        [push] = [c for c in commands(engine, "SendLocalList") if c.station_id == "SIM-2"]
        assert push.requested_by == f"driver:{drivers['anna']['driver_id']}"
        assert push.payload["localAuthorizationList"] == [
            {"idTag": "RFID-ANNA", "idTagInfo": {"status": "Blocked"}}]
        # SIM-3 said its list is not supported, then took the ClearCache.
        assert [c.response for c in commands(engine, "SendLocalList")
                if c.station_id == "SIM-3"] == [{"status": "NotSupported"}]
    finally:
        for station in (with_list, without):
            await station.stop()


async def test_a_running_session_is_stopped_for_its_driver_only(server, engine, sim,
                                                               drivers) -> None:
    tx = await sim.plug_in(1, "RFID-ANNA")
    await eventually(lambda: sim.connectors[1].session is not None)
    status = await run(server, "action_charging_status", drivers["anna"])
    assert said(status) == ["utter_charging_now"]
    assert status["responses"][0]["station_id"] == "SIM-1"

    nothing = await run(server, "action_stop_charging", drivers["erik"])
    assert said(nothing) == ["utter_no_running_session"]
    stopped = await run(server, "action_stop_charging", drivers["anna"])
    assert said(stopped) == ["utter_charging_stopped"]
    [stop] = commands(engine, "RemoteStopTransaction")
    assert stop.payload == {"transactionId": tx} and stop.outcome == "accepted"
    await eventually(lambda: sim.connectors[1].session is None)


async def test_station_status_shows_each_connector(server, sim, drivers) -> None:
    await sim.set_fault(2, "GroundFailure")
    await eventually(lambda: live_connectors(server.runtime.engine).get(2) == "Faulted")
    result = await run(server, "action_station_status", {"station_id": "sim-1"})
    assert said(result) == ["utter_station_online"]
    lines = result["responses"][0]["connectors"]
    assert "uttag 1: ledigt" in lines and "uttag 2: fel (GroundFailure)" in lines


async def test_charging_wont_start_finds_a_blocked_card(server, engine, sim, drivers) -> None:
    with session_scope(engine) as session:
        service.update_id_tag(session, id_tag="RFID-ANNA", status=IdTagStatus.blocked)
    result = await run(server, "action_charging_wont_start",
                       {**drivers["anna"], "station_id": "SIM-1", "connector": 1.0})
    assert said(result) == ["utter_diagnosis_card_blocked"]


async def test_charging_wont_start_offers_a_remote_start_when_all_is_well(server, sim,
                                                                          drivers) -> None:
    await sim.plug_in(1, "RFID-ANNA")
    await sim.stop_charging(1)
    await sim.unplug(1)
    sim.connectors[2].plugged = True
    sim._set_status(sim.connectors[2], "Preparing")
    await eventually(lambda: live_connectors(server.runtime.engine).get(2) == "Preparing")
    result = await run(server, "action_charging_wont_start",
                       {**drivers["anna"], "station_id": "SIM-1"})
    assert said(result) == ["utter_diagnosis_ready"]
    assert {"event": "followup", "name": "action_start_charging"} in [
        {k: e[k] for k in ("event", "name")} for e in result["events"]
        if e["event"] == "followup"]


async def test_the_cost_of_a_session_is_explained_line_by_line(server, engine, drivers
                                                              ) -> None:
    configure(server.runtime)
    with session_scope(engine) as session:
        from billing_api.models import Driver

        anna = session.get(Driver, drivers["anna"]["driver_id"])
        make_rated_session(session, driver=anna, energy_wh=20_000,
                           start=datetime(2026, 10, 3, 8, 0, tzinfo=UTC))
    result = await run(server, "action_explain_cost", drivers["anna"])
    assert said(result) == ["utter_cost_explained"]
    answer = result["responses"][0]
    nbsp = "\xa0"
    assert answer["lines"].split("\n") == [
        f"Startavgift: 1 start \u00d7 5,00{nbsp}kr = 5,00{nbsp}kr",
        f"Energi: 20 kWh \u00d7 3,20{nbsp}kr = 64,00{nbsp}kr",
    ]
    assert answer["total_excl_vat"] == f"69,00{nbsp}kr"
    assert answer["vat"] == f"moms 25{nbsp}%: 17,25{nbsp}kr"
    assert answer["total"] == f"86,25{nbsp}kr"

    english = await run(server, "action_explain_cost", {**drivers["anna"], "language": "en"})
    assert english["responses"][0]["total"] == f"SEK{nbsp}86.25"
    before = await run(server, "action_explain_cost", {**drivers["anna"], "offset": 1})
    assert said(before) == ["utter_no_session"]


async def test_billing_history_balance_and_price(server, engine, drivers) -> None:
    from billing_api import service as billing
    from billing_api.tariffs import parse_tariff
    from tests.billing_api.factories import TARIFF

    configure(server.runtime)
    with session_scope(engine) as session:
        from billing_api.models import Driver

        anna = session.get(Driver, drivers["anna"]["driver_id"])
        make_rated_session(session, driver=anna, station_id="SIM-1")
        billing.import_tariff(session, tariff=parse_tariff(TARIFF), created_by="test",
                              valid_from=datetime(2026, 1, 1, tzinfo=UTC))
        billing.assign_tariff(session, tariff_id=TARIFF["id"], created_by="test",
                              valid_from=datetime(2026, 1, 1, tzinfo=UTC))
    history = await run(server, "action_billing_history",
                        {**drivers["anna"], "date": {"from": "2026-10-01", "to": "2026-10-31"}})
    assert said(history) == ["utter_history"]
    assert history["responses"][0]["count"] == 1
    assert history["responses"][0]["total"] == "86,25\xa0kr"

    balance = await run(server, "action_check_balance", drivers["erik"])
    assert said(balance) == ["utter_balance_low"]
    assert balance["responses"][0]["available"] == "0,00\xa0kr"
    invoice_driver = await run(server, "action_check_balance", drivers["anna"])
    assert said(invoice_driver) == ["utter_pays_by_invoice"]

    price = await run(server, "action_price_info", {"station_id": "SIM-1", "language": "en"})
    assert said(price) == ["utter_price_now"]
    assert price["responses"][0]["prices"].split("\n") == [
        "Session fee: SEK\xa06.25/session", "Energy: SEK\xa04.00/kWh"]


async def test_account_actions_ask_an_unverified_driver_to_verify(server, drivers) -> None:
    configure(server.runtime)
    result = await run(server, "action_explain_cost",
                       {"driver_id": drivers["anna"]["driver_id"], "verified": False})
    assert said(result) == ["utter_verify_first"]
    assert result["events"] == []


async def test_find_charger_matches_a_place_without_diacritics(server, engine) -> None:
    configure(server.runtime)
    with session_scope(engine) as session:
        service.create_site(session, site_id="GBG-HAMN", name="Göteborg hamnen",
                            address="Packhusplatsen 2, 411 13 Göteborg")
        service.create_site(session, site_id="STO-CITY", name="Stockholm City garage",
                            address="Kungsgatan 10, 111 43 Stockholm")
    result = await run(server, "action_find_charger", {}, text="laddare nära GOTEBORG?")
    assert said(result) == ["utter_chargers_near"]
    first = result["responses"][0]["sites"].split("\n")[0]
    assert first.startswith("Göteborg hamnen, Packhusplatsen 2")


async def test_a_reported_problem_flags_the_station_and_goes_to_a_person(server, engine,
                                                                        drivers) -> None:
    from assistant.actions.models import StationFlag

    configure(server.runtime)
    result = await run(server, "action_report_station_problem", {"station_id": "SIM-1"},
                       text="the screen on SIM-1 is smashed")
    assert said(result) == ["utter_problem_reported"]
    assert paused_for(result) == "damage"
    again = await run(server, "action_report_station_problem",
                      {**drivers["anna"], "station_id": "sim-1", "connector": 2.0},
                      text="SIM-1 is broken")
    assert paused_for(again) == "damage"
    unknown = await run(server, "action_report_station_problem", {"station_id": "SIM-9"})
    assert said(unknown) == ["utter_unknown_station"] and paused_for(unknown) is None
    with session_scope(engine) as session:
        [flag] = session.exec(select(StationFlag)).all()
    # One open flag per station: the second report counts, the first words stay.
    assert (flag.station_id, flag.status, flag.reports) == ("SIM-1", "open", 2)
    assert (flag.description, flag.reported_by) == ("the screen on SIM-1 is smashed",
                                                    "anonymous")
    assert flag.connector_id is None  # reports without and with a connector: the station


async def test_operators_see_and_resolve_station_flags(server, engine, api) -> None:
    configure(server.runtime)
    register(engine, "SIM-2")
    await run(server, "action_report_station_problem", {"station_id": "SIM-2"},
              text="SIM-2 smells of smoke")
    import httpx

    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        assert (await anonymous.get("/api/v1/assistant/station-flags")).status_code == 401
    [flag] = api.get("/api/v1/assistant/station-flags").json()
    assert (flag["station_id"], flag["description"]) == ("SIM-2", "SIM-2 smells of smoke")
    done = api.post(f"/api/v1/assistant/station-flags/{flag['id']}/resolve").json()
    assert done["status"] == "resolved" and done["resolved_at"]
    assert api.get("/api/v1/assistant/station-flags").json() == []
    [resolved] = api.get("/api/v1/assistant/station-flags?status=resolved").json()
    assert resolved["id"] == flag["id"]
    assert api.post("/api/v1/assistant/station-flags/999/resolve").status_code == 404


async def test_handoff_keeps_the_reason_an_earlier_step_gave(server) -> None:
    configure(server.runtime)
    result = await run(server, "action_human_handoff", {"handoff_reason": "dispute"})
    assert paused_for(result) == "dispute"
    asked = await run(server, "action_human_handoff", {})
    assert paused_for(asked) == "asked"


async def test_an_unknown_action_is_the_protocols_not_found(server) -> None:
    configure(server.runtime)
    result = await run(server, "action_make_coffee", {})
    assert result == {"error": "No registered action found for name 'action_make_coffee'.",
                      "action_name": "action_make_coffee", "status": 404}


def test_every_response_the_actions_use_exists_in_both_languages() -> None:
    domain = load_domain()
    source = "\n".join(p.read_text() for p in ACTIONS_DIR.glob("*.py"))
    names = set(re.findall(r'"(utter_[a-z_]+)"', source))
    names |= {f"utter_refused_{code}" for code in
              ("no_session", "not_yours", "other_session", "hard_reset", "rate_limited")}
    names |= {f"utter_diagnosis_{f}" for f in (
        "offline", "faulted", "which_connector", "unavailable", "charging", "busy",
        "low_balance", "card_invalid", "card_blocked", "card_expired", "card_concurrenttx",
        "ready", "not_plugged")}
    names |= {f"utter_card_{s}" for s in ("invalid", "blocked", "expired", "concurrenttx")}
    names |= {f"utter_pays_by_{m}" for m in ("invoice", "autogiro", "sepa")}
    for name in sorted(names):
        languages = {c["value"] for v in domain.responses.get(name, [])
                     for c in v.get("condition", [])}
        assert languages == {"sv", "en"}, name


def test_actions_are_named_after_the_intents_and_money_ones_are_confirmed() -> None:
    intents = ("start_charging charging_wont_start cable_stuck stop_charging charging_status "
               "station_status find_charger report_station_problem price_info billing_history "
               "explain_cost dispute_charge request_invoice check_balance top_up "
               "change_payment_method lost_card schedule_charging human_handoff").split()
    assert {f"action_{i}" for i in intents} <= set(registry.ACTIONS)
    assert registry.CONFIRM <= set(registry.ACTIONS)
    from rasa_sdk import Tracker

    question = registry.summary("action_cable_stuck", Tracker.from_dict(tracker(
        {"station_id": "SIM-1", "connector": 2.0})), "sv")
    assert question == "låsa upp uttag 2 på SIM-1 så att du kan ta ut kabeln"


async def test_a_disputed_charge_opens_a_dispute_for_an_agent(server, engine, drivers) -> None:
    from billing_api.models import Dispute, Driver

    configure(server.runtime)
    with session_scope(engine) as session:
        anna = session.get(Driver, drivers["anna"]["driver_id"])
        row = make_rated_session(session, driver=anna, energy_wh=50)  # delivered ~nothing
    result = await run(server, "action_dispute_charge", drivers["anna"],
                       text="I was charged but the car got nothing")
    assert said(result) == ["utter_dispute_opened"]
    assert paused_for(result) == "dispute"
    with session_scope(engine) as session:
        [dispute] = session.exec(select(Dispute)).all()
        assert (dispute.session_id, dispute.opened_by) == (row.id, f"driver:{anna.id}")
        assert dispute.reason == "I was charged but the car got nothing"
    assert result["responses"][0]["proposed"] == "5,16\xa0kr"


def test_price_lines_say_when_each_price_applies() -> None:
    from datetime import date

    from assistant.actions import prices
    from assistant.actions.billing import price_lines

    def element(kind: str, price: str, now: bool = True, **conditions: Any) -> dict[str, Any]:
        return {"applies_now": now, "conditions": conditions, "components": [
            {"type": kind, "unit": {"ENERGY": "kWh", "FLAT": "session"}.get(kind, "hour"),
             "price_incl_vat": price, "price_excl_vat": price}]}

    night = element("ENERGY", "2.10", now=False, start_time="22:00", end_time="06:00")
    sheet = {"at": "2026-12-01T14:00:00+01:00", "currency": "SEK", "elements": [
        element("FLAT", "5.00"), night, element("ENERGY", "3.50"),
        element("ENERGY", "9.99"),  # after an unrestricted one: never applies
        element("PARKING_TIME", "60.00", min_duration=2700)]}
    assert price_lines(sheet, "sv") == [
        "Startavgift: 5,00\xa0kr/start", "Energi 22\u201306: 2,10\xa0kr/kWh",
        "Energi 06\u201322: 3,50\xa0kr/kWh (gäller nu)",
        "Parkering efter 45 min: 60,00\xa0kr/h"]
    # Two windows before the rest of the day; weekdays; an expired element is left out.
    day = date(2026, 12, 1)
    elements = [
        {"conditions": {"start_time": "06:00", "end_time": "09:00"},
         "components": [{"type": "ENERGY"}]},
        {"conditions": {"start_time": "16:00", "end_time": "19:00",
                        "day_of_week": ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY",
                                        "FRIDAY"]}, "components": [{"type": "ENERGY"}]},
        {"conditions": {"end_date": "2026-11-01"}, "components": [{"type": "ENERGY"}]},
        {"conditions": {}, "components": [{"type": "ENERGY"}]},
    ]
    assert prices.labels(elements, language="en", day=day) == {
        (0, "ENERGY"): "06\u201309", (1, "ENERGY"): "Mon\u2013Fri 16\u201319",
        (3, "ENERGY"): "other times"}
    assert prices.complement([(6 * 60, 9 * 60), (16 * 60, 19 * 60)]) == [
        (9 * 60, 16 * 60), (19 * 60, 6 * 60)]
    assert prices.complement([(0, 0)]) == []
