"""Billing's reactions to station events: open, rate, settle and correct sessions.

station_api knows nothing of billing; it publishes transaction and meter events and billing
subscribes here. Each reaction is one transaction in the database's worker pool, in its
background lane (event subscribers wait behind the stations' own messages); the events it
produces (a rated session, a low balance) are published after it commits.

Meter values are the bulk of a network's traffic, and while a transaction runs they mean
nothing to billing: the session is rated from everything stored when it stops. So a meter
value for a transaction known to be running costs no database work at all. Only values
that arrive after the stop (a corrected end reading, a station's backlog) rate the session
again, and those are coalesced per transaction: a correction that has not begun yet will
read every value stored before it, so further values need no correction of their own.

Per transaction the reactions run one at a time and in the order of the events, so the
prepaid hold placed at the start is always there when the stop settles it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
# Stops remembered so that a check begun before a stop cannot mark the transaction as
# running after it; a check takes milliseconds, so the most recent stops are enough.
RECENT_STOPS = 10_000
# Running transactions remembered; one forgotten (a station that never sent its stop) only
# costs one look-up at its next meter value.
RUNNING_KEPT = 200_000


@dataclass
class BillingReactions:
    engine: Engine
    bus: InMemoryEventBus
    settings: Settings
    # Transactions known to be running: their meter values need nothing from billing.
    _running: OrderedDict[int, None] = field(default_factory=OrderedDict)
    _stopped: OrderedDict[int, None] = field(default_factory=OrderedDict)
    # Transactions with a correction queued that has not begun reading yet (the worker
    # thread takes them off, hence the guard).
    _correction_queued: set[int] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    # One lock per transaction with reactions under way, and how many use it.
    _locks: dict[int, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    def install(self) -> None:
        self.bus.subscribe(TransactionStarted, self.on_started)
        self.bus.subscribe(TransactionStopped, self.on_stopped)
        self.bus.subscribe(MeterValuesReceived, self.on_meter_values)

    async def on_started(self, event: TransactionStarted) -> None:
        tx = event.transaction_id
        if tx not in self._stopped:
            self._note_running(tx)
        async with self._one_at_a_time(tx):
            await run_in_session(self.engine, start_session, transaction_id=tx,
                                 settings=self.settings)

    async def on_stopped(self, event: TransactionStopped) -> None:
        tx = event.transaction_id
        self._running.pop(tx, None)
        self._stopped[tx] = None
        self._stopped.move_to_end(tx)
        while len(self._stopped) > RECENT_STOPS:
            self._stopped.popitem(last=False)
        async with self._one_at_a_time(tx):
            events = await run_in_session(self.engine, settle_session, transaction_id=tx,
                                          settings=self.settings)
        await self._publish(events)

    async def on_meter_values(self, event: MeterValuesReceived) -> None:
        tx = event.transaction_id
        if tx is None or tx in self._running:
            return
        with self._guard:
            if tx in self._correction_queued:
                return  # a correction that has not read anything yet will see this value
            self._correction_queued.add(tx)
        try:
            async with self._one_at_a_time(tx):
                if tx in self._running:
                    # A look-up that ran while this waited found the transaction running:
                    # a running transaction's values need nothing.
                    with self._guard:
                        self._correction_queued.discard(tx)
                    return
                running, events = await run_in_session(
                    self.engine, self._correct_queued, transaction_id=tx, settings=self.settings
                )
        except BaseException:
            with self._guard:  # not begun (cancelled, say): the next value queues anew
                self._correction_queued.discard(tx)
            raise
        if running and tx not in self._stopped:
            self._note_running(tx)
        await self._publish(events)

    def _correct_queued(self, session: Session, *, transaction_id: int, settings: Settings
                        ) -> tuple[bool, list[Event]]:
        # In the worker thread, before the first read: a value whose event comes after
        # this may be missed by this correction, so it gets one of its own.
        with self._guard:
            self._correction_queued.discard(transaction_id)
        return _correct(session, transaction_id=transaction_id, settings=settings)

    def _note_running(self, transaction_id: int) -> None:
        self._running[transaction_id] = None
        if len(self._running) > RUNNING_KEPT:
            self._running.popitem(last=False)

    @asynccontextmanager
    async def _one_at_a_time(self, transaction_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(transaction_id, (asyncio.Lock(), 0))
        self._locks[transaction_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[transaction_id]
            if users == 1:
                del self._locks[transaction_id]
            else:
                self._locks[transaction_id] = (lock, users - 1)

    async def _publish(self, events: list[Event]) -> None:
        for event in events:
            await self.bus.publish(event)


def _correct(session: Session, *, transaction_id: int, settings: Settings
             ) -> tuple[bool, list[Event]]:
    """:func:`correct_session`, and whether the transaction is still running."""
    tx = session.get(Transaction, transaction_id)
    if tx is not None and tx.stop_timestamp is None:
        return True, []
    return False, correct_session(session, transaction_id=transaction_id, settings=settings)


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
