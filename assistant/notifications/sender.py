"""The sender: delivers due notifications through :mod:`assistant.channels.outbound`, and
reads the billing tables for invoices issued and direct debits failed.

It wakes when a subscriber wrote a row, and every :data:`POLL_S` seconds in any case
(retries and held messages fall due by the clock; another process may have written rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import structlog

from assistant.channels import outbound
from assistant.notifications import service
from chargedesk.db import run_in_session

log = structlog.get_logger(__name__)

POLL_S = 5.0
SCAN_S = 30.0
# Attempts in flight at once.
CONCURRENCY = 8
BATCH = 100


class NotificationSender:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    def wake(self) -> None:
        """Deliver soon (callable from any thread)."""
        if self._wake is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._wake.set)

    async def deliver_due(self, *, now: datetime | None = None) -> int:
        """Deliver (or settle) every row due at ``now``; how many were attempted."""
        attempted = 0
        while ids := await run_in_session(self.runtime.engine, service.due, now=now,
                                          limit=BATCH):
            results = await asyncio.gather(*(self.deliver(i, now=now) for i in ids))
            attempted += sum(results)
            if len(ids) < BATCH:
                break
        return attempted

    async def deliver(self, outbox_id: int, *, now: datetime | None = None) -> bool:
        """One row: decide it, and attempt it if it is to be sent. True when attempted."""
        engine = self.runtime.engine
        async with self._limit:
            try:
                delivery = await run_in_session(engine, service.take, outbox_id=outbox_id,
                                                now=now)
            except Exception as exc:  # a row that cannot be made into a message: not again
                log.exception("notification could not be prepared", outbox_id=outbox_id)
                await run_in_session(engine, service.give_up, outbox_id=outbox_id,
                                     note=f"{type(exc).__name__}: {exc}")
                return False
            if delivery is None:
                return False
            error: str | None = None
            try:
                await outbound.send(self.runtime, channel=delivery.channel,
                                    sender=delivery.address, messages=delivery.messages,
                                    conversation_id=delivery.conversation_id)
            except Exception as exc:  # any failure of the channel is one failed attempt
                error = f"{type(exc).__name__}: {exc}"
                log.warning("notification not delivered", outbox_id=outbox_id,
                            channel=delivery.channel, attempt=delivery.attempts, error=error)
            await run_in_session(engine, service.record_attempt, outbox_id=outbox_id,
                                 error=error, now=now)
            return True

    async def scan(self) -> int:
        made = await run_in_session(self.runtime.engine, service.scan_billing,
                                    settings=self.runtime.settings)
        return len(made)

    async def run(self) -> None:
        """The background job: until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await run_in_session(self.runtime.engine, service.start_cursors)
        next_scan = 0.0
        while True:
            self._wake.clear()
            try:
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + SCAN_S
                    await self.scan()
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification sender failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
