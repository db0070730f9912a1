"""Reads the actions need that the domain services do not offer yet.

Plain keyword-only functions taking a session, like a domain's ``service.py``; each belongs in
``station_api/service.py`` or ``billing_api/support.py`` and should move there when those
packages are next changed (this change kept to the assistant).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlmodel import Session, col, or_, select

from billing_api.models import ChargingSession, DriverIdTag, Invoice, SessionStatus
from station_api.models import IdTag, MeterSample, Transaction


def driver_tags(session: Session, *, driver_id: int) -> list[str]:
    """The driver's own id tags (cards, app tokens), as billing links them."""
    return list(session.exec(
        select(DriverIdTag.id_tag).where(DriverIdTag.driver_id == driver_id)
        .order_by(col(DriverIdTag.id_tag))).all())


def transactions_of(
    session: Session, *, id_tags: Collection[str], active: bool | None = None, limit: int = 20,
) -> Sequence[Transaction]:
    """Transactions started with one of ``id_tags`` or a child tag of one, newest first."""
    if not id_tags:
        return []
    children = select(IdTag.id_tag).where(col(IdTag.parent_id_tag).in_(list(id_tags)))
    query = select(Transaction).where(or_(col(Transaction.id_tag).in_(list(id_tags)),
                                          col(Transaction.id_tag).in_(children)))
    if active is not None:
        stop = col(Transaction.stop_timestamp)
        query = query.where(stop.is_(None) if active else stop.is_not(None))
    return session.exec(query.order_by(col(Transaction.id).desc()).limit(limit)).all()


def latest_sample(
    session: Session, *, transaction_id: int, measurand: str,
) -> MeterSample | None:
    """The newest periodic or end reading of one measurand in a transaction (any phase)."""
    return session.exec(
        select(MeterSample)
        .where(MeterSample.transaction_id == transaction_id, MeterSample.measurand == measurand,
               MeterSample.phase == "")
        .order_by(col(MeterSample.timestamp).desc(), col(MeterSample.id).desc())
    ).first()


def rated_sessions(session: Session, *, driver_id: int, limit: int = 20
                   ) -> Sequence[ChargingSession]:
    """The driver's rated charging sessions, newest first."""
    return session.exec(
        select(ChargingSession)
        .where(ChargingSession.driver_id == driver_id,
               ChargingSession.status == SessionStatus.rated)
        .order_by(col(ChargingSession.start_at).desc(), col(ChargingSession.id).desc())
        .limit(limit)
    ).all()


def invoices_of(session: Session, *, driver_id: int, limit: int = 24) -> Sequence[Invoice]:
    """The driver's invoices and credit notes, newest first."""
    return session.exec(
        select(Invoice).where(Invoice.driver_id == driver_id)
        .order_by(col(Invoice.issue_date).desc(), col(Invoice.id).desc()).limit(limit)
    ).all()
