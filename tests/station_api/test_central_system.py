"""The OCPP 1.6J central system over real WebSockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from ocpp.exceptions import SecurityError
from ocpp.v16 import call
from sqlmodel import select
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chargedesk.db import session_scope
from chargedesk.models import Role
from station_api import service
from station_api.events import (
    MeterValuesReceived,
    StationOffline,
    StationOnline,
    StatusChanged,
    TransactionStarted,
    TransactionStopped,
)
from station_api.models import (
    IdTagStatus,
    MeterSample,
    Registration,
    Station,
    StatusEvent,
    Transaction,
    UnknownStop,
)
from tests.conftest import make_key, start_server
from tests.station_api.ocpp_client import PASSWORD, basic_auth, station


def register(engine: Any, station_id: str = "CP-1", password: str | None = PASSWORD) -> None:
    with session_scope(engine) as session:
        service.register_station(session, station_id=station_id, password=password)


def add_tag(engine: Any, id_tag: str, **kwargs: Any) -> None:
    with session_scope(engine) as session:
        service.create_id_tag(session, id_tag=id_tag)
        if kwargs:
            service.update_id_tag(session, id_tag=id_tag, **kwargs)


def capture(server: Any, *event_types: type) -> list[Any]:
    seen: list[Any] = []
    for event_type in event_types:
        server.runtime.bus.subscribe(event_type, seen.append)
    return seen


async def eventually(predicate: Any, timeout: float = 20.0) -> None:
    # A generous limit: it only matters when the condition never comes, and a busy CI
    # machine can take seconds to get there.
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def ts(minutes: int = 0) -> str:
    base = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    return (base + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- handshake


async def test_a_handshake_without_the_ocpp16_subprotocol_is_refused(server, engine) -> None:
    register(engine)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{server.ws_url}/CP-1", subprotocols=["ocpp2.0.1"],
                           additional_headers=basic_auth("CP-1", PASSWORD)):
            pass
    assert refused.value.response.status_code == 400


async def test_a_bad_password_is_refused_at_the_handshake(server, engine) -> None:
    register(engine)
    with pytest.raises(InvalidStatus) as refused:
        async with station(server.ws_url, "CP-1", password="not-the-password-at-all"):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic")
    with pytest.raises(InvalidStatus) as missing:
        async with station(server.ws_url, "CP-1", password=None):
            pass
    assert missing.value.response.status_code == 401


async def test_an_unknown_station_is_refused_with_404(server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with station(server.ws_url, "NOBODY"):
            pass
    assert refused.value.response.status_code == 404


async def test_auto_registered_stations_stay_pending_until_approved(settings, engine) -> None:
    live = start_server(settings.model_copy(update={"ocpp_auto_register": True}))
    try:
        async with station(live.ws_url, "NEW-1", password="a-new-station-secret") as cp:
            boot = await cp.boot()
            assert boot.status == "Pending"
            with pytest.raises(SecurityError):
                await cp.call(call.StartTransaction(connector_id=1, id_tag="X", meter_start=0,
                                                    timestamp=ts()), suppress=False)
            key = make_key(engine, Role.operator)
            async with httpx.AsyncClient(base_url=live.base_url,
                                         headers={"Authorization": f"Bearer {key}"}) as api:
                approved = await api.post("/api/v1/stations/NEW-1/approve")
            assert approved.status_code == 200
            assert approved.json()["registration"] == "accepted"
            # Approval asks the connected station to boot again at once.
            await eventually(lambda: ("TriggerMessage", {"requested_message": "BootNotification"})
                             in cp.received)
            assert (await cp.boot()).status == "Accepted"
    finally:
        live.stop()
    with session_scope(engine) as session:
        assert session.get(Station, "NEW-1").registration == Registration.accepted


# ---------------------------------------------------------------- malformed frames


async def test_malformed_frames_get_the_right_callerror_and_the_connection_stays_up(
    server, engine
) -> None:
    register(engine)
    async with connect(f"{server.ws_url}/CP-1", subprotocols=["ocpp1.6"],
                       additional_headers=basic_auth("CP-1", PASSWORD)) as ws:

        async def exchange(frame: str) -> list[Any]:
            await ws.send(frame)
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

        not_json = await exchange("{this is not json")
        assert not_json[:3] == [4, "-1", "FormationViolation"]
        wrong_type = await exchange('[7, "m1", "Heartbeat", {}]')
        assert wrong_type[:3] == [4, "-1", "ProtocolError"]
        unknown = await exchange('[2, "m2", "MakeCoffee", {}]')
        assert unknown[:3] == [4, "m2", "NotImplemented"]
        wrong_direction = await exchange('[2, "m3", "Reset", {"type": "Soft"}]')
        assert wrong_direction[:3] == [4, "m3", "NotSupported"]
        bad_type = await exchange(json.dumps([2, "m4", "StatusNotification", {
            "connectorId": "one", "errorCode": "NoError", "status": "Available"}]))
        assert bad_type[:3] == [4, "m4", "TypeConstraintViolation"]
        bad_value = await exchange(json.dumps([2, "m5", "StatusNotification", {
            "connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}]))
        assert bad_value[:3] == [4, "m5", "PropertyConstraintViolation"]
        incomplete = await exchange('[2, "m6", "StartTransaction", {"connectorId": 1}]')
        assert incomplete[:3] == [4, "m6", "ProtocolError"]
        extra = await exchange('[2, "m7", "Heartbeat", {"mood": "happy"}]')
        assert extra[:3] == [4, "m7", "FormationViolation"]
        bad_time = await exchange(json.dumps([2, "m8", "StatusNotification", {
            "connectorId": 1, "errorCode": "NoError", "status": "Available",
            "timestamp": "yesterday"}]))
        assert bad_time[:3] == [4, "m8", "PropertyConstraintViolation"]

        heartbeat = await exchange('[2, "ok", "Heartbeat", {}]')
        assert heartbeat[0] == 3 and heartbeat[1] == "ok" and "currentTime" in heartbeat[2]


# ---------------------------------------------------------------- station reports


async def test_boot_stores_the_station_and_answers_the_heartbeat_interval(server, engine):
    register(engine)
    online = capture(server, StationOnline, StationOffline)
    async with station(server.ws_url, "CP-1") as cp:
        boot = await cp.boot()
        assert (boot.status, boot.interval) == ("Accepted", 60)
        heartbeat = await cp.call(call.Heartbeat(), suppress=False)
        assert datetime.fromisoformat(heartbeat.current_time).tzinfo is not None
        with session_scope(engine) as session:
            stored = session.get(Station, "CP-1")
            assert (stored.vendor, stored.model, stored.serial_number,
                    stored.firmware_version) == ("TestVendor", "TestModel", "SN-1", "1.2.3")
            assert stored.online
    await eventually(lambda: len(online) == 2)
    assert [type(e) for e in online] == [StationOnline, StationOffline]
    with session_scope(engine) as session:
        stored = session.get(Station, "CP-1")
        # Heartbeats are written in batches, at the latest when the station disconnects.
        assert not stored.online and stored.last_heartbeat_at is not None


async def test_status_history_is_kept_and_a_late_status_does_not_roll_back(server, engine):
    register(engine)
    events = capture(server, StatusChanged)
    async with station(server.ws_url, "CP-1") as cp:
        for minute, status in [(0, "Available"), (5, "Preparing"), (10, "Charging")]:
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                  status=status, timestamp=ts(minute)))
        # Queued offline, delivered late: older than what we know.
        await cp.call(call.StatusNotification(connector_id=1, error_code="GroundFailure",
                                              status="Faulted", timestamp=ts(7),
                                              info="RCD tripped"))
        # A repeat of the same notification is stored once.
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Charging", timestamp=ts(10)))
    with session_scope(engine) as session:
        history = service.status_history(session, station_id="CP-1")
        assert [h.status for h in history] == ["Charging", "Faulted", "Preparing", "Available"]
        live = service.list_connectors(session, station_ids=["CP-1"])
        assert [(c.connector_id, c.status) for c in live] == [(1, "Charging")]
    await eventually(lambda: len(events) == 4)
    faulted = next(e for e in events if e.status == "Faulted")
    assert faulted.current is False and faulted.error_code == "GroundFailure"


async def test_authorize_answers_from_the_id_tag_registry_and_hooks(server, engine) -> None:
    register(engine)
    add_tag(engine, "GOOD")
    add_tag(engine, "LOST", status=IdTagStatus.blocked)
    add_tag(engine, "OLD", expiry_date=datetime.now(UTC) - timedelta(days=1))
    add_tag(engine, "BROKE")
    add_tag(engine, "BUSY")
    server.runtime.central.authorization_hooks.append(
        lambda session, station_id, id_tag: "Blocked" if id_tag == "BROKE" else None
    )
    async with station(server.ws_url, "CP-1") as cp:
        await cp.call(call.StartTransaction(connector_id=2, id_tag="BUSY", meter_start=0,
                                            timestamp=ts()))

        async def status_of(tag: str) -> str:
            return (await cp.call(call.Authorize(id_tag=tag))).id_tag_info["status"]

        assert await status_of("GOOD") == "Accepted"
        assert await status_of("LOST") == "Blocked"
        assert await status_of("OLD") == "Expired"
        assert await status_of("NOBODY") == "Invalid"
        assert await status_of("BUSY") == "ConcurrentTx"
        assert await status_of("BROKE") == "Blocked"


async def test_data_transfer_goes_to_a_registered_handler_or_is_unknown(server, engine):
    register(engine)

    async def echo(station_id: str, message_id: str | None, data: str | None):
        return "Accepted", f"{station_id}:{message_id}:{data}"

    server.runtime.central.data_transfer_handlers[("com.chargedesk", "echo")] = echo
    async with station(server.ws_url, "CP-1") as cp:
        unknown_vendor = await cp.call(call.DataTransfer(vendor_id="com.example"))
        unknown_message = await cp.call(call.DataTransfer(vendor_id="com.chargedesk",
                                                          message_id="other"))
        echoed = await cp.call(call.DataTransfer(vendor_id="com.chargedesk",
                                                 message_id="echo", data="hej"))
    assert unknown_vendor.status == "UnknownVendorId"
    assert unknown_message.status == "UnknownMessageId"
    assert (echoed.status, echoed.data) == ("Accepted", "CP-1:echo:hej")


async def test_firmware_and_diagnostics_status_are_kept(server, engine) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        await cp.call(call.FirmwareStatusNotification(status="Installing"), suppress=False)
        await cp.call(call.DiagnosticsStatusNotification(status="Uploaded"), suppress=False)
    with session_scope(engine) as session:
        stored = session.get(Station, "CP-1")
        assert (stored.firmware_status, stored.diagnostics_status) == ("Installing", "Uploaded")


# ---------------------------------------------------------------- transactions


async def test_duplicate_start_and_stop_make_one_transaction(server, engine) -> None:
    register(engine)
    add_tag(engine, "TAG-1")
    events = capture(server, TransactionStarted, TransactionStopped)
    start = call.StartTransaction(connector_id=1, id_tag="TAG-1", meter_start=1000,
                                  timestamp=ts())
    async with station(server.ws_url, "CP-1") as cp:
        first = await cp.call(start)
        # The station lost its connection before our answer arrived, and retries.
        again = await cp.call(start)
        assert first.transaction_id == again.transaction_id
        assert first.id_tag_info["status"] == "Accepted"
        stop = call.StopTransaction(meter_stop=12500, timestamp=ts(60),
                                    transaction_id=first.transaction_id, reason="EVDisconnected",
                                    id_tag="TAG-1")
        await cp.call(stop)
        await cp.call(stop)
    with session_scope(engine) as session:
        transactions = session.exec(select(Transaction)).all()
        assert len(transactions) == 1
        assert transactions[0].energy_wh == 11500
        assert transactions[0].stop_reason == "EVDisconnected"
    await eventually(lambda: len(events) == 2)
    assert [type(e) for e in events] == [TransactionStarted, TransactionStopped]
    assert events[1].energy_wh == 11500


async def test_a_stop_for_an_unknown_transaction_is_answered_and_kept(server, engine) -> None:
    register(engine)
    async with station(server.ws_url, "CP-1") as cp:
        answer = await cp.call(call.StopTransaction(meter_stop=500, timestamp=ts(),
                                                    transaction_id=987654), suppress=False)
        assert answer.id_tag_info is None
    with session_scope(engine) as session:
        kept = session.exec(select(UnknownStop)).one()
        assert (kept.station_id, kept.transaction_id, kept.meter_stop_wh) == ("CP-1", 987654, 500)


def sample(value: str, measurand: str, unit: str, phase: str | None = None) -> dict[str, Any]:
    entry = {"value": value, "measurand": measurand, "unit": unit, "context": "Sample.Periodic"}
    if phase:
        entry["phase"] = phase
    return entry


async def test_meter_values_keep_every_measurand_once_in_timestamp_order(server, engine):
    register(engine)
    add_tag(engine, "TAG-1")
    events = capture(server, MeterValuesReceived)
    async with station(server.ws_url, "CP-1") as cp:
        tx = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-1", meter_start=0,
                                                 timestamp=ts()))
        late = {"timestamp": ts(5), "sampled_value": [
            sample("1.5", "Energy.Active.Import.Register", "kWh")]}
        current = {"timestamp": ts(10), "sampled_value": [
            sample("3000", "Energy.Active.Import.Register", "Wh"),
            sample("11", "Power.Active.Import", "kW"),
            *[sample(a, "Current.Import", "A", p) for a, p in
              [("16.1", "L1"), ("15.9", "L2"), ("16", "L3")]],
            sample("231.5", "Voltage", "V", "L1-N"),
            sample("64", "SoC", "Percent"),
        ]}
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx.transaction_id,
                                       meter_value=[current]))
        # Delivered late (queued while offline) and then repeated: stored once, in order.
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx.transaction_id,
                                       meter_value=[late]))
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx.transaction_id,
                                       meter_value=[late, current]))
        # transactionData repeats the last reading: still no double counting.
        await cp.call(call.StopTransaction(meter_stop=3000, timestamp=ts(11),
                                           transaction_id=tx.transaction_id,
                                           transaction_data=[current]))
    with session_scope(engine) as session:
        rows = service.list_meter_samples(session, transaction_id=tx.transaction_id)
        assert len(rows) == 8
        energy = [(r.timestamp.minute, r.value, r.unit) for r in rows
                  if r.measurand == "Energy.Active.Import.Register"]
        assert energy == [(5, Decimal("1500"), "Wh"), (10, Decimal("3000"), "Wh")]
        power = next(r for r in rows if r.measurand == "Power.Active.Import")
        assert (power.value, power.unit) == (Decimal("11000"), "W")
        phases = {r.phase: r.value for r in rows if r.measurand == "Current.Import"}
        assert phases == {"L1": Decimal("16.1"), "L2": Decimal("15.9"), "L3": Decimal("16")}
        assert next(r for r in rows if r.measurand == "SoC").unit == "Percent"
        assert len(session.exec(select(MeterSample)).all()) == 8
    await eventually(lambda: len(events) == 2)
    assert sum(len(e.samples) for e in events) == 8


# ---------------------------------------------------------------- liveness


async def test_a_silent_station_goes_offline_and_a_reconnect_restores_it(settings, engine):
    register(engine)
    live = start_server(settings.model_copy(update={"heartbeat_interval": 1}))
    events = capture(live, StationOnline, StationOffline)
    try:
        async with station(live.ws_url, "CP-1") as cp:
            await cp.boot()
            await eventually(lambda: any(isinstance(e, StationOffline) for e in events), 6)
            assert not live.runtime.central.is_online("CP-1")
        offline = next(e for e in events if isinstance(e, StationOffline))
        assert offline.reason == "missed heartbeats"
        async with station(live.ws_url, "CP-1") as cp:
            await cp.call(call.Heartbeat())
            assert live.runtime.central.is_online("CP-1")
    finally:
        live.stop()


async def test_a_second_connection_with_the_same_id_replaces_the_first(server, engine):
    register(engine)
    events = capture(server, StationOnline, StationOffline)
    async with station(server.ws_url, "CP-1") as old:
        await old.call(call.Heartbeat())
        async with station(server.ws_url, "CP-1") as new:
            await new.call(call.Heartbeat())
            await eventually(lambda: old._connection.close_code is not None)
            assert server.runtime.central.connections["CP-1"].id == "CP-1"
            with session_scope(engine) as session:
                assert session.get(Station, "CP-1").online
    await eventually(lambda: len(events) == 3)
    # Online, online again (the replacement), offline once the newest closes.
    assert [type(e) for e in events] == [StationOnline, StationOnline, StationOffline]


def test_status_events_table_dedupes_on_both_backends(engine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(engine) as session:
        service.register_station(session, station_id="CP-9", password=None)
        first = service.record_status(session, station_id="CP-9", connector_id=0,
                                      status="Available", error_code="NoError", timestamp=at)
        second = service.record_status(session, station_id="CP-9", connector_id=0,
                                       status="Available", error_code="NoError", timestamp=at)
    assert first == (True, True) and second == (False, False)
    with session_scope(engine) as session:
        assert len(session.exec(select(StatusEvent)).all()) == 1
