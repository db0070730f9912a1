"""The OCPP central system: connections, handshake, liveness and remote commands.

A second connection with a station id that is already connected wins: the older socket is
closed. A station that reconnects after a network failure often does so before our side has
noticed the old TCP connection is dead, and refusing it would keep the station offline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import structlog
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import OCPPError
from ocpp.v16 import call as ocpp_call
from sqlalchemy import Engine

from chargedesk import metrics
from chargedesk.db import run_in_session
from chargedesk.events import EventBus
from chargedesk.security import hash_password, verify_password
from chargedesk.settings import Settings
from station_api import service
from station_api.events import StationOffline, StationOnline
from station_api.models import CommandOutcome, Registration
from station_api.ocpp16 import StationConnection, check_payload

log = structlog.get_logger(__name__)
T = TypeVar("T")

SUBPROTOCOL = "ocpp1.6"

# Commands the central system sends in OCPP 1.6 (core, firmware, local list, reservation,
# remote trigger and smart charging profiles).
COMMANDS = frozenset({
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache",
    "ClearChargingProfile", "DataTransfer", "GetCompositeSchedule", "GetConfiguration",
    "GetDiagnostics", "GetLocalListVersion", "RemoteStartTransaction", "RemoteStopTransaction",
    "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile", "TriggerMessage",
    "UnlockConnector", "UpdateFirmware",
})
# Station answers that mean the command was taken on.
_ACCEPTING = {"Accepted", "Unlocked", "Scheduled", "RebootRequired"}

DataTransferHandler = Callable[[str, str | None, str | None], Awaitable[tuple[str, str | None]]]


_PASSWORD_POOL = ThreadPoolExecutor(2, thread_name_prefix="password")


class InvalidCommand(ValueError):
    """A command we refuse to send: unknown action or a payload OCPP 1.6 does not allow."""


@dataclass(frozen=True)
class CommandResult:
    outcome: CommandOutcome
    response: dict[str, Any] | None
    error: str | None
    latency_ms: float
    command_id: int | None


class _Socket:
    """Gives a Starlette WebSocket the ``recv``/``send`` the ocpp library expects."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def recv(self) -> str | bytes:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message.get("text") if message.get("text") is not None else message["bytes"]

    async def send(self, message: str) -> None:
        await self.websocket.send_text(message)


class CentralSystem:
    def __init__(self, *, settings: Settings, engine: Engine, bus: EventBus) -> None:
        self.settings = settings
        self.engine = engine
        self.bus = bus
        self.connections: dict[str, StationConnection] = {}
        self.authorization_hooks: list[service.AuthorizationHook] = []
        self.data_transfer_handlers: dict[tuple[str, str | None], DataTransferHandler] = {}
        self._sockets: dict[str, WebSocket] = {}
        self._last_seen: dict[str, float] = {}
        self._offline_reason: dict[int, str] = {}
        # station -> (stored hash, sha256 of the password last verified against it), so a
        # reconnect storm does not cost one scrypt per station each time.
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._checking: dict[tuple[str, str, bytes], asyncio.Future[bool]] = {}
        self._heartbeats: dict[str, datetime] = {}

    async def db(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        return await run_in_session(self.engine, fn, **kwargs)

    def touch(self, station_id: str) -> None:
        self._last_seen[station_id] = time.monotonic()

    def is_online(self, station_id: str) -> bool:
        return station_id in self.connections

    # ------------------------------------------------------------ connection lifecycle

    async def serve(self, websocket: WebSocket, station_id: str) -> None:
        """Run one station's WebSocket from handshake to disconnect."""
        if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            await _deny(websocket, 400, f"offer the WebSocket subprotocol {SUBPROTOCOL}")
            return
        password = _basic_password(websocket, station_id)
        registration, refusal = await self._admit(station_id, password)
        if refusal is not None:
            status_code, reason = refusal
            log.warning("station refused", station_id=station_id, reason=reason)
            await _deny(websocket, status_code, reason)
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        connection = StationConnection(station_id, _Socket(websocket), self)
        connection.registration = registration
        previous = self._sockets.get(station_id)
        self.connections[station_id] = connection
        self._sockets[station_id] = websocket
        self.touch(station_id)
        if previous is not None:
            self._offline_reason[id(previous)] = "replaced by a new connection"
            await _close(previous, 1000, "replaced by a newer connection")
        metrics.STATIONS_CONNECTED.set(len(self.connections))
        await self.db(service.set_online, station_id=station_id, online=True, at=_utcnow())
        await self.bus.publish(StationOnline(station_id=station_id))
        log.info("station connected", station_id=station_id)
        reason = "connection closed"
        try:
            await connection.start()
        except WebSocketDisconnect as closed:
            reason = f"connection closed ({closed.code})"
        except Exception:
            log.exception("station connection failed", station_id=station_id)
            reason = "connection failed"
        finally:
            connection.closed.set()
            reason = self._offline_reason.pop(id(websocket), reason)
            if self.connections.get(station_id) is connection:
                await self.flush_heartbeats()
                del self.connections[station_id]
                del self._sockets[station_id]
                metrics.STATIONS_CONNECTED.set(len(self.connections))
                await self.db(service.set_online, station_id=station_id, online=False,
                              at=_utcnow())
                await self.bus.publish(StationOffline(station_id=station_id, reason=reason))
            log.info("station disconnected", station_id=station_id, reason=reason)

    async def _admit(
        self, station_id: str, password: str | None
    ) -> tuple[Registration, tuple[int, str] | None]:
        """OCPP security profile 1: who may open a WebSocket, and in which registration.

        Unknown stations get 404 as OCPP-J 1.6 asks, unless auto-registration is on: then
        they are recorded as pending, with the password they offered, until approved.
        """
        credentials = await self.db(service.station_credentials, station_id=station_id)
        if credentials is None:
            if not self.settings.ocpp_auto_register:
                return Registration.pending, (404, "unknown charge point")
            if password is None or not 16 <= len(password) <= 40:
                return Registration.pending, (401, "a password of 16 to 40 characters is required")
            hashed = await self._in_password_pool(hash_password, password)
            if not await self.db(service.register_pending, station_id=station_id,
                                 password_hash=hashed):
                return await self._admit(station_id, password)
            return Registration.pending, None
        if credentials.registration == Registration.decommissioned:
            return credentials.registration, (404, "charge point decommissioned")
        if credentials.password_hash is not None:
            if password is None:
                return credentials.registration, (401, "password required")
            if not await self._password_matches(station_id, password, credentials.password_hash):
                return credentials.registration, (401, "wrong password")
        return credentials.registration, None

    async def _password_matches(self, station_id: str, password: str, stored: str) -> bool:
        digest = hashlib.sha256(password.encode()).digest()
        if self._verified.get(station_id) == (stored, digest):
            return True
        # A station that gives up on a slow handshake dials again with the same password:
        # it waits for the check already under way instead of queueing another scrypt.
        key = (station_id, stored, digest)
        check = self._checking.get(key)
        if check is None:
            check = asyncio.ensure_future(self._in_password_pool(verify_password, password,
                                                                 stored))
            self._checking[key] = check
            check.add_done_callback(lambda _: self._checking.pop(key, None))
        if await asyncio.shield(check):
            self._verified[station_id] = (stored, digest)
            return True
        return False

    async def _in_password_pool(self, fn: Callable[..., T], *args: Any) -> T:
        # scrypt takes 16 MiB and ~20 ms per check: two at a time bounds memory and leaves
        # the database thread and the event loop free during a reconnect storm.
        return await asyncio.get_running_loop().run_in_executor(_PASSWORD_POOL, fn, *args)

    def note_heartbeat(self, station_id: str) -> None:
        """Heartbeats are stored in batches by :meth:`run_liveness`, not one write each."""
        self._heartbeats[station_id] = _utcnow()

    async def flush_heartbeats(self) -> None:
        beats, self._heartbeats = self._heartbeats, {}
        if beats:
            await self.db(service.record_heartbeats, beats=beats)

    async def run_liveness(self) -> None:
        """Disconnect stations silent for more than the allowed heartbeat intervals."""
        limit = self.settings.heartbeat_interval * self.settings.heartbeat_grace_intervals
        # Often and small: one large batch of heartbeat updates would hold up the database
        # thread, and every command waiting behind it.
        period = max(0.2, min(1.0, self.settings.heartbeat_interval / 2))
        while True:
            await asyncio.sleep(period)
            await self.flush_heartbeats()
            now = time.monotonic()
            for station_id, websocket in list(self._sockets.items()):
                connection = self.connections.get(station_id)
                if connection is not None and connection.calls_in_progress:
                    continue  # it waits for us: slow answers are ours, not its silence
                if now - self._last_seen.get(station_id, now) > limit:
                    self._offline_reason[id(websocket)] = "missed heartbeats"
                    await _close(websocket, 1001, "no message within two heartbeat intervals")

    async def disconnect(self, station_id: str, reason: str) -> None:
        websocket = self._sockets.get(station_id)
        if websocket is not None:
            self._offline_reason[id(websocket)] = reason
            await _close(websocket, 1000, reason)

    # ------------------------------------------------------------ remote commands

    async def send_command(
        self,
        station_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        requested_by: str,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Send a command and wait for its outcome; every command is audited.

        Never raises for what the station does: a refusal, a CALLERROR, a lost or absent
        connection and a timeout are all outcomes. Raises :class:`InvalidCommand` (after
        auditing it) for a command that must not be sent at all.
        """
        timeout = timeout if timeout is not None else self.settings.command_timeout
        requested_at = _utcnow()
        started = time.perf_counter()
        response: dict[str, Any] | None = None
        error: str | None = None
        invalid: InvalidCommand | None = None
        try:
            request = await _build_request(action, payload)
        except InvalidCommand as exc:
            invalid, outcome, error = exc, CommandOutcome.invalid, str(exc)
        else:
            connection = self.connections.get(station_id)
            if connection is None:
                outcome, error = CommandOutcome.offline, "station is not connected"
            else:
                outcome, response, error = await _exchange(connection, request, timeout)
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.COMMAND_SECONDS.labels(action=action, outcome=outcome).observe(latency_ms / 1000)
        row = await self.db(
            service.log_command, station_id=station_id, action=action, payload=payload,
            requested_by=requested_by, reason=reason, outcome=outcome, response=response,
            error=error, requested_at=requested_at,
            latency_ms=None if outcome == CommandOutcome.invalid else round(latency_ms, 3),
        )
        log.info("command", station_id=station_id, action=action, outcome=outcome,
                 requested_by=requested_by, latency_ms=round(latency_ms, 1))
        if invalid is not None:
            raise invalid
        return CommandResult(outcome, response, error, latency_ms, row.id)


async def _build_request(action: str, payload: dict[str, Any]) -> Any:
    if action not in COMMANDS:
        raise InvalidCommand(f"{action} is not an OCPP 1.6 command; one of {sorted(COMMANDS)}")
    try:
        check_payload(action, payload)
    except OCPPError as exc:
        raise InvalidCommand(f"{exc.code}: {exc.details.get('cause', exc.description)}") from exc
    try:
        return getattr(ocpp_call, action)(**camel_to_snake_case(payload))
    except TypeError as exc:
        raise InvalidCommand(str(exc)) from exc


async def _exchange(
    connection: StationConnection, request: Any, timeout: float
) -> tuple[CommandOutcome, dict[str, Any] | None, str | None]:
    call = asyncio.ensure_future(connection.call(request, suppress=False))
    closed = asyncio.ensure_future(connection.closed.wait())
    try:
        done, _ = await asyncio.wait({call, closed}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if call not in done:
        call.cancel()
        if closed in done:
            return CommandOutcome.offline, None, "connection lost before the station answered"
        return CommandOutcome.timeout, None, f"no answer within {timeout:g} s"
    try:
        result = call.result()
    except OCPPError as exc:
        return CommandOutcome.error, None, f"{exc.code}: {exc.description} {exc.details or ''}"
    # The ocpp library parses charging schedules with Decimal (one-decimal schema fields);
    # our answer and audit log are JSON, where those are plain numbers.
    response = json.loads(
        json.dumps(snake_to_camel_case(remove_nones(serialize_as_dict(result))),
                   default=_json_number)
    )
    status = response.get("status")
    if status is None or status in _ACCEPTING:
        return CommandOutcome.accepted, response, None
    return CommandOutcome.rejected, response, f"station answered {status}"


def _json_number(value: Any) -> int | float:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _basic_password(websocket: WebSocket, station_id: str) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    # OCPP security profile 1: the username is the charge point identity.
    return password if user == station_id else None


async def _deny(websocket: WebSocket, status_code: int, reason: str) -> None:
    headers = {"WWW-Authenticate": 'Basic realm="OCPP"'} if status_code == 401 else None
    await websocket.send_denial_response(
        PlainTextResponse(reason, status_code=status_code, headers=headers)
    )


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code=code, reason=reason)
    except RuntimeError:
        pass  # already closed


def _utcnow() -> datetime:
    return datetime.now(UTC)
