"""Invoices: the monthly run, gapless numbering, OCR references, credit notes.

An invoice bills a driver's rated sessions that ended before the period's end and were not
billed yet. Its lines sum the sessions' cost lines per (dimension, unit, unit price, VAT rate):
each session was rounded to öre on its own, as its receipt showed, and a line's amount is the
sum of those. VAT is computed once per rate on the summed net amounts (ROUND_HALF_UP).

Everything that issues an invoice runs inside the caller's transaction, and the number is
taken from its series under a row lock in that same transaction: an invoice that rolls back
gives its number back, so the numbers of committed invoices have no gaps. The run commits one
batch of drivers at a time; a run that crashes leaves whole batches behind, and running it
again invoices exactly the drivers still missing (``run_key`` is unique per driver and period).

On PostgreSQL a batch's invoices are stored, with their lines, and its sessions linked to
them before its numbers are taken: under provisional numbers (minus the invoice's id), which
the same transaction replaces with the real ones just before it commits. Nobody ever sees a
provisional number, and no issued invoice is edited; this keeps the numbering lock, which
serialises the batches, to the last moment of each, so batches can be prepared side by side.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import (
    Engine,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    text,
    update,
)
from sqlmodel import Session, col, select
from stdnum import luhn

from billing_api.events import InvoiceIssued
from billing_api.models import (
    ChargingSession,
    Driver,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceRun,
    InvoiceSeries,
    InvoiceStatus,
    Language,
    PaymentMethod,
    SessionCostLine,
    SessionStatus,
)
from billing_api.money import round_ratio_to_cents
from billing_api.service import BillingError, NotFound
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import UTCDateTime, utcnow

log = structlog.get_logger(__name__)

# What a line sells, by dimension, in the invoice's language.
LINE_NAMES: dict[Language, dict[str, str]] = {
    Language.sv: {
        "FLAT": "Startavgift", "ENERGY": "Energi", "TIME": "Laddtid",
        "PARKING_TIME": "Parkering (ansluten utan laddning)",
        "ADJUSTMENT": "Justering till lägsta/högsta pris", "CREDIT": "Kreditering",
        "RESERVATION_FLAT": "Reservationsavgift", "RESERVATION_TIME": "Reservationstid",
    },
    Language.en: {
        "FLAT": "Session fee", "ENERGY": "Energy", "TIME": "Charging time",
        "PARKING_TIME": "Parking (plugged in, not charging)",
        "ADJUSTMENT": "Adjustment to minimum/maximum price", "CREDIT": "Credit",
        "RESERVATION_FLAT": "Reservation fee", "RESERVATION_TIME": "Reservation time",
    },
}
LINE_ORDER = {"RESERVATION_FLAT": 0, "RESERVATION_TIME": 1, "FLAT": 2, "ENERGY": 3, "TIME": 4,
              "PARKING_TIME": 5, "ADJUSTMENT": 6}
# The first digit of an OCR reference tells an invoice from a credit note.
OCR_PREFIX = {InvoiceKind.invoice: "1", InvoiceKind.credit_note: "2"}


# ---------------------------------------------------------------- references and numbers


def ocr_reference(kind: InvoiceKind, number: int) -> str:
    """Bankgirot OCR reference: prefix and number, a length digit, then a Luhn check digit
    ("variable OCR with length check"), so a mistyped or truncated reference is refused."""
    base = f"{OCR_PREFIX[kind]}{number:07d}"
    with_length = base + str((len(base) + 2) % 10)
    return with_length + luhn.calc_check_digit(with_length)


def take_numbers(session: Session, *, series: str, count: int = 1) -> int:
    """Reserve ``count`` consecutive numbers of a series; returns the first.

    The UPDATE locks the series row until the transaction ends, so concurrent issuers
    queue and a rollback returns the numbers: no gaps, no duplicates."""
    if count < 1:
        raise ValueError("count must be positive")
    for _ in range(2):
        taken = session.execute(
            update(InvoiceSeries)
            .where(col(InvoiceSeries.series) == series)
            .values(next_number=InvoiceSeries.next_number + count)
            .returning(InvoiceSeries.next_number)
        ).scalar_one_or_none()
        if taken is not None:
            return int(taken) - count
        _create_series(session, series)
    raise RuntimeError(f"invoice series {series} could not be created")


def _create_series(session: Session, series: str) -> None:
    table = InvoiceSeries.__table__
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(table).values(series=series, next_number=1)
                        .on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(table).values(series=series, next_number=1)
                        .on_conflict_do_nothing())


# ---------------------------------------------------------------- cost lines of sessions


def record_cost_lines(session: Session, *, row: ChargingSession, cdr: dict[str, Any]) -> None:
    """Store (or replace, after re-rating) a session's cost lines from its CDR. Credits
    granted on the session (an approved dispute) are not the tariff's and stay."""
    table = SessionCostLine.__table__
    session.execute(
        table.delete().where(table.c.session_id == row.id, table.c.dimension != "CREDIT")
    )
    lines = cost_lines_of(cdr)
    if lines:
        session.execute(insert(SessionCostLine), [{"session_id": row.id, **line}
                                                  for line in lines])


def cost_lines_of(cdr: dict[str, Any]) -> list[dict[str, Any]]:
    """A CDR's cost lines as column values, the price-limit adjustment included."""
    lines = [
        {
            # A reservation's time must not merge with charging time at the same price.
            "dimension": f"RESERVATION_{line['dimension']}" if line.get("reservation")
            else line["dimension"],
            "quantity": Decimal(str(line["quantity"])),
            "unit": line["unit"],
            "unit_price": Decimal(str(line["unit_price"])),
            "net_ore": _ore(line["amount"]),
            "vat_rate": None if line["vat_rate"] is None else Decimal(str(line["vat_rate"])),
        }
        for line in cdr.get("cost_breakdown", [])
    ]
    adjustment = cdr.get("price_limit_adjustment")
    if adjustment is not None and _ore(adjustment["excl_vat"]):
        rates = {line["vat_rate"] for line in lines}
        lines.append({
            "dimension": "ADJUSTMENT", "quantity": Decimal(1), "unit": "session",
            "unit_price": Decimal(str(adjustment["excl_vat"])),
            "net_ore": _ore(adjustment["excl_vat"]),
            # One rate is the case in practice; mixed rates would need the adjustment split.
            "vat_rate": rates.pop() if len(rates) == 1 else None,
        })
    return lines


def _ore(amount: object) -> int:
    value = Decimal(str(amount)) * 100
    if value != value.to_integral_value():
        raise BillingError(f"amount {amount} is not a whole number of öre")
    return int(value)


# ---------------------------------------------------------------- amounts


@dataclass(frozen=True)
class LineSpec:
    dimension: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    net_ore: int
    vat_rate: Decimal | None
    session_id: int | None = None


def vat_breakdown(lines: Iterable[tuple[Decimal | None, int]]) -> list[dict[str, Any]]:
    """VAT per rate on the summed net amounts of ``(rate, net_ore)`` lines."""
    bases: dict[Decimal | None, int] = defaultdict(int)
    for rate, net in lines:
        bases[None if rate is None else Decimal(rate).normalize()] += net
    out = []
    for rate in sorted(bases, key=lambda r: (r is None, r or 0)):
        base = bases[rate]
        if rate is None:
            vat = 0
        else:
            # base (öre) x rate (percent) / 100, in öre, as an integer ratio: Fraction
            # arithmetic would reduce it (gcd) at every step, and the rounding needs no
            # reduced ratio
            numerator, denominator = rate.as_integer_ratio()
            vat = round_ratio_to_cents(numerator * base, denominator * 100 * 100)
        out.append({"rate": None if rate is None else _rate_text(rate), "base_ore": base,
                    "vat_ore": vat})
    return out


def _rate_text(rate: Decimal) -> str:
    return format(rate.normalize(), "f")


def seller_snapshot(settings: Settings) -> str:
    return json.dumps({
        "name": settings.seller_name, "address": settings.seller_address,
        "org_number": settings.seller_org_number, "vat_number": settings.seller_vat_number,
        "bankgiro": settings.seller_bankgiro, "email": settings.seller_email,
    }, ensure_ascii=False)


def period_bounds(period_start: date, time_zone: str) -> tuple[date, datetime]:
    """The period's exclusive end date and that local midnight as a UTC instant."""
    end = (period_start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return end, datetime.combine(end, time(0), ZoneInfo(time_zone)).astimezone(UTC)


def previous_month(today: date) -> date:
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


# ---------------------------------------------------------------- issuing


class Buyer(Protocol):
    """What an invoice copies from its driver: a Driver, or a row of BUYER_FIELDS."""

    @property
    def id(self) -> int | None: ...
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def vat_number(self) -> str | None: ...
    @property
    def currency(self) -> str: ...
    @property
    def language(self) -> Language: ...
    @property
    def payment_method(self) -> PaymentMethod: ...


BUYER_FIELDS = (
    "id", "name", "address", "email", "vat_number", "currency", "language", "payment_method",
)


def _new_invoice(
    *, kind: InvoiceKind, series: str, number: int | None, driver: Buyer,
    lines: Sequence[LineSpec],
    issue_date: date, settings: Settings, seller: str, run_id: int | None = None,
    period_start: date | None = None, period_end: date | None = None,
    credits: Invoice | None = None, reason: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    vat = vat_breakdown((line.vat_rate, line.net_ore) for line in lines)
    net = sum(line.net_ore for line in lines)
    vat_total = sum(item["vat_ore"] for item in vat)
    prepaid = driver.payment_method == PaymentMethod.prepaid
    if kind == InvoiceKind.credit_note:
        status = InvoiceStatus.settled
    elif prepaid or net + vat_total <= 0:
        status = InvoiceStatus.paid
    else:
        status = InvoiceStatus.open
    invoice = {
        "kind": kind, "series": series, "number": number, "driver_id": driver.id,
        "run_id": run_id,
        "run_key": f"{period_start.isoformat()}:{driver.id}" if run_id is not None
        and period_start is not None else None,
        "period_start": period_start, "period_end": period_end,
        "issue_date": issue_date,
        "due_date": issue_date + timedelta(days=settings.invoice_due_days),
        "currency": driver.currency, "net_ore": net, "vat_ore": vat_total,
        "total_ore": net + vat_total, "vat_breakdown": json.dumps(vat),
        # A run numbers its invoices when it writes them (None until then).
        "ocr": None if number is None else ocr_reference(kind, number),
        "language": driver.language,
        "payment_method": driver.payment_method, "status": status,
        "credits_invoice_id": credits.id if credits is not None else None,
        "buyer_name": driver.name, "buyer_address": driver.address,
        "buyer_email": driver.email, "buyer_vat_number": driver.vat_number,
        "seller": seller, "reason": reason,
        "paid_at": utcnow() if status == InvoiceStatus.paid else None,
        "created_at": utcnow(),
    }
    rows = [
        {"position": n, "session_id": line.session_id, "dimension": line.dimension,
         "description": line.description, "quantity": line.quantity, "unit": line.unit,
         "unit_price": line.unit_price, "net_ore": line.net_ore, "vat_rate": line.vat_rate}
        for n, line in enumerate(lines, start=1)
    ]
    return invoice, rows


def _insert(session: Session, invoice: dict[str, Any], lines: list[dict[str, Any]]) -> Invoice:
    row = Invoice(**invoice)
    session.add(row)
    session.flush()
    if lines:
        session.execute(insert(InvoiceLine), [{"invoice_id": row.id, **line} for line in lines])
    return row


def _open_sessions_filter(cutoff: datetime, snapshot: datetime) -> Any:
    return and_(
        col(ChargingSession.status) == SessionStatus.rated,
        col(ChargingSession.invoice_id).is_(None),
        col(ChargingSession.end_at) < cutoff,
        col(ChargingSession.rated_at) <= snapshot,
    )


def _summed_lines(
    session: Session, *, driver_ids: Sequence[int], cutoff: datetime, snapshot: datetime,
) -> dict[int, list[tuple[str, str, Decimal, Decimal | None, Decimal, int]]]:
    """Per driver: (dimension, unit, unit price, VAT rate, quantity, net öre) summed over the
    sessions still to bill."""
    rows = session.execute(
        select(
            ChargingSession.driver_id, SessionCostLine.dimension, SessionCostLine.unit,
            SessionCostLine.unit_price, SessionCostLine.vat_rate,
            func.sum(SessionCostLine.quantity), func.sum(SessionCostLine.net_ore),
        )
        .join(ChargingSession, col(ChargingSession.id) == SessionCostLine.session_id)
        .where(col(ChargingSession.driver_id).in_(driver_ids),
               _open_sessions_filter(cutoff, snapshot))
        .group_by(ChargingSession.driver_id, SessionCostLine.dimension, SessionCostLine.unit,
                  SessionCostLine.unit_price, SessionCostLine.vat_rate)
    ).all()
    return _group_summed(rows)


def _line_specs(driver: Buyer, summed: list[Any]) -> list[LineSpec]:
    names = LINE_NAMES[driver.language]
    summed = sorted(summed, key=lambda s: (LINE_ORDER.get(s[0], 9), s[2], s[3] or 0))
    return [
        LineSpec(dimension=dim, description=names.get(dim, dim),
                 quantity=_trim(_whole_hours(qty) if unit == "h" else qty), unit=unit,
                 unit_price=_trim(price), net_ore=net,
                 vat_rate=None if rate is None else Decimal(rate))
        for dim, unit, price, rate, qty, net in summed
    ]


def _whole_hours(hours: Decimal) -> Decimal:
    """Sessions' hours come as six-decimal figures (20 min is 0.333333 h); their sum shows
    to a few seconds, 2.25 h rather than 2.249999 h."""
    return hours.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)


def _trim(value: Decimal) -> Decimal:
    """Numeric columns come back with six places; show what the tariff and meter said."""
    value = Decimal(value)
    return value.quantize(Decimal(1)) if value == value.to_integral() else value.normalize()


@dataclass(frozen=True)
class RunReport:
    run_id: int
    period_start: date
    period_end: date
    invoices: int
    total_ore: int
    skipped_already_invoiced: int


def run_invoices(
    engine: Engine,
    *,
    period_start: date,
    settings: Settings,
    started_by: str,
    today: date | None = None,
    batch_size: int = 1000,
    on_batch: Callable[[int, int], None] | None = None,
    after_batch: Callable[[Session, list[int]], None] | None = None,
) -> RunReport:
    """Invoice every driver with rated, unbilled sessions that ended before the period's end.

    Commits a batch of drivers at a time. Re-running a period (after a crash, or by hand)
    invoices only the drivers who have no invoice for it yet. ``after_batch`` runs inside
    each batch's transaction (direct-debit payments are created there).

    On PostgreSQL the batches are pipelined (:func:`_run_pipelined`): the next batches are
    prepared, each in its own transaction, while the oldest one is numbered and committed.
    Numbers are still taken in commit order under the series' row lock, so they stay
    gapless and in driver order; a batch that fails stops the run, and the batches prepared
    ahead are rolled back."""
    if period_start.day != 1:
        raise BillingError("an invoice period starts on the first day of a month")
    period_end, cutoff = period_bounds(period_start, settings.time_zone)
    issue_date = today or datetime.now(ZoneInfo(settings.time_zone)).date()
    if issue_date < period_end:
        raise BillingError(f"the period {period_start:%Y-%m} has not ended on {issue_date}")
    snapshot = utcnow()
    with session_scope(engine) as session:
        run = InvoiceRun(period_start=period_start, period_end=period_end, started_by=started_by)
        session.add(run)
        session.flush()
        run_id = run.id
        assert run_id is not None
        already = exists().where(
            col(Invoice.driver_id) == ChargingSession.driver_id,
            col(Invoice.period_start) == period_start,
            col(Invoice.run_key).is_not(None),
        )
        drivers = list(session.exec(
            select(ChargingSession.driver_id).distinct()
            .where(col(ChargingSession.driver_id).is_not(None),
                   _open_sessions_filter(cutoff, snapshot), ~already)
            .order_by(ChargingSession.driver_id)
        ).all())
        skipped = session.exec(
            select(func.count()).select_from(Invoice).where(
                col(Invoice.period_start) == period_start, col(Invoice.run_key).is_not(None))
        ).one()
    log.info("invoice run started", run_id=run_id, period=f"{period_start:%Y-%m}",
             drivers=len(drivers))
    batches = [
        [d for d in drivers[first:first + batch_size] if d is not None]
        for first in range(0, len(drivers), batch_size)
    ]
    job = _RunJob(
        run_id=run_id, period_start=period_start, period_end=period_end, cutoff=cutoff,
        snapshot=snapshot, issue_date=issue_date, settings=settings,
        seller=seller_snapshot(settings), after_batch=after_batch,
        postgres=engine.dialect.name == "postgresql",
    )
    invoice_ids: dict[int, int] = {}
    if job.postgres and drivers:
        # Invoice ids for every driver of the run, in driver order, taken at once: batches
        # are prepared side by side, and their invoices' ids still follow their numbers.
        # A driver left without an invoice leaves a gap in the ids (never in the numbers).
        with engine.connect() as connection:
            invoice_ids = dict(zip(drivers, connection.execute(
                text("SELECT nextval(pg_get_serial_sequence('invoice', 'id'))"
                     " FROM generate_series(1, :count)"), {"count": len(drivers)}
            ).scalars(), strict=True))
            connection.commit()
    count = total = 0

    def batch_done(made: int, amount: int, number: int) -> None:
        nonlocal count, total
        count += made
        total += amount
        if on_batch is not None:
            on_batch(min((number + 1) * batch_size, len(drivers)), len(drivers))

    try:
        if job.postgres and len(batches) > 1:
            _run_pipelined(engine, batches, job, invoice_ids, batch_done)
        else:
            for number, batch in enumerate(batches):
                with session_scope(engine) as session:
                    prepared = _prepare_batch(session, batch, job, invoice_ids)
                    made, amount = _issue_batch(prepared, job)
                batch_done(made, amount, number)
    except Exception as exc:
        with session_scope(engine) as session:
            _finish_run(session, run_id, "failed", count, total, error=str(exc)[:1000])
        raise
    with session_scope(engine) as session:
        _finish_run(session, run_id, "completed", count, total)
    log.info("invoice run completed", run_id=run_id, invoices=count, total_ore=total)
    return RunReport(run_id, period_start, period_end, count, total, int(skipped))


def _finish_run(
    session: Session, run_id: int, status: str, count: int, total: int, error: str | None = None
) -> None:
    run = session.get(InvoiceRun, run_id)
    assert run is not None
    run.status, run.invoices, run.total_ore = status, count, total
    run.error, run.finished_at = error, utcnow()
    session.add(run)


@dataclass(frozen=True)
class _RunJob:
    """What every batch of one run shares."""

    run_id: int
    period_start: date
    period_end: date
    cutoff: datetime
    snapshot: datetime
    issue_date: date
    settings: Settings
    seller: str
    after_batch: Callable[[Session, list[int]], None] | None
    postgres: bool


@dataclass
class _Batch:
    """A batch prepared in its own transaction, not yet numbered: its sessions locked, its
    invoices built (on PostgreSQL also stored, with their lines, and its sessions linked)."""

    session: Session
    invoices: list[dict[str, Any]]  # one per billed driver, in driver order
    line_rows: list[dict[str, Any]]  # SQLite: keyed by driver_id until the invoice exists


# Batches prepared at once on PostgreSQL, each in its own transaction and connection, while
# the oldest is numbered and committed: the storing and linking, most of a run, then use
# both cores of a small server instead of one.
PREPARED_AHEAD = 2


def _run_pipelined(
    engine: Engine, batches: list[list[int]], job: _RunJob, invoice_ids: dict[int, int],
    batch_done: Callable[[int, int, int], None],
) -> None:
    """Prepare the next batches on worker threads while this thread numbers and commits the
    oldest one, in order. Preparing locks only the batch's own sessions and stores invoices
    under provisional numbers; numbers are taken under the series' row lock by this thread
    alone, just before each commit, so they are gapless and in driver order. When a batch
    fails, the run stops and the batches prepared ahead are rolled back."""

    def prepare(batch: list[int]) -> _Batch:
        session = Session(engine, expire_on_commit=False)
        try:
            return _prepare_batch(session, batch, job, invoice_ids)
        except BaseException:
            session.rollback()
            session.close()
            raise

    with ThreadPoolExecutor(PREPARED_AHEAD, thread_name_prefix="invoice-run") as workers:
        ahead: deque[Future[_Batch]] = deque(
            workers.submit(prepare, batch) for batch in batches[:PREPARED_AHEAD]
        )
        try:
            for number in range(len(batches)):
                current = ahead.popleft().result()
                if number + PREPARED_AHEAD < len(batches):
                    ahead.append(workers.submit(prepare, batches[number + PREPARED_AHEAD]))
                with current.session as session:
                    try:
                        made, amount = _issue_batch(current, job)
                        session.commit()
                    except BaseException:
                        session.rollback()
                        raise
                batch_done(made, amount, number)
        finally:
            for future in ahead:  # prepared for a run that failed: never committed
                try:
                    unissued = future.result()
                except BaseException:
                    continue  # its own failure is not the run's: the run failed already
                unissued.session.rollback()
                unissued.session.close()


def _prepare_batch(
    session: Session, driver_ids: list[int], job: _RunJob, invoice_ids: dict[int, int],
) -> _Batch:
    """Lock the batch's sessions, sum their cost lines per driver and build the invoices;
    on PostgreSQL also store them under provisional numbers (minus their id) with their
    lines, and link exactly the sessions summed.

    The lock comes first: a re-rating that commits meanwhile waits, then finds the session
    invoiced and corrects it with a credit note instead; a cost line added to a locked
    session (a dispute's credit) waits as well."""
    cutoff, snapshot = job.cutoff, job.snapshot
    if job.postgres:
        # The locked sessions' ids and drivers come back as two lists in text, and go back
        # to the server in that form: the ids are never needed in Python, and a batch holds
        # some ten thousand of them, which as Python lists cost more to fetch and to bind
        # (psycopg dumps a list element by element) than the statements themselves.
        session_ids, session_drivers = session.execute(
            text(
                "SELECT '{' || coalesce(string_agg(CAST(id AS TEXT), ',' ORDER BY id), '') || '}',"
                " '{' || coalesce(string_agg(CAST(driver_id AS TEXT), ',' ORDER BY id), '')"
                " || '}'"
                " FROM (SELECT id, driver_id FROM charging_session"
                " WHERE driver_id = ANY(CAST(:drivers AS INTEGER[])) AND status = :rated"
                " AND invoice_id IS NULL AND end_at < :cutoff AND rated_at <= :snapshot"
                " ORDER BY id FOR UPDATE) AS locked"
            ).bindparams(bindparam("cutoff", type_=UTCDateTime()),
                         bindparam("snapshot", type_=UTCDateTime())),
            {"drivers": _int_array(driver_ids), "rated": SessionStatus.rated.value,
             "cutoff": cutoff, "snapshot": snapshot},
        ).one()
        # The cost lines of exactly the locked sessions, by their ids: no second pass over
        # the sessions and their filter.
        summed = _group_summed(session.execute(
            text(
                "SELECT s.driver_id, l.dimension, l.unit, l.unit_price, l.vat_rate,"
                " sum(l.quantity), sum(l.net_ore)"
                " FROM unnest(CAST(:ids AS INTEGER[]), CAST(:drivers AS INTEGER[]))"
                " AS s(id, driver_id)"
                " JOIN session_cost_line l ON l.session_id = s.id"
                " GROUP BY s.driver_id, l.dimension, l.unit, l.unit_price, l.vat_rate"
            ),
            {"ids": session_ids, "drivers": session_drivers},
        ).all())
    else:
        # Counted, not fetched: the lock is all that is wanted (SQLite locks the database
        # for the write anyway).
        session.execute(
            select(func.count()).select_from(
                select(ChargingSession.id)
                .where(col(ChargingSession.driver_id).in_(driver_ids),
                       _open_sessions_filter(cutoff, snapshot))
                .with_for_update()
                .subquery()
            )
        ).one()
        session_ids = session_drivers = ""
        summed = _summed_lines(session, driver_ids=driver_ids, cutoff=cutoff,
                               snapshot=snapshot)
    billed = [d for d in driver_ids if d in summed]
    batch = _Batch(session, [], [])
    if not billed:
        return batch
    # The columns an invoice copies, not Driver objects: the ORM would build and track a
    # thousand of them per batch for nothing.
    drivers = {d.id: d for d in session.execute(
        select(*(getattr(Driver, name) for name in BUYER_FIELDS))
        .where(col(Driver.id).in_(billed)))}
    invoice_of = {}
    for driver_id in billed:
        driver = drivers[driver_id]
        invoice_id = invoice_ids.get(driver_id)  # None on SQLite: given by the INSERT
        invoice, lines = _new_invoice(
            kind=InvoiceKind.invoice, series=job.settings.invoice_series, number=None,
            driver=driver, lines=_line_specs(driver, summed[driver_id]),
            issue_date=job.issue_date, settings=job.settings, seller=job.seller,
            run_id=job.run_id, period_start=job.period_start, period_end=job.period_end,
        )
        if invoice_id is None:
            key = {"driver_id": driver_id}
        else:
            # Provisional, unique, and never seen outside this transaction: the number is
            # taken in commit order (see _issue_batch).
            invoice.update(id=invoice_id, number=-invoice_id, ocr=f"-{invoice_id}")
            invoice_of[driver_id] = invoice_id
            key = {"invoice_id": invoice_id}
        batch.invoices.append(invoice)
        batch.line_rows.extend({**key, **line} for line in lines)
    if job.postgres:
        _copy(session, Invoice.__table__, batch.invoices)
        if batch.line_rows:
            _copy(session, InvoiceLine.__table__, batch.line_rows)
        # Exactly the sessions locked above, each to its driver's invoice (a driver whose
        # lines summed to nothing has none, and keeps its sessions open).
        session.execute(
            text(
                "UPDATE charging_session SET invoice_id = billed.invoice_id"
                " FROM unnest(CAST(:ids AS INTEGER[]), CAST(:drivers AS INTEGER[]))"
                " AS locked(id, driver_id)"
                " JOIN unnest(CAST(:billed AS INTEGER[]), CAST(:invoices AS INTEGER[]))"
                " AS billed(driver_id, invoice_id) ON billed.driver_id = locked.driver_id"
                " WHERE charging_session.id = locked.id"
            ),
            {"ids": session_ids, "drivers": session_drivers,
             "billed": _int_array(invoice_of), "invoices": _int_array(invoice_of.values())},
        )
    return batch


def _issue_batch(batch: _Batch, job: _RunJob) -> tuple[int, int]:
    """Take the batch's numbers and give them to its invoices (storing them first on
    SQLite), in its transaction; the caller commits at once, which releases the series."""
    session, invoices = batch.session, batch.invoices
    if not invoices:
        return 0, 0
    first = take_numbers(session, series=job.settings.invoice_series, count=len(invoices))
    numbers = range(first, first + len(invoices))
    if job.postgres:
        ids = [invoice["id"] for invoice in invoices]
        session.execute(
            text(
                "UPDATE invoice SET number = issued.number, ocr = issued.ocr"
                " FROM unnest(CAST(:ids AS INTEGER[]), CAST(:numbers AS INTEGER[]),"
                " CAST(:ocrs AS VARCHAR[])) AS issued(id, number, ocr)"
                " WHERE invoice.id = issued.id"
            ),
            # OCR references are digits only, so they need no quoting in the literal.
            {"ids": _int_array(ids), "numbers": _int_array(numbers),
             "ocrs": _int_array(ocr_reference(InvoiceKind.invoice, n) for n in numbers)},
        )
    else:
        for invoice, number in zip(invoices, numbers, strict=True):
            invoice.update(number=number, ocr=ocr_reference(invoice["kind"], number))
        ids = _store_batch(session, invoices, batch.line_rows, job.cutoff, job.snapshot)
    if job.after_batch is not None:
        job.after_batch(session, ids)
    return len(invoices), sum(i["total_ore"] for i in invoices)


def _int_array(values: Iterable[int | str]) -> str:
    """A PostgreSQL array literal of integers (or digit strings), bound as text and cast in
    the statement: psycopg would dump a list element by element."""
    return "{" + ",".join(map(str, values)) + "}"


def _group_summed(
    rows: Iterable[Any],
) -> dict[int, list[tuple[str, str, Decimal, Decimal | None, Decimal, int]]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for driver_id, dimension, unit, price, rate, qty, net in rows:
        out[driver_id].append((dimension, unit, Decimal(price), rate, Decimal(qty), int(net)))
    return out


def _store_batch(
    session: Session, invoices: list[dict[str, Any]], line_rows: list[dict[str, Any]],
    cutoff: datetime, snapshot: datetime,
) -> list[int]:
    """Insert a batch's invoices and lines and link its sessions, the portable way: each
    statement executed once per row, which costs little in-process (SQLite)."""
    invoice_table = Invoice.__table__
    ids: dict[int, int] = dict(session.execute(
        insert(invoice_table).returning(invoice_table.c.driver_id, invoice_table.c.id,
                                        sort_by_parameter_order=True),
        invoices,
        # Rows with NULLs in different columns still go out as one batched statement.
        execution_options={"render_nulls": True},
    ).all())
    session.execute(insert(InvoiceLine.__table__), [
        {"invoice_id": ids[row["driver_id"]],
         **{key: value for key, value in row.items() if key != "driver_id"}}
        for row in line_rows
    ])
    table = ChargingSession.__table__
    session.execute(
        table.update()
        .where(table.c.driver_id == bindparam("d"), table.c.status == SessionStatus.rated.value,
               table.c.invoice_id.is_(None), table.c.end_at < cutoff,
               table.c.rated_at <= snapshot)
        .values(invoice_id=bindparam("i")),
        [{"d": driver_id, "i": invoice_id} for driver_id, invoice_id in ids.items()],
    )
    return list(ids.values())


def _copy(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """COPY the rows (dicts with the same keys) into the table, in the session's transaction.
    Values go through each column type's bind processing, and Python-side defaults fill the
    columns the rows leave out, as SQLAlchemy's own INSERT would do."""
    dialect = session.get_bind().dialect
    names, columns = [], []
    for column in table.columns:
        if column.name in rows[0]:
            values = [row[column.name] for row in rows]
        elif column.default is None:
            continue  # the server's default: the id's sequence, or NULL
        elif column.default.is_scalar:
            values = [column.default.arg] * len(rows)
        else:
            raise ValueError(f"{table.name}.{column.name}: give it a value in every row")
        process = column.type.bind_processor(dialect)
        if process is not None:
            values = [process(value) for value in values]
        names.append(column.name)
        columns.append(values)
    connection = session.connection().connection.driver_connection
    assert connection is not None
    with connection.cursor() as cursor, cursor.copy(
        f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    ) as copy:
        for row in zip(*columns, strict=True):
            copy.write_row(row)


def invoice_driver_now(
    session: Session, *, driver_id: int, settings: Settings, created_by: str,
) -> Invoice | None:
    """An invoice outside the monthly run (a driver leaving, an operator's request): every
    rated, unbilled session of the driver that has ended."""
    driver = session.get(Driver, driver_id)
    if driver is None:
        raise NotFound(f"no driver {driver_id}")
    now = utcnow()
    summed = _summed_lines(session, driver_ids=[driver_id], cutoff=now, snapshot=now)
    if not summed:
        return None
    series = settings.invoice_series
    invoice, lines = _new_invoice(
        kind=InvoiceKind.invoice, series=series, number=take_numbers(session, series=series),
        driver=driver, lines=_line_specs(driver, summed[driver_id]),
        issue_date=now.astimezone(ZoneInfo(settings.time_zone)).date(), settings=settings,
        seller=seller_snapshot(settings),
    )
    row = _insert(session, invoice, lines)
    session.execute(
        update(ChargingSession)
        .where(col(ChargingSession.driver_id) == driver_id, _open_sessions_filter(now, now))
        .values(invoice_id=row.id)
    )
    log.info("invoice issued", invoice=row.display_number, by=created_by)
    return row


# ---------------------------------------------------------------- credit notes


def issue_credit_note(
    session: Session,
    *,
    invoice: Invoice,
    lines: Sequence[LineSpec],
    reason: str,
    settings: Settings,
    created_by: str,
) -> Invoice:
    """A credit note correcting ``invoice``: ``lines`` carry negative amounts. The invoice
    itself is never edited; its status says whether it was credited in full."""
    if invoice.kind != InvoiceKind.invoice:
        raise BillingError("only an invoice can be credited, not a credit note")
    if not lines or any(line.net_ore > 0 for line in lines):
        raise BillingError("a credit note needs lines with negative amounts")
    credited = -sum(c.net_ore for c in credited_lines(session, invoice_id=invoice.id or 0))
    if credited - sum(line.net_ore for line in lines) > invoice.net_ore:
        raise BillingError(
            f"credits would exceed invoice {invoice.display_number}'s net amount"
        )
    driver = session.get(Driver, invoice.driver_id)
    assert driver is not None
    series = settings.credit_note_series
    today = utcnow().astimezone(ZoneInfo(settings.time_zone)).date()
    note, rows = _new_invoice(
        kind=InvoiceKind.credit_note, series=series,
        number=take_numbers(session, series=series), driver=driver, lines=lines,
        issue_date=today, settings=settings, seller=seller_snapshot(settings),
        credits=invoice, reason=reason,
    )
    # The buyer and language of the invoice being corrected, not today's driver record.
    note.update(language=invoice.language, buyer_name=invoice.buyer_name,
                buyer_address=invoice.buyer_address, buyer_email=invoice.buyer_email,
                buyer_vat_number=invoice.buyer_vat_number, currency=invoice.currency,
                due_date=today, payment_method=invoice.payment_method)
    row = _insert(session, note, rows)
    if credited - sum(line.net_ore for line in lines) == invoice.net_ore:
        invoice.status = InvoiceStatus.credited
        session.add(invoice)
    log.info("credit note issued", credit_note=row.display_number,
             invoice=invoice.display_number, reason=reason, by=created_by)
    return row


def credited_lines(session: Session, *, invoice_id: int) -> Sequence[InvoiceLine]:
    """Lines of every credit note issued against an invoice."""
    return session.exec(
        select(InvoiceLine).join(Invoice, col(Invoice.id) == InvoiceLine.invoice_id)
        .where(col(Invoice.credits_invoice_id) == invoice_id)
    ).all()


def credit_session(
    session: Session,
    *,
    row: ChargingSession,
    previous_lines: Sequence[dict[str, Any]],
    reason: str,
    settings: Settings,
    created_by: str,
) -> Invoice | None:
    """Reverse what an invoice billed for one session (its cost lines before re-rating)
    and free the session to be billed again on the next invoice."""
    if row.invoice_id is None:
        return None
    invoice = session.get(Invoice, row.invoice_id)
    assert invoice is not None
    driver_language = invoice.language
    names = LINE_NAMES[driver_language]
    started = row.start_at.astimezone(ZoneInfo(row.time_zone))
    lines = [
        LineSpec(
            dimension=line["dimension"],
            description=f"{names['CREDIT']}: {names.get(line['dimension'], line['dimension'])},"
                        f" {row.station_id} {started:%Y-%m-%d %H:%M}",
            quantity=-Decimal(line["quantity"]), unit=line["unit"],
            unit_price=Decimal(line["unit_price"]), net_ore=-int(line["net_ore"]),
            vat_rate=line["vat_rate"], session_id=row.id,
        )
        for line in previous_lines if int(line["net_ore"]) != 0
    ]
    note = None
    if lines:
        note = issue_credit_note(session, invoice=invoice, lines=lines, reason=reason,
                                 settings=settings, created_by=created_by)
    row.invoice_id = None
    session.add(row)
    return note


def credit_in_full(
    session: Session, *, invoice: Invoice, reason: str, settings: Settings, created_by: str,
) -> Invoice:
    """Reverse every line of an invoice; its sessions are freed to be billed again only
    through :func:`credit_session`, so a full credit here means the driver owes nothing."""
    if credited_lines(session, invoice_id=invoice.id or 0):
        raise BillingError(f"invoice {invoice.display_number} is already partly credited; "
                           "credit what is left by amount")
    lines = [
        LineSpec(dimension=line.dimension, description=line.description,
                 quantity=-line.quantity, unit=line.unit, unit_price=line.unit_price,
                 net_ore=-line.net_ore, vat_rate=line.vat_rate, session_id=line.session_id)
        for line in invoice_lines(session, invoice_id=invoice.id or 0) if line.net_ore > 0
    ]
    return issue_credit_note(session, invoice=invoice, lines=lines, reason=reason,
                             settings=settings, created_by=created_by)


def credit_amount(
    session: Session,
    *,
    invoice: Invoice,
    net_ore: int,
    vat_rate: Decimal | None,
    reason: str,
    settings: Settings,
    created_by: str,
    session_id: int | None = None,
) -> Invoice:
    """A credit of a given net amount (an approved dispute, a goodwill gesture)."""
    if net_ore <= 0:
        raise BillingError("the amount to credit must be positive")
    names = LINE_NAMES[invoice.language]
    line = LineSpec(dimension="CREDIT", description=f"{names['CREDIT']}: {reason}"[:300],
                    quantity=Decimal(1), unit="st", unit_price=-Decimal(net_ore) / 100,
                    net_ore=-net_ore, vat_rate=vat_rate, session_id=session_id)
    return issue_credit_note(session, invoice=invoice, lines=[line], reason=reason,
                             settings=settings, created_by=created_by)


def cost_lines(session: Session, *, session_id: int) -> list[dict[str, Any]]:
    """A session's stored cost lines as plain values (what a credit note reverses)."""
    return [
        {"dimension": c.dimension, "quantity": c.quantity, "unit": c.unit,
         "unit_price": c.unit_price, "net_ore": c.net_ore, "vat_rate": c.vat_rate}
        for c in session.exec(select(SessionCostLine)
                              .where(SessionCostLine.session_id == session_id)
                              .order_by(col(SessionCostLine.id)))
    ]


# ---------------------------------------------------------------- reading


def get_invoice(session: Session, *, invoice_id: int) -> Invoice:
    row = session.get(Invoice, invoice_id)
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    return row


def invoice_lines(session: Session, *, invoice_id: int) -> Sequence[InvoiceLine]:
    return session.exec(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id)
                        .order_by(col(InvoiceLine.position))).all()


def list_invoices(
    session: Session, *, driver_id: int | None = None, since: date | None = None,
    until: date | None = None, limit: int = 100, offset: int = 0,
) -> Sequence[Invoice]:
    query = select(Invoice)
    if driver_id is not None:
        query = query.where(Invoice.driver_id == driver_id)
    if since is not None:
        query = query.where(Invoice.issue_date >= since)
    if until is not None:
        query = query.where(Invoice.issue_date < until)
    return session.exec(query.order_by(col(Invoice.id).desc()).offset(offset).limit(limit)).all()


def list_runs(session: Session, *, limit: int = 50) -> Sequence[InvoiceRun]:
    return session.exec(select(InvoiceRun).order_by(col(InvoiceRun.id).desc()).limit(limit)).all()


def issued_event(invoice: Invoice) -> InvoiceIssued:
    return InvoiceIssued(invoice_id=invoice.id or 0, driver_id=invoice.driver_id,
                         kind=invoice.kind.value, total_ore=invoice.total_ore,
                         currency=invoice.currency)
