"""A bare OCPP 1.6J central system: the floor of the stack for benchmarks.

It is the `ocpp` library on `websockets` and nothing else: no database, no auth, no events.
Every message a charge point initiates is acknowledged at once, and `issue_commands` sends
remote commands at a steady rate and times their round trips. What the full central system
costs on top of this is what the benchmark measures. Tests use it as a stand-in server, so it
can also record what it received.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    DataTransferStatus,
    MessageTrigger,
    RegistrationStatus,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargedesk.bench.stats import percentile


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Received:
    """One CALL a station sent, as the handler saw it (snake_case keys)."""

    station_id: str
    action: str
    payload: dict[str, Any]
    received_at: datetime


class BareChargePoint(ChargePoint):
    """The central system's end of one station's connection: acknowledge everything."""

    def __init__(self, station_id: str, connection: ServerConnection, csms: BareCentralSystem):
        super().__init__(station_id, connection, response_timeout=csms.response_timeout)
        self.csms = csms

    def _seen(self, action: str, payload: dict[str, Any]) -> None:
        self.csms.note(self.id, action, payload)

    @on(Action.boot_notification)
    def on_boot_notification(self, **payload: Any) -> call_result.BootNotification:
        self._seen(Action.boot_notification, payload)
        return call_result.BootNotification(
            current_time=_now(),
            interval=self.csms.heartbeat_interval,
            status=self.csms.boot_status,
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **payload: Any) -> call_result.Heartbeat:
        self._seen(Action.heartbeat, payload)
        return call_result.Heartbeat(current_time=_now())

    @on(Action.authorize)
    def on_authorize(self, **payload: Any) -> call_result.Authorize:
        self._seen(Action.authorize, payload)
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.start_transaction)
    def on_start_transaction(self, **payload: Any) -> call_result.StartTransaction:
        self._seen(Action.start_transaction, payload)
        return call_result.StartTransaction(
            transaction_id=next(self.csms.transaction_ids),
            id_tag_info={"status": AuthorizationStatus.accepted},
        )

    @on(Action.stop_transaction)
    def on_stop_transaction(self, **payload: Any) -> call_result.StopTransaction:
        self._seen(Action.stop_transaction, payload)
        return call_result.StopTransaction(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.meter_values)
    def on_meter_values(self, **payload: Any) -> call_result.MeterValues:
        self._seen(Action.meter_values, payload)
        return call_result.MeterValues()

    @on(Action.status_notification)
    def on_status_notification(self, **payload: Any) -> call_result.StatusNotification:
        self._seen(Action.status_notification, payload)
        return call_result.StatusNotification()

    @on(Action.data_transfer)
    def on_data_transfer(self, **payload: Any) -> call_result.DataTransfer:
        self._seen(Action.data_transfer, payload)
        return call_result.DataTransfer(status=DataTransferStatus.accepted)

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(
        self, **payload: Any
    ) -> call_result.DiagnosticsStatusNotification:
        self._seen(Action.diagnostics_status_notification, payload)
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(
        self, **payload: Any
    ) -> call_result.FirmwareStatusNotification:
        self._seen(Action.firmware_status_notification, payload)
        return call_result.FirmwareStatusNotification()


@dataclass
class BareCentralSystem:
    """A running bare central system; `serve_bare` makes one."""

    heartbeat_interval: int
    record: bool = False
    boot_status: str = RegistrationStatus.accepted
    response_timeout: float = 30.0
    stations: dict[str, BareChargePoint] = field(default_factory=dict)
    authorization: dict[str, str | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    transaction_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    server: Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        """The port actually listened on (useful after asking for port 0)."""
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The base URL a station appends its id to."""
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def note(self, station_id: str, action: str, payload: dict[str, Any]) -> None:
        """Count a received CALL and, when recording, keep it."""
        action = str(action)
        self.counts[action] = self.counts.get(action, 0) + 1
        if self.record:
            self.received.append(Received(station_id, action, payload, datetime.now(UTC)))
            self._arrived.set()

    def messages(self, action: str, station_id: str | None = None) -> list[Received]:
        """Recorded CALLs of one action, optionally from one station."""
        return [
            r
            for r in self.received
            if r.action == action and (station_id is None or r.station_id == station_id)
        ]

    async def wait_for(
        self, predicate: Callable[[Received], bool], *, timeout: float = 5.0
    ) -> Received:
        """The first recorded CALL matching `predicate`, waiting for it if need be."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for message in self.received[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.received)
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_for_station(self, station_id: str, *, timeout: float = 5.0) -> BareChargePoint:
        """The connection of a station once it is connected."""
        async with asyncio.timeout(timeout):
            while station_id not in self.stations:
                self._arrived.clear()
                await self._arrived.wait()
        return self.stations[station_id]

    async def command(
        self, station_id: str, payload: Any, *, timeout: float | None = None
    ) -> tuple[Any, float]:
        """Send a command to a connected station: its result and the round trip in seconds.

        A CALLERROR raises the matching OCPPError; no answer within `timeout` (default: the
        response timeout) raises TimeoutError.
        """
        cp = self.stations[station_id]
        started = time.perf_counter()
        result = await asyncio.wait_for(
            cp.call(payload, suppress=False), timeout or self.response_timeout
        )
        return result, time.perf_counter() - started

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        station_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1]
        cp = BareChargePoint(station_id, connection, self)
        # Kept so tests can see the Basic-auth header a station presents; never checked here.
        self.authorization[station_id] = connection.request.headers.get("Authorization")
        self.stations[station_id] = cp
        self._arrived.set()
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            if self.stations.get(station_id) is cp:
                del self.stations[station_id]

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def __aenter__(self) -> BareCentralSystem:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_bare(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    heartbeat_interval: int = 300,
    record: bool = False,
    response_timeout: float = 30.0,
) -> BareCentralSystem:
    """Start a bare central system on `host:port` (0: any free port) and return it."""
    csms = BareCentralSystem(
        heartbeat_interval=heartbeat_interval, record=record, response_timeout=response_timeout
    )
    csms.server = await serve(csms._handle, host, port, subprotocols=["ocpp1.6"])
    return csms


@dataclass
class CommandStats:
    """Round trips of the commands `issue_commands` sent."""

    sent: int = 0
    round_trips: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0

    def percentile(self, p: float) -> float | None:
        """The p-th percentile round trip in seconds, or None with no answers."""
        return percentile(self.round_trips, round(p))

    def summary(self) -> dict[str, float | int | None]:
        """Counts and p50/p95/p99 round trips in milliseconds."""

        def ms(p: float) -> float | None:
            value = self.percentile(p)
            return None if value is None else round(value * 1000, 2)

        return {
            "sent": self.sent,
            "answered": len(self.round_trips),
            "errors": self.errors,
            "timeouts": self.timeouts,
            "p50_ms": ms(50),
            "p95_ms": ms(95),
            "p99_ms": ms(99),
        }


DEFAULT_COMMANDS: tuple[Callable[[], Any], ...] = (
    lambda: call.TriggerMessage(requested_message=MessageTrigger.heartbeat),
    lambda: call.UnlockConnector(connector_id=1),
)


async def issue_commands(
    csms: BareCentralSystem,
    *,
    rate: float,
    duration: float,
    commands: Sequence[Callable[[], Any]] = DEFAULT_COMMANDS,
    timeout: float = 10.0,
) -> CommandStats:
    """Send `rate` commands per second for `duration` seconds, round-robin over stations.

    Commands go out on a fixed clock whether or not earlier ones were answered, so a slow
    station shows up as latency rather than as a lower rate.
    """
    stats = CommandStats()
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    kinds = itertools.cycle(commands)
    turn = itertools.count()

    async def one(station_id: str, payload: Any) -> None:
        try:
            _, rtt = await csms.command(station_id, payload, timeout=timeout)
            stats.round_trips.append(rtt)
        except TimeoutError:
            stats.timeouts += 1
        except (OCPPError, ConnectionClosed, KeyError):
            stats.errors += 1

    start = loop.time()
    for n in itertools.count():
        due = start + n / rate
        if due - start >= duration:
            break
        await asyncio.sleep(max(0.0, due - loop.time()))
        station_ids = list(csms.stations)
        if not station_ids:
            continue
        station_id = station_ids[next(turn) % len(station_ids)]
        stats.sent += 1
        task = asyncio.create_task(one(station_id, next(kinds)()))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=timeout)
    return stats
