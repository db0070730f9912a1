"""The assistant's safety rules, one by one (assistant/actions/safety.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from assistant.actions import safety
from station_api import service
from station_api.models import Transaction

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def network(session: Any) -> Any:
    service.register_station(session, station_id="CP-1", password=None)
    for tag in ("MINE", "THEIRS", "FLEET"):
        service.create_id_tag(session, id_tag=tag)
    service.create_id_tag(session, id_tag="FLEET-VAN", parent_id_tag="FLEET")
    session.flush()
    return session


def session_at(session: Any, *, connector: int, tag: str, stopped_ago: timedelta | None = None
               ) -> Transaction:
    start = NOW - timedelta(hours=1)
    tx = Transaction(station_id="CP-1", connector_id=connector, id_tag=tag,
                     id_tag_status="Accepted", meter_start_wh=0, start_timestamp=start)
    if stopped_ago is not None:
        tx.stop_timestamp, tx.meter_stop_wh = NOW - stopped_ago, 1000
    session.add(tx)
    session.flush()
    return tx


def test_a_driver_unlocks_the_connector_of_their_running_session(network) -> None:
    tx = session_at(network, connector=1, tag="MINE")
    assert safety.check_unlock(network, station_id="CP-1", connector_id=1, id_tags=["MINE"],
                               now=NOW).id == tx.id


def test_unlocking_is_allowed_for_fifteen_minutes_after_the_session_ended(network) -> None:
    session_at(network, connector=1, tag="MINE", stopped_ago=timedelta(minutes=14))
    safety.check_unlock(network, station_id="CP-1", connector_id=1, id_tags=["MINE"], now=NOW)
    with pytest.raises(safety.Refused) as refused:
        safety.check_unlock(network, station_id="CP-1", connector_id=1, id_tags=["MINE"],
                            now=NOW + timedelta(minutes=2))
    assert refused.value.code == "no_session"


def test_a_driver_cannot_unlock_someone_elses_connector(network) -> None:
    session_at(network, connector=1, tag="MINE", stopped_ago=timedelta(minutes=30))
    session_at(network, connector=2, tag="THEIRS")
    with pytest.raises(safety.Refused) as refused:
        safety.check_unlock(network, station_id="CP-1", connector_id=2, id_tags=["MINE"],
                            now=NOW)
    assert refused.value.code == "not_yours"


def test_the_latest_session_at_the_connector_decides_who_may_unlock(network) -> None:
    session_at(network, connector=1, tag="MINE", stopped_ago=timedelta(minutes=10))
    session_at(network, connector=1, tag="THEIRS")  # the next driver plugged in since
    with pytest.raises(safety.Refused) as refused:
        safety.check_unlock(network, station_id="CP-1", connector_id=1, id_tags=["MINE"],
                            now=NOW)
    assert refused.value.code == "not_yours"


def test_a_parent_tag_owns_its_childrens_sessions(network) -> None:
    tx = session_at(network, connector=1, tag="FLEET-VAN")
    assert safety.check_stop(network, transaction_id=tx.id, id_tags=["FLEET"]).id == tx.id
    safety.check_unlock(network, station_id="CP-1", connector_id=1, id_tags=["FLEET"], now=NOW)


def test_a_driver_stops_only_their_own_running_session(network) -> None:
    mine = session_at(network, connector=1, tag="MINE")
    theirs = session_at(network, connector=2, tag="THEIRS")
    assert safety.check_stop(network, transaction_id=mine.id, id_tags=["MINE"]).id == mine.id
    with pytest.raises(safety.Refused) as refused:
        safety.check_stop(network, transaction_id=theirs.id, id_tags=["MINE"])
    assert refused.value.code == "not_yours"
    with pytest.raises(safety.Refused):
        safety.check_stop(network, transaction_id=999_999, id_tags=["MINE"])


def test_a_soft_reset_only_while_no_other_drivers_session_runs(network) -> None:
    session_at(network, connector=1, tag="MINE")
    safety.check_reset(network, station_id="CP-1", reset_type="Soft", id_tags=["MINE"])
    session_at(network, connector=2, tag="THEIRS")
    with pytest.raises(safety.Refused) as refused:
        safety.check_reset(network, station_id="CP-1", reset_type="Soft", id_tags=["MINE"])
    assert refused.value.code == "other_session"


def test_a_hard_reset_never(network) -> None:
    with pytest.raises(safety.Refused) as refused:
        safety.check_reset(network, station_id="CP-1", reset_type="Hard", id_tags=["MINE"])
    assert refused.value.code == "hard_reset"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock) -> safety.Limits:
    return safety.Limits(per_driver=safety.TokenBucket(3, 600.0, clock),
                         per_station=safety.TokenBucket(6, 600.0, clock))


def test_the_fourth_command_of_a_driver_within_ten_minutes_is_refused() -> None:
    clock = Clock()
    gate = limits(clock)
    for _ in range(3):
        gate.admit(driver_id=1, station_id="CP-1")
    with pytest.raises(safety.Refused) as refused:
        gate.admit(driver_id=1, station_id="CP-2")
    assert refused.value.code == "rate_limited"
    gate.admit(driver_id=2, station_id="CP-1")  # another driver is not held up
    clock.now += 200  # a third of the period gives one command back
    gate.admit(driver_id=1, station_id="CP-1")
    with pytest.raises(safety.Refused):
        gate.admit(driver_id=1, station_id="CP-1")


def test_a_station_takes_six_commands_within_ten_minutes_whoever_asks() -> None:
    gate = limits(Clock())
    for driver in range(6):
        gate.admit(driver_id=driver, station_id="CP-1")
    with pytest.raises(safety.Refused) as refused:
        gate.admit(driver_id=99, station_id="CP-1")
    assert refused.value.code == "rate_limited"
    # The refused command was charged to neither limit.
    gate.admit(driver_id=99, station_id="CP-2")
    gate.admit(driver_id=99, station_id="CP-2")
    gate.admit(driver_id=99, station_id="CP-2")


@dataclass
class RecordingCentral:
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send_command(self, station_id: str, action: str, payload: dict[str, Any], *,
                           requested_by: str, reason: str | None = None) -> str:
        self.sent.append({"station_id": station_id, "action": action, "payload": payload,
                          "requested_by": requested_by, "reason": reason})
        return "sent"


async def test_commands_go_out_as_the_driver_with_a_reason_and_never_as_a_hard_reset() -> None:
    central = RecordingCentral()
    gate = limits(Clock())
    await safety.command(central, driver_id=7, station_id="CP-1", action="UnlockConnector",
                         payload={"connectorId": 1}, reason="cable stuck", limits=gate)
    with pytest.raises(safety.Refused) as refused:
        await safety.command(central, driver_id=7, station_id="CP-1", action="Reset",
                             payload={"type": "Hard"}, reason="won't start", limits=gate)
    assert refused.value.code == "hard_reset"
    assert central.sent == [{"station_id": "CP-1", "action": "UnlockConnector",
                             "payload": {"connectorId": 1}, "requested_by": "driver:7",
                             "reason": "cable stuck"}]


async def test_reading_a_stations_local_list_is_not_rate_limited() -> None:
    central = RecordingCentral()
    gate = limits(Clock())
    for _ in range(5):
        await safety.command(central, driver_id=7, station_id="CP-1",
                             action="GetLocalListVersion", payload={}, reason="lost card",
                             limits=gate)
    assert len(central.sent) == 5
    assert gate.per_driver.available("driver:7") == 3
