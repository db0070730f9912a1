"""Station services: the only place that queries station tables.

Plain keyword-only functions taking a session; callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, col, select

from chargedesk import errors
from chargedesk.security import hash_password
from chargedesk.types import utcnow
from station_api.models import (
    CommandLog,
    CommandOutcome,
    Connector,
    IdTag,
    IdTagStatus,
    MeterSample,
    Registration,
    Site,
    Station,
    StatusEvent,
    Transaction,
    UnknownStop,
)


class StationError(errors.DomainError):
    """A station request that cannot be carried out."""


class NotFound(StationError, errors.NotFound):
    pass


class Conflict(StationError, errors.Conflict):
    pass


# ---------------------------------------------------------------- registry


def register_station(
    session: Session,
    *,
    station_id: str,
    password: str | None,
    registration: Registration = Registration.accepted,
    site_id: str | None = None,
) -> Station:
    """Register a station; its password (OCPP security profile 1) is stored hashed."""
    if session.get(Station, station_id) is not None:
        raise Conflict(f"station {station_id} already exists")
    if password is not None:
        check_password_rules(password)
    if site_id is not None:
        get_site(session, site_id=site_id)
    station = Station(
        id=station_id,
        site_id=site_id,
        registration=registration,
        password_hash=hash_password(password) if password else None,
    )
    session.add(station)
    session.flush()
    return station


def create_site(
    session: Session, *, site_id: str, name: str, time_zone: str = "Europe/Stockholm",
    address: str | None = None,
) -> Site:
    """A place with stations; its time zone governs tariffs' time-of-day rules there."""
    if session.get(Site, site_id) is not None:
        raise Conflict(f"site {site_id} already exists")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise StationError(
            f"unknown time zone {time_zone!r}; use an IANA name such as Europe/Stockholm"
        ) from None
    site = Site(id=site_id, name=name, time_zone=time_zone, address=address)
    session.add(site)
    session.flush()
    return site


def get_site(session: Session, *, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise NotFound(f"no site {site_id}")
    return site


def list_sites(session: Session) -> Sequence[Site]:
    return session.exec(select(Site).order_by(Site.id)).all()


def move_station(session: Session, *, station_id: str, site_id: str | None) -> Station:
    """Put a station on a site (or take it off any site with None)."""
    station = get_station(session, station_id=station_id)
    if site_id is not None:
        get_site(session, site_id=site_id)
    station.site_id = site_id
    session.add(station)
    session.flush()
    return station


def station_time_zone(session: Session, *, station_id: str, default: str) -> str:
    """The IANA zone of the station's site, or ``default`` for a station on no site."""
    zone = session.exec(
        select(Site.time_zone).join(Station, col(Station.site_id) == Site.id)
        .where(Station.id == station_id)
    ).first()
    return zone or default


def check_password_rules(password: str) -> None:
    """OCPP security profile 1 passwords (AuthorizationKey) are 16 to 40 characters."""
    if not 16 <= len(password) <= 40:
        raise StationError("a station password must be 16 to 40 characters long")


def set_station_password(session: Session, *, station_id: str, password: str) -> Station:
    check_password_rules(password)
    station = get_station(session, station_id=station_id)
    station.password_hash = hash_password(password)
    session.add(station)
    return station


def get_station(session: Session, *, station_id: str) -> Station:
    station = session.get(Station, station_id)
    if station is None:
        raise NotFound(f"no station {station_id}")
    return station


def list_stations(session: Session) -> Sequence[Station]:
    return session.exec(select(Station).order_by(Station.id)).all()


def list_connectors(session: Session, *, station_ids: Iterable[str]) -> Sequence[Connector]:
    ids = list(station_ids)
    if not ids:
        return []
    return session.exec(
        select(Connector)
        .where(col(Connector.station_id).in_(ids))
        .order_by(Connector.station_id, Connector.connector_id)
    ).all()


def approve_station(session: Session, *, station_id: str) -> Station:
    station = get_station(session, station_id=station_id)
    if station.registration == Registration.decommissioned:
        raise Conflict(f"station {station_id} is decommissioned; register it again")
    station.registration = Registration.accepted
    session.add(station)
    return station


def decommission_station(session: Session, *, station_id: str) -> Station:
    """Take a station out of service: its connections are refused from now on."""
    station = get_station(session, station_id=station_id)
    station.registration = Registration.decommissioned
    session.add(station)
    return station


@dataclass(frozen=True)
class Credentials:
    registration: Registration
    password_hash: str | None


def station_credentials(session: Session, *, station_id: str) -> Credentials | None:
    """What the WebSocket handshake checks: registration and password hash, if known."""
    station = session.get(Station, station_id)
    if station is None:
        return None
    return Credentials(station.registration, station.password_hash)


def register_pending(session: Session, *, station_id: str, password_hash: str) -> bool:
    """Record an unknown station that dialled in, pending an operator's approval.

    Returns False if another connection registered it first.
    """
    flags = insert_ignore(
        session, Station,
        [{"id": station_id, "registration": Registration.pending,
          "password_hash": password_hash, "online": False, "created_at": utcnow()}],
        key=("id",),
    )
    return flags[0]


# ---------------------------------------------------------------- station reports


def record_boot(
    session: Session, *, station_id: str, at: datetime, **details: str | None
) -> Registration:
    """Store what a BootNotification says about the station; return its registration."""
    station = get_station(session, station_id=station_id)
    for key, value in details.items():
        if value is not None:
            setattr(station, key, value)
    station.last_boot_at = at
    station.last_seen_at = at
    session.add(station)
    return station.registration


def record_heartbeats(session: Session, *, beats: dict[str, datetime]) -> None:
    """Store the last heartbeat of many stations at once (the central system batches them)."""
    if not beats:
        return
    table = Station.__table__  # type: ignore[attr-defined]
    session.execute(
        table.update()
        .where(table.c.id == bindparam("sid"))
        .values(last_heartbeat_at=bindparam("at"), last_seen_at=bindparam("at")),
        [{"sid": station_id, "at": at} for station_id, at in beats.items()],
    )


def set_online(session: Session, *, station_id: str, online: bool, at: datetime) -> None:
    station = session.get(Station, station_id)
    if station is None:
        return
    station.online = online
    station.last_seen_at = at
    session.add(station)


def record_firmware_status(session: Session, *, station_id: str, status: str) -> None:
    station = get_station(session, station_id=station_id)
    station.firmware_status = status
    session.add(station)


def record_diagnostics_status(session: Session, *, station_id: str, status: str) -> None:
    station = get_station(session, station_id=station_id)
    station.diagnostics_status = status
    session.add(station)


def record_status(
    session: Session,
    *,
    station_id: str,
    connector_id: int,
    status: str,
    error_code: str,
    timestamp: datetime,
    info: str | None = None,
    vendor_id: str | None = None,
    vendor_error_code: str | None = None,
) -> tuple[bool, bool]:
    """Keep a StatusNotification in the history and, unless it is older, as the live state.

    Returns ``(new, current)``: whether it was not seen before, and whether it is now the
    connector's live status (a message queued offline may arrive after a newer one).
    """
    row = dict(
        station_id=station_id,
        connector_id=connector_id,
        status=status,
        error_code=error_code,
        info=info,
        vendor_id=vendor_id,
        vendor_error_code=vendor_error_code,
        timestamp=timestamp,
    )
    if not insert_ignore(session, StatusEvent, [row], key=_STATUS_KEY)[0]:
        return False, False
    # One statement for the live state, as this runs for every status of every station:
    # insert it, or update it unless what is stored is newer.
    upsert = _connector_upsert(session.get_bind().dialect.name)
    live = {key: value for key, value in row.items() if key != "timestamp"}
    live["status_at"] = timestamp
    current = session.execute(upsert, live).first() is not None
    loaded = session.identity_map.get(session.identity_key(Connector, (station_id, connector_id)))
    if loaded is not None:
        session.expire(loaded)  # read afresh if this session looks at it again
    return True, current


_CONNECTOR_UPSERTS: dict[str, Any] = {}


def _connector_upsert(dialect: str) -> Any:
    """INSERT a connector's live state, or UPDATE it unless the stored one is newer;
    RETURNING a row only when it was written. Built once per dialect."""
    upsert = _CONNECTOR_UPSERTS.get(dialect)
    if upsert is None:
        table = Connector.__table__  # type: ignore[attr-defined]
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[dialect](table)
        changed = ("status", "error_code", "info", "vendor_id", "vendor_error_code",
                   "status_at")
        upsert = _CONNECTOR_UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[table.c.station_id, table.c.connector_id],
            set_={name: insert.excluded[name] for name in changed},
            where=table.c.status_at <= insert.excluded.status_at,
        ).returning(table.c.connector_id)
    return upsert


def status_history(
    session: Session, *, station_id: str, limit: int = 100
) -> Sequence[StatusEvent]:
    return session.exec(
        select(StatusEvent)
        .where(StatusEvent.station_id == station_id)
        .order_by(col(StatusEvent.timestamp).desc(), col(StatusEvent.id).desc())
        .limit(limit)
    ).all()


# ---------------------------------------------------------------- id tags and authorization


@dataclass(frozen=True)
class IdTagInfo:
    status: str
    expiry_date: datetime | None = None
    parent_id_tag: str | None = None


# A hook other packages register to refuse an otherwise valid tag (a driver without funds,
# say). It returns an OCPP AuthorizationStatus to refuse, or None to let the tag through.
AuthorizationHook = Callable[[Session, str, str], str | None]


def create_id_tag(
    session: Session,
    *,
    id_tag: str,
    parent_id_tag: str | None = None,
    expiry_date: datetime | None = None,
    note: str | None = None,
) -> IdTag:
    if session.get(IdTag, id_tag) is not None:
        raise Conflict(f"id tag {id_tag} already exists")
    if parent_id_tag is not None and session.get(IdTag, parent_id_tag) is None:
        raise NotFound(f"no parent id tag {parent_id_tag}")
    tag = IdTag(id_tag=id_tag, parent_id_tag=parent_id_tag, expiry_date=expiry_date, note=note)
    session.add(tag)
    session.flush()
    return tag


def update_id_tag(
    session: Session,
    *,
    id_tag: str,
    status: IdTagStatus | None = None,
    expiry_date: datetime | None = None,
    parent_id_tag: str | None = None,
) -> IdTag:
    tag = session.get(IdTag, id_tag)
    if tag is None:
        raise NotFound(f"no id tag {id_tag}")
    if status is not None:
        tag.status = status
    if expiry_date is not None:
        tag.expiry_date = expiry_date
    if parent_id_tag is not None:
        if session.get(IdTag, parent_id_tag) is None:
            raise NotFound(f"no parent id tag {parent_id_tag}")
        tag.parent_id_tag = parent_id_tag
    session.add(tag)
    return tag


def list_id_tags(session: Session) -> Sequence[IdTag]:
    return session.exec(select(IdTag).order_by(IdTag.id_tag)).all()


def authorize(
    session: Session,
    *,
    station_id: str,
    id_tag: str,
    hooks: Sequence[AuthorizationHook] = (),
    exclude_transaction: int | None = None,
) -> IdTagInfo:
    """Answer an Authorize: our id-tag registry first, then every hook may refuse."""
    tag = session.get(IdTag, id_tag)
    if tag is None:
        return IdTagInfo(IdTagStatus.invalid)
    info = IdTagInfo(tag.status, tag.expiry_date, tag.parent_id_tag)
    if tag.status != IdTagStatus.accepted:
        return info
    if tag.expiry_date is not None and tag.expiry_date <= utcnow():
        return IdTagInfo(IdTagStatus.expired, tag.expiry_date, tag.parent_id_tag)
    active = select(func.count()).select_from(Transaction).where(
        Transaction.id_tag == id_tag, col(Transaction.stop_timestamp).is_(None)
    )
    if exclude_transaction is not None:
        active = active.where(Transaction.id != exclude_transaction)
    if session.exec(active).one():
        return IdTagInfo("ConcurrentTx", tag.expiry_date, tag.parent_id_tag)
    for hook in hooks:
        refusal = hook(session, station_id, id_tag)
        if refusal is not None:
            return IdTagInfo(refusal, tag.expiry_date, tag.parent_id_tag)
    return info


# ---------------------------------------------------------------- transactions


def start_transaction(
    session: Session,
    *,
    station_id: str,
    connector_id: int,
    id_tag: str,
    meter_start_wh: int,
    timestamp: datetime,
    reservation_id: int | None = None,
    hooks: Sequence[AuthorizationHook] = (),
) -> tuple[Transaction, IdTagInfo, bool]:
    """Record a StartTransaction; a repeat of the same start returns the first transaction.

    Returns ``(transaction, id_tag_info, created)``. The transaction is recorded whatever
    the tag's status: the station has started, and the status tells it whether to stop.
    """
    existing = session.exec(
        select(Transaction).where(
            Transaction.station_id == station_id,
            Transaction.connector_id == connector_id,
            Transaction.id_tag == id_tag,
            Transaction.start_timestamp == timestamp,
        )
    ).first()
    if existing is not None:
        return existing, IdTagInfo(existing.id_tag_status), False
    info = authorize(session, station_id=station_id, id_tag=id_tag, hooks=hooks)
    tx = Transaction(
        station_id=station_id,
        connector_id=connector_id,
        id_tag=id_tag,
        id_tag_status=info.status,
        meter_start_wh=meter_start_wh,
        start_timestamp=timestamp,
        reservation_id=reservation_id,
    )
    session.add(tx)
    session.flush()
    return tx, info, True


def stop_transaction(
    session: Session,
    *,
    station_id: str,
    transaction_id: int,
    meter_stop_wh: int,
    timestamp: datetime,
    reason: str | None = None,
    id_tag: str | None = None,
    payload: dict[str, Any] | None = None,
) -> tuple[Transaction | None, bool]:
    """Record a StopTransaction. Returns ``(transaction, newly_stopped)``.

    A repeated stop changes nothing; a stop for a transaction we do not know is kept in
    ``unknown_stop`` for investigation and returns ``(None, False)``.
    """
    tx = session.get(Transaction, transaction_id)
    if tx is None or tx.station_id != station_id:
        session.add(
            UnknownStop(
                station_id=station_id,
                transaction_id=transaction_id,
                id_tag=id_tag,
                meter_stop_wh=meter_stop_wh,
                timestamp=timestamp,
                reason=reason,
                payload=payload or {},
            )
        )
        return None, False
    if tx.stop_timestamp is not None:
        return tx, False
    tx.meter_stop_wh = meter_stop_wh
    tx.stop_timestamp = timestamp
    tx.stop_reason = reason
    tx.stop_id_tag = id_tag
    session.add(tx)
    return tx, True


def get_transaction(session: Session, *, transaction_id: int) -> Transaction:
    tx = session.get(Transaction, transaction_id)
    if tx is None:
        raise NotFound(f"no transaction {transaction_id}")
    return tx


def list_transactions(
    session: Session, *, station_id: str | None = None, active: bool | None = None,
    limit: int = 100,
) -> Sequence[Transaction]:
    query = select(Transaction)
    if station_id is not None:
        query = query.where(Transaction.station_id == station_id)
    if active is not None:
        stop = col(Transaction.stop_timestamp)
        query = query.where(stop.is_(None) if active else stop.is_not(None))
    return session.exec(query.order_by(col(Transaction.id).desc()).limit(limit)).all()


def active_transaction(
    session: Session, *, station_id: str, connector_id: int
) -> Transaction | None:
    return session.exec(
        select(Transaction)
        .where(
            Transaction.station_id == station_id,
            Transaction.connector_id == connector_id,
            col(Transaction.stop_timestamp).is_(None),
        )
        .order_by(col(Transaction.id).desc())
    ).first()


def list_unknown_stops(session: Session, *, station_id: str | None = None) -> Sequence[UnknownStop]:
    query = select(UnknownStop)
    if station_id is not None:
        query = query.where(UnknownStop.station_id == station_id)
    return session.exec(query.order_by(col(UnknownStop.id))).all()


# ---------------------------------------------------------------- meter values

_SAMPLE_KEY = ("station_id", "connector_id", "timestamp", "measurand", "phase", "location",
               "context")
_STATUS_KEY = ("station_id", "connector_id", "timestamp", "status", "error_code")

# OCPP 1.6 units with a multiple of a base unit; everything is stored in the base unit.
_SCALED_UNITS = {"kWh": ("Wh", 1000), "kvarh": ("varh", 1000), "kW": ("W", 1000),
                 "kVA": ("VA", 1000), "kvar": ("var", 1000)}


def normalise_sample(sampled: dict[str, Any]) -> dict[str, Any]:
    """One SampledValue (camelCase, as on the wire) with the spec's defaults applied."""
    measurand = sampled.get("measurand", "Energy.Active.Import.Register")
    unit = sampled.get("unit") or _default_unit(measurand)
    fmt = sampled.get("format", "Raw")
    raw = sampled["value"]
    value: Decimal | None = None
    if fmt == "Raw":
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = None
        else:
            if not value.is_finite():
                value = None
    if unit in _SCALED_UNITS:
        unit, factor = _SCALED_UNITS[unit]
        value = value * factor if value is not None else None
    return {
        "measurand": measurand,
        "phase": sampled.get("phase", ""),
        "location": sampled.get("location", "Outlet"),
        "context": sampled.get("context", "Sample.Periodic"),
        "unit": unit,
        "value": value,
        "raw_value": raw,
        "format": fmt,
    }


def _default_unit(measurand: str) -> str:
    if measurand.startswith("Energy.Reactive"):
        return "varh"
    if measurand.startswith("Energy"):
        return "Wh"
    if measurand.startswith("Power.Reactive"):
        return "var"
    if measurand.startswith("Power.Factor"):
        return ""
    if measurand.startswith("Power"):
        return "W"
    if measurand.startswith("Current"):
        return "A"
    if measurand == "Voltage":
        return "V"
    if measurand in ("SoC", "RPM"):
        return "Percent" if measurand == "SoC" else ""
    if measurand == "Temperature":
        return "Celsius"
    return ""


def record_meter_values(
    session: Session,
    *,
    station_id: str,
    connector_id: int,
    transaction_id: int | None,
    meter_values: list[tuple[datetime, list[dict[str, Any]]]],
) -> list[dict[str, Any]]:
    """Store sampled values; returns the samples that were new (repeats are ignored)."""
    rows = [
        {
            "station_id": station_id,
            "connector_id": connector_id,
            "transaction_id": transaction_id,
            "timestamp": timestamp,
            **normalise_sample(sampled),
        }
        for timestamp, samples in meter_values
        for sampled in samples
    ]
    if not rows:
        return []
    inserted = insert_ignore(session, MeterSample, rows, key=_SAMPLE_KEY)
    return [row for row, new in zip(rows, inserted, strict=True) if new]


def list_meter_samples(
    session: Session,
    *,
    station_id: str | None = None,
    transaction_id: int | None = None,
    measurand: str | None = None,
    limit: int = 1000,
) -> Sequence[MeterSample]:
    query = select(MeterSample)
    if station_id is not None:
        query = query.where(MeterSample.station_id == station_id)
    if transaction_id is not None:
        query = query.where(MeterSample.transaction_id == transaction_id)
    if measurand is not None:
        query = query.where(MeterSample.measurand == measurand)
    return session.exec(
        query.order_by(col(MeterSample.timestamp), col(MeterSample.id)).limit(limit)
    ).all()


def insert_ignore(
    session: Session, model: type[SQLModel], rows: list[dict[str, Any]], *, key: Sequence[str]
) -> list[bool]:
    """Insert rows in one statement, skipping those whose ``key`` columns already exist.

    ``key`` names a unique constraint of the table. Returns per row whether it was new; of
    rows repeating a key within ``rows`` only the first counts.
    """
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[dialect]
    table = model.__table__  # type: ignore[attr-defined]
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(tuple(row[k] for k in key), row)
    # executemany rather than .values(rows): SQLAlchemy batches it into one multi-row
    # INSERT and caches the compiled statement, which a literal VALUES list defeats.
    stmt = insert(table).on_conflict_do_nothing().returning(*(table.c[k] for k in key))
    inserted = {tuple(found) for found in session.execute(stmt, list(unique.values()))}
    flags = []
    for row in rows:
        k = tuple(row[c] for c in key)
        flags.append(k in inserted and unique.get(k) is row)
    return flags


# ---------------------------------------------------------------- command audit


def log_command(
    session: Session,
    *,
    station_id: str,
    action: str,
    payload: dict[str, Any],
    requested_by: str,
    reason: str | None,
    outcome: CommandOutcome,
    response: dict[str, Any] | None,
    error: str | None,
    requested_at: datetime,
    latency_ms: float | None,
) -> CommandLog:
    row = CommandLog(
        station_id=station_id,
        action=action,
        payload=payload,
        requested_by=requested_by,
        reason=reason,
        outcome=outcome,
        response=response,
        error=error[:1000] if error else None,
        requested_at=requested_at,
        latency_ms=latency_ms,
    )
    session.add(row)
    session.flush()
    return row


def list_commands(
    session: Session, *, station_id: str, limit: int = 100
) -> Sequence[CommandLog]:
    return session.exec(
        select(CommandLog)
        .where(CommandLog.station_id == station_id)
        .order_by(col(CommandLog.id).desc())
        .limit(limit)
    ).all()
