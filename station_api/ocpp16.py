"""OCPP 1.6J protocol handlers: translation between frames and station services.

One method per charge-point-initiated message, as in mobilityhouse/ocpp; the work happens
in :mod:`station_api.service` through the :class:`~station_api.central.CentralSystem`.
"""

from __future__ import annotations

import asyncio
import decimal
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jsonschema.exceptions import ValidationError as SchemaValidationError
from ocpp.exceptions import (
    FormationViolationError,
    NotSupportedError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    SecurityError,
    TypeConstraintViolationError,
)
from ocpp.exceptions import (
    NotImplementedError as OCPPNotImplemented,
)
from ocpp.messages import Call, CallError, MessageType, get_validator
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action, DataTransferStatus, RegistrationStatus

from chargedesk import metrics
from station_api import service
from station_api.events import (
    MeterValuesReceived,
    Sample,
    StatusChanged,
    TransactionStarted,
    TransactionStopped,
)
from station_api.models import Registration

if TYPE_CHECKING:
    from station_api.central import CentralSystem

# Messages a station may send while its registration is pending (OCPP 1.6 §4.2.1).
_ALLOWED_WHILE_PENDING = {
    Action.boot_notification, Action.heartbeat, Action.status_notification,
    Action.diagnostics_status_notification, Action.firmware_status_notification,
}
_CP_INITIATED = {
    Action.authorize, Action.boot_notification, Action.data_transfer,
    Action.diagnostics_status_notification, Action.firmware_status_notification,
    Action.heartbeat, Action.meter_values, Action.start_transaction,
    Action.status_notification, Action.stop_transaction,
}
# OCPP-J 1.6 error codes by JSON-schema keyword (the 1.6 spelling of the codes is kept:
# "FormationViolation", "OccurenceConstraintViolation").
_SCHEMA_ERRORS: dict[str, type[OCPPError]] = {
    "type": TypeConstraintViolationError,
    "required": ProtocolError,
    "additionalProperties": FormationViolationError,
    "enum": PropertyConstraintViolationError,
    "maxLength": PropertyConstraintViolationError,
    "minLength": PropertyConstraintViolationError,
    "minimum": PropertyConstraintViolationError,
    "maximum": PropertyConstraintViolationError,
    "pattern": PropertyConstraintViolationError,
    "format": PropertyConstraintViolationError,
    "minItems": OccurenceConstraintViolationError,
    "maxItems": OccurenceConstraintViolationError,
}


def parse_time(value: str | None) -> datetime:
    """An OCPP dateTime; a missing one means now, a naive one is taken as UTC."""
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PropertyConstraintViolationError(
            details={"cause": f"not an ISO 8601 dateTime: {value!r}"}
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def unpack_frame(raw: str | bytes) -> Any:
    """Parse an OCPP-J frame, raising the OCPP error a malformed one deserves."""
    if isinstance(raw, bytes):
        raise FormationViolationError(details={"cause": "binary frames are not OCPP-J"})
    try:
        frame = json.loads(raw)
    except json.JSONDecodeError:
        raise FormationViolationError(details={"cause": "frame is not valid JSON"}) from None
    if not isinstance(frame, list) or not frame or not isinstance(frame[0], int):
        raise FormationViolationError(
            details={"cause": "a frame is a JSON array starting with a MessageTypeId"}
        )
    message_type, *rest = frame
    shapes = {MessageType.Call: 3, MessageType.CallResult: 2, MessageType.CallError: 4}
    if message_type not in shapes:
        raise ProtocolError(details={"cause": f"MessageTypeId {message_type} is not 2, 3 or 4"})
    if len(rest) != shapes[message_type] or not isinstance(rest[0], str):
        raise FormationViolationError(
            details={"cause": f"MessageTypeId {message_type} needs {shapes[message_type]} "
                     "elements after it, the first a string UniqueId"}
        )
    if message_type == MessageType.Call:
        unique_id, action, payload = rest
        if not isinstance(action, str) or not isinstance(payload, dict):
            raise FormationViolationError(
                details={"cause": "a CALL is [2, UniqueId, Action, {payload}]"}
            )
        return Call(unique_id, action, payload)
    if message_type == MessageType.CallResult:
        from ocpp.messages import CallResult

        return CallResult(*rest)
    return CallError(*rest)


def validate_call(call: Call) -> None:
    """Route check and JSON-schema validation of a CALL from a charge point."""
    try:
        action = Action(call.action)
    except ValueError:
        raise OCPPNotImplemented(
            details={"cause": f"{call.action} is not an OCPP 1.6 action"}
        ) from None
    if action not in _CP_INITIATED:
        raise NotSupportedError(
            details={"cause": f"{call.action} is not sent by a charge point"}
        )
    check_payload(call.action, call.payload)


# Schemas whose numbers carry one decimal: validated with Decimal, as 21.4 is no float.
_DECIMAL_SCHEMAS = {"SetChargingProfile", "RemoteStartTransaction"}


def check_payload(action: str, payload: dict[str, Any]) -> None:
    """Validate a 1.6 request payload against its JSON schema, raising the OCPP error."""
    if action in _DECIMAL_SCHEMAS:
        validator = get_validator(MessageType.Call, action, "1.6", parse_float=decimal.Decimal)
        payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
    else:
        validator = get_validator(MessageType.Call, action, "1.6")
    try:
        validator.validate(payload)
    except SchemaValidationError as error:
        code = _SCHEMA_ERRORS.get(str(error.validator), FormationViolationError)
        where = "/".join(str(p) for p in error.absolute_path) or "payload"
        raise code(details={"cause": f"{where}: {error.message}"}) from None


class StationConnection(ChargePoint):
    """The central system's side of one station's WebSocket."""

    def __init__(self, station_id: str, socket: Any, central: CentralSystem) -> None:
        # Command timeouts are enforced by the central system, per command.
        super().__init__(station_id, socket, response_timeout=24 * 3600)
        self.central = central
        self.registration = Registration.accepted
        self.closed = asyncio.Event()
        self.calls_in_progress = 0

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Like the library's, but a malformed frame gets a CALLERROR instead of silence."""
        self.central.touch(self.id)
        unique_id = "-1"  # OCPP-J's UniqueId for a frame whose own id cannot be read
        try:
            msg = unpack_frame(raw_msg)
            if msg.message_type_id != MessageType.Call:
                self._response_queue.put_nowait(msg)
                return
            unique_id = msg.unique_id
            metrics.OCPP_MESSAGES.labels(action=msg.action).inc()
            validate_call(msg)
            if (
                self.registration == Registration.pending
                and msg.action not in _ALLOWED_WHILE_PENDING
            ):
                raise SecurityError(
                    details={"cause": "charge point is pending an operator's approval"}
                )
            # A station waits for our answer before it sends anything else: while we work
            # on its message it is not silent, and the silence counts from our answer.
            self.calls_in_progress += 1
            try:
                await self._handle_call(msg)
            finally:
                self.calls_in_progress -= 1
                self.central.touch(self.id)
        except OCPPError as error:
            metrics.OCPP_CALL_ERRORS.labels(code=error.code).inc()
            await self._send(CallError(unique_id, error.code, error.description,
                                       error.details).to_json())

    # ------------------------------------------------------------ handlers
    # Schema validation already happened in route_message, hence skip_schema_validation.

    @on(Action.boot_notification, skip_schema_validation=True)
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **details: str
    ) -> call_result.BootNotification:
        registration = await self.central.db(
            service.record_boot,
            station_id=self.id,
            at=datetime.now(UTC),
            vendor=charge_point_vendor,
            model=charge_point_model,
            serial_number=details.get("charge_point_serial_number"),
            charge_box_serial_number=details.get("charge_box_serial_number"),
            firmware_version=details.get("firmware_version"),
            iccid=details.get("iccid"),
            imsi=details.get("imsi"),
            meter_type=details.get("meter_type"),
            meter_serial_number=details.get("meter_serial_number"),
        )
        self.registration = registration
        status = {
            Registration.accepted: RegistrationStatus.accepted,
            Registration.pending: RegistrationStatus.pending,
        }.get(registration, RegistrationStatus.rejected)
        return call_result.BootNotification(
            current_time=_now(), interval=self.central.settings.heartbeat_interval,
            status=status,
        )

    @on(Action.heartbeat, skip_schema_validation=True)
    async def on_heartbeat(self) -> call_result.Heartbeat:
        self.central.note_heartbeat(self.id)
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification, skip_schema_validation=True)
    async def on_status_notification(
        self, connector_id: int, error_code: str, status: str, timestamp: str | None = None,
        info: str | None = None, vendor_id: str | None = None,
        vendor_error_code: str | None = None,
    ) -> call_result.StatusNotification:
        at = parse_time(timestamp)
        new, current = await self.central.db(
            service.record_status, station_id=self.id, connector_id=connector_id,
            status=status, error_code=error_code, timestamp=at, info=info,
            vendor_id=vendor_id, vendor_error_code=vendor_error_code,
        )
        if new:
            await self.central.bus.publish(StatusChanged(
                station_id=self.id, connector_id=connector_id, status=status,
                error_code=error_code, info=info, timestamp=at, current=current,
            ))
        return call_result.StatusNotification()

    @on(Action.authorize, skip_schema_validation=True)
    async def on_authorize(self, id_tag: str) -> call_result.Authorize:
        info = await self.central.db(
            service.authorize, station_id=self.id, id_tag=id_tag,
            hooks=self.central.authorization_hooks,
        )
        return call_result.Authorize(id_tag_info=_id_tag_info(info))

    @on(Action.start_transaction, skip_schema_validation=True)
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
        reservation_id: int | None = None,
    ) -> call_result.StartTransaction:
        at = parse_time(timestamp)
        tx, info, created = await self.central.db(
            service.start_transaction, station_id=self.id, connector_id=connector_id,
            id_tag=id_tag, meter_start_wh=meter_start, timestamp=at,
            reservation_id=reservation_id, hooks=self.central.authorization_hooks,
        )
        if created:
            await self.central.bus.publish(TransactionStarted(
                station_id=self.id, connector_id=connector_id, transaction_id=tx.id,
                id_tag=id_tag, meter_start_wh=meter_start, timestamp=at,
            ))
        return call_result.StartTransaction(transaction_id=tx.id, id_tag_info=_id_tag_info(info))

    @on(Action.stop_transaction, skip_schema_validation=True)
    async def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None,
        id_tag: str | None = None, transaction_data: list[dict[str, Any]] | None = None,
    ) -> call_result.StopTransaction:
        at = parse_time(timestamp)
        tx, stopped = await self.central.db(
            service.stop_transaction, station_id=self.id, transaction_id=transaction_id,
            meter_stop_wh=meter_stop, timestamp=at, reason=reason, id_tag=id_tag,
            payload={"meterStop": meter_stop, "timestamp": timestamp, "reason": reason,
                     "idTag": id_tag, "transactionData": transaction_data},
        )
        if tx is not None and transaction_data:
            await self._store_meter_values(tx.connector_id, tx.id, transaction_data)
        if stopped:
            await self.central.bus.publish(TransactionStopped(
                station_id=self.id, connector_id=tx.connector_id, transaction_id=tx.id,
                id_tag=tx.id_tag, meter_start_wh=tx.meter_start_wh, meter_stop_wh=meter_stop,
                energy_wh=meter_stop - tx.meter_start_wh, reason=reason, timestamp=at,
            ))
        if id_tag is None:
            return call_result.StopTransaction()
        info = await self.central.db(
            service.authorize, station_id=self.id, id_tag=id_tag,
            hooks=self.central.authorization_hooks,
        )
        return call_result.StopTransaction(id_tag_info=_id_tag_info(info))

    @on(Action.meter_values, skip_schema_validation=True)
    async def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]],
        transaction_id: int | None = None,
    ) -> call_result.MeterValues:
        await self._store_meter_values(connector_id, transaction_id, meter_value)
        return call_result.MeterValues()

    @on(Action.data_transfer, skip_schema_validation=True)
    async def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> call_result.DataTransfer:
        handlers = self.central.data_transfer_handlers
        if vendor_id not in {vendor for vendor, _ in handlers}:
            return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)
        handler = handlers.get((vendor_id, message_id)) or handlers.get((vendor_id, None))
        if handler is None:
            return call_result.DataTransfer(status=DataTransferStatus.unknown_message_id)
        status, reply = await handler(self.id, message_id, data)
        return call_result.DataTransfer(status=status, data=reply)

    @on(Action.diagnostics_status_notification, skip_schema_validation=True)
    async def on_diagnostics_status_notification(
        self, status: str
    ) -> call_result.DiagnosticsStatusNotification:
        await self.central.db(service.record_diagnostics_status, station_id=self.id,
                              status=status)
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification, skip_schema_validation=True)
    async def on_firmware_status_notification(
        self, status: str
    ) -> call_result.FirmwareStatusNotification:
        await self.central.db(service.record_firmware_status, station_id=self.id, status=status)
        return call_result.FirmwareStatusNotification()

    async def _store_meter_values(
        self, connector_id: int, transaction_id: int | None, meter_value: list[dict[str, Any]]
    ) -> None:
        batches = [(parse_time(mv["timestamp"]), mv["sampled_value"]) for mv in meter_value]
        new = await self.central.db(
            service.record_meter_values, station_id=self.id, connector_id=connector_id,
            transaction_id=transaction_id, meter_values=batches,
        )
        if new:
            await self.central.bus.publish(MeterValuesReceived(
                station_id=self.id, connector_id=connector_id, transaction_id=transaction_id,
                samples=[Sample.model_validate(s) for s in new],
            ))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _id_tag_info(info: service.IdTagInfo) -> dict[str, Any]:
    result: dict[str, Any] = {"status": info.status}
    if info.expiry_date is not None:
        result["expiry_date"] = info.expiry_date.isoformat()
    if info.parent_id_tag is not None:
        result["parent_id_tag"] = info.parent_id_tag
    return result
