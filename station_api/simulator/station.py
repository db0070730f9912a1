"""A simulated OCPP 1.6J charge point: connection, outbox, sessions and charging model."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import call, call_result
from ocpp.v16.enums import (
    AuthorizationStatus,
    ChargePointStatus,
    DiagnosticsStatus,
    FirmwareStatus,
    Reason,
    RegistrationStatus,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from station_api import profiles
from station_api.profiles import VOLTAGE, format_time
from station_api.simulator.model import (
    FIRMWARE,
    MODEL,
    VENDOR,
    Battery,
    Behaviour,
    Connector,
    Counters,
    NotConnected,
    Outgoing,
    Reservation,
    Session,
    default_config,
    now,
)
from station_api.simulator.protocol import StationProtocol

log = logging.getLogger(__name__)


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
        self.config = default_config(connectors, heartbeat_interval or 0, meter_interval)
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
        self._outbox: deque[Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._config_changed = asyncio.Event()
        self._protocol: StationProtocol | None = None
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
        protocol = StationProtocol(self, connection)
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
        self._outbox.append(Outgoing(build, done, persistent, on_result))
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
        kept: deque[Outgoing] = deque()
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
            connector_id=connector_id, error_code=error, status=status, timestamp=stamp()
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
        phases = _car_phases(c)
        hardware = self.max_current * VOLTAGE * phases
        # A single-phase car: the limit in amperes holds on its one phase (a pilot signal).
        unit = "W" if phases == profiles.DEFAULT_PHASES else "A"
        limit = profiles.limit_at(
            self.profiles,
            c.connector_id,
            now(),
            unit=unit,
            transaction_id=None if session is None else session.transaction_id,
            transaction_start=None if session is None else session.started,
        )
        if limit is None:
            return hardware
        return min(hardware, limit.value if unit == "W" else limit.value * VOLTAGE * phases)

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
        phases = _car_phases(c)
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
        return {"timestamp": stamp(), "sampledValue": sampled}

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
            c.connector_id, id_tag, round(c.energy_wh), now(), reservation_id=reservation_id
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
        stopped_at = stamp()
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
        delay = (reservation.expires - now()).total_seconds()
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
        await asyncio.sleep(min(60.0, max(0.0, (when - now()).total_seconds())))
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


def stamp() -> str:
    return format_time(now())


def _car_phases(c: Connector) -> int:
    """The phases the car on ``c`` draws on (three without a car)."""
    return profiles.DEFAULT_PHASES if c.battery is None else c.battery.phases
