"""Billing's reactions to station events: what meter values cost, and that every session is
still rated, settled and corrected from everything the station reported."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from billing_api import service as billing
from billing_api import subscribers, wallets
from billing_api.events import SessionRated
from billing_api.models import (
    ChargingSession,
    DriverIdTag,
    HoldStatus,
    PaymentMethod,
    SessionStatus,
    WalletHold,
)
from billing_api.tariffs import parse_tariff
from chargedesk.db import session_scope
from chargedesk.events import Event, InMemoryEventBus
from chargedesk.settings import Settings
from station_api import service as stations
from station_api.events import (
    MeterValuesReceived,
    Sample,
    TransactionStarted,
    TransactionStopped,
)
from tests.billing_api.factories import TARIFF, ensure_station, make_driver

T0 = datetime(2026, 10, 5, 8, 0, tzinfo=UTC)
STATION = "SE-TEST-01"
SETTINGS = Settings(time_zone="Europe/Stockholm")


class Network:
    """A station's reports stored as the central system stores them, with its events."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.bus = InMemoryEventBus()
        self.rated: list[SessionRated] = []
        self.bus.subscribe(SessionRated, self.rated.append)
        self.reactions = subscribers.BillingReactions(engine, self.bus, SETTINGS)
        self.reactions.install()
        with session_scope(engine) as session:
            ensure_station(session, STATION)
            billing.import_tariff(session, tariff=parse_tariff(TARIFF), created_by="test",
                                  valid_from=datetime(2026, 1, 1, tzinfo=UTC))
            billing.assign_tariff(session, tariff_id=TARIFF["id"], created_by="test",
                                  valid_from=datetime(2026, 1, 1, tzinfo=UTC))

    def driver(self, payment_method: PaymentMethod = PaymentMethod.invoice,
               top_up: str | None = None) -> tuple[int, str]:
        with session_scope(self.engine) as session:
            driver = make_driver(session, payment_method=payment_method)
            assert driver.id is not None
            tag = session.exec(select(DriverIdTag.id_tag)
                               .where(DriverIdTag.driver_id == driver.id)).one()
            if top_up is not None:
                wallets.top_up(session, driver_id=driver.id, amount=Decimal(top_up),
                               idempotency_key="t1", created_by="test")
            return driver.id, tag

    def start(self, tag: str, *, meter: int = 10_000) -> tuple[int, Event]:
        with session_scope(self.engine) as session:
            tx, _, created = stations.start_transaction(
                session, station_id=STATION, connector_id=1, id_tag=tag,
                meter_start_wh=meter, timestamp=T0)
            assert created and tx.id is not None
            tx_id = tx.id
        return tx_id, TransactionStarted(station_id=STATION, connector_id=1,
                                         transaction_id=tx_id, id_tag=tag,
                                         meter_start_wh=meter, timestamp=T0)

    def meter(self, tx_id: int, minutes: float, wh: int,
              context: str = "Sample.Periodic") -> Event:
        sampled = {"value": str(wh), "measurand": "Energy.Active.Import.Register",
                   "unit": "Wh", "context": context}
        at = T0 + timedelta(minutes=minutes)
        with session_scope(self.engine) as session:
            new = stations.record_meter_values(
                session, station_id=STATION, connector_id=1, transaction_id=tx_id,
                meter_values=[(at, [sampled])])
        assert new, "a sample seen before publishes nothing"
        return MeterValuesReceived(station_id=STATION, connector_id=1, transaction_id=tx_id,
                                   samples=[Sample.model_validate(s) for s in new])

    def stop(self, tx_id: int, tag: str, *, minutes: float = 60, meter_start: int = 10_000,
             meter: int) -> Event:
        at = T0 + timedelta(minutes=minutes)
        with session_scope(self.engine) as session:
            tx, stopped = stations.stop_transaction(
                session, station_id=STATION, transaction_id=tx_id, meter_stop_wh=meter,
                timestamp=at, reason="EVDisconnected")
            assert stopped and tx is not None
        return TransactionStopped(station_id=STATION, connector_id=1, transaction_id=tx_id,
                                  id_tag=tag, meter_start_wh=meter_start, meter_stop_wh=meter,
                                  energy_wh=meter - meter_start, reason="EVDisconnected",
                                  timestamp=at)

    async def deliver(self, *events: Event) -> None:
        """Publish the events back to back, as a busy central system does, and wait."""
        for e in events:
            await self.bus.publish(e)
        await self.bus.join()

    def session_row(self, tx_id: int) -> ChargingSession:
        with Session(self.engine) as session:
            row = session.exec(select(ChargingSession)
                               .where(ChargingSession.transaction_id == tx_id)).one()
            session.expunge(row)
            return row


@pytest.fixture
def network(engine: Any) -> Network:
    return Network(engine)


@pytest.fixture
def statements(engine: Any) -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test looks."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    yield seen
    event.remove(engine, "before_cursor_execute", note)


@pytest.fixture
def corrections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Transactions billing looked at because of meter values, one entry per look."""
    looked: list[int] = []
    real = subscribers._correct

    def counting(session: Session, *, transaction_id: int, settings: Settings) -> Any:
        looked.append(transaction_id)
        return real(session, transaction_id=transaction_id, settings=settings)

    monkeypatch.setattr(subscribers, "_correct", counting)
    return looked


async def test_meter_values_of_a_running_session_cost_no_database_work(
    network: Network, statements: list[str]
) -> None:
    _, tag = network.driver()
    tx, started = network.start(tag)
    await network.deliver(started)
    values = [network.meter(tx, minutes, 10_000 + 100 * minutes) for minutes in range(1, 41)]
    statements.clear()
    await network.deliver(*values)
    assert statements == []

    # The stop rates the session from every value stored: 5.00 + 12 kWh x 3.20, 25 % VAT.
    await network.deliver(network.stop(tx, tag, meter=22_000))
    row = network.session_row(tx)
    assert row.status == SessionStatus.rated
    assert (row.energy_wh, row.total_incl_vat_ore) == (12_000, (500 + 12 * 320) * 125 // 100)
    assert [(r.transaction_id, r.rerated) for r in network.rated] == [(tx, False)]


async def test_a_session_started_before_a_restart_is_looked_up_once(
    network: Network, corrections: list[int]
) -> None:
    _, tag = network.driver()
    tx, _started = network.start(tag)  # its event went to a process that has since ended
    await network.deliver(*(network.meter(tx, m, 10_000 + 50 * m) for m in range(1, 11)))
    await network.deliver(*(network.meter(tx, m, 10_000 + 50 * m) for m in range(11, 21)))
    assert corrections == [tx]
    await network.deliver(network.stop(tx, tag, meter=11_000))
    assert network.session_row(tx).total_incl_vat_ore == (500 + 320) * 125 // 100


async def test_late_meter_values_are_coalesced_and_rate_the_session_again_from_all(
    network: Network, corrections: list[int]
) -> None:
    _, tag = network.driver()
    tx, started = network.start(tag)
    await network.deliver(started, network.meter(tx, 30, 15_000),
                          network.stop(tx, tag, meter=20_000))
    assert network.session_row(tx).total_incl_vat_ore == (500 + 10 * 320) * 125 // 100

    # The station's backlog after the stop: a few periodic readings, then the meter's own
    # end reading, which says 12 kWh rather than 10.
    late = [network.meter(tx, m, 15_000 + 100 * m) for m in (35, 40, 45, 50)]
    late.append(network.meter(tx, 60, 22_000, context="Transaction.End"))
    await network.deliver(*late)

    assert corrections == [tx]  # one look for the whole backlog
    row = network.session_row(tx)
    assert (row.energy_wh, row.total_incl_vat_ore) == (12_000, (500 + 12 * 320) * 125 // 100)
    assert [(r.rerated, r.total_incl_vat_ore) for r in network.rated] == [
        (False, (500 + 10 * 320) * 125 // 100), (True, (500 + 12 * 320) * 125 // 100)]


async def test_a_value_arriving_once_a_correction_has_begun_gets_a_correction_of_its_own(
    network: Network, corrections: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tag = network.driver()
    tx, started = network.start(tag)
    await network.deliver(started, network.stop(tx, tag, meter=20_000))

    begun, go_on = threading.Event(), threading.Event()
    counting = subscribers._correct

    def held_up(session: Session, **kwargs: Any) -> Any:
        if len(corrections) == 0:
            begun.set()
            go_on.wait(10)
        return counting(session, **kwargs)

    monkeypatch.setattr(subscribers, "_correct", held_up)
    await network.bus.publish(network.meter(tx, 30, 15_000))
    assert await asyncio.to_thread(begun.wait, 10)
    # This correction may or may not read what comes now: the value gets one of its own.
    await network.bus.publish(network.meter(tx, 60, 22_000, context="Transaction.End"))
    go_on.set()
    await network.bus.join()

    assert corrections == [tx, tx]
    assert network.session_row(tx).energy_wh == 12_000


async def test_a_prepaid_session_started_and_stopped_at_once_is_held_then_settled(
    network: Network
) -> None:
    driver_id, tag = network.driver(PaymentMethod.prepaid, top_up="500.00")
    tx, started = network.start(tag)
    stopped = network.stop(tx, tag, meter=30_000)
    await network.deliver(started, stopped)

    with Session(network.engine) as session:
        hold = session.exec(select(WalletHold).where(WalletHold.transaction_id == tx)).one()
        assert hold.status == HoldStatus.settled
        money = wallets.balance(session, driver_id=driver_id, settings=SETTINGS)
    cost = Decimal(500 + 20 * 320) * Decimal("1.25") / 100  # 86.25
    assert (money.held, money.balance) == (Decimal("0.00"), Decimal("500.00") - cost)
