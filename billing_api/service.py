"""Billing services: the only place that queries billing tables.

Plain keyword-only functions taking a session; callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from billing_api.models import TariffAssignment, TariffVersion
from billing_api.tariffs import Tariff, parse_tariff
from chargedesk import errors
from chargedesk.types import utcnow
from station_api.models import Site, Station


class BillingError(errors.DomainError):
    """A billing request that cannot be carried out."""


class NotFound(BillingError, errors.NotFound):
    pass


def import_tariff(
    session: Session, *, tariff: Tariff, created_by: str, valid_from: datetime | None = None
) -> TariffVersion:
    """Store a tariff as the next version of its id (versions are never edited)."""
    latest = session.exec(
        select(func.max(TariffVersion.version)).where(TariffVersion.tariff_id == tariff.id)
    ).one()
    row = TariffVersion(
        tariff_id=tariff.id,
        version=(latest or 0) + 1,
        currency=tariff.currency,
        body=tariff.to_json(),
        valid_from=valid_from or utcnow(),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row


def list_tariffs(session: Session) -> Sequence[TariffVersion]:
    """The newest version of every tariff."""
    newest = (
        select(TariffVersion.tariff_id, func.max(TariffVersion.version).label("version"))
        .group_by(TariffVersion.tariff_id)
        .subquery()
    )
    return session.exec(
        select(TariffVersion)
        .join(newest, (TariffVersion.tariff_id == newest.c.tariff_id)
              & (TariffVersion.version == newest.c.version))
        .order_by(TariffVersion.tariff_id)
    ).all()


def tariff_versions(session: Session, *, tariff_id: str) -> Sequence[TariffVersion]:
    rows = session.exec(
        select(TariffVersion)
        .where(TariffVersion.tariff_id == tariff_id)
        .order_by(col(TariffVersion.version))
    ).all()
    if not rows:
        raise NotFound(f"no tariff {tariff_id}")
    return rows


def tariff_version(
    session: Session, *, tariff_id: str, version: int | None = None,
    at: datetime | None = None,
) -> TariffVersion:
    """A given version, or the one in force at ``at`` (default: now)."""
    query = select(TariffVersion).where(TariffVersion.tariff_id == tariff_id)
    if version is not None:
        query = query.where(TariffVersion.version == version)
    else:
        query = query.where(TariffVersion.valid_from <= (at or utcnow()))
    row = session.exec(query.order_by(col(TariffVersion.version).desc())).first()
    if row is None:
        what = f"version {version} of " if version is not None else ""
        raise NotFound(f"no {what}tariff {tariff_id} in force")
    return row


def load(row: TariffVersion) -> Tariff:
    return parse_tariff(row.body)


def assign_tariff(
    session: Session,
    *,
    tariff_id: str,
    created_by: str,
    site_id: str | None = None,
    station_id: str | None = None,
    connector_id: int | None = None,
    driver_group: str | None = None,
    valid_from: datetime | None = None,
) -> TariffAssignment:
    """Apply a tariff to a connector, a station, a site or the network, optionally for one
    driver group."""
    tariff_versions(session, tariff_id=tariff_id)  # raises NotFound
    if connector_id is not None and station_id is None:
        raise BillingError("a connector assignment needs its station")
    if site_id is not None and station_id is not None:
        raise BillingError("assign to a site or to a station, not both")
    if station_id is not None and session.get(Station, station_id) is None:
        raise NotFound(f"no station {station_id}")
    if site_id is not None and session.get(Site, site_id) is None:
        raise NotFound(f"no site {site_id}")
    row = TariffAssignment(
        tariff_id=tariff_id, site_id=site_id, station_id=station_id, connector_id=connector_id,
        driver_group=driver_group, valid_from=valid_from or utcnow(), created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row


def tariff_in_force(
    session: Session,
    *,
    station_id: str,
    connector_id: int | None = None,
    driver_group: str | None = None,
    at: datetime | None = None,
) -> TariffVersion:
    """The tariff version that prices a session starting at ``at`` on this connector.

    The most specific scope wins (connector, station, site, network); within a scope a
    driver group's own assignment beats the general one; of equal candidates the newest
    assignment valid at ``at``. The version is the newest one valid at ``at``.
    """
    at = at or utcnow()
    groups = [None] if driver_group is None else [driver_group, None]
    station = session.get(Station, station_id)
    site_id = station.site_id if station is not None else None
    candidates = session.exec(
        select(TariffAssignment).where(
            TariffAssignment.valid_from <= at,
            (col(TariffAssignment.station_id).is_(None))
            | (TariffAssignment.station_id == station_id),
            (col(TariffAssignment.site_id).is_(None)) | (TariffAssignment.site_id == site_id),
        )
    ).all()

    def rank(a: TariffAssignment) -> tuple[int, int, datetime, int] | None:
        if a.driver_group not in groups:
            return None
        if a.connector_id is not None and a.connector_id != connector_id:
            return None
        if a.connector_id is not None:
            scope = 3
        elif a.station_id is not None:
            scope = 2
        else:
            scope = 1 if a.site_id is not None else 0
        return scope, int(a.driver_group is not None), a.valid_from, a.id or 0

    ranked = [(r, a) for a in candidates if (r := rank(a)) is not None]
    if not ranked:
        raise NotFound(f"no tariff applies at station {station_id}")
    best = max(ranked, key=lambda pair: pair[0])[1]
    return tariff_version(session, tariff_id=best.tariff_id, at=at)
