"""Real events from stations over the OCPP WebSocket become the exact messages drivers get.

A scripted station (tests/station_api/ocpp_client.py) reports sessions with exact meter
readings and times, so amounts are known to the öre; the simulated station
(station_api.simulator) plays the car: a full battery pausing, a fault, a cable left in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ocpp.v16 import call
from sqlmodel import select

from assistant.notifications.models import OutboxStatus
from billing_api import payments
from billing_api.models import ChargingSession, Driver, Invoice, PaymentMethod
from chargedesk.db import session_scope
from chargedesk.types import utcnow
from station_api.models import Connector
from station_api.simulator import Battery, SimulatedStation
from tests.billing_api.factories import make_invoice
from tests.billing_api.test_payments import active_autogiro_driver, fail_once
from tests.notifications.conftest import ANNA_PHONE, SAM_PHONE, SCRIPTED, STATION, World
from tests.station_api.ocpp_client import PASSWORD, station
from tests.station_api.test_central_system import eventually

START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)  # 09:00 in Stockholm
ZONE = ZoneInfo("Europe/Stockholm")
MONTHS = ("januari", "februari", "mars", "april", "maj", "juni", "juli", "augusti",
          "september", "oktober", "november", "december")


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def start(cp: Any, tag: str, *, at: datetime = START, connector: int = 1) -> int:
    auth = await cp.call(call.Authorize(id_tag=tag))
    assert auth.id_tag_info["status"] == "Accepted", auth.id_tag_info
    started = await cp.call(call.StartTransaction(
        connector_id=connector, id_tag=tag, meter_start=1000, timestamp=iso(at)))
    return int(started.transaction_id)


async def stop(cp: Any, tx: int, wh: int, *, at: datetime = START + timedelta(hours=1)) -> None:
    await cp.call(call.StopTransaction(meter_stop=1000 + wh, timestamp=iso(at),
                                       transaction_id=tx, reason="EVDisconnected"))


async def simulated(world: World) -> SimulatedStation:
    sim = SimulatedStation(STATION, world.server.ws_url, password=PASSWORD, connectors=2,
                           meter_interval=0.2, seed=7)
    await sim.start()
    await eventually(sim.booted.is_set, timeout=10)
    return sim


def charging_session(world: World, tx: int) -> dict[str, Any] | None:
    with session_scope(world.engine) as session:
        row = session.exec(select(ChargingSession)
                           .where(ChargingSession.transaction_id == tx)).first()
        return None if row is None else {"total_incl_vat_ore": row.total_incl_vat_ore}


async def test_a_session_is_announced_when_it_starts_and_when_it_ends_with_its_cost(
        world: World) -> None:
    async with station(world.server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        tx = await start(cp, "RFID-ANNA")
        await eventually(lambda: len(world.texts(ANNA_PHONE)) == 1)
        await stop(cp, tx, 20_000)
    await eventually(lambda: len(world.texts(ANNA_PHONE)) == 2)
    # 5.00 + 20 kWh x 3.20 = 69.00, 86.25 with VAT.
    assert world.sent == [
        ("sms", ANNA_PHONE, "Laddningen har startat vid SE-TST-HAMN-02 uttag 1 (Testhamnen) "
                            "kl. 09:00. Vi hör av oss när den är klar."),
        ("sms", ANNA_PHONE, "Laddningen vid SE-TST-HAMN-02 uttag 1 (Testhamnen) är klar: "
                            "20,00 kWh för 86,25 kr."),
    ]
    await world.settled()
    started, finished = world.rows("anna", "session_started"), world.rows(
        "anna", "session_finished")
    assert [(r.subject, r.status, r.attempts, r.channel, r.address) for r in started] == [
        (str(tx), OutboxStatus.sent, 1, "sms", ANNA_PHONE)]
    assert [(r.subject, r.status) for r in finished] == [(str(tx), OutboxStatus.sent)]
    # The car left with the cable (EVDisconnected): no idle warning to wait for.
    assert world.rows("anna", "idle_warning") == []


async def test_a_repeated_start_and_a_rerated_session_are_told_once(world: World) -> None:
    async with station(world.server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        tx = await start(cp, "RFID-SAM")
        # The station did not hear the answer and sends the same StartTransaction again.
        again = await cp.call(call.StartTransaction(
            connector_id=1, id_tag="RFID-SAM", meter_start=1000, timestamp=iso(START)))
        assert again.transaction_id == tx
        await eventually(lambda: len(world.texts(SAM_PHONE)) == 1)
        await stop(cp, tx, 10_000)
        await eventually(lambda: len(world.rows("sam", "session_finished")) == 1)
        # A late corrected reading rates the session again.
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
            "timestamp": iso(START + timedelta(hours=1)), "sampledValue": [
                {"value": str(1000 + 12_000), "measurand": "Energy.Active.Import.Register",
                 "unit": "Wh", "context": "Transaction.End"}]}]))
        await eventually(lambda: (charging_session(world, tx) or {}).get(
            "total_incl_vat_ore") == (500 + 12 * 320) * 125 // 100)
    await eventually(lambda: len(world.texts(SAM_PHONE)) == 2)
    await world.deliver(utcnow())
    assert world.texts(SAM_PHONE) == [
        "Charging started at SE-TST-HAMN-02 connector 1 (Testhamnen) at 09:00. We will let "
        "you know when it has finished.",
        "Charging at SE-TST-HAMN-02 connector 1 (Testhamnen) has finished: 10.00 kWh for "
        "SEK 46.25.",
    ]
    assert len(world.rows("sam")) == 2


async def test_a_prepaid_driver_hears_of_a_low_balance(world: World) -> None:
    with session_scope(world.engine) as session:
        driver = session.get(Driver, world.drivers["anna"])
        assert driver is not None
        driver.payment_method = PaymentMethod.prepaid
        session.add(driver)
    top_up = await world.api.post(f"/api/v1/billing/drivers/{world.drivers['anna']}/top-ups",
                                  json={"amount": "150.00"},
                                  headers={"Idempotency-Key": "swish-0001"})
    assert top_up.status_code == 201, top_up.text
    world.prefer("anna", muted=["session_started", "session_finished"])
    async with station(world.server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        tx = await start(cp, "RFID-ANNA")
        await stop(cp, tx, 20_000)
    await eventually(lambda: len(world.texts(ANNA_PHONE)) == 1)
    assert world.texts(ANNA_PHONE) == [
        "Ditt förbetalda saldo är 63,75 kr, under 100,00 kr. Fyll på för att kunna "
        "fortsätta ladda."]
    await world.settled()
    (low,) = world.rows("anna", "low_balance")
    assert low.subject.startswith("entry:") and low.status is OutboxStatus.sent
    muted = {(r.kind, r.status, r.note) for r in world.rows("anna") if r.kind != "low_balance"}
    assert muted == {("session_started", OutboxStatus.suppressed, "kind muted"),
                     ("session_finished", OutboxStatus.suppressed, "kind muted")}


async def test_a_car_that_pauses_is_told_after_a_while_with_the_idle_fee(world: World) -> None:
    sim = await simulated(world)
    try:
        tx = await sim.plug_in(1, "RFID-ANNA", battery=Battery(capacity_kwh=40, soc=1.0))
        assert tx is not None
        await eventually(lambda: len(world.rows("anna", "session_suspended")) == 1)
        await eventually(lambda: charging_session(world, tx) is not None)
        await eventually(lambda: len(world.texts(ANNA_PHONE)) == 1)  # the start
        await world.deliver(utcnow() + timedelta(minutes=4))
        assert len(world.texts(ANNA_PHONE)) == 1  # many cars pause a moment: not yet
        await world.deliver(utcnow() + timedelta(minutes=6))
        assert world.texts(ANNA_PHONE)[1:] == [
            "Bilen har pausat laddningen vid SE-TST-HAMN-01 uttag 1 (Testhamnen): batteriet "
            "kan vara fullt, eller så har laddningen stoppats i bilen. Tid ansluten utan "
            "laddning kostar 1,00 kr per minut från 45 minuter efter start."]
    finally:
        await sim.stop()


async def test_a_fault_during_a_session_is_told_at_once_even_in_quiet_hours(
        world: World) -> None:
    world.prefer("sam", quiet_hours=(datetime.min.time(), datetime.max.time().replace(
        microsecond=0)))  # quiet all day
    sim = await simulated(world)
    try:
        tx = await sim.plug_in(2, "RFID-SAM")
        assert tx is not None
        # Quiet hours: that it started waits for the morning.
        await eventually(lambda: [(r.status, r.note) for r in world.rows(
            "sam", "session_started")] == [(OutboxStatus.pending, "quiet hours")])
        await sim.set_fault(2, "GroundFailure")
        await eventually(lambda: len(world.texts(SAM_PHONE)) == 1)
        assert world.texts(SAM_PHONE) == [
            "The charger SE-TST-HAMN-01 connector 2 (Testhamnen) has reported a fault "
            "(GroundFailure) and is not charging your car. Reply to this message or contact "
            "us if you need help."]
        # The fault ended the session (StopTransaction, reason Other): the cable is still in,
        # but a faulted connector is no parking spot to warn about.
        (idle,) = world.rows("sam", "idle_warning")
        await world.deliver(utcnow() + timedelta(minutes=16))
        idle = world.rows("sam", "idle_warning")[0]
        assert (idle.status, idle.note) == (OutboxStatus.obsolete, "the connector is Faulted now")
        assert len(world.texts(SAM_PHONE)) == 1
    finally:
        await sim.stop()


async def test_a_cable_left_in_after_the_session_gets_an_idle_warning(world: World) -> None:
    sim = await simulated(world)
    try:
        first = await sim.plug_in(1, "RFID-ANNA")
        second = await sim.plug_in(2, "RFID-SAM")
        assert first is not None and second is not None
        await sim.stop_charging(1)  # stopped with the card: the car stays plugged in
        await sim.stop_charging(2)
        await eventually(lambda: len(world.rows(kind="idle_warning")) == 2)
        await sim.unplug(2)  # Sam drives off
        await eventually(lambda: connector_status(world, 2) == "Available")  # as the server saw
        await eventually(lambda: [r.status for r in world.rows(kind="session_finished")]
                         == [OutboxStatus.sent] * 2)
        before = len(world.texts(ANNA_PHONE))
        await world.deliver(utcnow() + timedelta(minutes=14))
        assert len(world.texts(ANNA_PHONE)) == before
        await world.deliver(utcnow() + timedelta(minutes=16))
        assert world.texts(ANNA_PHONE)[before:] == [
            "Laddningen vid SE-TST-HAMN-01 uttag 1 (Testhamnen) är avslutad men bilen står "
            "kvar ansluten. Flytta gärna bilen så att nästa förare kan ladda. Tid ansluten "
            "utan laddning kostar 1,00 kr per minut från 45 minuter efter start."]
        (sams,) = world.rows("sam", "idle_warning")
        assert (sams.status, sams.note) == (OutboxStatus.obsolete,
                                            "the connector is Available now")
    finally:
        await sim.stop()


def connector_status(world: World, connector_id: int) -> str | None:
    with session_scope(world.engine) as session:
        live = session.get(Connector, (STATION, connector_id))
        return None if live is None else str(live.status)


def local_day(value: str) -> str:
    day = datetime.fromisoformat(value).date()
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


async def test_an_issued_invoice_is_announced_with_how_to_pay(world: World) -> None:
    world.prefer("anna", muted=["session_started"])
    async with station(world.server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        tx = await start(cp, "RFID-ANNA")
        await stop(cp, tx, 20_000)
    await eventually(lambda: len(world.texts(ANNA_PHONE)) == 1)
    issued = await world.api.post(f"/api/v1/billing/drivers/{world.drivers['anna']}/invoices")
    assert issued.status_code == 201, issued.text
    invoice = issued.json()
    assert await world.scan() == 1
    assert await world.scan() == 0  # read once
    await eventually(lambda: len(world.texts(ANNA_PHONE)) == 2)
    number = f"{invoice['series']}{invoice['number']:07d}"
    assert world.texts(ANNA_PHONE)[1] == (
        f"Faktura {number} på 86,25 kr är utfärdad. Betala senast "
        f"{local_day(invoice['due_date'])} med OCR-nummer {invoice['ocr']}.")


async def test_a_failed_direct_debit_tells_the_driver_where_to_pay(world: World) -> None:
    with session_scope(world.engine) as session:
        driver, mandate = active_autogiro_driver(session, world.runtime.settings,
                                                 name="Eva Ek", email="eva@example.se")
        world.drivers["eva"] = driver.id or 0
        invoice = make_invoice(session, driver=driver, total_ore=125_000)
        payments.create_payment(session, invoice=invoice)
        number, ocr = invoice.display_number, invoice.ocr
    world.prefer("eva", channel="email", quiet_hours=None)
    assert await world.scan() == 1  # the invoice
    with session_scope(world.engine) as session:
        invoice = session.get(Invoice, invoice.id)
        fail_once(session, world.runtime.settings, mandate, invoice, "1",
                  datetime(2026, 11, 15).date())
    assert await world.scan() == 1  # the failed debit
    await eventually(lambda: len(world.texts("eva@example.se")) == 2)
    # The invoice's message may still be on its way when this one goes: any order.
    assert ("email", "eva@example.se", (
        f"Vi kunde inte dra 1 250,00 kr för faktura {number} från ditt konto. Betala gärna "
        f"själv till bankgiro 5050-1055 med referens {ocr}.")) in world.sent
    (failed,) = world.rows("eva", "debit_failed")
    assert failed.subject == f"{invoice.id}:1"


async def test_a_charging_plan_is_confirmed_changed_and_cancelled(world: World) -> None:
    world.prefer("sam", muted=["session_started"])
    departure = (utcnow() + timedelta(hours=10)).replace(minute=0, second=0, microsecond=0)
    local = departure.astimezone(ZONE)
    when = f"{local:%H:%M} on {local.day} {MONTHS[local.month - 1].capitalize()}"
    async with station(world.server.ws_url, SCRIPTED, PASSWORD) as cp:
        await cp.boot()
        tx = await start(cp, "RFID-SAM", at=utcnow().replace(microsecond=0))
        for told, energy in enumerate((20_000, 30_000), start=1):
            made = await world.api.post("/api/v1/load/plans", json={
                "transaction_id": tx, "departure_at": departure.isoformat(),
                "energy_wh": energy})
            assert made.status_code == 201, made.text
            await eventually(lambda told=told: len(world.texts(SAM_PHONE)) == told)
        cancelled = await world.api.delete(f"/api/v1/load/plans/{tx}")
        assert cancelled.status_code == 200, cancelled.text
        await eventually(lambda: len(world.texts(SAM_PHONE)) == 3)
    place = "SE-TST-HAMN-02 connector 1 (Testhamnen)"
    assert world.texts(SAM_PHONE) == [
        f"Your charging plan is confirmed: 20.00 kWh by {when} at {place}.",
        f"Your charging plan has changed: 30.00 kWh by {when} at {place}.",
        f"Your charging plan at {place} has been cancelled. The car now charges without a "
        "plan.",
    ]
