"""The simulated station's side of the protocol: one handler per central-system command."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AvailabilityStatus,
    AvailabilityType,
    CancelReservationStatus,
    ChargingProfileStatus,
    ClearCacheStatus,
    ClearChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    GetCompositeScheduleStatus,
    MessageTrigger,
    Reason,
    RemoteStartStopStatus,
    ReservationStatus,
    ResetStatus,
    ResetType,
    TriggerMessageStatus,
    UnlockStatus,
    UpdateStatus,
    UpdateType,
)
from websockets.asyncio.client import ClientConnection

from station_api import profiles
from station_api.profiles import format_time
from station_api.simulator.model import (
    VENDOR,
    Reservation,
    now,
    valid_config_value,
)

if TYPE_CHECKING:
    from station_api.simulator.station import SimulatedStation

log = logging.getLogger(__name__)


class StationProtocol(ChargePoint):
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
        if entry.readonly or not valid_config_value(entry.kind, value):
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
        start = now()
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
        name = f"{station.station_id}-{now():%Y%m%dT%H%M%S}.log"
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


