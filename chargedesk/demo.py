"""The demo network: seed data and the simulated stations that bring it alive."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, select

from billing_api import invoicing, payments, scheduled, subscribers, wallets
from billing_api import service as billing
from billing_api.models import Driver, DriverIdTag, TariffVersion
from billing_api.tariffs import parse_tariff
from chargedesk.auth import create_api_key
from chargedesk.db import session_scope
from chargedesk.models import ApiKey, Role
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from load_manager import service as load_service
from load_manager import usage
from load_manager.models import ConnectorWiring, SiteGrid, TagPriority
from station_api import service
from station_api.models import IdTag, IdTagStatus, Site, Station

log = structlog.get_logger(__name__)

DEMO_FILE = Path(__file__).resolve().parents[1] / "data" / "demo_network.json"
DEMO_KEY_NAME = "demo-operator"


def load_demo() -> dict[str, Any]:
    # Decimal: tariff prices in the file must stay exactly as written.
    return json.loads(DEMO_FILE.read_text(), parse_float=Decimal)


def seed(session: Session, demo: dict[str, Any]) -> None:
    """Create what is missing of the demo network; running it again changes nothing."""
    for entry in demo.get("sites", []):
        if session.get(Site, entry["id"]) is None:
            service.create_site(session, site_id=entry["id"], name=entry["name"],
                                address=entry.get("address"), time_zone=entry["time_zone"])
    for entry in demo["stations"]:
        if session.get(Station, entry["id"]) is None:
            service.register_station(session, station_id=entry["id"], password=entry["password"],
                                     site_id=entry.get("site_id"))
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


def seed_load(session: Session, demo: dict[str, Any]) -> None:
    """Grid limits, wiring and priorities, unless the operator has set them already."""
    load = demo.get("load", {})
    for entry in load.get("grids", []):
        if session.get(SiteGrid, entry["site_id"]) is None:
            load_service.set_site_grid(
                session, site_id=entry["site_id"], phase_limit_a=entry.get("phase_limit_a"),
                power_limit_kw=entry.get("power_limit_kw"), policy=entry["policy"],
            )
    for entry in load.get("wiring", []):
        if session.get(ConnectorWiring, (entry["station_id"], entry["connector_id"])) is None:
            load_service.set_wiring(session, **entry)
    for entry in load.get("priorities", []):
        if session.get(TagPriority, entry["id_tag"]) is None:
            load_service.set_tag_priority(session, **entry)


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


# ---------------------------------------------------------------- billing: drivers and history

HISTORY_SEED = 20261124


def seed_drivers(session: Session, demo: dict[str, Any], *, settings: Settings) -> bool:
    """Drivers with their id tags, wallets and mandates. False when they already exist."""
    if session.exec(select(Driver)).first() is not None:
        return False
    for entry in demo.get("drivers", []):
        fields = {k: v for k, v in entry.items() if k not in ("id_tags", "top_up", "mandate")}
        driver = Driver(**fields)
        session.add(driver)
        session.flush()
        for tag in entry["id_tags"]:
            session.add(DriverIdTag(id_tag=tag, driver_id=driver.id))
        if entry.get("top_up"):
            wallets.top_up(session, driver_id=driver.id or 0, amount=Decimal(entry["top_up"]),
                           idempotency_key="demo-welcome", created_by="demo")
        if entry.get("mandate"):
            mandate = payments.create_mandate(session, driver_id=driver.id or 0,
                                              created_by="demo", **entry["mandate"])
            payments.activate_mandate(session, mandate_id=mandate.id or 0, created_by="demo")
    session.flush()
    return True


def seed_history(engine: Engine, demo: dict[str, Any], *, settings: Settings,
                 today: date) -> int:
    """Past charging sessions, reported as a station reports them (meter values every five
    minutes, status changes) and rated through the real engine; then the monthly invoice
    runs for the months that have ended. Returns the number of sessions made."""
    plan = demo.get("history", {})
    rng = random.Random(HISTORY_SEED)
    stations = [s["id"] for s in demo["stations"]]
    months = [invoicing.previous_month(today)]
    for _ in range(plan.get("months", 2) - 1):
        months.insert(0, invoicing.previous_month(months[0]))
    made = 0
    with session_scope(engine) as session:
        tags = [(link.id_tag, link.driver_id) for link in session.exec(select(DriverIdTag))]
    for month in months:
        for id_tag, _ in tags:
            for _ in range(plan.get("sessions_per_driver_per_month", 4)):
                start = datetime.combine(month + timedelta(days=rng.randrange(27)),
                                         time(rng.randrange(6, 21), rng.randrange(60)),
                                         ZoneInfo(settings.time_zone)).astimezone(UTC)
                with session_scope(engine) as session:
                    _past_session(session, rng, station_id=rng.choice(stations),
                                  id_tag=id_tag, start=start, settings=settings)
                made += 1
        scheduled.monthly_invoice_run(engine, settings,
                                      today=invoicing.period_bounds(month, "UTC")[0])
    return made


def _past_session(session: Session, rng: random.Random, *, station_id: str, id_tag: str,
                  start: datetime, settings: Settings) -> None:
    connector = rng.choice((1, 2))
    register = rng.randrange(1_000_000, 9_000_000)
    tx, _, _ = service.start_transaction(session, station_id=station_id, connector_id=connector,
                                         id_tag=id_tag, meter_start_wh=register, timestamp=start)
    subscribers.start_session(session, transaction_id=tx.id or 0, settings=settings)
    power_w = rng.choice((7_400, 11_000, 22_000))
    charging = timedelta(minutes=rng.randrange(20, 150))
    idle = timedelta(minutes=rng.choice((0, 5, 20, 75)))
    at, values = start, []
    service.record_status(session, station_id=station_id, connector_id=connector,
                          status="Charging", error_code="NoError", timestamp=start)
    while at < start + charging:
        step = min(timedelta(minutes=5), start + charging - at)
        at += step
        register += int(power_w * step.total_seconds() / 3600)
        values.append((at, [
            {"value": str(register), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": str(power_w), "measurand": "Power.Active.Import", "unit": "W"},
        ]))
    service.record_meter_values(session, station_id=station_id, connector_id=connector,
                                transaction_id=tx.id, meter_values=values)
    if idle:
        service.record_status(session, station_id=station_id, connector_id=connector,
                              status="SuspendedEV", error_code="NoError", timestamp=at)
    service.stop_transaction(session, station_id=station_id, transaction_id=tx.id or 0,
                             meter_stop_wh=register, timestamp=at + idle, reason="EVDisconnected")
    service.record_status(session, station_id=station_id, connector_id=connector,
                          status="Available", error_code="NoError", timestamp=at + idle)
    subscribers.settle_session(session, transaction_id=tx.id or 0, settings=settings)


def prepare(engine: Engine, demo: dict[str, Any], *, settings: Settings,
            today: date | None = None) -> str:
    """Seed everything the demo shows (once) and return a fresh operator key."""
    with session_scope(engine) as session:
        seed(session, demo)
        seed_load(session, demo)
        new_drivers = seed_drivers(session, demo, settings=settings)
    if new_drivers:
        today = today or datetime.now(ZoneInfo(settings.time_zone)).date()
        made = seed_history(engine, demo, settings=settings, today=today)
        with session_scope(engine) as session:
            visits = usage.backfill(session)
        log.info("demo history seeded", sessions=made, visits=visits)
    with session_scope(engine) as session:
        from assistant.notifications import demo as notifications_demo

        notifications_demo.seed(session)  # preferences, and the history is not news
        return fresh_demo_key(session)


def prepare_support(engine: Engine, *, settings: Settings) -> list[tuple[str, str, str]]:
    """The support desk of the demo (teams, agents, SLA policies, canned responses, three
    handed-over drivers), once; the agents' fresh passwords: (username, role, password)."""
    from support import contacts as support_contacts
    from support import demo as support_demo

    passwords = support_demo.prepare(engine, settings=settings)
    support_contacts.seed_demo(engine, settings=settings)  # one history across channels
    return passwords
