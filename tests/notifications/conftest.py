"""A served app with a site, a station, a tariff with an idle fee and two drivers; what the
notification sender hands to a channel is recorded by a sender of our own registered for
``sms`` (and ``email``) through :mod:`assistant.channels.outbound`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from assistant.channels import outbound
from assistant.channels.web import issue_token
from assistant.notifications import service
from assistant.notifications.models import NotificationOutbox, OutboxStatus
from billing_api import service as billing
from billing_api.models import Language
from billing_api.tariffs import parse_tariff
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from station_api import service as stations
from tests.billing_api.factories import make_driver
from tests.channels.fixtures import twilio_api  # noqa: F401  (fixtures)
from tests.station_api.test_central_system import register

SECRET = "notification-tests-chat-secret"
SITE, STATION, SCRIPTED = "TST-HAMN", "SE-TST-HAMN-01", "SE-TST-HAMN-02"
ANNA_PHONE, SAM_PHONE = "+46701110001", "+46701110002"

# 5.00 a session, 3.20 a kWh and, from 45 minutes after the start, 48.00 an hour connected
# without charging (1.00 a minute with VAT); 25 % VAT on everything.
TARIFF: dict[str, Any] = {
    "id": "TST-IDLE", "currency": "SEK", "last_updated": "2026-01-01T00:00:00Z",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": Decimal("5.00"), "vat": 25,
                               "step_size": 1}]},
        {"price_components": [{"type": "ENERGY", "price": Decimal("3.20"), "vat": 25,
                               "step_size": 1}]},
        {"price_components": [{"type": "PARKING_TIME", "price": Decimal("48.00"), "vat": 25,
                               "step_size": 60}],
         "restrictions": {"min_duration": 2700}},
    ],
}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, heartbeat_interval=60, log_format="console",
                    log_level="WARNING", command_timeout=5, scheduler=False,
                    nlu_warm_up=False, chat_secret=SECRET)


@dataclass
class Recorder:
    """A channel's delivery that records what it is given; ``failures`` attempts raise."""

    channel: str
    sent: list[tuple[str, str, str]]
    failures: int = 0
    calls: int = 0

    async def deliver(self, runtime: Any, sender: str, messages: list[dict[str, Any]],
                      conversation_id: int | None) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("gateway timeout")
        for message in messages:
            self.sent.append((self.channel, sender, message["text"]))


@dataclass
class World:
    server: Any
    engine: Any
    api: httpx.AsyncClient
    drivers: dict[str, int]
    sent: list[tuple[str, str, str]]
    channels: dict[str, Recorder] = field(default_factory=dict)

    @property
    def runtime(self) -> Any:
        return self.server.runtime

    async def on_server(self, coroutine: Awaitable[Any]) -> Any:
        """Run on the server's event loop, where its sender and stations live."""
        loop = self.server.server.servers[0].get_loop()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    async def deliver(self, now: datetime) -> int:
        """The sender's pass over what is due at ``now``, once the background sender's
        attempts under way are recorded (a later ``now`` would find them due again)."""
        await self.settled()
        return int(await self.on_server(
            self.server.app.state.notifications.deliver_due(now=now)))

    async def scan(self) -> int:
        return int(await self.on_server(self.server.app.state.notifications.scan()))

    def rows(self, driver: str | None = None, kind: str | None = None
             ) -> list[NotificationOutbox]:
        with session_scope(self.engine) as session:
            query = select(NotificationOutbox).order_by(col(NotificationOutbox.id))
            if driver is not None:
                query = query.where(NotificationOutbox.driver_id == self.drivers[driver])
            if kind is not None:
                query = query.where(NotificationOutbox.kind == kind)
            return list(session.exec(query).all())

    async def settled(self) -> None:
        """Until the background sender has taken every row due now and no attempt is under
        way (a message handed over is recorded just after)."""
        from tests.station_api.test_central_system import eventually

        now = utcnow()

        def idle(row: NotificationOutbox) -> bool:
            due = row.status in (OutboxStatus.pending, OutboxStatus.retrying) and (
                row.next_attempt_at <= now)
            return row.status != OutboxStatus.sending and not due

        await eventually(lambda: all(idle(r) for r in self.rows()))

    def texts(self, address: str | None = None) -> list[str]:
        return [text for _, to, text in self.sent if address is None or to == address]

    def prefer(self, driver: str, **changes: Any) -> None:
        with session_scope(self.engine) as session:
            service.set_preferences(session, driver_id=self.drivers[driver], **changes)

    def token(self, driver: str | None, sender: str = "web-test-sender") -> str:
        driver_id = None if driver is None else self.drivers[driver]
        return issue_token(SECRET.encode(), sender=sender, driver_id=driver_id)[0]


@pytest.fixture
async def world(server: Any, engine: Any, operator_key: str) -> AsyncIterator[World]:
    with session_scope(engine) as session:
        stations.create_site(session, site_id=SITE, name="Testhamnen",
                             address="Hamngatan 1, 411 01 Göteborg",
                             time_zone="Europe/Stockholm")
    for station_id in (STATION, SCRIPTED):
        register(engine, station_id)
        with session_scope(engine) as session:
            stations.move_station(session, station_id=station_id, site_id=SITE)
    with session_scope(engine) as session:
        billing.import_tariff(session, tariff=parse_tariff(TARIFF), created_by="test",
                              valid_from=datetime(2026, 1, 1, tzinfo=UTC))
        billing.assign_tariff(session, tariff_id=TARIFF["id"], created_by="test",
                              site_id=SITE, valid_from=datetime(2026, 1, 1, tzinfo=UTC))
        anna = make_driver(session, name="Anna Berg", email="anna@example.se",
                           phone=ANNA_PHONE, id_tags=("RFID-ANNA",))
        sam = make_driver(session, name="Sam Taylor", email="sam@example.com",
                          phone=SAM_PHONE, language=Language.en, id_tags=("RFID-SAM",))
        drivers = {"anna": anna.id or 0, "sam": sam.id or 0}
        # No quiet hours unless a test sets them: the sender runs on the real clock.
        for driver_id in drivers.values():
            service.set_preferences(session, driver_id=driver_id, quiet_hours=None)
    sent: list[tuple[str, str, str]] = []
    channels = {name: Recorder(name, sent) for name in ("sms", "email")}
    for name, recorder in channels.items():
        outbound.register(server.runtime, name, recorder.deliver)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, headers={
            "Authorization": f"Bearer {operator_key}"}) as api:
        yield World(server, engine, api, drivers, sent, channels)
