"""The demo network: seed data and the simulated stations that bring it alive."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from sqlmodel import Session, select

from billing_api import service as billing
from billing_api.models import TariffVersion
from billing_api.tariffs import parse_tariff
from chargedesk.auth import create_api_key
from chargedesk.models import ApiKey, Role
from chargedesk.types import utcnow
from station_api import service
from station_api.models import IdTag, IdTagStatus, Station

log = structlog.get_logger(__name__)

DEMO_FILE = Path(__file__).resolve().parents[1] / "data" / "demo_network.json"
DEMO_KEY_NAME = "demo-operator"


def load_demo() -> dict[str, Any]:
    # Decimal: tariff prices in the file must stay exactly as written.
    return json.loads(DEMO_FILE.read_text(), parse_float=Decimal)


def seed(session: Session, demo: dict[str, Any]) -> None:
    """Create what is missing of the demo network; running it again changes nothing."""
    for entry in demo["stations"]:
        if session.get(Station, entry["id"]) is None:
            service.register_station(session, station_id=entry["id"], password=entry["password"])
    for entry in demo["id_tags"]:
        if session.get(IdTag, entry["id_tag"]) is None:
            service.create_id_tag(
                session, id_tag=entry["id_tag"], parent_id_tag=entry.get("parent_id_tag"),
                note=entry.get("note"),
            )
            if entry.get("status"):
                service.update_id_tag(
                    session, id_tag=entry["id_tag"], status=IdTagStatus(entry["status"])
                )
        session.flush()
    for entry in demo.get("tariffs", []):
        tariff = parse_tariff(entry["tariff"])
        if not session.exec(select(TariffVersion).where(TariffVersion.tariff_id == tariff.id)
                            ).first():
            billing.import_tariff(session, tariff=tariff, created_by="demo",
                                  valid_from=datetime(2026, 1, 1, tzinfo=UTC))
            billing.assign_tariff(session, tariff_id=tariff.id, created_by="demo",
                                  valid_from=datetime(2026, 1, 1, tzinfo=UTC), **entry["assign"])


def fresh_demo_key(session: Session) -> str:
    """Revoke earlier demo keys and make a new one to print: keys are stored hashed."""
    for old in session.exec(select(ApiKey).where(ApiKey.name == DEMO_KEY_NAME)).all():
        if old.revoked_at is None:
            old.revoked_at = utcnow()
            session.add(old)
    _, key = create_api_key(session, name=DEMO_KEY_NAME, role=Role.operator)
    return key


async def run_demo_stations(url: str, stations: list[dict[str, Any]], id_tags: list[str]) -> None:
    """Simulated stations for the demo network: they boot and drivers come and go."""
    from station_api.simulator import SimulatedStation, run_fleet

    fleet = [
        SimulatedStation(entry["id"], url, password=entry["password"],
                         connectors=entry.get("connectors", 2), meter_interval=30, seed=n)
        for n, entry in enumerate(stations)
    ]
    await run_fleet(fleet, id_tags=id_tags, session_seconds=(300, 1800),
                    idle_seconds=(10, 120), connect_rate=5)
