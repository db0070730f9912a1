"""Keeps ``usage_session``: one row per visit to a connector, derived from station history.

A visit opens at Preparing (or at the first Charging, SuspendedEV, SuspendedEVSE or Finishing,
or at StartTransaction when the station sent none of those) and closes at Available, the
unplug (also at Unavailable or Reserved, which OCPP 1.6 only reaches without a car session).
Within it, time in Charging adds to ``charging_s``, time in SuspendedEV and Finishing to
``idle_s`` (the car is full or done but still blocks the connector); SuspendedEVSE and Faulted
add to neither. Its energy is that of the transactions that started in it (meter stop minus
start; while one runs, its latest energy register sample). A closed visit is *faulted* if the
connector reported Faulted during it, else *completed* with energy above 0 Wh, else
*failed_start*; a visit not yet closed is *open*.

Rows are never updated incrementally. Each station event rebuilds the visits of the stretch
of history around its timestamp, between the closing statuses before and after it, from
``status_event`` and ``transaction`` in the station's own timestamps. So a message queued
offline and delivered late (``current=False``), events handled out of order, or a repeated
stop all converge on the same rows. Meter values, which every charging station sends every
few seconds, trigger nothing: an open visit's energy is as of its latest rebuild.
Rebuilds run in the database's background lane and are coalesced per connector: events
that arrive while a connector's rebuild waits to begin (a plug-in, a start and a Charging
within a second, say) widen the stretch it rebuilds instead of queueing rebuilds of their
own. :func:`backfill` runs the same derivation over the whole history. On PostgreSQL a
transaction-scoped advisory lock per connector keeps two handlers from rebuilding the same
stretch at once (SQLite has one writer anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine, and_, case, delete, func, insert, or_, text
from sqlmodel import Session, col, select

from chargedesk.db import run_in_session
from chargedesk.events import InMemoryEventBus
from load_manager.models import UsageOutcome, UsageSession
from station_api.events import (
    StatusChanged,
    TransactionStarted,
    TransactionStopped,
)
from station_api.models import MeterSample, Station, StatusEvent, Transaction

log = structlog.get_logger(__name__)

OPENING = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"})
CLOSING = frozenset({"Available", "Unavailable", "Reserved"})
CHARGING = frozenset({"Charging"})
IDLE = frozenset({"SuspendedEV", "Finishing"})
ENERGY_REGISTER = "Energy.Active.Import.Register"


@dataclass(frozen=True, slots=True)
class StatusPoint:
    at: datetime
    status: str


@dataclass(frozen=True, slots=True)
class TxPoint:
    id: int
    start: datetime
    # Energy delivered so far (stopped: meter stop - start); None when nothing is known yet.
    energy_wh: int | None


@dataclass
class Visit:
    plugged_in_at: datetime
    unplugged_at: datetime | None = None
    charging_s: float = 0.0
    idle_s: float = 0.0
    faulted: bool = False
    transactions: list[TxPoint] = field(default_factory=list)
    # The state the connector is in and since when, for the time to come.
    _state: str | None = None
    _since: datetime | None = None

    @property
    def energy_wh(self) -> int:
        return sum(max(0, t.energy_wh or 0) for t in self.transactions)

    @property
    def outcome(self) -> UsageOutcome:
        if self.unplugged_at is None:
            return UsageOutcome.open
        if self.faulted:
            return UsageOutcome.faulted
        return UsageOutcome.completed if self.energy_wh > 0 else UsageOutcome.failed_start


def derive_visits(statuses: Sequence[StatusPoint], transactions: Sequence[TxPoint]
                  ) -> list[Visit]:
    """The visits a connector's statuses and transactions describe (pure: the rules above).

    At equal timestamps a status is taken before a transaction start, so a Preparing and the
    StartTransaction of the same second make one visit.
    """
    timeline: list[tuple[datetime, int, int, StatusPoint | TxPoint]] = [
        (s.at, 0, k, s) for k, s in enumerate(statuses)]
    timeline += [(t.start, 1, k, t) for k, t in enumerate(transactions)]
    timeline.sort(key=lambda item: item[:3])
    visits: list[Visit] = []
    current: Visit | None = None
    for at, _kind, _k, point in timeline:
        if isinstance(point, TxPoint):
            if current is None:
                current = Visit(plugged_in_at=at, _since=at)
                visits.append(current)
            current.transactions.append(point)
            continue
        if current is None:
            if point.status in OPENING:
                current = Visit(plugged_in_at=at, _state=point.status, _since=at)
                visits.append(current)
            continue
        _accumulate(current, at)
        if point.status in CLOSING:
            current.unplugged_at = at
            current = None
            continue
        current._state = point.status
        current.faulted |= point.status == "Faulted"
    return visits


def _accumulate(visit: Visit, until: datetime) -> None:
    if visit._since is None:
        return
    seconds = max(0.0, (until - visit._since).total_seconds())
    if visit._state in CHARGING:
        visit.charging_s += seconds
    elif visit._state in IDLE:
        visit.idle_s += seconds
    visit._since = until


# ---------------------------------------------------------------- rebuilding from history


def rebuild_around(session: Session, *, station_id: str, connector_id: int,
                   at: datetime) -> int:
    """Rebuild the visits of ``station_id``/``connector_id`` in the stretch of history
    between the closing statuses just before and just after ``at``; returns how many rows
    that stretch now holds."""
    return rebuild_between(session, station_id=station_id, connector_id=connector_id,
                           first=at, last=at)


def rebuild_between(session: Session, *, station_id: str, connector_id: int,
                    first: datetime, last: datetime) -> int:
    """Rebuild the visits of the stretch from the closing status just before ``first`` to
    the one just after ``last`` (every visit around any moment in between)."""
    _lock(session, station_id, connector_id)
    here = (*_connector(StatusEvent, station_id, connector_id),
            col(StatusEvent.status).in_(CLOSING))
    # Both bounds in one statement: this runs for every status change of every station.
    lo, hi = session.execute(select(
        select(func.max(StatusEvent.timestamp)).where(*here, StatusEvent.timestamp < first)
        .scalar_subquery(),
        select(func.min(StatusEvent.timestamp)).where(*here, StatusEvent.timestamp > last)
        .scalar_subquery(),
    )).one()
    return _rebuild(session, station_id=station_id, connector_id=connector_id, lo=lo, hi=hi)


def backfill(session: Session, *, since: datetime | None = None) -> int:
    """Rebuild every connector's visits from ``status_event`` and ``transaction`` history
    (from the last unplug before ``since``, or from the beginning); idempotent. Returns the
    number of rows written."""
    connectors = set(session.exec(select(StatusEvent.station_id, StatusEvent.connector_id)
                                  .where(StatusEvent.connector_id > 0).distinct()).all())
    connectors |= set(session.exec(select(Transaction.station_id, Transaction.connector_id)
                                   .distinct()).all())
    written = 0
    for station_id, connector_id in sorted(connectors):
        lo = None
        if since is not None:
            lo = session.exec(select(func.max(StatusEvent.timestamp)).where(
                *_connector(StatusEvent, station_id, connector_id),
                col(StatusEvent.status).in_(CLOSING), StatusEvent.timestamp < since)).one()
        _lock(session, station_id, connector_id)
        written += _rebuild(session, station_id=station_id, connector_id=connector_id, lo=lo,
                            hi=None)
    return written


def _connector(model: type[StatusEvent] | type[Transaction] | type[UsageSession],
               station_id: str, connector_id: int) -> tuple[object, object]:
    return (model.station_id == station_id, model.connector_id == connector_id)


def _lock(session: Session, station_id: str, connector_id: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                        {"key": f"usage:{station_id}:{connector_id}"})


def _rebuild(session: Session, *, station_id: str, connector_id: int, lo: datetime | None,
             hi: datetime | None) -> int:
    """Derive the visits of ``[lo, hi]`` again and replace the rows they replace."""
    status_query = select(StatusEvent.timestamp, StatusEvent.status).where(
        *_connector(StatusEvent, station_id, connector_id))
    # A running transaction's energy so far is its latest register reading.
    latest = (select(func.max(MeterSample.value))
              .where(MeterSample.transaction_id == Transaction.id,
                     MeterSample.measurand == ENERGY_REGISTER)
              .scalar_subquery())
    tx_query = select(
        Transaction.id, Transaction.start_timestamp, Transaction.meter_start_wh,
        Transaction.meter_stop_wh,
        case((col(Transaction.meter_stop_wh).is_(None), latest), else_=None),
    ).where(*_connector(Transaction, station_id, connector_id))
    if lo is not None:
        status_query = status_query.where(StatusEvent.timestamp >= lo)
        tx_query = tx_query.where(Transaction.start_timestamp >= lo)
    if hi is not None:
        status_query = status_query.where(StatusEvent.timestamp <= hi)
        tx_query = tx_query.where(Transaction.start_timestamp < hi)
    statuses = [StatusPoint(at, status) for at, status in session.execute(
        status_query.order_by(StatusEvent.timestamp, StatusEvent.id)).all()]
    txs = [TxPoint(tx_id, start, _energy(meter_start, meter_stop, reading))
           for tx_id, start, meter_start, meter_stop, reading in session.execute(
               tx_query.order_by(Transaction.start_timestamp, Transaction.id)).all()]
    visits = derive_visits(statuses, txs)

    stale = and_(*_connector(UsageSession, station_id, connector_id))
    if lo is not None:
        stale = and_(stale, UsageSession.plugged_in_at >= lo)
    if hi is not None:
        stale = and_(stale, UsageSession.plugged_in_at < hi)
    if txs:
        # Also a row that held one of these transactions under an older reading of history.
        stale = or_(stale, col(UsageSession.transaction_id).in_([t.id for t in txs]))
    session.execute(delete(UsageSession).where(stale))
    if visits:
        site_id = session.execute(select(Station.site_id).where(Station.id == station_id)
                                  ).scalar()
        session.execute(insert(UsageSession), [{
            "station_id": station_id, "connector_id": connector_id, "site_id": site_id,
            "transaction_id": visit.transactions[0].id if visit.transactions else None,
            "plugged_in_at": visit.plugged_in_at, "unplugged_at": visit.unplugged_at,
            "charging_s": round(visit.charging_s), "idle_s": round(visit.idle_s),
            "energy_wh": visit.energy_wh, "outcome": visit.outcome,
        } for visit in visits])
    return len(visits)


def _energy(meter_start_wh: int, meter_stop_wh: int | None, latest: Any) -> int | None:
    """Energy delivered: meter stop minus start once stopped, else up to the latest reading
    (None before the first)."""
    if meter_stop_wh is not None:
        return meter_stop_wh - meter_start_wh
    return None if latest is None else int(latest) - meter_start_wh


# ---------------------------------------------------------------- subscribers


@dataclass
class _Due:
    """What a connector's coming rebuild covers: moments in its history and transactions
    (whose start places them)."""

    first: datetime | None = None
    last: datetime | None = None
    transactions: set[int] = field(default_factory=set)

    def add(self, at: datetime) -> None:
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)


@dataclass
class UsageTracker:
    """Rebuilds the visits around station events, off the event loop, one rebuild per
    connector for all the events that came while it waited to begin."""

    engine: Engine
    bus: InMemoryEventBus
    # Connectors with a rebuild queued that has not begun; the worker thread takes them.
    _due: dict[tuple[str, int], _Due] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        self.bus.subscribe(StatusChanged, self.on_status)
        self.bus.subscribe(TransactionStarted, self.on_started)
        self.bus.subscribe(TransactionStopped, self.on_stopped)

    async def on_status(self, event: StatusChanged) -> None:
        if event.connector_id == 0:  # the station as a whole: no visit of its own
            return
        # Late (current=False) or not, the station's timestamp places it in history.
        await self._rebuild(event.station_id, event.connector_id, at=event.timestamp)

    async def on_started(self, event: TransactionStarted) -> None:
        await self._rebuild(event.station_id, event.connector_id, at=event.timestamp)

    async def on_stopped(self, event: TransactionStopped) -> None:
        # The visit a transaction belongs to is the one around its start.
        await self._rebuild(event.station_id, event.connector_id,
                            transaction_id=event.transaction_id)

    async def _rebuild(self, station_id: str, connector_id: int, *, at: datetime | None = None,
                       transaction_id: int | None = None) -> None:
        key = (station_id, connector_id)
        with self._lock:
            queued = key in self._due
            due = self._due.setdefault(key, _Due())
            if at is not None:
                due.add(at)
            if transaction_id is not None:
                due.transactions.add(transaction_id)
        if queued:
            return  # the rebuild already queued will cover this event too
        try:
            await run_in_session(self.engine, self._run_due, key=key)
        except BaseException:
            with self._lock:  # never begun (cancelled): let the next event queue it anew
                if self._due.get(key) is due:
                    del self._due[key]
            raise

    def _run_due(self, session: Session, *, key: tuple[str, int]) -> int:
        with self._lock:
            due = self._due.pop(key)
        station_id, connector_id = key
        if due.transactions:
            for start in session.execute(select(Transaction.start_timestamp).where(
                    col(Transaction.id).in_(due.transactions),
                    *_connector(Transaction, station_id, connector_id))).scalars():
                due.add(start)
        if due.first is None or due.last is None:
            return 0
        return rebuild_between(session, station_id=station_id, connector_id=connector_id,
                               first=due.first, last=due.last)


def install(*, engine: Engine, bus: InMemoryEventBus) -> UsageTracker:
    """Subscribe the usage tracker to station events."""
    tracker = UsageTracker(engine, bus)
    tracker.install()
    return tracker
