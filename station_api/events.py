"""Domain events published by the central system; billing and load management subscribe."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

from chargedesk.events import Event


class StationOnline(Event):
    topic = "station.online"
    station_id: str


class StationOffline(Event):
    topic = "station.offline"
    station_id: str
    reason: str


class StatusChanged(Event):
    topic = "station.status_changed"
    station_id: str
    connector_id: int
    status: str
    error_code: str
    info: str | None = None
    timestamp: datetime
    # False when a message queued offline arrives after a newer status.
    current: bool = True


class TransactionStarted(Event):
    topic = "station.transaction_started"
    station_id: str
    connector_id: int
    transaction_id: int
    id_tag: str
    meter_start_wh: int
    timestamp: datetime


class TransactionStopped(Event):
    topic = "station.transaction_stopped"
    station_id: str
    connector_id: int
    transaction_id: int
    id_tag: str
    meter_start_wh: int
    meter_stop_wh: int
    energy_wh: int
    reason: str | None
    timestamp: datetime


class Sample(BaseModel):
    timestamp: datetime
    measurand: str
    phase: str
    location: str
    context: str
    unit: str
    value: Decimal | None


class MeterValuesReceived(Event):
    """New samples only: a repeated message publishes nothing."""

    topic = "station.meter_values"
    station_id: str
    connector_id: int
    transaction_id: int | None
    samples: list[Sample]
