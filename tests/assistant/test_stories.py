"""The conversation tests (assistant/intents/tests/test_stories.yml), one test per story, on
SQLite and PostgreSQL.

Each story is played through the real NLU, dialogue engine and actions (assistant/testing.py)
in a served app, with simulated stations connected to its OCPP central system over a real
WebSocket. Before the story the world is set up as its ``world`` says; afterwards the world
is checked as its ``expect`` says: what the simulated station received, the registry, the
bill, the escalation.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import select

from assistant import service as assistant_service
from assistant.actions import safety
from assistant.actions.context import configure
from assistant.actions.models import LocalListPush
from assistant.models import Conversation, Escalation
from assistant.testing import StoryResult, StoryRunner, TestStory, load_stories
from billing_api import service as billing
from billing_api.models import ChargingSession, Driver, SessionStatus
from billing_api.tariffs import parse_tariff
from chargedesk.db import session_scope
from load_manager.models import ChargePlan
from station_api import service
from station_api.models import CommandLog, IdTag, MeterSample, Transaction
from station_api.simulator import Battery, SimulatedStation
from station_api.simulator.protocol import StationProtocol
from tests.billing_api.factories import make_driver, make_rated_session
from tests.station_api.ocpp_client import PASSWORD
from tests.station_api.test_central_system import eventually, register

STORIES = load_stories()
SITE, STATION, SECOND = "TST-HAMN", "SE-TST-HAMN-01", "SE-TST-HAMN-02"
ZONE = ZoneInfo("Europe/Stockholm")


def big_car() -> Battery:
    return Battery(capacity_kwh=75, soc=0.2, max_power_w=22_000)

NBSP = "\xa0"

# Night energy 22-06, day energy the rest of the day (the element without a window), a
# session fee and an idle fee after 45 minutes.
TARIFF: dict[str, Any] = {
    "id": "TST-DAYNIGHT", "currency": "SEK", "last_updated": "2026-01-01T00:00:00Z",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": Decimal("4.00"), "vat": 25,
                               "step_size": 1}]},
        {"price_components": [{"type": "ENERGY", "price": Decimal("1.68"), "vat": 25,
                               "step_size": 1}],
         "restrictions": {"start_time": "22:00", "end_time": "06:00"}},
        {"price_components": [{"type": "ENERGY", "price": Decimal("2.80"), "vat": 25,
                               "step_size": 1}]},
        {"price_components": [{"type": "PARKING_TIME", "price": Decimal("48.00"), "vat": 25,
                               "step_size": 60}],
         "restrictions": {"min_duration": 2700}},
    ],
}


# ---------------------------------------------------------------- the world


@dataclass
class World:
    server: Any
    engine: Any
    api: httpx.AsyncClient
    agent_api: httpx.AsyncClient
    drivers: dict[str, int]
    received: dict[str, list[tuple[str, dict[str, Any]]]]
    sims: dict[str, SimulatedStation] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def sim(self) -> SimulatedStation:
        return self.sims[STATION]

    async def start(self, station_id: str, connectors: int) -> SimulatedStation:
        sim = self.sims.get(station_id)
        if sim is None:
            sim = SimulatedStation(station_id, self.server.ws_url, password=PASSWORD,
                                   connectors=connectors, meter_interval=0.2, seed=7)
            self.sims[station_id] = sim
        await sim.start()
        await asyncio.wait_for(sim.booted.wait(), 10)
        await eventually(lambda: len(self.connectors(station_id)) == connectors + 1)
        return sim

    def connectors(self, station_id: str) -> dict[int, str]:
        with session_scope(self.engine) as session:
            return {c.connector_id: c.status
                    for c in service.list_connectors(session, station_ids=[station_id])}

    async def on_server(self, coroutine: Awaitable[Any]) -> Any:
        """Run on the server's event loop, where the stations' connections live."""
        loop = self.server.server.servers[0].get_loop()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    def received_calls(self, station_id: str, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.received[station_id] if name == action]

    def commands(self, action: str) -> list[CommandLog]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(CommandLog).where(CommandLog.action == action)
                                     .order_by(CommandLog.id)).all())


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every CALL a simulated station receives from the central system, as (action,
    payload), read off the WebSocket at the station's end."""
    calls: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    original = StationProtocol.route_message

    async def recording(self: StationProtocol, raw_msg: str) -> None:
        try:
            frame = json.loads(raw_msg)
        except ValueError:
            frame = None
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2:
            calls[self.station.station_id].append((frame[2], frame[3]))
        await original(self, raw_msg)

    monkeypatch.setattr(StationProtocol, "route_message", recording)
    return calls


@pytest.fixture
async def world(server: Any, engine: Any, nlu: Any, operator_key: str, agent_key: str,
                received: dict[str, list[tuple[str, dict[str, Any]]]]
                ) -> AsyncIterator[World]:
    configure(server.runtime)
    safety.LIMITS.reset()
    with session_scope(engine) as session:
        service.create_site(session, site_id=SITE, name="Testhamnen",
                            address="Hamngatan 1, 411 01 Göteborg", time_zone=str(ZONE))
    for station_id in (STATION, SECOND):
        register(engine, station_id)
        with session_scope(engine) as session:
            service.move_station(session, station_id=station_id, site_id=SITE)
    with session_scope(engine) as session:
        billing.import_tariff(session, tariff=parse_tariff(TARIFF), created_by="test",
                              valid_from=datetime(2026, 1, 1, tzinfo=UTC))
        billing.assign_tariff(session, tariff_id=TARIFF["id"], created_by="test",
                              site_id=SITE, valid_from=datetime(2026, 1, 1, tzinfo=UTC))
        anna = make_driver(session, name="Anna Berg", email="anna@example.se",
                           id_tags=("RFID-ANNA",))
        erik = make_driver(session, name="Erik Lund", email="erik@example.se",
                           id_tags=("RFID-ERIK",))
        drivers = {"anna": anna.id or 0, "erik": erik.id or 0}
    async with (httpx.AsyncClient(base_url=server.base_url, timeout=30, headers={
                    "Authorization": f"Bearer {operator_key}"}) as api,
                httpx.AsyncClient(base_url=server.base_url, timeout=30, headers={
                    "Authorization": f"Bearer {agent_key}"}) as agent_api):
        world = World(server, engine, api, agent_api, drivers, received)
        await world.start(STATION, 2)
        try:
            yield world
        finally:
            for sim in world.sims.values():
                await sim.stop()
            safety.LIMITS.reset()


async def _nothing(world: World) -> None:
    return None


async def _anna_finished_on_connector_2(world: World) -> None:
    tx = await world.sim.plug_in(2, "RFID-ANNA")
    assert tx is not None
    await world.sim.stop_charging(2)  # the session ended; the cable stays locked
    await eventually(lambda: _transaction(world, tx).stop_timestamp is not None)
    world.facts["tx"] = tx


async def _anna_charging_on_connector_1(world: World) -> None:
    tx = await world.sim.plug_in(1, "RFID-ANNA", battery=big_car())
    assert tx is not None
    await eventually(lambda: _sample(world, tx, "Power.Active.Import") is not None)
    world.facts["tx"] = tx


async def _anna_charging_at_a_managed_site(world: World) -> None:
    answer = await world.api.put(f"/api/v1/load/sites/{SITE}/grid",
                                 json={"phase_limit_a": 32, "policy": "equal_share"})
    assert answer.status_code == 200, answer.text
    await _anna_charging_on_connector_1(world)
    await eventually(lambda: bool(world.received_calls(STATION, "SetChargingProfile")))


async def _anna_has_charged(world: World) -> None:
    """An older session, rated, then a real one at the station, and Erik's after it."""
    with session_scope(world.engine) as session:
        anna = session.get(Driver, world.drivers["anna"])
        old = make_rated_session(session, driver=anna, station_id=STATION,
                                 start=datetime.now(UTC) - timedelta(days=40))
        world.facts["old_session"] = old.id
    sim = world.sim
    tx = await sim.plug_in(1, "RFID-ANNA", battery=big_car())
    assert tx is not None
    await eventually(lambda: sim.connectors[1].energy_wh > 5)
    await sim.stop_charging(1)
    erik = await sim.plug_in(2, "RFID-ERIK", battery=big_car())
    assert erik is not None
    await sim.stop_charging(2)
    await eventually(lambda: all(_rated(world, t) is not None for t in (tx, erik)))
    world.facts["tx"] = tx


async def _second_station_offline_with_anna_listed(world: World) -> None:
    """SE-TST-HAMN-02 got a local list from the operator with Anna's card on it, then went
    offline."""
    second = await world.start(SECOND, 1)
    central = world.server.runtime.central
    full = await world.on_server(central.send_command(
        SECOND, "SendLocalList",
        {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
            {"idTag": "RFID-ANNA", "idTagInfo": {"status": "Accepted"}},
            {"idTag": "RFID-ERIK", "idTagInfo": {"status": "Accepted"}}]},
        requested_by="operator:test", reason="install the local list"))
    assert str(full.outcome) == "accepted"
    assert second.local_list["RFID-ANNA"]["status"] == "Accepted"
    await second.stop()
    await eventually(lambda: not central.is_online(SECOND))


WORLDS: dict[str, Callable[[World], Awaitable[None]]] = {
    "nothing": _nothing,
    "anna_finished_on_connector_2": _anna_finished_on_connector_2,
    "anna_charging_on_connector_1": _anna_charging_on_connector_1,
    "anna_charging_at_a_managed_site": _anna_charging_at_a_managed_site,
    "anna_has_charged": _anna_has_charged,
    "second_station_offline_with_anna_listed": _second_station_offline_with_anna_listed,
}


def _transaction(world: World, tx: int) -> Transaction:
    with session_scope(world.engine) as session:
        row = session.get(Transaction, tx)
        assert row is not None
        return row


def _sample(world: World, tx: int, measurand: str) -> MeterSample | None:
    with session_scope(world.engine) as session:
        return session.exec(select(MeterSample).where(
            MeterSample.transaction_id == tx, MeterSample.measurand == measurand,
            MeterSample.phase == "")).first()


def _rated(world: World, tx: int) -> ChargingSession | None:
    with session_scope(world.engine) as session:
        return session.exec(select(ChargingSession).where(
            ChargingSession.transaction_id == tx,
            ChargingSession.status == SessionStatus.rated)).first()


def _escalations(world: World, result: StoryResult) -> list[Escalation]:
    with session_scope(world.engine) as session:
        return list(session.exec(select(Escalation).where(
            Escalation.conversation_id == result.conversation_id)).all())


def _conversation(world: World, result: StoryResult) -> Conversation:
    with session_scope(world.engine) as session:
        row = session.get(Conversation, result.conversation_id)
        assert row is not None
        return row


def _language(story: TestStory) -> str:
    return "en" if story.name.endswith("(en)") else "sv"


# ---------------------------------------------------------------- what to expect


def _kr(amount: Decimal, lang: str) -> str:
    """Money as the assistant writes it: 3,50 kr / SEK 3.50."""
    text = f"{amount.quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"
    if lang == "sv":
        return text.replace(",", " ").replace(".", ",") + f"{NBSP}kr"
    return f"SEK{NBSP}{text}"


def _num(value: Decimal, lang: str, digits: int, rounding: str = ROUND_HALF_UP) -> str:
    text = f"{value.quantize(Decimal(1).scaleb(-digits), rounding).normalize():f}"
    return text.replace(".", ",") if lang == "sv" else text


def _nums(value: Decimal, digits: int) -> set[str]:
    """A reading as it may be shown, half up or half even (a tie may go either way)."""
    return {_num(value, "sv", digits, rounding) for rounding in (ROUND_HALF_UP,
                                                                   ROUND_HALF_EVEN)}


async def _unlocked_connector_2(world: World, story: TestStory, result: StoryResult) -> None:
    # The station itself received exactly one unlock, for the connector of Anna's session.
    await eventually(lambda: bool(world.received_calls(STATION, "UnlockConnector")))
    assert world.received_calls(STATION, "UnlockConnector") == [{"connectorId": 2}]
    [unlock] = world.commands("UnlockConnector")
    assert (unlock.outcome, unlock.response) == ("accepted", {"status": "Unlocked"})
    assert unlock.requested_by == f"driver:{world.drivers['anna']}"
    connector = "Uttag 2" if _language(story) == "sv" else "Connector 2"
    assert connector in result.turns[-1].texts[0] and STATION in result.turns[-1].texts[0]


async def _refused_not_yours(world: World, story: TestStory, result: StoryResult) -> None:
    assert world.received_calls(STATION, "UnlockConnector") == []
    assert world.commands("UnlockConnector") == []
    assert world.sim.connectors[1].session is not None  # Anna still charges
    [escalation] = _escalations(world, result)
    assert (escalation.reason, escalation.intent) == ("safety", "cable_stuck")
    assert escalation.slots["driver_id"] == world.drivers["erik"]
    assert escalation.slots["station_id"] == STATION
    assert _conversation(world, result).paused


async def _card_blocked_everywhere(world: World, story: TestStory, result: StoryResult
                                   ) -> None:
    with session_scope(world.engine) as session:
        tag = session.get(IdTag, "RFID-ANNA")
        assert tag is not None and tag.status == "Blocked"
    sim = world.sim
    # The connected station's local list says Blocked, and its next Authorize is refused.
    assert sim.local_list["RFID-ANNA"]["status"] == "Blocked"
    [push] = world.received_calls(STATION, "SendLocalList")
    assert (push["updateType"], push["listVersion"]) == ("Differential", 1)
    assert await sim.plug_in(1, "RFID-ANNA") is None
    assert sim.auth_cache["RFID-ANNA"]["status"] == "Blocked"
    assert world.sims[SECOND].local_list["RFID-ANNA"]["status"] == "Accepted"  # offline still

    # The offline station gets the block as soon as it connects again...
    second = await world.start(SECOND, 1)
    await eventually(lambda: second.local_list["RFID-ANNA"]["status"] == "Blocked")
    assert second.local_list["RFID-ERIK"]["status"] == "Accepted"  # a differential update
    assert second.local_list_version == 2

    def owed() -> list[tuple[str, str, bool]]:
        with session_scope(world.engine) as session:
            rows = session.exec(select(LocalListPush).order_by(LocalListPush.station_id)).all()
            return [(p.station_id, p.id_tag, p.delivered_at is not None) for p in rows]

    await eventually(lambda: owed() == [(STATION, "RFID-ANNA", True),
                                        (SECOND, "RFID-ANNA", True)])
    pushes = [c for c in world.commands("SendLocalList") if c.station_id == SECOND]
    assert pushes[-1].requested_by == f"driver:{world.drivers['anna']}"
    # ...so that offline again, it refuses the card from its own list.
    await second.drop_connection(offline_seconds=60)
    assert await asyncio.wait_for(second.plug_in(1, "RFID-ANNA"), 5) is None

    handed = any("action_human_handoff" in turn.actions for turn in result.turns)
    assert [e.reason for e in _escalations(world, result)] == (["asked"] if handed else [])


async def _last_session_explained(world: World, story: TestStory, result: StoryResult
                                  ) -> None:
    lang = _language(story)
    row = _rated(world, world.facts["tx"])
    assert row is not None and row.driver_id == world.drivers["anna"]
    cdr = json.loads(row.cdr or "{}", parse_float=Decimal, parse_int=Decimal)
    tx = _transaction(world, world.facts["tx"])
    windows = {1: "22\u201306", 2: "06\u201322"}  # the tariff's energy elements
    names = {"sv": {"FLAT": "Startavgift", "ENERGY": "Energi"},
             "en": {"FLAT": "Session fee", "ENERGY": "Energy"}}[lang]
    units = {"sv": {"session": "start", "kWh": "kWh"}, "en": {"session": "session",
                                                          "kWh": "kWh"}}[lang]
    expected = []
    for line in cdr["cost_breakdown"]:
        # The rating's arithmetic: billed quantity times the unit price, to the öre.
        assert line["amount"] == (line["quantity"] * line["unit_price"]).quantize(
            Decimal("0.01"), ROUND_HALF_UP)
        window = windows.get(int(line["tariff_element"])) if line["dimension"] == "ENERGY" \
            else None
        expected.append(
            f"{names[line['dimension']]}{' ' + window if window else ''}: "
            f"{_num(line['quantity'], lang, 3)} {units[line['unit']]} \u00d7 "
            f"{_kr(line['unit_price'], lang)} = {_kr(line['amount'], lang)}")
    energy = [line for line in cdr["cost_breakdown"] if line["dimension"] == "ENERGY"]
    assert sum(line["quantity"] for line in energy) == Decimal(
        (tx.meter_stop_wh or 0) - tx.meter_start_wh) / 1000  # what the station metered
    total_excl = sum(line["amount"] for line in cdr["cost_breakdown"])
    assert total_excl == Decimal(row.total_excl_vat_ore or 0) / 100
    total = Decimal(row.total_incl_vat_ore or 0) / 100
    assert total == (total_excl * Decimal("1.25")).quantize(Decimal("0.01"), ROUND_HALF_UP)

    [text] = result.turns[-1].texts
    lines = text.split("\n")
    assert lines[1:1 + len(expected)] == expected, text
    assert lines[-1].endswith(_kr(total, lang))
    assert STATION in lines[0]
    assert "20 kWh" not in text  # not the older session


async def _stopped(world: World, story: TestStory, result: StoryResult) -> None:
    tx = world.facts["tx"]
    assert world.received_calls(STATION, "RemoteStopTransaction") == [{"transactionId": tx}]
    await eventually(lambda: world.sim.connectors[1].session is None)
    await eventually(lambda: _transaction(world, tx).stop_timestamp is not None)
    assert _transaction(world, tx).stop_reason == "Remote"


async def _status_told(world: World, story: TestStory, result: StoryResult) -> None:
    tx = world.facts["tx"]
    [text] = result.turns[-1].texts
    found = re.search(r"på (\S+), uttag (\d): ([\d,]+) kWh hittills, ([\d,]+) kW just nu", text)
    assert found is not None, text
    assert (found[1], found[2]) == (STATION, "1")
    with session_scope(world.engine) as session:
        samples = session.exec(select(MeterSample).where(
            MeterSample.transaction_id == tx, MeterSample.phase == "")).all()
    start = _transaction(world, tx).meter_start_wh
    energies = {shown for s in samples if s.measurand == "Energy.Active.Import.Register"
                and s.value is not None for shown in _nums((s.value - start) / 1000, 2)}
    powers = {shown for s in samples if s.measurand == "Power.Active.Import"
              and s.value is not None for shown in _nums(s.value / 1000, 1)}
    assert found[3] in energies and found[4] in powers  # a reading the station sent
    assert world.received_calls(STATION, "RemoteStopTransaction") == []


async def _planned(world: World, story: TestStory, result: StoryResult) -> None:
    tx = world.facts["tx"]
    with session_scope(world.engine) as session:
        [plan] = session.exec(select(ChargePlan).where(ChargePlan.transaction_id == tx)).all()
    assert (plan.status, plan.energy_wh) == ("active", 20_000)
    assert plan.requested_by == f"driver:{world.drivers['anna']}"
    departure = plan.departure_at.astimezone(ZONE)
    assert departure.time() == time(7, 0)
    assert timedelta(0) < plan.departure_at - datetime.now(UTC) <= timedelta(days=1)
    [text] = result.turns[-1].texts
    assert plan.schedule["explanation"]["sv"] in text
    # The plan reached the station as its session's charging profile.
    profiles = [p["csChargingProfiles"] for p in world.received_calls(STATION,
                                                                      "SetChargingProfile")]
    assert any(p["chargingProfilePurpose"] == "TxProfile" and p.get("transactionId") == tx
               for p in profiles)


async def _prices_listed(world: World, story: TestStory, result: StoryResult) -> None:
    lang = _language(story)
    [text] = result.turns[-1].texts
    words = {"sv": ("Startavgift", "Energi", "Parkering efter 45 min", "start", "gäller nu"),
             "en": ("Session fee", "Energy", "Parking after 45 min", "session",
                    "applies now")}[lang]
    fee, energy, parking, per_session, now_word = words

    def lines(night: bool) -> list[str]:
        mark = f" ({now_word})"
        return [f"{fee}: {_kr(Decimal('5.00'), lang)}/{per_session}",
                f"{energy} 22\u201306: {_kr(Decimal('2.10'), lang)}/kWh" + (mark if night else ""),
                f"{energy} 06\u201322: {_kr(Decimal('3.50'), lang)}/kWh"
                + ("" if night else mark),
                f"{parking}: {_kr(Decimal('60.00'), lang)}/h"]

    shown = text.split("\n")[1:]
    hour = datetime.now(ZONE).hour
    assert shown in (lines(True), lines(False)), text
    if hour not in (5, 6, 21, 22):  # away from the windows' edges, it is the one for now
        assert shown == lines(hour >= 22 or hour < 6), text


async def _station_flagged(world: World, story: TestStory, result: StoryResult) -> None:
    [escalation] = _escalations(world, result)
    assert (escalation.reason, escalation.intent) == ("damage", "report_station_problem")
    answer = await world.agent_api.get("/api/v1/assistant/station-flags")
    assert answer.status_code == 200, answer.text
    [flag] = answer.json()
    assert (flag["station_id"], flag["status"], flag["reports"], flag["reported_by"]) == (
        STATION, "open", 1, "anonymous")
    assert flag["description"] == result.turns[0].text
    assert flag["conversation_id"] == escalation.conversation_id
    refused = await world.agent_api.post(f"/api/v1/assistant/station-flags/{flag['id']}/resolve")
    assert refused.status_code == 403
    resolved = await world.api.post(f"/api/v1/assistant/station-flags/{flag['id']}/resolve")
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["resolved_by"].startswith("operator:")
    assert (await world.api.get("/api/v1/assistant/station-flags")).json() == []


async def _handed_off(world: World, story: TestStory, result: StoryResult) -> None:
    [escalation] = _escalations(world, result)
    assert escalation.reason == "asked"
    assert escalation.driver_context["profile"]["name"] == "Anna Berg"
    said = [line["text"] for line in escalation.transcript if line["from"] == "driver"]
    assert said == [result.turns[0].text]
    assert result.turns[-1].messages == []  # paused: the bot leaves it to a person
    assert _conversation(world, result).paused


EXPECT: dict[str, Callable[[World, TestStory, StoryResult], Awaitable[None]]] = {
    "unlocked_connector_2": _unlocked_connector_2,
    "refused_not_yours": _refused_not_yours,
    "card_blocked_everywhere": _card_blocked_everywhere,
    "last_session_explained": _last_session_explained,
    "stopped": _stopped,
    "status_told": _status_told,
    "planned": _planned,
    "prices_listed": _prices_listed,
    "station_flagged": _station_flagged,
    "handed_off": _handed_off,
}


def test_every_story_has_a_world_and_a_check() -> None:
    assert len(STORIES) >= 12
    for story in STORIES:
        assert story.metadata.get("world") in WORLDS, story.name
        assert story.metadata.get("expect") in EXPECT, story.name
        assert story.metadata.get("driver") in ("anna", "erik", "none"), story.name


def _slug(story: TestStory) -> str:
    return re.sub(r"[^a-z0-9]+", "-", story.name.lower()).strip("-")


@pytest.mark.parametrize("story", STORIES, ids=[_slug(s) for s in STORIES])
async def test_story(story: TestStory, world: World) -> None:
    await WORLDS[story.metadata["world"]](world)
    who = story.metadata["driver"]
    identity = None if who == "none" else assistant_service.Identity(
        driver_id=world.drivers[who], verified=True, via="web")
    runner = StoryRunner(world.server.runtime, submit=world.on_server)
    result = await runner.play(story, sender=f"story-{_slug(story)}", identity=identity)
    assert result.ok, result.report()
    await EXPECT[story.metadata["expect"]](world, story, result)
    # A conversation is paused exactly when it was handed to a person.
    assert _conversation(world, result).paused == bool(_escalations(world, result))
