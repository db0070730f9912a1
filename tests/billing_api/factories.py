"""Small builders for billing tests: drivers with id tags, and rated sessions."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session, select

from billing_api.invoicing import record_cost_lines
from billing_api.models import (
    ChargingSession,
    Driver,
    DriverIdTag,
    Language,
    PaymentMethod,
    SessionStatus,
)
from billing_api.money import dumps
from billing_api.rating import rate
from station_api import service as stations
from station_api.models import Station, Transaction

_serial = itertools.count(1)

TARIFF: dict[str, Any] = {
    "id": "TEST-STD", "currency": "SEK", "last_updated": "2026-01-01T00:00:00Z",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": Decimal("5.00"), "vat": 25,
                               "step_size": 1}]},
        {"price_components": [{"type": "ENERGY", "price": Decimal("3.20"), "vat": 25,
                               "step_size": 1}]},
    ],
}


def make_driver(
    session: Session,
    *,
    name: str = "Anna Andersson",
    email: str | None = "anna@example.se",
    phone: str | None = None,
    language: Language = Language.sv,
    payment_method: PaymentMethod = PaymentMethod.invoice,
    id_tags: tuple[str, ...] | None = None,
    **fields: Any,
) -> Driver:
    """A driver with one id tag of their own unless ``id_tags`` says otherwise."""
    driver = Driver(name=name, email=email, phone=phone, language=language,
                    payment_method=payment_method, **fields)
    session.add(driver)
    session.flush()
    for tag in id_tags if id_tags is not None else (f"TAG-{next(_serial):06d}",):
        stations.create_id_tag(session, id_tag=tag)
        session.add(DriverIdTag(id_tag=tag, driver_id=driver.id))
    session.flush()
    return driver


def ensure_station(session: Session, station_id: str = "SE-TEST-01") -> Station:
    station = session.get(Station, station_id)
    if station is None:
        station = stations.register_station(session, station_id=station_id,
                                            password="correct-horse-battery")
    return station


def make_rated_session(
    session: Session,
    *,
    driver: Driver,
    start: datetime = datetime(2026, 10, 3, 8, 0, tzinfo=UTC),
    minutes: int = 60,
    energy_wh: int = 20_000,
    station_id: str = "SE-TEST-01",
    connector_id: int = 1,
) -> ChargingSession:
    """A stopped transaction and its session, rated with :data:`TARIFF` for real."""
    ensure_station(session, station_id)
    tag = session.exec(select(DriverIdTag.id_tag).where(DriverIdTag.driver_id == driver.id)).first()
    end = start + timedelta(minutes=minutes)
    tx = Transaction(station_id=station_id, connector_id=connector_id, id_tag=tag,
                     id_tag_status="Accepted", meter_start_wh=1000, start_timestamp=start,
                     meter_stop_wh=1000 + energy_wh, stop_timestamp=end)
    session.add(tx)
    session.flush()
    cdr = rate(TARIFF, {"time_zone": "Europe/Stockholm", "samples": [
        {"timestamp": start.isoformat(), "energy_wh": 1000},
        {"timestamp": end.isoformat(), "energy_wh": 1000 + energy_wh},
    ]})
    row = ChargingSession(
        transaction_id=tx.id, station_id=station_id, connector_id=connector_id, id_tag=tag,
        driver_id=driver.id, start_at=start, end_at=end, energy_wh=energy_wh,
        tariff_id=TARIFF["id"], tariff_version=1, currency="SEK",
        status=SessionStatus.rated,
        total_excl_vat_ore=int(cdr.total_cost.excl_vat * 100),
        total_incl_vat_ore=int(cdr.total_cost.incl_vat * 100),
        cdr=dumps(cdr.to_ocpi()), rated_at=end,
    )
    session.add(row)
    session.flush()
    record_cost_lines(session, row=row, cdr=json.loads(row.cdr or "{}"))
    return row
