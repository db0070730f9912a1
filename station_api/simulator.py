"""Simulated OCPP 1.6J charge points, for tests, demos and load benchmarks.

A `SimulatedStation` is the client side of an OCPP connection: it boots, heartbeats, reports
connector status, runs charging sessions with a battery model whose power follows the
installed charging profiles, and answers every command a 1.6 central system can send.
Misbehaviour (a stuck cable lock, a fault, a mute station, a dropped link) is switched on
through `Behaviour`, so tests can pin down how the central system copes.

Everything a station sends goes through one ordered outbox drained by a single sender task:
the ocpp library validates payloads in a thread pool before sending, so concurrent senders
would reorder messages. Transaction messages (StartTransaction, MeterValues,
StopTransaction) survive a lost connection and are delivered after the next boot with their
original timestamps; everything else is dropped while offline, as it is stale by then.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    AvailabilityStatus,
    AvailabilityType,
    CancelReservationStatus,
    ChargePointStatus,
    ChargingProfileStatus,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    DiagnosticsStatus,
    FirmwareStatus,
    GetCompositeScheduleStatus,
    MessageTrigger,
    Reason,
    RegistrationStatus,
    RemoteStartStopStatus,
    ReservationStatus,
    ResetStatus,
    ResetType,
    TriggerMessageStatus,
    UnlockStatus,
    UpdateStatus,
    UpdateType,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from station_api import profiles
from station_api.profiles import VOLTAGE, format_time

log = logging.getLogger(__name__)

VENDOR = "ChargeDesk"
MODEL = "SimCharger"
FIRMWARE = "1.4.2"


def _now() -> datetime:
    return datetime.now(UTC)


class NotConnected(Exception):
    """The station has no open connection to the central system."""


@dataclass
class Behaviour:
    """Misbehaviour switches; set at construction or flip them on a running station."""

    unlock_fails: bool = False
    """UnlockConnector answers UnlockFailed: the cable lock is stuck."""
    unresponsive: bool = False
    """Commands from the central system are received but never answered."""
    faults: dict[int, str] = field(default_factory=dict)
    """Connector id to OCPP errorCode for connectors that report Faulted."""
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    reboot_seconds: float = 0.2
    """How long a Reset keeps the station off the network."""
    step_seconds: float = 0.5
    """Pace of firmware and diagnostics status notifications."""


@dataclass
class Counters:
    """What a station (or a whole simulation) has exchanged with the central system."""

    calls_sent: int = 0
    results_received: int = 0
    errors_received: int = 0
    timeouts: int = 0
    commands_received: int = 0
    commands_answered: int = 0
    connects: int = 0
    transactions_started: int = 0
    transactions_stopped: int = 0

    def add(self, other: Counters) -> None:
        """Accumulate another set of counters into this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Battery:
    """An EV battery: full power up to `taper_from`, then linearly down to 0 at full."""

    capacity_kwh: float = 60.0
    soc: float = 0.3
    max_power_w: float = 11_000.0
    taper_from: float = 0.8

    def acceptance_w(self) -> float:
        """The power the car draws when the station offers unlimited power."""
        if self.soc >= 1.0:
            return 0.0
        if self.soc <= self.taper_from:
            return self.max_power_w
        return self.max_power_w * (1.0 - self.soc) / (1.0 - self.taper_from)

    def charge(self, energy_wh: float) -> None:
        """Take `energy_wh` into the battery."""
        self.soc = min(1.0, self.soc + energy_wh / (self.capacity_kwh * 1000.0))


@dataclass
class Session:
    """One transaction; its id is known once the central system answers StartTransaction."""

    connector_id: int
    id_tag: str
    meter_start: int
    started: datetime
    reservation_id: int | None = None
    transaction_id: int | None = None
    begin: dict[str, Any] | None = None
    last: dict[str, Any] | None = None


@dataclass
class Reservation:
    reservation_id: int
    id_tag: str
    expires: datetime
    timer: asyncio.TimerHandle | None = None


@dataclass
class Connector:
    """The state of one connector and the car on it."""

    connector_id: int
    status: str = ChargePointStatus.available
    error_code: str = "NoError"
    plugged: bool = False
    operative: bool = True
    pending_operative: bool | None = None
    battery: Battery | None = None
    session: Session | None = None
    reservation: Reservation | None = None
    energy_wh: float = 0.0
    power_w: float = 0.0
    updated: float = 0.0
    meter_task: asyncio.Task[None] | None = None


@dataclass
class _ConfigKey:
    value: str
    readonly: bool = False
    kind: str = "str"
    write_only: bool = False


@dataclass
class _Outgoing:
    build: Callable[[], Any]
    done: asyncio.Future[Any]
    persistent: bool
    on_result: Callable[[Any], None] | None = None
    attempts: int = 0


def _default_config(connectors: int, heartbeat: float, meter_interval: float) -> dict:
    def rw(value: Any, kind: str = "int") -> _ConfigKey:
        return _ConfigKey(str(value).lower() if kind == "bool" else str(value), False, kind)

    def ro(value: Any) -> _ConfigKey:
        return _ConfigKey(str(value), True)

    return {
        "HeartbeatInterval": rw(_plain(heartbeat)),
        "MeterValueSampleInterval": rw(_plain(meter_interval)),
        "ConnectionTimeOut": rw(60),
        "ResetRetries": rw(3),
        "TransactionMessageAttempts": rw(3),
        "TransactionMessageRetryInterval": rw(10),
        "AuthorizeRemoteTxRequests": rw(False, "bool"),
        "LocalAuthorizeOffline": rw(True, "bool"),
        "LocalAuthListEnabled": rw(True, "bool"),
        "StopTransactionOnEVSideDisconnect": rw(True, "bool"),
        "UnlockConnectorOnEVSideDisconnect": rw(True, "bool"),
        "MeterValuesSampledData": rw(
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC",
            "str",
        ),
        "AuthorizationKey": _ConfigKey("", kind="str", write_only=True),
        "NumberOfConnectors": ro(connectors),
        "ChargingScheduleMaxPeriods": ro(24),
        "ChargingScheduleAllowedChargingRateUnit": ro("Current,Power"),
        "ChargeProfileMaxStackLevel": ro(10),
        "MaxChargingProfilesInstalled": ro(20),
        "LocalAuthListMaxLength": ro(100),
        "SendLocalListMaxLength": ro(100),
        "GetConfigurationMaxKeys": ro(50),
        "ReserveConnectorZeroSupported": ro("false"),
        "SupportedFeatureProfiles": ro(
            "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,"
            "RemoteTrigger"
        ),
    }


def _plain(number: float) -> str:
    """A number as a config value: no trailing .0 for whole numbers."""
    return str(int(number)) if float(number).is_integer() else str(number)


def _valid_value(kind: str, value: str) -> bool:
    if kind == "bool":
        return value.lower() in ("true", "false")
    if kind == "int":
        try:
            return float(value) >= 0
        except ValueError:
            return False
    return True


class _Protocol(ChargePoint):
    """One websocket connection's OCPP endpoint: answers the central system's commands.

    Handlers decide and reply; anything the station must *send* as a consequence is queued as
    a follow-up that runs after the reply is on the wire, because a handler that awaited its
    own CALL would block the receive loop that has to deliver that CALL's answer.
    """

    def __init__(self, station: SimulatedStation, connection: ClientConnection) -> None:
        super().__init__(station.station_id, connection, response_timeout=station.response_timeout)
        self.station = station
        self._follow_ups: list[Callable[[], Any]] = []

    async def route_message(self, raw_msg: str) -> None:
        station = self.station
        is_call = raw_msg.lstrip("[ \t\r\n")[:1] == "2"
        if is_call:
            station.counters.commands_received += 1
            if station.behaviour.unresponsive:
                return
        self._follow_ups = []
        await super().route_message(raw_msg)
        if is_call:
            station.counters.commands_answered += 1
            for follow_up in self._follow_ups:
                result = follow_up()
                if inspect.isawaitable(result):
                    station._spawn(result)

    def _then(self, follow_up: Callable[[], Any]) -> None:
        self._follow_ups.append(follow_up)

    # Core profile

    @on(Action.reset)
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        reason = Reason.hard_reset if type == ResetType.hard else Reason.soft_reset
        self._then(lambda: self.station._reboot(reason))
        return call_result.Reset(status=ResetStatus.accepted)

    @on(Action.unlock_connector)
    def on_unlock_connector(self, connector_id: int, **_: Any) -> call_result.UnlockConnector:
        station = self.station
        if connector_id not in station.connectors:
            return call_result.UnlockConnector(status=UnlockStatus.not_supported)
        if station.behaviour.unlock_fails:
            return call_result.UnlockConnector(status=UnlockStatus.unlock_failed)
        if station.connectors[connector_id].session is not None:
            self._then(lambda: station.stop_charging(connector_id, reason=Reason.unlock_command))
        return call_result.UnlockConnector(status=UnlockStatus.unlocked)

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict | None = None,
        **_: Any,
    ) -> call_result.RemoteStartTransaction:
        station = self.station
        rejected = call_result.RemoteStartTransaction(status=RemoteStartStopStatus.rejected)
        if charging_profile is not None:
            charging_profile = profiles.normalise_profile(charging_profile)
            if charging_profile["chargingProfilePurpose"] != profiles.TX:
                return rejected
        if connector_id is None:
            free = [c.connector_id for c in station.connectors.values() if station._can_start(c)]
            connector_id = free[0] if free else None
        if connector_id not in station.connectors:
            return rejected
        if not station._can_start(station.connectors[connector_id], id_tag):
            return rejected
        chosen = connector_id
        self._then(lambda: station._remote_start(chosen, id_tag, charging_profile))
        return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.remote_stop_transaction)
    def on_remote_stop_transaction(
        self, transaction_id: int, **_: Any
    ) -> call_result.RemoteStopTransaction:
        station = self.station
        for c in station.connectors.values():
            if c.session is not None and c.session.transaction_id == transaction_id:
                cid = c.connector_id
                self._then(lambda cid=cid: station.stop_charging(cid, reason=Reason.remote))
                return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)
        return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.rejected)

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str, **_: Any
    ) -> call_result.ChangeAvailability:
        station = self.station
        if connector_id != 0 and connector_id not in station.connectors:
            return call_result.ChangeAvailability(status=AvailabilityStatus.rejected)
        operative = type == AvailabilityType.operative
        targets = list(station.connectors) if connector_id == 0 else [connector_id]
        if connector_id == 0:
            station.operative = operative
        scheduled = False
        for cid in targets:
            c = station.connectors[cid]
            if c.session is not None and not operative:
                # Never cut a running transaction: the change waits for it to end.
                c.pending_operative = operative
                scheduled = True
            else:
                c.operative = operative
        self._then(station._report_all_statuses)
        status = AvailabilityStatus.scheduled if scheduled else AvailabilityStatus.accepted
        return call_result.ChangeAvailability(status=status)

    @on(Action.get_configuration)
    def on_get_configuration(
        self, key: list[str] | None = None, **_: Any
    ) -> call_result.GetConfiguration:
        config = self.station.config
        wanted = key if key else list(config)
        known = [k for k in wanted if k in config]
        entries = []
        for name in known:
            entry: dict[str, Any] = {"key": name, "readonly": config[name].readonly}
            if not config[name].write_only:
                entry["value"] = config[name].value
            entries.append(entry)
        unknown = [k for k in wanted if k not in config]
        return call_result.GetConfiguration(configuration_key=entries, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(
        self, key: str, value: str, **_: Any
    ) -> call_result.ChangeConfiguration:
        station = self.station
        entry = station.config.get(key)
        if entry is None:
            return call_result.ChangeConfiguration(status=ConfigurationStatus.not_supported)
        if entry.readonly or not _valid_value(entry.kind, value):
            return call_result.ChangeConfiguration(status=ConfigurationStatus.rejected)
        entry.value = value.lower() if entry.kind == "bool" else value
        if key == "HeartbeatInterval":
            station._config_changed.set()
        elif key == "AuthorizationKey":
            # Security profile 1: the key is the Basic-auth password from the next connect on.
            station.password = value
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)

    @on(Action.clear_cache)
    def on_clear_cache(self, **_: Any) -> call_result.ClearCache:
        self.station.auth_cache.clear()
        return call_result.ClearCache(status=ClearCacheStatus.accepted)

    @on(Action.data_transfer)
    def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None, **_: Any
    ) -> call_result.DataTransfer:
        if vendor_id != VENDOR:
            return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)
        return call_result.DataTransfer(status=DataTransferStatus.accepted, data=data)

    # Remote trigger

    @on(Action.trigger_message)
    def on_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> call_result.TriggerMessage:
        station = self.station
        if (
            connector_id is not None
            and connector_id != 0
            and (connector_id not in station.connectors)
        ):
            return call_result.TriggerMessage(status=TriggerMessageStatus.rejected)
        send = {
            MessageTrigger.boot_notification: lambda: station._send(station._boot_payload()),
            MessageTrigger.heartbeat: lambda: station._send(call.Heartbeat()),
            MessageTrigger.meter_values: lambda: station._send_meter_values(connector_id),
            MessageTrigger.status_notification: lambda: station._report_status(connector_id),
            MessageTrigger.diagnostics_status_notification: lambda: station._send(
                call.DiagnosticsStatusNotification(status=station.diagnostics_status)
            ),
            MessageTrigger.firmware_status_notification: lambda: station._send(
                call.FirmwareStatusNotification(status=station.firmware_status)
            ),
        }.get(requested_message)
        if send is None:
            return call_result.TriggerMessage(status=TriggerMessageStatus.not_implemented)
        self._then(send)
        return call_result.TriggerMessage(status=TriggerMessageStatus.accepted)

    # Smart charging

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict, **_: Any
    ) -> call_result.SetChargingProfile:
        station = self.station
        profile = profiles.normalise_profile(cs_charging_profiles)
        connector = station.connectors.get(connector_id)
        session = connector.session if connector is not None else None
        reason = profiles.rejection_reason(
            station.profiles,
            connector_id,
            profile,
            active_transaction_id=None if session is None else session.transaction_id or -1,
            limits=station.profile_limits,
        )
        if reason is not None:
            log.info("%s: SetChargingProfile rejected: %s", station.station_id, reason)
            return call_result.SetChargingProfile(status=ChargingProfileStatus.rejected)
        station.profiles = profiles.install_profile(station.profiles, connector_id, profile)
        self._then(station._follow_limits)
        return call_result.SetChargingProfile(status=ChargingProfileStatus.accepted)

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> call_result.ClearChargingProfile:
        station = self.station
        station.profiles, removed = profiles.clear_profiles(
            station.profiles,
            profile_id=id,
            connector_id=connector_id,
            purpose=charging_profile_purpose,
            stack_level=stack_level,
        )
        if not removed:
            return call_result.ClearChargingProfile(status=ClearChargingProfileStatus.unknown)
        self._then(station._follow_limits)
        return call_result.ClearChargingProfile(status=ClearChargingProfileStatus.accepted)

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> call_result.GetCompositeSchedule:
        station = self.station
        if connector_id != 0 and connector_id not in station.connectors:
            return call_result.GetCompositeSchedule(status=GetCompositeScheduleStatus.rejected)
        start = _now()
        session = station.connectors[connector_id].session if connector_id else None
        schedule = profiles.composite_schedule(
            station.profiles,
            connector_id,
            start,
            duration,
            unit=charging_rate_unit or "A",
            transaction_id=None if session is None else session.transaction_id,
            transaction_start=None if session is None else session.started,
            max_current=station.max_current * (len(station.connectors) if not connector_id else 1),
        )
        return call_result.GetCompositeSchedule(
            status=GetCompositeScheduleStatus.accepted,
            connector_id=connector_id,
            schedule_start=format_time(start),
            charging_schedule=schedule,
        )

    # Reservation

    @on(Action.reserve_now)
    def on_reserve_now(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        **_: Any,
    ) -> call_result.ReserveNow:
        station = self.station
        c = station.connectors.get(connector_id)
        if c is None:
            return call_result.ReserveNow(status=ReservationStatus.rejected)
        if c.connector_id in station.behaviour.faults:
            return call_result.ReserveNow(status=ReservationStatus.faulted)
        if not c.operative:
            return call_result.ReserveNow(status=ReservationStatus.unavailable)
        mine = c.reservation is not None and c.reservation.reservation_id == reservation_id
        if c.session is not None or c.plugged or (c.reservation is not None and not mine):
            return call_result.ReserveNow(status=ReservationStatus.occupied)
        station._reserve(c, Reservation(reservation_id, id_tag, profiles.parse_time(expiry_date)))
        self._then(lambda: station._report_status(connector_id))
        return call_result.ReserveNow(status=ReservationStatus.accepted)

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int, **_: Any) -> call_result.CancelReservation:
        station = self.station
        for c in station.connectors.values():
            if c.reservation is not None and c.reservation.reservation_id == reservation_id:
                station._release(c)
                cid = c.connector_id
                self._then(lambda cid=cid: station._report_status(cid))
                return call_result.CancelReservation(status=CancelReservationStatus.accepted)
        return call_result.CancelReservation(status=CancelReservationStatus.rejected)

    # Local authorization list

    @on(Action.send_local_list)
    def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict] | None = None,
        **_: Any,
    ) -> call_result.SendLocalList:
        station = self.station
        if station.config["LocalAuthListEnabled"].value != "true":
            return call_result.SendLocalList(status=UpdateStatus.not_supported)
        entries = local_authorization_list or []
        if update_type == UpdateType.full:
            station.local_list = {}
        elif list_version <= station.local_list_version:
            return call_result.SendLocalList(status=UpdateStatus.version_mismatch)
        for entry in entries:
            if entry.get("id_tag_info") is None:
                station.local_list.pop(entry["id_tag"], None)
            else:
                station.local_list[entry["id_tag"]] = entry["id_tag_info"]
        station.local_list_version = list_version
        return call_result.SendLocalList(status=UpdateStatus.accepted)

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_: Any) -> call_result.GetLocalListVersion:
        return call_result.GetLocalListVersion(list_version=self.station.local_list_version)

    # Firmware management

    @on(Action.get_diagnostics)
    def on_get_diagnostics(self, location: str, **_: Any) -> call_result.GetDiagnostics:
        station = self.station
        name = f"{station.station_id}-{_now():%Y%m%dT%H%M%S}.log"
        self._then(station._upload_diagnostics)
        return call_result.GetDiagnostics(file_name=name)

    @on(Action.update_firmware)
    def on_update_firmware(
        self, location: str, retrieve_date: str, **_: Any
    ) -> call_result.UpdateFirmware:
        station = self.station
        when = profiles.parse_time(retrieve_date)
        self._then(lambda: station._update_firmware(location, when))
        return call_result.UpdateFirmware()


class SimulatedStation:
    """An OCPP 1.6J charge point with `connectors` connectors, driven from tests or scenarios.

    `heartbeat_interval=None` obeys the interval the central system returns at boot.
    `meter_interval` is the MeterValueSampleInterval in seconds (fractions allowed for tests).
    """

    def __init__(
        self,
        station_id: str,
        url: str,
        *,
        password: str | None = None,
        connectors: int = 2,
        meter_interval: float = 60.0,
        heartbeat_interval: float | None = None,
        seed: int | None = None,
        behaviour: Behaviour | None = None,
        max_current: float = 32.0,
        response_timeout: float = 30.0,
    ) -> None:
        self.station_id = station_id
        self.url = url.rstrip("/")
        self.password = password
        self.behaviour = behaviour or Behaviour()
        self.max_current = max_current
        self.response_timeout = response_timeout
        self.heartbeat_override = heartbeat_interval
        self.counters = Counters()
        self.connected = asyncio.Event()
        self.booted = asyncio.Event()
        self.operative = True
        self.connectors = {i: Connector(i) for i in range(1, connectors + 1)}
        self.config = _default_config(connectors, heartbeat_interval or 0, meter_interval)
        self.profiles: dict[int, list[profiles.Profile]] = {}
        self.profile_limits = profiles.StationLimits(number_of_connectors=connectors)
        self.local_list: dict[str, dict] = {}
        self.local_list_version = 0
        self.auth_cache: dict[str, dict] = {}
        self.firmware_version = FIRMWARE
        self.firmware_status = FirmwareStatus.idle
        self.diagnostics_status = DiagnosticsStatus.idle
        self._rng = random.Random(seed)
        self._serial = f"SIM-{self._rng.randrange(16**8):08X}"
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._config_changed = asyncio.Event()
        self._protocol: _Protocol | None = None
        self._connection: ClientConnection | None = None
        self._closed: asyncio.Future[None] | None = None
        self._offline_until = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # Lifecycle

    async def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"station-{self.station_id}")

    async def stop(self) -> None:
        """Disconnect for good and cancel everything the station runs."""
        tasks = [t for t in (self._runner, *self._background) if t is not None]
        tasks += [c.meter_task for c in self.connectors.values() if c.meter_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = None

    async def drop_connection(self, offline_seconds: float = 1.0) -> None:
        """Lose the link abruptly and stay offline for `offline_seconds`."""
        self._offline_until = asyncio.get_running_loop().time() + offline_seconds
        connection = self._connection
        if connection is not None:
            connection.transport.abort()
        self.connected.clear()
        self.booted.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.behaviour.reconnect_min
        while True:
            pause = self._offline_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                async with connect(
                    f"{self.url}/{self.station_id}",
                    subprotocols=["ocpp1.6"],
                    additional_headers=self._auth_headers(),
                    open_timeout=30,
                    close_timeout=2,
                ) as connection:
                    backoff = self.behaviour.reconnect_min
                    await self._serve(connection)
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as e:
                log.debug("%s: connection lost: %r", self.station_id, e)
            except Exception:
                # A simulator bug must not take the station off the network for good.
                log.exception("%s: connection failed", self.station_id)
            if self._offline_until > loop.time():
                continue
            # Jitter spreads a whole network's reconnects after a central-system restart.
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(backoff * 2, self.behaviour.reconnect_max)

    def _auth_headers(self) -> dict[str, str] | None:
        if not self.password:
            return None
        token = base64.b64encode(f"{self.station_id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _serve(self, connection: ClientConnection) -> None:
        """Run one connection until it closes."""
        protocol = _Protocol(self, connection)
        self._protocol, self._connection = protocol, connection
        self._closed = asyncio.get_running_loop().create_future()
        self.counters.connects += 1
        self.connected.set()
        reader = asyncio.create_task(protocol.start())
        online = asyncio.create_task(self._online())
        try:
            done, _ = await asyncio.wait({reader, online}, return_when=asyncio.FIRST_COMPLETED)
            failure = online.exception() if online in done else None
            if failure is not None and not isinstance(failure, NotConnected):
                log.warning("%s: %r", self.station_id, failure)
        finally:
            self.connected.clear()
            self.booted.clear()
            self._protocol = self._connection = None
            self._closed.set_result(None)
            for task in (reader, online):
                task.cancel()
            await asyncio.gather(reader, online, return_exceptions=True)
            self._forget_stale_messages()

    async def _online(self) -> None:
        await self._boot()
        self.booted.set()
        await self._report_all_statuses()
        await asyncio.gather(self._send_outbox(), self._heartbeat())

    def _boot_payload(self) -> call.BootNotification:
        return call.BootNotification(
            charge_point_vendor=VENDOR,
            charge_point_model=MODEL,
            charge_point_serial_number=self._serial,
            charge_box_serial_number=f"BOX-{self._serial[4:]}",
            firmware_version=self.firmware_version,
            meter_type="SimMeter",
            meter_serial_number=f"MTR-{self._serial[4:]}",
        )

    async def _boot(self) -> None:
        """Send BootNotification until Accepted, waiting the returned interval in between."""
        while True:
            result = await self._call(self._boot_payload())
            if self.heartbeat_override is None and result.interval > 0:
                self.config["HeartbeatInterval"].value = str(result.interval)
            if result.status == RegistrationStatus.accepted:
                return
            await asyncio.sleep(result.interval if result.interval > 0 else 10)

    async def _heartbeat(self) -> None:
        while True:
            interval = float(self.config["HeartbeatInterval"].value)
            self._config_changed.clear()
            try:
                # A changed HeartbeatInterval takes effect at once, not after the old one ends.
                await asyncio.wait_for(self._config_changed.wait(), interval or None)
                continue
            except TimeoutError:
                pass
            self._enqueue(call.Heartbeat)

    # Sending

    async def _call(self, payload: Any) -> Any:
        """One CALL on the current connection; raises NotConnected if it goes away."""
        protocol, closed = self._protocol, self._closed
        if protocol is None or closed is None or closed.done():
            raise NotConnected
        self.counters.calls_sent += 1
        request = asyncio.ensure_future(protocol.call(payload, suppress=False))
        try:
            await asyncio.wait({request, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not request.done():
                request.cancel()
        if request.cancelled():
            raise NotConnected
        try:
            result = request.result()
        except OCPPError:
            self.counters.errors_received += 1
            raise
        except TimeoutError:
            self.counters.timeouts += 1
            raise
        except ConnectionClosed as e:
            raise NotConnected from e
        self.counters.results_received += 1
        return result

    def _enqueue(
        self,
        build: Callable[[], Any],
        *,
        persistent: bool = False,
        on_result: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a message; the future resolves to its result, or None if it got none."""
        done = asyncio.get_running_loop().create_future()
        if not persistent and not self.booted.is_set():
            done.set_result(None)
            return done
        self._outbox.append(_Outgoing(build, done, persistent, on_result))
        self._outbox_ready.set()
        return done

    async def _send(self, payload: Any) -> Any:
        """Send a message in order with everything else; its result, or None."""
        return await self._enqueue(lambda: payload)

    async def _send_outbox(self) -> None:
        while True:
            while self._outbox:
                item = self._outbox[0]
                payload = item.build()
                result = None
                if payload is not None:
                    try:
                        result = await self._call(payload)
                    except OCPPError as e:
                        log.info("%s: CALLERROR for %s: %r", self.station_id, payload, e)
                    except TimeoutError:
                        item.attempts += 1
                        attempts = int(self.config["TransactionMessageAttempts"].value)
                        if item.persistent and item.attempts < attempts:
                            continue
                self._outbox.popleft()
                if result is not None and item.on_result is not None:
                    item.on_result(result)
                if not item.done.done():
                    item.done.set_result(result)
            self._outbox_ready.clear()
            await self._outbox_ready.wait()

    def _forget_stale_messages(self) -> None:
        kept: deque[_Outgoing] = deque()
        for item in self._outbox:
            if item.persistent:
                kept.append(item)
            elif not item.done.done():
                item.done.set_result(None)
        self._outbox = kept

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._log_failure)

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: background task failed: %r", self.station_id, task.exception())

    # Status

    def _idle_status(self, c: Connector) -> str:
        if c.connector_id in self.behaviour.faults:
            return ChargePointStatus.faulted
        if c.session is not None:
            return c.status
        if not c.operative:
            return ChargePointStatus.unavailable
        if c.plugged:
            return ChargePointStatus.finishing
        if c.reservation is not None:
            return ChargePointStatus.reserved
        return ChargePointStatus.available

    def _set_status(self, c: Connector, status: str, *, announce: bool = True) -> None:
        error = self.behaviour.faults.get(c.connector_id, "NoError")
        if (c.status, c.error_code) == (status, error):
            return
        c.status, c.error_code = status, error
        if announce:
            self._enqueue(self._status_payload(c.connector_id))

    def _status_payload(self, connector_id: int) -> Callable[[], call.StatusNotification]:
        if connector_id == 0:
            fault = self.behaviour.faults.get(0)
            status = (
                ChargePointStatus.faulted
                if fault
                else ChargePointStatus.available
                if self.operative
                else ChargePointStatus.unavailable
            )
            error = fault or "NoError"
        else:
            c = self.connectors[connector_id]
            status, error = c.status, c.error_code
        payload = call.StatusNotification(
            connector_id=connector_id, error_code=error, status=status, timestamp=_stamp()
        )
        return lambda: payload

    def _refresh(self, c: Connector, *, announce: bool = True) -> None:
        if c.session is None:
            self._set_status(c, self._idle_status(c), announce=announce)

    async def _report_status(self, connector_id: int | None = None) -> None:
        """StatusNotification for one connector, or for 0 and every connector."""
        targets = [connector_id] if connector_id is not None else [0, *self.connectors]
        for cid in targets:
            if cid:
                self._refresh(self.connectors[cid], announce=False)
            self._enqueue(self._status_payload(cid))

    async def _report_all_statuses(self) -> None:
        await self._report_status()

    # Charging model

    def _limit_w(self, c: Connector) -> float:
        session = c.session
        hardware = self.max_current * VOLTAGE * profiles.DEFAULT_PHASES
        limit = profiles.limit_at(
            self.profiles,
            c.connector_id,
            _now(),
            unit="W",
            transaction_id=None if session is None else session.transaction_id,
            transaction_start=None if session is None else session.started,
        )
        return hardware if limit is None else min(hardware, limit.value)

    def _advance(self, c: Connector) -> None:
        """Integrate energy since the last update, then set the power the car now draws."""
        now = time.monotonic()
        elapsed = now - c.updated if c.updated else 0.0
        c.updated = now
        if c.session is None or c.battery is None:
            c.power_w = 0.0
            return
        energy = c.power_w * elapsed / 3600.0
        c.energy_wh += energy
        c.battery.charge(energy)
        limit, wanted = self._limit_w(c), c.battery.acceptance_w()
        c.power_w = max(0.0, min(limit, wanted))
        if wanted <= 0:
            self._set_status(c, ChargePointStatus.suspended_ev)
        elif limit <= 0:
            self._set_status(c, ChargePointStatus.suspended_evse)
        else:
            self._set_status(c, ChargePointStatus.charging)

    async def _follow_limits(self) -> None:
        for c in self.connectors.values():
            if c.session is not None:
                self._advance(c)

    def _meter_value(self, c: Connector, context: str) -> dict[str, Any]:
        phases = profiles.DEFAULT_PHASES
        current = c.power_w / (VOLTAGE * phases)
        soc = 0.0 if c.battery is None else c.battery.soc * 100

        def sample(value: str, measurand: str, unit: str, **extra: str) -> dict[str, str]:
            return {
                "value": value,
                "context": context,
                "measurand": measurand,
                "unit": unit,
                "location": "Outlet",
                **extra,
            }

        sampled = [
            sample(f"{round(c.energy_wh)}", "Energy.Active.Import.Register", "Wh"),
            sample(f"{c.power_w:.1f}", "Power.Active.Import", "W"),
            *(
                sample(f"{current:.2f}", "Current.Import", "A", phase=f"L{n}")
                for n in range(1, phases + 1)
            ),
            *(
                sample(f"{VOLTAGE:.1f}", "Voltage", "V", phase=f"L{n}-N")
                for n in range(1, phases + 1)
            ),
        ]
        if c.battery is not None:
            sampled.append(sample(f"{soc:.1f}", "SoC", "Percent", location="EV"))
        return {"timestamp": _stamp(), "sampledValue": sampled}

    async def _meter_loop(self, c: Connector, session: Session) -> None:
        while True:
            await asyncio.sleep(float(self.config["MeterValueSampleInterval"].value) or 60.0)
            self._advance(c)
            self._queue_meter_values(c, session, "Sample.Periodic")

    def _queue_meter_values(
        self, c: Connector, session: Session | None, context: str
    ) -> asyncio.Future[Any]:
        value = self._meter_value(c, context)
        if session is None:
            return self._enqueue(
                lambda: call.MeterValues(connector_id=c.connector_id, meter_value=[value])
            )
        session.last = value

        def build() -> call.MeterValues | None:
            if session.transaction_id is None:
                return None
            return call.MeterValues(
                connector_id=c.connector_id,
                meter_value=[value],
                transaction_id=session.transaction_id,
            )

        return self._enqueue(build, persistent=True)

    async def _send_meter_values(self, connector_id: int | None) -> None:
        targets = [connector_id] if connector_id else list(self.connectors)
        for cid in targets:
            c = self.connectors[cid]
            self._advance(c)
            self._queue_meter_values(c, c.session, "Trigger")

    # Sessions

    def _can_start(self, c: Connector, id_tag: str | None = None) -> bool:
        reserved_for_other = c.reservation is not None and c.reservation.id_tag != id_tag
        return (
            c.session is None
            and c.operative
            and c.connector_id not in self.behaviour.faults
            and not reserved_for_other
        )

    def _random_battery(self) -> Battery:
        rng = self._rng
        return Battery(
            capacity_kwh=rng.choice((40.0, 58.0, 64.0, 77.0, 82.0, 100.0)),
            soc=rng.uniform(0.1, 0.6),
            max_power_w=rng.choice((7_400.0, 11_000.0, 11_000.0, 22_000.0)),
        )

    async def plug_in(
        self, connector_id: int, id_tag: str, *, battery: Battery | None = None
    ) -> int | None:
        """A car plugs in and the driver badges `id_tag`: Authorize, then StartTransaction.

        Returns the transaction id once the central system has assigned it (after reconnect
        if the station is offline), or None if the tag or the transaction was not accepted.
        """
        c = self.connectors[connector_id]
        if c.session is not None:
            raise ValueError(f"connector {connector_id} already has a transaction")
        c.plugged = True
        c.battery = battery or self._random_battery()
        self._set_status(c, ChargePointStatus.preparing)
        if not await self._authorize(id_tag):
            return None
        return await self._start_transaction(c, id_tag)

    async def _authorize(self, id_tag: str) -> bool:
        known = self.local_list.get(id_tag) or self.auth_cache.get(id_tag)
        if not self.booted.is_set():
            # Offline: trust the local list, and let unknown tags charge (LocalAuthorizeOffline).
            return known is None or known.get("status") == AuthorizationStatus.accepted
        result = await self._send(call.Authorize(id_tag=id_tag))
        if result is None:
            return False
        self.auth_cache[id_tag] = result.id_tag_info
        return result.id_tag_info.get("status") == AuthorizationStatus.accepted

    async def _start_transaction(
        self, c: Connector, id_tag: str, tx_profile: profiles.Profile | None = None
    ) -> int | None:
        reservation_id = None
        if c.reservation is not None and c.reservation.id_tag == id_tag:
            reservation_id = c.reservation.reservation_id
            self._release(c)
        c.updated = time.monotonic()
        session = Session(
            c.connector_id, id_tag, round(c.energy_wh), _now(), reservation_id=reservation_id
        )
        c.session = session
        if tx_profile is not None:
            self.profiles = profiles.install_profile(self.profiles, c.connector_id, tx_profile)
        self.counters.transactions_started += 1
        payload = call.StartTransaction(
            connector_id=c.connector_id,
            id_tag=id_tag,
            meter_start=session.meter_start,
            timestamp=format_time(session.started),
            reservation_id=reservation_id,
        )
        started = self._enqueue(
            lambda: payload, persistent=True, on_result=lambda r: self._started(session, r)
        )
        self._advance(c)
        session.begin = self._meter_value(c, "Transaction.Begin")
        c.meter_task = asyncio.create_task(self._meter_loop(c, session))
        await started
        return session.transaction_id if c.session is session else None

    def _started(self, session: Session, result: call_result.StartTransaction) -> None:
        session.transaction_id = result.transaction_id
        if result.id_tag_info.get("status") != AuthorizationStatus.accepted:
            self._spawn(self.stop_charging(session.connector_id, reason=Reason.de_authorized))

    async def _remote_start(
        self, connector_id: int, id_tag: str, tx_profile: profiles.Profile | None
    ) -> None:
        c = self.connectors[connector_id]
        if not c.plugged:
            c.plugged = True
            c.battery = self._random_battery()
        self._set_status(c, ChargePointStatus.preparing)
        if self.config["AuthorizeRemoteTxRequests"].value == "true" and not (
            await self._authorize(id_tag)
        ):
            return
        await self._start_transaction(c, id_tag, tx_profile)

    async def stop_charging(self, connector_id: int, *, reason: str = Reason.local) -> None:
        """End the transaction on a connector: StopTransaction, then Finishing."""
        c = self.connectors[connector_id]
        session = c.session
        if session is None:
            return
        if c.meter_task is not None:
            c.meter_task.cancel()
            c.meter_task = None
        self._advance(c)
        end = self._meter_value(c, "Transaction.End")
        c.session = None
        c.power_w = 0.0
        self.profiles = profiles.end_transaction(self.profiles, connector_id)
        self.counters.transactions_stopped += 1
        stopped_at = _stamp()
        meter_stop = round(c.energy_wh)

        def build() -> call.StopTransaction | None:
            if session.transaction_id is None:
                return None
            return call.StopTransaction(
                meter_stop=meter_stop,
                timestamp=stopped_at,
                transaction_id=session.transaction_id,
                reason=reason,
                id_tag=session.id_tag,
                transaction_data=[v for v in (session.begin, end) if v is not None],
            )

        done = self._enqueue(build, persistent=True)
        if c.pending_operative is not None:
            c.operative, c.pending_operative = c.pending_operative, None
        self._refresh(c)
        await done

    async def unplug(self, connector_id: int) -> None:
        """The driver takes the cable: stop any transaction (EVDisconnected), then Available."""
        c = self.connectors[connector_id]
        if c.session is not None:
            await self.stop_charging(connector_id, reason=Reason.ev_disconnected)
        c.plugged = False
        c.battery = None
        self._refresh(c)

    async def set_fault(self, connector_id: int, error_code: str = "GroundFailure") -> None:
        """Report the connector (0: the whole station) Faulted, ending its transaction."""
        self.behaviour.faults[connector_id] = error_code
        if connector_id == 0:
            await self._report_status(0)
            return
        await self.stop_charging(connector_id, reason=Reason.other)
        self._refresh(self.connectors[connector_id])

    async def clear_fault(self, connector_id: int) -> None:
        """The fault is repaired; the connector reports its normal status again."""
        self.behaviour.faults.pop(connector_id, None)
        await self._report_status(connector_id)

    # Reservations, reboots, firmware

    def _reserve(self, c: Connector, reservation: Reservation) -> None:
        self._release(c)
        delay = (reservation.expires - _now()).total_seconds()
        loop = asyncio.get_running_loop()
        reservation.timer = loop.call_later(max(0.0, delay), self._expire, c, reservation)
        c.reservation = reservation

    def _release(self, c: Connector) -> None:
        if c.reservation is not None and c.reservation.timer is not None:
            c.reservation.timer.cancel()
        c.reservation = None

    def _expire(self, c: Connector, reservation: Reservation) -> None:
        if c.reservation is reservation:
            c.reservation = None
            self._refresh(c)

    async def _reboot(self, reason: str) -> None:
        for cid, c in self.connectors.items():
            if c.session is not None:
                await self.stop_charging(cid, reason=reason)
        self._offline_until = asyncio.get_running_loop().time() + self.behaviour.reboot_seconds
        if self._connection is not None:
            await self._connection.close()

    async def _upload_diagnostics(self) -> None:
        for status in (DiagnosticsStatus.uploading, DiagnosticsStatus.uploaded):
            self.diagnostics_status = status
            await self._send(call.DiagnosticsStatusNotification(status=status))
            await asyncio.sleep(self.behaviour.step_seconds)
        self.diagnostics_status = DiagnosticsStatus.idle

    async def _update_firmware(self, location: str, when: datetime) -> None:
        # Real stations may wait days for retrieveDate; a simulator waits a minute at most.
        await asyncio.sleep(min(60.0, max(0.0, (when - _now()).total_seconds())))
        for status in (
            FirmwareStatus.downloading,
            FirmwareStatus.downloaded,
            FirmwareStatus.installing,
            FirmwareStatus.installed,
        ):
            self.firmware_status = status
            await self._send(call.FirmwareStatusNotification(status=status))
            await asyncio.sleep(self.behaviour.step_seconds)
        self.firmware_version = location.rstrip("/").rsplit("/", 1)[-1] or self.firmware_version
        self.firmware_status = FirmwareStatus.idle


def _stamp() -> str:
    return format_time(_now())


# Whole-network simulation


@dataclass
class SimulationResult:
    """Aggregate state of a `run_simulation` run (also what `progress` is called with)."""

    stations: int
    connected: int = 0
    booted: int = 0
    elapsed: float = 0.0
    counters: Counters = field(default_factory=Counters)


def _summarise(stations: Sequence[SimulatedStation], started: float) -> SimulationResult:
    result = SimulationResult(stations=len(stations), elapsed=time.monotonic() - started)
    for station in stations:
        result.connected += station.connected.is_set()
        result.booted += station.booted.is_set()
        result.counters.add(station.counters)
    return result


async def _sessions(
    station: SimulatedStation,
    connector_id: int,
    rng: random.Random,
    id_tags: Sequence[str],
    session_seconds: tuple[float, float],
    idle_seconds: tuple[float, float],
) -> None:
    """Cars come and go on one connector: arrive, charge until full enough or gone, leave."""
    await asyncio.sleep(rng.uniform(0, idle_seconds[1]))
    while True:
        try:
            await station.booted.wait()
            battery = station._random_battery()
            need_wh = rng.uniform(5_000, 40_000)
            c = station.connectors[connector_id]
            if station._can_start(c):
                await station.plug_in(connector_id, rng.choice(id_tags), battery=battery)
                start_wh = c.energy_wh
                deadline = time.monotonic() + rng.uniform(*session_seconds)
                poll = max(5.0, float(station.config["MeterValueSampleInterval"].value))
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or c.energy_wh - start_wh >= need_wh:
                        break
                    await asyncio.sleep(min(poll, remaining))
                await station.stop_charging(connector_id, reason=Reason.local)
                await asyncio.sleep(rng.uniform(5, 60))
                await station.unplug(connector_id)
        except (ValueError, KeyError) as e:
            log.debug("%s: session skipped: %r", station.station_id, e)
        await asyncio.sleep(rng.uniform(*idle_seconds))


async def run_simulation(
    url: str,
    *,
    stations: int,
    connectors: int = 2,
    password: str | None = None,
    id_prefix: str = "SIM",
    meter_interval: float = 60.0,
    heartbeat_interval: float | None = None,
    seed: int = 0,
    **fleet_options: Any,
) -> SimulationResult:
    """Run `stations` identical simulated stations (PREFIX0001 …) against `url`.

    Takes the options of :func:`run_fleet` (duration, sessions, progress, id_tags, …).
    """
    rng = random.Random(seed)
    fleet = [
        SimulatedStation(
            f"{id_prefix}{n:04d}",
            url,
            password=password,
            connectors=connectors,
            meter_interval=meter_interval,
            heartbeat_interval=heartbeat_interval,
            seed=rng.randrange(2**32),
        )
        for n in range(1, stations + 1)
    ]
    return await run_fleet(fleet, seed=rng.randrange(2**32), **fleet_options)


async def run_fleet(
    fleet: Sequence[SimulatedStation],
    *,
    duration: float | None = None,
    sessions: bool = True,
    progress: Callable[[SimulationResult], None] | None = None,
    id_tags: Sequence[str] = ("04A2B3C4D5E6F7", "04E1F2A3B4C5D6", "0455AA66BB77CC"),
    connect_rate: float = 200.0,
    session_seconds: tuple[float, float] = (120.0, 900.0),
    idle_seconds: tuple[float, float] = (30.0, 600.0),
    seed: int = 0,
    stop: asyncio.Event | None = None,
    progress_interval: float = 1.0,
) -> SimulationResult:
    """Run the given stations until `duration` or `stop` ends it, with random sessions.

    Stations connect at `connect_rate` per second so a thousand do not stampede the server;
    each one's tasks sleep between events, so nothing spins. If the run is cancelled the
    stations are shut down and the cancellation propagates; set `stop` to end early and
    still get the result.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    tasks: list[asyncio.Task[Any]] = []

    async def launch() -> None:
        for station in fleet:
            await station.start()
            if sessions:
                for cid in station.connectors:
                    tasks.append(
                        asyncio.create_task(
                            _sessions(
                                station,
                                cid,
                                random.Random(rng.randrange(2**32)),
                                id_tags,
                                session_seconds,
                                idle_seconds,
                            )
                        )
                    )
            await asyncio.sleep(1.0 / connect_rate)

    async def report() -> None:
        while progress is not None:
            await asyncio.sleep(progress_interval)
            progress(_summarise(fleet, started))

    tasks += [asyncio.create_task(launch()), asyncio.create_task(report())]
    try:
        waiting = asyncio.ensure_future((stop or asyncio.Event()).wait())
        await asyncio.wait([waiting], timeout=duration)
        waiting.cancel()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in fleet), return_exceptions=True)
    return _summarise(fleet, started)
