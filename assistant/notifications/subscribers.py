"""Domain events into the outbox: one row per (driver, kind, subject), then the sender is
woken. Each reaction is one transaction in the database's background lane."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from assistant.notifications import service
from billing_api.events import InvoiceIssued, LowBalance, PaymentFailed, SessionRated
from chargedesk.db import run_in_session
from chargedesk.events import InMemoryEventBus
from chargedesk.settings import Settings
from load_manager.events import PlanChanged
from station_api.events import StatusChanged, TransactionStarted, TransactionStopped


@dataclass
class NotificationSubscriber:
    engine: Engine
    settings: Settings
    wake: Callable[[], None]

    def install(self, bus: InMemoryEventBus) -> None:
        bus.subscribe(TransactionStarted, self.on_started)
        bus.subscribe(TransactionStopped, self.on_stopped)
        bus.subscribe(StatusChanged, self.on_status)
        bus.subscribe(SessionRated, self.on_rated)
        bus.subscribe(LowBalance, self.on_low_balance)
        bus.subscribe(InvoiceIssued, self.on_invoice_issued)
        bus.subscribe(PaymentFailed, self.on_payment_failed)
        bus.subscribe(PlanChanged, self.on_plan_changed)

    async def _write(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        made = await run_in_session(self.engine, fn, **kwargs)
        if made:
            self.wake()

    async def on_started(self, event: TransactionStarted) -> None:
        await self._write(service.session_started, transaction_id=event.transaction_id,
                          at=event.timestamp)

    async def on_stopped(self, event: TransactionStopped) -> None:
        # Due later: the sender is not woken for it.
        await run_in_session(self.engine, service.transaction_stopped,
                             transaction_id=event.transaction_id, reason=event.reason)

    async def on_status(self, event: StatusChanged) -> None:
        if not event.current or event.status not in ("SuspendedEV", "Faulted"):
            return
        await self._write(service.status_changed, station_id=event.station_id,
                          connector_id=event.connector_id, status=event.status,
                          error_code=event.error_code, timestamp=event.timestamp)

    async def on_rated(self, event: SessionRated) -> None:
        if event.driver_id is not None:
            await self._write(service.session_finished, session_id=event.session_id)

    async def on_low_balance(self, event: LowBalance) -> None:
        subject = (f"entry:{event.entry_id}" if event.entry_id is not None
                   else f"at:{event.occurred_at.isoformat()}")
        await self._write(service.low_balance, driver_id=event.driver_id,
                          balance_ore=event.balance_ore, threshold_ore=event.threshold_ore,
                          currency=event.currency, subject=subject)

    async def on_invoice_issued(self, event: InvoiceIssued) -> None:
        await self._write(service.invoice_issued, invoice_id=event.invoice_id)

    async def on_payment_failed(self, event: PaymentFailed) -> None:
        await self._write(service.debit_failed, invoice_id=event.invoice_id,
                          failures=event.failures, blocked=event.blocked,
                          settings=self.settings)

    async def on_plan_changed(self, event: PlanChanged) -> None:
        await self._write(service.plan_changed, plan_id=event.plan_id, status=event.status)
