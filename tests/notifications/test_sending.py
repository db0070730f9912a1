"""The sender's decisions: retries with backoff, quiet hours, opt-outs, deduplication, and
channels without an address. Rows are written as the subscribers write them, due at a fixed
moment far from the real clock, and the sender's pass is run for chosen moments."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from websockets.asyncio.client import connect

from assistant.channels.twilio.sms import set_opt_out
from assistant.models import Conversation
from assistant.notifications import service
from assistant.notifications.models import NotificationKind, OutboxStatus
from chargedesk.db import session_scope
from tests.notifications.conftest import ANNA_PHONE, SAM_PHONE, World

ZONE = ZoneInfo("Europe/Stockholm")
# Noon in Stockholm on a day the real clock is far from: nothing else touches these rows.
T0 = datetime(2031, 3, 4, 12, 0, tzinfo=ZONE).astimezone(UTC)
LOW = {"balance_ore": 6375, "threshold_ore": 10_000, "currency": "SEK"}
LOW_SV = ("Ditt förbetalda saldo är 63,75 kr, under 100,00 kr. Fyll på för att kunna "
          "fortsätta ladda.")
FAULT = {"place": {"station": "SE-TST-HAMN-01", "connector": 1, "site": "Testhamnen"},
         "error_code": "GroundFailure", "transaction_id": 1}


def enqueue(world: World, driver: str, kind: NotificationKind, subject: str,
            data: dict[str, Any], due: datetime = T0) -> int | None:
    with session_scope(world.engine) as session:
        return service.enqueue(session, driver_id=world.drivers[driver], kind=kind,
                               subject=subject, data=data, due=due, now=due)


def row(world: World, outbox_id: int) -> Any:
    return next(r for r in world.rows() if r.id == outbox_id)


async def test_the_same_fact_twice_is_one_notification(world: World) -> None:
    first = enqueue(world, "anna", NotificationKind.low_balance, "entry:7", LOW)
    again = enqueue(world, "anna", NotificationKind.low_balance, "entry:7", LOW)
    other = enqueue(world, "sam", NotificationKind.low_balance, "entry:7", LOW)
    assert first is not None and again is None and other not in (None, first)
    assert await world.deliver(T0) == 2
    assert await world.deliver(T0 + timedelta(hours=1)) == 0
    assert world.texts(ANNA_PHONE) == [LOW_SV]
    assert world.texts(SAM_PHONE) == [
        "Your prepaid balance is SEK 63.75, below SEK 100.00. Top up to keep charging."]


async def test_a_failed_attempt_is_retried_with_backoff_until_it_goes(world: World) -> None:
    world.channels["sms"].failures = 2
    outbox_id = enqueue(world, "anna", NotificationKind.low_balance, "entry:1", LOW)
    assert outbox_id is not None
    assert await world.deliver(T0) == 1
    first = row(world, outbox_id)
    assert (first.status, first.attempts, first.next_attempt_at, first.note) == (
        OutboxStatus.retrying, 1, T0 + timedelta(seconds=30),
        "ConnectionError: gateway timeout")
    assert await world.deliver(T0 + timedelta(seconds=29)) == 0  # not due yet
    assert await world.deliver(T0 + timedelta(seconds=30)) == 1
    second = row(world, outbox_id)
    assert (second.status, second.attempts, second.next_attempt_at) == (
        OutboxStatus.retrying, 2, T0 + timedelta(seconds=30) + timedelta(minutes=2))
    assert await world.deliver(second.next_attempt_at) == 1
    sent = row(world, outbox_id)
    assert (sent.status, sent.attempts, sent.note, sent.sent_at) == (
        OutboxStatus.sent, 3, None, second.next_attempt_at)
    assert world.texts(ANNA_PHONE) == [LOW_SV] and world.channels["sms"].calls == 3


async def test_after_the_last_attempt_it_fails_and_an_operator_can_send_it_again(
        world: World) -> None:
    world.channels["sms"].failures = 5
    outbox_id = enqueue(world, "anna", NotificationKind.low_balance, "entry:2", LOW)
    at = T0
    for attempt in range(1, 6):
        assert await world.deliver(at) == 1
        current = row(world, outbox_id or 0)
        assert current.attempts == attempt
        at = current.next_attempt_at
    failed = row(world, outbox_id or 0)
    assert (failed.status, failed.note) == (OutboxStatus.failed,
                                            "ConnectionError: gateway timeout")
    assert await world.deliver(at + timedelta(days=1)) == 0
    assert world.texts() == []

    again = await world.api.post(f"/api/v1/notifications/outbox/{outbox_id}/retry")
    assert again.status_code == 200, again.text
    assert (again.json()["status"], again.json()["attempts"]) == ("pending", 0)
    twice = await world.api.post(f"/api/v1/notifications/outbox/{outbox_id}/retry")
    assert twice.status_code == 409
    await world.deliver(datetime.now(UTC))
    assert world.texts(ANNA_PHONE) == [LOW_SV]


async def test_quiet_hours_hold_messages_but_not_a_fault(world: World) -> None:
    world.prefer("anna", quiet_hours=(time(22, 0), time(7, 0)))
    night = datetime(2031, 3, 4, 23, 30, tzinfo=ZONE).astimezone(UTC)
    low = enqueue(world, "anna", NotificationKind.low_balance, "entry:3", LOW, due=night)
    fault = enqueue(world, "anna", NotificationKind.station_faulted, "1", FAULT, due=night)
    assert await world.deliver(night) == 1
    assert world.texts(ANNA_PHONE) == [
        "Laddaren SE-TST-HAMN-01 uttag 1 (Testhamnen) har rapporterat ett fel "
        "(GroundFailure) och laddar inte din bil. Svara på det här meddelandet eller kontakta "
        "oss om du behöver hjälp."]
    held = row(world, low or 0)
    morning = datetime(2031, 3, 5, 7, 0, tzinfo=ZONE).astimezone(UTC)
    assert (held.status, held.attempts, held.next_attempt_at, held.note) == (
        OutboxStatus.pending, 0, morning, "quiet hours")
    assert row(world, fault or 0).status is OutboxStatus.sent
    assert await world.deliver(morning - timedelta(seconds=1)) == 0
    assert await world.deliver(morning) == 1
    assert world.texts(ANNA_PHONE)[1:] == [LOW_SV]
    # Hours within one day hold too; outside them nothing waits.
    world.prefer("anna", quiet_hours=(time(12, 0), time(13, 30)))
    lunch = enqueue(world, "anna", NotificationKind.low_balance, "entry:4", LOW)
    assert await world.deliver(T0) == 0
    assert row(world, lunch or 0).next_attempt_at == T0 + timedelta(minutes=90)


async def test_opt_outs_are_respected_when_the_message_is_due(world: World) -> None:
    world.prefer("anna", muted=["low_balance"])
    muted = enqueue(world, "anna", NotificationKind.low_balance, "entry:5", LOW)
    wanted = enqueue(world, "anna", NotificationKind.station_faulted, "2", FAULT)
    world.prefer("sam", enabled=False)
    off = enqueue(world, "sam", NotificationKind.station_faulted, "3", FAULT)
    assert await world.deliver(T0) == 1
    assert [(r.id, r.status, r.note) for r in world.rows()] == [
        (muted, OutboxStatus.suppressed, "kind muted"),
        (wanted, OutboxStatus.sent, None),
        (off, OutboxStatus.suppressed, "notifications off")]
    assert len(world.texts(ANNA_PHONE)) == 1 and world.texts(SAM_PHONE) == []


async def test_a_number_that_sent_stop_gets_no_texts(world: World) -> None:
    with session_scope(world.engine) as session:
        set_opt_out(session, phone=ANNA_PHONE, opted_out=True, keyword="STOP")
    stopped = enqueue(world, "anna", NotificationKind.station_faulted, "4", FAULT)
    assert await world.deliver(T0) == 0
    assert (row(world, stopped or 0).status, row(world, stopped or 0).note) == (
        OutboxStatus.suppressed, "SMS opt-out (STOP)")
    # By e-mail the driver still hears of it.
    world.prefer("anna", channel="email")
    with session_scope(world.engine) as session:
        set_opt_out(session, phone=ANNA_PHONE, opted_out=True, keyword="STOPP")
    by_mail = enqueue(world, "anna", NotificationKind.station_faulted, "5", FAULT)
    assert await world.deliver(T0) == 1
    assert row(world, by_mail or 0).status is OutboxStatus.sent
    assert world.sent == [("email", "anna@example.se", world.sent[0][2])]


async def test_without_an_address_on_the_channel_it_fails_at_once(world: World) -> None:
    world.prefer("sam", channel="web")  # never signed in to the web chat
    outbox_id = enqueue(world, "sam", NotificationKind.station_faulted, "6", FAULT)
    assert await world.deliver(T0) == 0
    failed = row(world, outbox_id or 0)
    assert (failed.status, failed.attempts, failed.note) == (
        OutboxStatus.failed, 0, "no signed-in web chat")


async def test_the_web_chat_gets_it_on_its_open_socket(world: World) -> None:
    sender = "web-notification-test"
    with session_scope(world.engine) as session:
        session.add(Conversation(channel="web", sender=sender, language="en",
                                 driver_id=world.drivers["sam"], verified=True))
    world.prefer("sam", channel="web")
    token = world.token("sam", sender=sender)
    ws_url = world.server.base_url.replace("http", "ws") + f"/chat/ws?token={token}"
    async with connect(ws_url) as socket:
        enqueue(world, "sam", NotificationKind.low_balance, "entry:6", LOW)
        assert await world.deliver(T0) == 1
        pushed = json.loads(await socket.recv())
    assert pushed["recipient_id"] == sender
    assert pushed["text"] == ("Your prepaid balance is SEK 63.75, below SEK 100.00. Top up "
                              "to keep charging.")
    assert pushed["custom"] == {"notification": "low_balance", "subject": "Low balance"}


async def test_a_row_that_cannot_be_made_into_a_message_fails_and_stops_there(
        world: World) -> None:
    broken = enqueue(world, "anna", NotificationKind.low_balance, "entry:8", {"currency": "SEK"})
    fine = enqueue(world, "anna", NotificationKind.low_balance, "entry:9", LOW)
    assert await world.deliver(T0) == 1
    assert (row(world, broken or 0).status, row(world, broken or 0).note) == (
        OutboxStatus.failed, "KeyError: 'balance_ore'")
    assert row(world, fine or 0).status is OutboxStatus.sent
    assert await world.deliver(T0 + timedelta(days=1)) == 0
