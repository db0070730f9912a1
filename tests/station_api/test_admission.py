"""Letting stations in and keeping them: one scrypt per station at a time, remembered after;
no station disconnected for the time we take to answer it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from ocpp.v16 import call
from sqlalchemy import text

from chargedesk.events import InMemoryEventBus
from chargedesk.security import hash_password
from chargedesk.settings import Settings
from station_api import central as central_module
from station_api.central import CentralSystem
from tests.conftest import start_server
from tests.station_api.ocpp_client import station
from tests.station_api.test_central_system import eventually, register

PASSWORD = "station-password-0001"


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], threading.Event]:
    """Every scrypt check, held until the test lets them finish."""
    done: list[str] = []
    go_on = threading.Event()
    real = central_module.verify_password

    def held(password: str, stored: str) -> bool:
        assert go_on.wait(10)
        done.append(password)
        return real(password, stored)

    monkeypatch.setattr(central_module, "verify_password", held)
    return done, go_on


async def test_a_station_dialling_again_during_its_check_shares_it(
    engine: Any, checks: tuple[list[str], threading.Event]
) -> None:
    done, go_on = checks
    cs = CentralSystem(settings=Settings(), engine=engine, bus=InMemoryEventBus())
    stored = hash_password(PASSWORD)
    attempts = [asyncio.create_task(cs._password_matches("CP-1", PASSWORD, stored))
                for _ in range(3)]
    wrong = asyncio.create_task(cs._password_matches("CP-1", "not-the-password-01", stored))
    await asyncio.sleep(0.05)
    attempts[0].cancel()  # the first caller gave up: the check goes on for the others
    go_on.set()
    assert await asyncio.gather(*attempts[1:]) == [True, True]
    assert await wrong is False
    assert sorted(done) == sorted([PASSWORD, "not-the-password-01"])
    # Verified once, then remembered: no scrypt for the next connection.
    assert await cs._password_matches("CP-1", PASSWORD, stored)
    assert len(done) == 2


async def test_a_station_waiting_for_our_answer_is_not_taken_for_silent(
    settings: Settings, engine: Any
) -> None:
    """Liveness counts silence from our last answer: a station whose message waits for a
    busy database sends nothing else meanwhile, and must not be disconnected for it."""
    register(engine)
    live = start_server(settings.model_copy(update={"heartbeat_interval": 1}))
    held, release = threading.Event(), threading.Event()

    def busy_database() -> None:
        """Another writer holding the status table (the whole file on SQLite)."""
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE status_event IN EXCLUSIVE MODE"))
            else:
                conn.execute(text("UPDATE station SET online = online"))
            held.set()
            assert release.wait(10)
            conn.rollback()

    holder = threading.Thread(target=busy_database)
    try:
        async with station(live.ws_url, "CP-1") as cp:
            await cp.boot()
            holder.start()
            assert await asyncio.to_thread(held.wait, 10)
            status = asyncio.create_task(cp.call(call.StatusNotification(
                connector_id=1, error_code="NoError", status="Available")))
            await asyncio.sleep(3.5)  # longer than two heartbeat intervals
            assert not status.done()
            assert live.runtime.central.is_online("CP-1")
            release.set()
            await status
            assert live.runtime.central.is_online("CP-1")
            # Silent from here on, it does go offline.
            await eventually(lambda: not live.runtime.central.is_online("CP-1"), 6)
    finally:
        release.set()
        if holder.is_alive():
            holder.join(10)
        live.stop()
