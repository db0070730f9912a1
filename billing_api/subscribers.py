"""Billing's reactions to station events: open, rate, settle and correct sessions.

station_api knows nothing of billing; it publishes transaction and meter events and billing
subscribes here. Each reaction is one transaction in the database's worker pool; the events
it produces (a rated session, a low balance) are published after it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, select

from billing_api import invoicing, sessions, wallets
from billing_api.events import SessionRated
from billing_api.models import ChargingSession, Driver, PaymentMethod, SessionStatus
from chargedesk.db import run_in_session
from chargedesk.events import Event, InMemoryEventBus
from chargedesk.settings import Settings
from station_api.events import MeterValuesReceived, TransactionStarted, TransactionStopped
from station_api.models import Transaction

log = structlog.get_logger(__name__)

SYSTEM = "system:billing"


@dataclass
class BillingReactions:
    engine: Engine
    bus: InMemoryEventBus
    settings: Settings

    def install(self) -> None:
        self.bus.subscribe(TransactionStarted, self.on_started)
        self.bus.subscribe(TransactionStopped, self.on_stopped)
        self.bus.subscribe(MeterValuesReceived, self.on_meter_values)

    async def on_started(self, event: TransactionStarted) -> None:
        await run_in_session(self.engine, start_session, transaction_id=event.transaction_id,
                             settings=self.settings)

    async def on_stopped(self, event: TransactionStopped) -> None:
        events = await run_in_session(self.engine, settle_session,
                                      transaction_id=event.transaction_id,
                                      settings=self.settings)
        await self._publish(events)

    async def on_meter_values(self, event: MeterValuesReceived) -> None:
        # Late values for one transaction may come in several messages; each re-rates,
        # which is correct and cheap enough not to debounce.
        if event.transaction_id is None:
            return
        events = await run_in_session(self.engine, correct_session,
                                      transaction_id=event.transaction_id,
                                      settings=self.settings)
        await self._publish(events)

    async def _publish(self, events: list[Event]) -> None:
        for event in events:
            await self.bus.publish(event)


def _driver(session: Session, driver_id: int | None) -> Driver | None:
    return None if driver_id is None else session.get(Driver, driver_id)


def start_session(session: Session, *, transaction_id: int, settings: Settings) -> None:
    """Fix the tariff of a starting session and, for a prepaid driver, hold money."""
    row = sessions.open_session(session, transaction_id=transaction_id, settings=settings)
    driver = _driver(session, row.driver_id)
    if driver is not None and driver.payment_method == PaymentMethod.prepaid:
        wallets.place_hold(session, driver_id=driver.id, transaction_id=transaction_id,
                           settings=settings)


def settle_session(session: Session, *, transaction_id: int, settings: Settings) -> list[Event]:
    """Rate a stopped session, store its cost lines, and pay it from the wallet if prepaid."""
    outcome = sessions.rate_session(session, transaction_id=transaction_id, settings=settings)
    row = outcome.row
    events: list[Event] = []
    driver = _driver(session, row.driver_id)
    prepaid = driver is not None and driver.payment_method == PaymentMethod.prepaid
    if row.status != SessionStatus.rated:
        log.warning("session not rated", transaction_id=transaction_id, error=row.error)
        if prepaid:
            wallets.close_hold(session, transaction_id=transaction_id, settled=False)
        return events
    if prepaid and driver is not None:
        wallets.close_hold(session, transaction_id=transaction_id, settled=True)
        _, low = wallets.debit_session(
            session, driver_id=driver.id or 0, session_id=row.id or 0,
            amount_ore=row.total_incl_vat_ore or 0, created_by=SYSTEM, settings=settings,
            note=f"{row.station_id}/{row.connector_id}",
        )
        if low is not None:
            events.append(low)
    events.append(_rated(row, rerated=outcome.rerated))
    return events


def correct_session(session: Session, *, transaction_id: int, settings: Settings) -> list[Event]:
    """Meter values that arrive after a session was rated: rate it again and correct what
    was billed — a credit note for an issued invoice, a wallet adjustment if prepaid."""
    tx = session.get(Transaction, transaction_id)
    if tx is None or tx.stop_timestamp is None:
        return []  # still charging: it is rated at its stop
    # Lock the session: an invoice run billing it meanwhile waits for us, or we for it.
    row = session.exec(select(ChargingSession)
                       .where(ChargingSession.transaction_id == transaction_id)
                       .with_for_update()).first()
    if row is None or row.status == SessionStatus.open:
        return []  # the stop has not been settled yet; settling will see these values
    previous_lines = invoicing.cost_lines(session, session_id=row.id or 0)
    previous_incl = row.total_incl_vat_ore or 0
    outcome = sessions.rate_session(session, transaction_id=transaction_id, settings=settings)
    if not outcome.changed or row.status != SessionStatus.rated:
        return []
    events: list[Event] = []
    if row.invoice_id is not None:
        invoicing.credit_session(session, row=row, previous_lines=previous_lines,
                                 reason="late meter values", settings=settings,
                                 created_by=SYSTEM)
    driver = _driver(session, row.driver_id)
    if driver is not None and driver.payment_method == PaymentMethod.prepaid:
        difference = previous_incl - (row.total_incl_vat_ore or 0)
        if difference:
            _, low = wallets.adjust(
                session, driver_id=driver.id or 0, amount_ore=difference,
                reason="session rated again after late meter values", created_by=SYSTEM,
                settings=settings, session_id=row.id,
            )
            if low is not None:
                events.append(low)
    events.append(_rated(row, rerated=True))
    return events


def _rated(row: ChargingSession, *, rerated: bool) -> SessionRated:
    return SessionRated(session_id=row.id or 0, transaction_id=row.transaction_id,
                        driver_id=row.driver_id, total_incl_vat_ore=row.total_incl_vat_ore or 0,
                        currency=row.currency, rerated=rerated)


def install(*, engine: Engine, bus: InMemoryEventBus, settings: Settings,
            central: Any) -> BillingReactions:
    """Subscribe billing to station events and let wallets refuse Authorize when short."""
    reactions = BillingReactions(engine, bus, settings)
    reactions.install()
    central.authorization_hooks.append(wallets.authorization_hook(settings))
    return reactions
