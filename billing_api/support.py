"""Billing as the support assistant (and agents helping a driver) call it.

Every function takes the driver it acts for and refuses what is not theirs: a session, an
invoice or a dispute of another driver is "not found", exactly like one that does not exist,
so an id cannot be used to probe other drivers' data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from billing_api import invoicing, mailer, service, sessions, wallets
from billing_api.models import (
    ChargingSession,
    Dispute,
    DisputeStatus,
    Driver,
    DriverIdTag,
    EmailMessage,
    Invoice,
    InvoiceKind,
    LedgerEntry,
    PaymentMethod,
    SessionCostLine,
    SessionStatus,
)
from billing_api.money import cents_to_decimal
from billing_api.pricing import price_sheet
from billing_api.service import BillingError, NotFound
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from station_api import service as stations
from station_api.models import IdTag

# A session that delivered less than this failed to charge: the whole cost is proposed back.
FAILED_CHARGE_WH = 100


# ---------------------------------------------------------------- who is asking


def find_driver(
    session: Session, *, id_tag: str | None = None, phone: str | None = None,
    email: str | None = None,
) -> Driver:
    """The driver behind an id tag (or its parent), a phone number or an e-mail address."""
    driver: Driver | None = None
    if id_tag is not None:
        tag = session.get(IdTag, id_tag)
        for candidate in (id_tag, tag.parent_id_tag if tag else None):
            link = session.get(DriverIdTag, candidate) if candidate else None
            if link is not None:
                driver = session.get(Driver, link.driver_id)
                break
    elif phone is not None:
        driver = session.exec(select(Driver).where(Driver.phone == phone)).first()
    elif email is not None:
        driver = session.exec(
            select(Driver).where(col(Driver.email).ilike(email.strip()))).first()
    else:
        raise BillingError("give an id tag, a phone number or an e-mail address")
    if driver is None:
        raise NotFound("no driver matches")
    return driver


def get_driver(session: Session, *, driver_id: int) -> Driver:
    driver = session.get(Driver, driver_id)
    if driver is None:
        raise NotFound(f"no driver {driver_id}")
    return driver


def own_session(session: Session, *, driver_id: int, session_id: int) -> ChargingSession:
    row = session.get(ChargingSession, session_id)
    if row is None or row.driver_id != driver_id:
        raise NotFound(f"no charging session {session_id}")
    return row


def own_invoice(session: Session, *, driver_id: int, invoice_id: int) -> Invoice:
    row = session.get(Invoice, invoice_id)
    if row is None or row.driver_id != driver_id:
        raise NotFound(f"no invoice {invoice_id}")
    return row


# ---------------------------------------------------------------- history and explanations


@dataclass(frozen=True)
class SessionSummary:
    session_id: int
    station_id: str
    connector_id: int
    start_at: datetime
    end_at: datetime | None
    energy_kwh: Decimal | None
    status: str
    total_incl_vat: Decimal | None
    currency: str
    invoice_number: str | None


@dataclass(frozen=True)
class History:
    driver_id: int
    since: date
    until: date
    sessions: list[SessionSummary]
    total_incl_vat: Decimal
    invoices: list[dict[str, Any]]


def billing_history(
    session: Session, *, driver_id: int, since: date, until: date, settings: Settings,
) -> History:
    """The driver's sessions that started in [since, until) (local dates), with invoices."""
    if until <= since:
        raise BillingError("the period's end must come after its start")
    driver = get_driver(session, driver_id=driver_id)
    zone = ZoneInfo(settings.time_zone)
    start = datetime.combine(since, time(0), zone)
    end = datetime.combine(until, time(0), zone)
    rows = session.exec(
        select(ChargingSession, Invoice)
        .join(Invoice, col(Invoice.id) == ChargingSession.invoice_id, isouter=True)
        .where(ChargingSession.driver_id == driver_id, col(ChargingSession.start_at) >= start,
               col(ChargingSession.start_at) < end)
        .order_by(col(ChargingSession.start_at))
    ).all()
    summaries = [
        SessionSummary(
            session_id=row.id or 0, station_id=row.station_id, connector_id=row.connector_id,
            start_at=row.start_at, end_at=row.end_at,
            energy_kwh=None if row.energy_wh is None else Decimal(row.energy_wh) / 1000,
            status=row.status.value,
            total_incl_vat=None if row.total_incl_vat_ore is None
            else cents_to_decimal(row.total_incl_vat_ore),
            currency=row.currency,
            invoice_number=invoice.display_number if invoice is not None else None,
        )
        for row, invoice in rows
    ]
    invoices = [
        invoice_summary(i) for i in invoicing.list_invoices(
            session, driver_id=driver.id, since=since, until=until, limit=1000)
    ]
    total = sum((s.total_incl_vat or Decimal(0) for s in summaries), Decimal("0.00"))
    return History(driver_id, since, until, summaries, total, invoices)


def invoice_summary(invoice: Invoice) -> dict[str, Any]:
    return {
        "invoice_id": invoice.id, "number": invoice.display_number, "kind": invoice.kind.value,
        "issue_date": invoice.issue_date, "due_date": invoice.due_date,
        "total": cents_to_decimal(invoice.total_ore), "currency": invoice.currency,
        "status": invoice.status.value, "ocr": invoice.ocr,
    }


def explain_cost(session: Session, *, driver_id: int, session_id: int) -> Any:
    """A session's cost as structured lines (dimension, quantity, unit price, amount, VAT)."""
    row = own_session(session, driver_id=driver_id, session_id=session_id)
    if row.status != SessionStatus.rated:
        raise BillingError(
            "the session is still charging" if row.status == SessionStatus.open
            else "the session could not be priced yet; an agent will look at it"
        )
    return sessions.cost_explanation(row)


def price_now(
    session: Session, *, station_id: str, settings: Settings, connector_id: int | None = None,
    driver_id: int | None = None,
) -> dict[str, Any]:
    """Everything a driver pays at a station if they start now, for their group."""
    group = get_driver(session, driver_id=driver_id).driver_group if driver_id else None
    now = utcnow()
    row = service.tariff_in_force(session, station_id=station_id, connector_id=connector_id,
                                  driver_group=group, at=now)
    zone = stations.station_time_zone(session, station_id=station_id,
                                      default=settings.time_zone)
    return {"station_id": station_id, "connector_id": connector_id, "version": row.version,
            **price_sheet(service.load(row), at=now, time_zone=ZoneInfo(zone))}


# ---------------------------------------------------------------- wallet


def balance(session: Session, *, driver_id: int, settings: Settings) -> wallets.Balance:
    get_driver(session, driver_id=driver_id)
    return wallets.balance(session, driver_id=driver_id, settings=settings)


def top_up(
    session: Session, *, driver_id: int, amount: Decimal, idempotency_key: str,
    created_by: str,
) -> LedgerEntry:
    """Credit a prepaid wallet once the payment for it is confirmed (card, Swish): the
    payment provider's confirmation carries the idempotency key, so a retry is harmless."""
    driver = get_driver(session, driver_id=driver_id)
    if driver.payment_method != PaymentMethod.prepaid:
        raise BillingError("this driver pays by invoice; there is no prepaid balance to top up")
    return wallets.top_up(session, driver_id=driver_id, amount=amount,
                          idempotency_key=idempotency_key, created_by=created_by)


# ---------------------------------------------------------------- invoices


def send_invoices(
    session: Session, *, driver_id: int, settings: Settings, invoice_id: int | None = None,
    since: date | None = None, until: date | None = None,
) -> list[EmailMessage]:
    """E-mail one invoice, or every invoice and credit note issued in [since, until)."""
    if invoice_id is not None:
        targets: Sequence[Invoice] = [own_invoice(session, driver_id=driver_id,
                                                  invoice_id=invoice_id)]
    elif since is not None and until is not None:
        targets = invoicing.list_invoices(session, driver_id=driver_id, since=since,
                                          until=until, limit=1000)
    else:
        raise BillingError("name an invoice, or a period with a start and an end")
    if not targets:
        raise NotFound("no invoices in that period")
    return [mailer.send_invoice(session, invoice_id=i.id or 0, settings=settings)
            for i in targets]


# ---------------------------------------------------------------- disputes


def open_dispute(
    session: Session, *, driver_id: int, session_id: int, reason: str, opened_by: str,
) -> Dispute:
    """Record a driver's objection to a session and propose a credit for an agent to decide.

    The proposal, excluding VAT: the whole session when it delivered (almost) no energy,
    else its parking (idle) fees and any minimum-price top-up, the parts drivers most
    often did not expect; nothing when neither applies (the agent decides)."""
    reason = reason.strip()
    if not reason:
        raise BillingError("say what is wrong with the session")
    row = own_session(session, driver_id=driver_id, session_id=session_id)
    if row.status != SessionStatus.rated:
        raise BillingError("only a priced session can be disputed")
    existing = session.exec(select(Dispute).where(
        Dispute.session_id == session_id, Dispute.status == DisputeStatus.open)).first()
    if existing is not None:
        return existing
    dispute = Dispute(session_id=session_id, driver_id=driver_id, reason=reason[:1000],
                      proposed_credit_ore=_proposal(session, row), opened_by=opened_by)
    session.add(dispute)
    session.flush()
    return dispute


def _proposal(session: Session, row: ChargingSession) -> int:
    lines = session.exec(select(SessionCostLine).where(
        SessionCostLine.session_id == row.id, col(SessionCostLine.net_ore) > 0)).all()
    if (row.energy_wh or 0) < FAILED_CHARGE_WH:
        return sum(line.net_ore for line in lines)
    return sum(line.net_ore for line in lines
               if line.dimension in ("PARKING_TIME", "ADJUSTMENT"))


def decide_dispute(
    session: Session, *, dispute_id: int, approve: bool, decided_by: str, settings: Settings,
    credit_ore: int | None = None, note: str | None = None,
) -> Dispute:
    """An agent's decision. Approval credits the net amount (the proposal unless
    ``credit_ore`` says otherwise) with the session's VAT: a credit note if the session was
    invoiced, a wallet refund if it was paid from the wallet and not yet invoiced, else a
    credit line on the session so its coming invoice carries it."""
    dispute = session.get(Dispute, dispute_id)
    if dispute is None:
        raise NotFound(f"no dispute {dispute_id}")
    if dispute.status != DisputeStatus.open:
        raise BillingError(f"dispute {dispute_id} was already {dispute.status.value}")
    dispute.decided_by, dispute.decided_at, dispute.decision_note = decided_by, utcnow(), note
    if not approve:
        dispute.status = DisputeStatus.rejected
        session.add(dispute)
        return dispute
    amount = dispute.proposed_credit_ore if credit_ore is None else credit_ore
    if amount <= 0:
        raise BillingError("an approved dispute needs a credit above zero")
    row = session.get(ChargingSession, dispute.session_id)
    assert row is not None
    if amount > (row.total_excl_vat_ore or 0):
        raise BillingError("the credit cannot exceed what the session cost")
    rate = _session_vat_rate(session, row)
    driver = get_driver(session, driver_id=dispute.driver_id)
    reason = f"dispute {dispute.id}: {dispute.reason}"[:200]
    if row.invoice_id is not None:
        invoice = session.get(Invoice, row.invoice_id)
        assert invoice is not None and invoice.kind == InvoiceKind.invoice
        note_row = invoicing.credit_amount(
            session, invoice=invoice, net_ore=amount, vat_rate=rate, reason=reason,
            settings=settings, created_by=decided_by, session_id=row.id)
        dispute.credit_invoice_id = note_row.id
    elif driver.payment_method == PaymentMethod.prepaid:
        gross = invoicing.vat_breakdown([(rate, amount)])[0]
        entry = wallets.refund(session, driver_id=driver.id or 0,
                               amount_ore=amount + gross["vat_ore"], reason=reason,
                               created_by=decided_by, session_id=row.id,
                               idempotency_key=f"dispute:{dispute.id}")
        dispute.ledger_entry_id = entry.id
        _credit_line(session, row, amount, rate)
    else:
        _credit_line(session, row, amount, rate)
    dispute.status = DisputeStatus.approved
    session.add(dispute)
    session.flush()
    return dispute


def _session_vat_rate(session: Session, row: ChargingSession) -> Decimal | None:
    rates = {line.vat_rate for line in session.exec(
        select(SessionCostLine).where(SessionCostLine.session_id == row.id))}
    if len(rates) > 1:
        raise BillingError("the session mixes VAT rates; credit it with a credit note by hand")
    return rates.pop() if rates else None


def _credit_line(session: Session, row: ChargingSession, amount: int, rate: Decimal | None
                 ) -> None:
    """A negative cost line on an unbilled session: its invoice sums it with the rest.
    For a prepaid driver the wallet was refunded, and the receipt shows why."""
    session.add(SessionCostLine(session_id=row.id or 0, dimension="CREDIT", quantity=Decimal(1),
                                unit="st", unit_price=-cents_to_decimal(amount),
                                net_ore=-amount, vat_rate=rate))
    session.flush()


def list_disputes(session: Session, *, status: DisputeStatus | None = None
                  ) -> Sequence[Dispute]:
    query = select(Dispute)
    if status is not None:
        query = query.where(Dispute.status == status)
    return session.exec(query.order_by(col(Dispute.id).desc())).all()
