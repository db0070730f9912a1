"""State of a simulated charge point: connectors, cars, batteries, configuration."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from ocpp.v16.enums import (
    ChargePointStatus,
)

log = logging.getLogger(__name__)


VENDOR = "ChargeDesk"
MODEL = "SimCharger"
FIRMWARE = "1.4.2"


def now() -> datetime:
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
    """An EV battery: full power up to `taper_from`, then linearly down to 0 at full.

    `phases` is what the car's on-board charger uses (1 or 3): a pilot in amperes limits the
    current on each of them, and meter values show current only on those phases."""

    capacity_kwh: float = 60.0
    soc: float = 0.3
    max_power_w: float = 11_000.0
    taper_from: float = 0.8
    phases: int = 3

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
class ConfigKey:
    value: str
    readonly: bool = False
    kind: str = "str"
    write_only: bool = False


@dataclass
class Outgoing:
    build: Callable[[], Any]
    done: asyncio.Future[Any]
    persistent: bool
    on_result: Callable[[Any], None] | None = None
    attempts: int = 0


def default_config(connectors: int, heartbeat: float, meter_interval: float) -> dict:
    def rw(value: Any, kind: str = "int") -> ConfigKey:
        return ConfigKey(str(value).lower() if kind == "bool" else str(value), False, kind)

    def ro(value: Any) -> ConfigKey:
        return ConfigKey(str(value), True)

    return {
        "HeartbeatInterval": rw(plain_number(heartbeat)),
        "MeterValueSampleInterval": rw(plain_number(meter_interval)),
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
        "AuthorizationKey": ConfigKey("", kind="str", write_only=True),
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


def plain_number(number: float) -> str:
    """A number as a config value: no trailing .0 for whole numbers."""
    return str(int(number)) if float(number).is_integer() else str(number)


def valid_config_value(kind: str, value: str) -> bool:
    if kind == "bool":
        return value.lower() in ("true", "false")
    if kind == "int":
        try:
            return float(value) >= 0
        except ValueError:
            return False
    return True


