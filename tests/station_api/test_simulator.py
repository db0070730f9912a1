"""The simulated charge point against the bare central system on a loopback port."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from ocpp.v16 import call

from chargedesk.bench.bare_csms import Received, issue_commands, serve_bare
from station_api.profiles import parse_time
from station_api.simulator import Battery, Behaviour, SimulatedStation, run_simulation

CP = "CP1"


@pytest.fixture
async def csms():
    server = await serve_bare("127.0.0.1", 0, heartbeat_interval=1, record=True)
    yield server
    await server.close()


@pytest.fixture
async def station(csms):
    """Factory: a started, booted station; all are stopped after the test."""
    made: list[SimulatedStation] = []

    async def make(station_id: str = CP, *, wait: bool = True, **kwargs) -> SimulatedStation:
        kwargs.setdefault("meter_interval", 0.1)
        kwargs.setdefault("seed", 7)
        sim = SimulatedStation(station_id, csms.url, **kwargs)
        made.append(sim)
        await sim.start()
        if wait:
            await asyncio.wait_for(sim.booted.wait(), 2)
        return sim

    yield make
    for sim in made:
        await sim.stop()


def is_(action: str, **fields):
    def match(m: Received) -> bool:
        return m.action == action and all(m.payload.get(k) == v for k, v in fields.items())

    return match


def sampled(message: Received, measurand: str) -> list[float]:
    return values(message.payload["meter_value"][0], measurand)


def values(meter_value: dict, measurand: str) -> list[float]:
    return [float(v["value"]) for v in meter_value["sampled_value"] if v["measurand"] == measurand]


def power_is(watts: float):
    return lambda m: m.action == "MeterValues" and sampled(m, "Power.Active.Import") == [watts]


def statuses(csms, connector_id: int) -> list[str]:
    return [
        m.payload["status"]
        for m in csms.messages("StatusNotification")
        if m.payload["connector_id"] == connector_id
    ]


def tx_profile(limit: float, **extra) -> dict:
    return {
        "chargingProfileId": 10,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
        },
        **extra,
    }


async def test_boots_reports_every_connector_and_heartbeats_at_the_server_interval(csms, station):
    sim = await station(password="s3cret", connectors=2)
    boot = csms.messages("BootNotification")[0].payload
    assert (boot["charge_point_vendor"], boot["charge_point_model"]) == ("ChargeDesk", "SimCharger")
    assert boot["firmware_version"] and boot["charge_point_serial_number"]
    assert csms.authorization[CP] == "Basic Q1AxOnMzY3JldA=="  # CP1:s3cret
    for connector in (0, 1, 2):
        await csms.wait_for(is_("StatusNotification", connector_id=connector, status="Available"))
    await csms.wait_for(is_("Heartbeat"), timeout=2)
    assert sim.config["HeartbeatInterval"].value == "1"


async def test_a_pending_boot_is_retried_after_the_returned_interval(csms, station):
    csms.boot_status = "Pending"
    sim = await station(wait=False)
    await csms.wait_for(is_("BootNotification"))
    await asyncio.sleep(0.2)
    assert not sim.booted.is_set()
    csms.boot_status = "Accepted"
    await asyncio.wait_for(sim.booted.wait(), 2)
    assert len(csms.messages("BootNotification")) == 2


async def test_session_power_obeys_a_charging_profile_from_the_central_system(csms, station):
    sim = await station()
    tx = await sim.plug_in(1, "04A1B2", battery=Battery(capacity_kwh=60, soc=0.5))
    assert tx == 1
    start = csms.messages("StartTransaction")[0].payload
    assert (start["connector_id"], start["id_tag"], start["meter_start"]) == (1, "04A1B2", 0)
    await csms.wait_for(power_is(11_000.0))  # the car's own maximum

    result, _ = await csms.command(
        CP, call.SetChargingProfile(connector_id=1, cs_charging_profiles=tx_profile(10.0))
    )
    assert result.status == "Accepted"
    limited = await csms.wait_for(power_is(6_900.0))  # 10 A x 3 phases x 230 V
    assert limited.payload["transaction_id"] == tx
    assert sampled(limited, "Current.Import") == [10.0, 10.0, 10.0]
    assert sampled(limited, "Voltage") == [230.0, 230.0, 230.0]
    assert 50.0 <= sampled(limited, "SoC")[0] < 51.0
    assert {v["context"] for v in limited.payload["meter_value"][0]["sampled_value"]} == {
        "Sample.Periodic"
    }

    await sim.stop_charging(1, reason="Local")
    stop = (await csms.wait_for(is_("StopTransaction"))).payload
    assert (stop["transaction_id"], stop["reason"], stop["id_tag"]) == (tx, "Local", "04A1B2")
    last = stop["transaction_data"][-1]
    assert values(last, "Energy.Active.Import.Register") == [stop["meter_stop"]]
    contexts = [mv["sampled_value"][0]["context"] for mv in stop["transaction_data"]]
    assert contexts == ["Transaction.Begin", "Transaction.End"]
    assert sim.profiles == {}  # a TxProfile ends with its transaction

    await sim.unplug(1)
    await csms.wait_for(lambda _: statuses(csms, 1).count("Available") == 2)
    assert statuses(csms, 1) == ["Available", "Preparing", "Charging", "Finishing", "Available"]


async def test_a_full_car_suspends_the_session(csms, station):
    assert Battery(soc=0.9, max_power_w=10_000).acceptance_w() == pytest.approx(5_000)
    sim = await station()
    await sim.plug_in(1, "TAG", battery=Battery(capacity_kwh=0.001, soc=0.95))
    await csms.wait_for(is_("StatusNotification", connector_id=1, status="SuspendedEV"))
    await csms.wait_for(power_is(0.0))


async def test_stuck_cable_lock_answers_unlock_failed(csms, station):
    sim = await station(behaviour=Behaviour(unlock_fails=True))
    await sim.plug_in(1, "TAG")
    result, _ = await csms.command(CP, call.UnlockConnector(connector_id=1))
    assert result.status == "UnlockFailed"
    assert sim.connectors[1].session is not None

    sim.behaviour.unlock_fails = False
    result, _ = await csms.command(CP, call.UnlockConnector(connector_id=1))
    assert result.status == "Unlocked"
    await csms.wait_for(is_("StopTransaction", reason="UnlockCommand"))


async def test_transaction_messages_queued_offline_arrive_after_reconnect_with_their_times(
    csms, station
):
    sim = await station()
    tx = await sim.plug_in(1, "TAG")
    await csms.wait_for(is_("MeterValues", transaction_id=tx))
    dropped = datetime.now(UTC)
    await sim.drop_connection(offline_seconds=0.6)
    await asyncio.sleep(0.35)
    stopped = datetime.now(UTC)
    await asyncio.wait_for(sim.stop_charging(1, reason="Local"), 3)  # returns once delivered

    reboot = csms.messages("BootNotification")[1].received_at
    backlog = [
        m
        for m in csms.messages("MeterValues")
        if parse_time(m.payload["meter_value"][0]["timestamp"]) > dropped
    ]
    assert len(backlog) >= 2
    assert all(m.received_at > reboot for m in backlog)
    stamps = [parse_time(m.payload["meter_value"][0]["timestamp"]) for m in backlog]
    assert stamps == sorted(stamps) and stamps[0] < reboot - timedelta(seconds=0.2)
    stop = csms.messages("StopTransaction")[0]
    assert stop.received_at > reboot
    assert dropped < parse_time(stop.payload["timestamp"]) <= stopped + timedelta(seconds=0.05)
    assert stop.payload["transaction_id"] == tx
    assert sim.counters.connects == 2


async def test_an_unresponsive_station_receives_commands_but_never_answers(csms, station):
    sim = await station(behaviour=Behaviour(unresponsive=True))
    with pytest.raises(TimeoutError):
        await csms.command(CP, call.TriggerMessage(requested_message="Heartbeat"), timeout=0.3)
    assert (sim.counters.commands_received, sim.counters.commands_answered) == (1, 0)

    sim.behaviour.unresponsive = False
    result, _ = await csms.command(CP, call.TriggerMessage(requested_message="Heartbeat"))
    assert result.status == "Accepted"
    await csms.wait_for(is_("Heartbeat"))  # the triggered message really follows


async def test_trigger_message_sends_what_was_asked_for(csms, station):
    sim = await station()
    await sim.plug_in(2, "TAG")
    result, _ = await csms.command(
        CP, call.TriggerMessage(requested_message="MeterValues", connector_id=2)
    )
    assert result.status == "Accepted"
    triggered = await csms.wait_for(
        lambda m: (
            m.action == "MeterValues"
            and m.payload["meter_value"][0]["sampled_value"][0]["context"] == "Trigger"
        )
    )
    assert triggered.payload["connector_id"] == 2
    rejected, _ = await csms.command(
        CP, call.TriggerMessage(requested_message="StatusNotification", connector_id=7)
    )
    assert rejected.status == "Rejected"


async def test_configuration_is_a_real_key_store(csms, station):
    sim = await station()
    everything, _ = await csms.command(CP, call.GetConfiguration())
    keys = {k["key"]: k for k in everything.configuration_key}
    assert keys["NumberOfConnectors"] == {
        "key": "NumberOfConnectors",
        "readonly": True,
        "value": "2",
    }
    assert "value" not in keys["AuthorizationKey"]  # write-only
    for key in (
        "ChargingScheduleMaxPeriods",
        "ChargingScheduleAllowedChargingRateUnit",
        "ChargeProfileMaxStackLevel",
        "MaxChargingProfilesInstalled",
        "MeterValueSampleInterval",
    ):
        assert key in keys

    async def change(key: str, value: str) -> str:
        result, _ = await csms.command(CP, call.ChangeConfiguration(key=key, value=value))
        return result.status

    assert await change("HeartbeatInterval", "120") == "Accepted"
    assert await change("NumberOfConnectors", "4") == "Rejected"
    assert await change("HeartbeatInterval", "soon") == "Rejected"
    assert await change("NoSuchKey", "1") == "NotSupported"
    assert await change("AuthorizationKey", "0123456789abcdef") == "Accepted"
    assert sim.password == "0123456789abcdef"
    some, _ = await csms.command(CP, call.GetConfiguration(key=["HeartbeatInterval", "Nope"]))
    assert some.configuration_key[0]["value"] == "120"
    assert some.unknown_key == ["Nope"]


async def test_remote_start_installs_its_profile_and_remote_stop_ends_it(csms, station):
    sim = await station()
    result, _ = await csms.command(
        CP,
        call.RemoteStartTransaction(
            id_tag="APP-1", connector_id=2, charging_profile=tx_profile(8.0)
        ),
    )
    assert result.status == "Accepted"
    start = await csms.wait_for(is_("StartTransaction", connector_id=2))
    assert start.payload["id_tag"] == "APP-1"
    await csms.wait_for(power_is(5_520.0))  # 8 A x 3 x 230 V
    tx = sim.connectors[2].session.transaction_id

    unknown, _ = await csms.command(CP, call.RemoteStopTransaction(transaction_id=tx + 100))
    assert unknown.status == "Rejected"
    stopped, _ = await csms.command(CP, call.RemoteStopTransaction(transaction_id=tx))
    assert stopped.status == "Accepted"
    await csms.wait_for(is_("StopTransaction", transaction_id=tx, reason="Remote"))


async def test_change_availability_waits_for_a_running_transaction(csms, station):
    sim = await station()
    await sim.plug_in(1, "TAG")
    result, _ = await csms.command(CP, call.ChangeAvailability(connector_id=0, type="Inoperative"))
    assert result.status == "Scheduled"
    await csms.wait_for(is_("StatusNotification", connector_id=2, status="Unavailable"))
    assert sim.connectors[1].session is not None
    await sim.stop_charging(1)
    await csms.wait_for(is_("StatusNotification", connector_id=1, status="Unavailable"))


async def test_composite_schedule_reports_the_charge_point_cap(csms, station):
    await station()
    cap = {
        "chargingProfileId": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            "startSchedule": "2020-01-01T00:00:00Z",
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
        },
    }
    wrong, _ = await csms.command(
        CP, call.SetChargingProfile(connector_id=1, cs_charging_profiles=cap)
    )
    assert wrong.status == "Rejected"
    ok, _ = await csms.command(
        CP, call.SetChargingProfile(connector_id=0, cs_charging_profiles=cap)
    )
    assert ok.status == "Accepted"
    result, _ = await csms.command(
        CP, call.GetCompositeSchedule(connector_id=1, duration=3600, charging_rate_unit="W")
    )
    assert result.status == "Accepted"
    periods = result.charging_schedule["charging_schedule_period"]
    assert [(p["start_period"], float(p["limit"])) for p in periods] == [(0, 11_040.0)]
    cleared, _ = await csms.command(CP, call.ClearChargingProfile(id=1))
    assert cleared.status == "Accepted"
    again, _ = await csms.command(CP, call.ClearChargingProfile(id=1))
    assert again.status == "Unknown"


async def test_faults_are_reported_with_their_error_code(csms, station):
    sim = await station(behaviour=Behaviour(faults={1: "ConnectorLockFailure"}))
    await csms.wait_for(
        is_(
            "StatusNotification",
            connector_id=1,
            status="Faulted",
            error_code="ConnectorLockFailure",
        )
    )
    await sim.set_fault(2, "GroundFailure")
    await csms.wait_for(
        is_("StatusNotification", connector_id=2, status="Faulted", error_code="GroundFailure")
    )
    reserve = call.ReserveNow(
        connector_id=2, expiry_date="2099-01-01T00:00:00Z", id_tag="T", reservation_id=1
    )
    assert (await csms.command(CP, reserve))[0].status == "Faulted"
    await sim.clear_fault(2)
    await csms.wait_for(is_("StatusNotification", connector_id=2, status="Available"))


async def test_reservations_lists_and_data_transfer(csms, station):
    sim = await station()
    expiry = "2099-01-01T00:00:00Z"
    reserve = call.ReserveNow(connector_id=1, expiry_date=expiry, id_tag="T", reservation_id=5)
    assert (await csms.command(CP, reserve))[0].status == "Accepted"
    await csms.wait_for(is_("StatusNotification", connector_id=1, status="Reserved"))
    assert (await csms.command(CP, call.CancelReservation(reservation_id=5)))[0].status == (
        "Accepted"
    )
    assert (await csms.command(CP, call.CancelReservation(reservation_id=5)))[0].status == (
        "Rejected"
    )

    full = call.SendLocalList(
        list_version=3,
        update_type="Full",
        local_authorization_list=[{"idTag": "A", "idTagInfo": {"status": "Accepted"}}],
    )
    assert (await csms.command(CP, full))[0].status == "Accepted"
    assert (await csms.command(CP, call.GetLocalListVersion()))[0].list_version == 3
    stale = call.SendLocalList(list_version=3, update_type="Differential")
    assert (await csms.command(CP, stale))[0].status == "VersionMismatch"
    assert sim.local_list == {"A": {"status": "Accepted"}}
    assert (await csms.command(CP, call.ClearCache()))[0].status == "Accepted"

    other = call.DataTransfer(vendor_id="Acme", message_id="x")
    assert (await csms.command(CP, other))[0].status == "UnknownVendorId"
    ours = call.DataTransfer(vendor_id="ChargeDesk", data="ping")
    assert (await csms.command(CP, ours))[0].data == "ping"


async def test_firmware_and_diagnostics_report_their_progress(csms, station):
    await station(behaviour=Behaviour(step_seconds=0.02))
    now = datetime.now(UTC).isoformat()
    await csms.command(
        CP, call.UpdateFirmware(location="https://fw.example/2.0.0", retrieve_date=now)
    )
    diagnostics, _ = await csms.command(CP, call.GetDiagnostics(location="ftp://logs.example/"))
    assert diagnostics.file_name.startswith(CP)
    await csms.wait_for(is_("FirmwareStatusNotification", status="Installed"))
    await csms.wait_for(is_("DiagnosticsStatusNotification", status="Uploaded"))
    firmware = [m.payload["status"] for m in csms.messages("FirmwareStatusNotification")]
    assert firmware == ["Downloading", "Downloaded", "Installing", "Installed"]


async def test_reset_ends_transactions_reconnects_and_boots_again(csms, station):
    sim = await station(behaviour=Behaviour(reboot_seconds=0.05))
    await sim.plug_in(1, "TAG")
    result, _ = await csms.command(CP, call.Reset(type="Soft"))
    assert result.status == "Accepted"
    await csms.wait_for(is_("StopTransaction", reason="SoftReset"))
    await csms.wait_for(lambda m: len(csms.messages("BootNotification")) == 2)
    await asyncio.wait_for(sim.booted.wait(), 2)


async def test_run_simulation_drives_sessions_on_many_stations(csms):
    result = await run_simulation(
        csms.url,
        stations=5,
        connectors=2,
        duration=1.5,
        meter_interval=0.2,
        session_seconds=(0.3, 0.5),
        idle_seconds=(0.05, 0.2),
    )
    assert (result.stations, result.counters.connects) == (5, 5)
    assert result.counters.transactions_started >= 5
    assert result.counters.errors_received == 0
    assert len(csms.messages("StartTransaction")) >= 5
    assert len(csms.messages("MeterValues")) > 0


async def test_bare_csms_times_commands_at_a_steady_rate(csms, station):
    await station("CP1")
    await station("CP2")
    stats = await issue_commands(csms, rate=40, duration=0.5)
    summary = stats.summary()
    assert summary["sent"] == 20 and summary["answered"] == 20
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
