"""Direct debit: Autogiro and SEPA mandates, the payments that collect invoices, the bank files
that carry them, the results that settle them, and dunning when a collection fails.

Plain keyword-only functions taking a session; callers own the transaction. Every function
that moves money can be called again with the same input and changes nothing the second
time: imports are keyed on the file's digest, payments on their invoice and attempt, dunning
notices on their invoice and level.

Choices the banks leave to us:

- Autogiro payer number (betalarnummer): the mandate's id followed by a Luhn check digit.
  Bankgirot accepts any 1-16 digits chosen by the payee, unique among its payers. Not the
  personnummer: that would put personal data on every payment file and bank statement, and a
  driver re-applying after a rejection would reuse a number Bankgirot still holds (comment
  10, "already registered"). The check digit catches a number mistyped in a support call.
- SEPA mandate reference: ``CHARGEDESK-<mandate id>``, unique and within the EPC's 35
  characters.
- After a failed collection: the driver gets a reminder with our bankgiro (IBAN for euro)
  and the invoice's OCR reference to pay by hand. When the failure was a lack of funds
  (Autogiro status 1, SEPA reason AM04), the mandate is still active and the driver has not
  reached ``dunning_block_after`` failures, a new attempt is scheduled :data:`RETRY_AFTER`
  after the failed one's debit date (export moves it to tomorrow at the earliest); it is
  cancelled at export if the invoice has been paid meanwhile. Other reasons
  (closed account, cancelled mandate, refusal) are not retried: debiting again would fail
  the same way. At ``dunning_block_after`` failures the driver's id tags are blocked;
  unblocking after payment is an operator's decision (a tag may be blocked for other
  reasons too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import structlog
from babel.dates import format_date
from babel.numbers import format_currency
from sqlmodel import Session, col, select
from stdnum import luhn

from billing_api import autogiro, sepa
from billing_api.bankaccount import (
    validate_account,
    validate_bic,
    validate_iban,
    validate_payer_id,
)
from billing_api.mailer import queue_email
from billing_api.models import (
    BankFile,
    BankFileKind,
    Driver,
    DriverIdTag,
    DunningNotice,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Language,
    Mandate,
    MandateScheme,
    MandateStatus,
    Payment,
    PaymentMethod,
    PaymentStatus,
)
from billing_api.money import cents_to_decimal
from billing_api.service import BillingError, NotFound
from chargedesk.errors import Conflict
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from station_api import service as stations
from station_api.models import IdTagStatus

log = structlog.get_logger(__name__)

# Which states a mandate may move to; anything else is refused. A mandate's end is final:
# a driver who wants direct debit again signs a new one.
MANDATE_TRANSITIONS: dict[MandateStatus, frozenset[MandateStatus]] = {
    MandateStatus.pending: frozenset({MandateStatus.active, MandateStatus.rejected,
                                      MandateStatus.cancelled}),
    MandateStatus.active: frozenset({MandateStatus.cancelled}),
    MandateStatus.cancelled: frozenset(),
    MandateStatus.rejected: frozenset(),
}

SCHEME_CURRENCY = {MandateScheme.autogiro: "SEK", MandateScheme.sepa: "EUR"}

# Failure codes after which a new attempt may succeed: the money may be there next time.
RETRYABLE_CODES = frozenset({"1", "AM04"})
RETRY_AFTER = timedelta(days=7)

DUNNING_REMINDER = "reminder"
DUNNING_BLOCKED = "blocked"


# ---------------------------------------------------------------- mandates


def _mandate(session: Session, mandate_id: int, *, lock: bool = False) -> Mandate:
    query = select(Mandate).where(col(Mandate.id) == mandate_id)
    mandate = session.exec(query.with_for_update() if lock else query).first()
    if mandate is None:
        raise NotFound(f"no mandate {mandate_id}")
    return mandate


def create_mandate(
    session: Session,
    *,
    driver_id: int,
    scheme: MandateScheme | str,
    holder_name: str,
    clearing_number: str | None = None,
    account_number: str | None = None,
    personal_number: str | None = None,
    iban: str | None = None,
    bic: str | None = None,
    signed_on: date | None = None,
    created_by: str,
) -> Mandate:
    """Record a driver's signed mandate, pending until the bank (Autogiro) or an operator
    (SEPA) confirms it.

    Autogiro needs the Swedish clearing and account number and the account holder's
    personnummer or organisation number; SEPA an IBAN (and the debtor bank's BIC if known).
    A driver has at most one pending or active mandate per scheme: the old one is cancelled
    before a new one is signed."""
    driver = session.get(Driver, driver_id)
    if driver is None:
        raise NotFound(f"no driver {driver_id}")
    try:
        scheme = MandateScheme(scheme)
    except ValueError:
        raise BillingError(f"unknown direct debit scheme {scheme!r}: autogiro or sepa") from None
    holder_name = (holder_name or "").strip()
    if not holder_name or len(holder_name) > 120:
        raise BillingError("the account holder's name must have 1 to 120 characters")
    if driver.currency != SCHEME_CURRENCY[scheme]:
        raise BillingError(f"{scheme} collects {SCHEME_CURRENCY[scheme]}; driver {driver_id} "
                           f"is billed in {driver.currency}")
    current = session.exec(
        select(Mandate).where(col(Mandate.driver_id) == driver_id,
                              col(Mandate.scheme) == scheme,
                              col(Mandate.status).in_([MandateStatus.pending,
                                                       MandateStatus.active]))
    ).first()
    if current is not None:
        raise Conflict(f"driver {driver_id} already has a {current.status} {scheme} mandate "
                       f"({current.id}); cancel it first")
    mandate = Mandate(driver_id=driver_id, scheme=scheme, holder_name=holder_name,
                      signed_on=signed_on or utcnow().date(), created_by=created_by[:120])
    if scheme is MandateScheme.autogiro:
        if iban or bic:
            raise BillingError("an Autogiro mandate debits a Swedish account: give clearing "
                               "and account number, not IBAN or BIC")
        account = validate_account(clearing_number or "", account_number or "")
        mandate.clearing_number = account.clearing
        mandate.account_number = account.account
        mandate.personal_number = validate_payer_id(personal_number or "")
    else:
        if clearing_number or account_number:
            raise BillingError("a SEPA mandate debits an IBAN, not a clearing and account number")
        mandate.iban = validate_iban(iban or "")
        mandate.bic = validate_bic(bic) if bic else None
    session.add(mandate)
    session.flush()
    assert mandate.id is not None
    if scheme is MandateScheme.autogiro:
        mandate.payer_number = f"{mandate.id}{luhn.calc_check_digit(str(mandate.id))}"
    else:
        mandate.mandate_reference = f"CHARGEDESK-{mandate.id}"
    session.flush()
    log.info("mandate created", mandate_id=mandate.id, driver_id=driver_id, scheme=scheme.value,
             created_by=created_by)
    return mandate


def _set_status(session: Session, mandate: Mandate, status: MandateStatus,
                reason: str | None) -> bool:
    """Move a mandate along :data:`MANDATE_TRANSITIONS`; False when it already was there.

    Activation makes the scheme the driver's way to pay; an ended mandate stops its
    payments not yet sent to the bank and, unless another mandate is active, puts the driver
    back on paying invoices by hand."""
    if mandate.status == status:
        return False
    if status not in MANDATE_TRANSITIONS[mandate.status]:
        raise Conflict(f"mandate {mandate.id} is {mandate.status}; it cannot become {status}")
    mandate.status = status
    mandate.reason = reason[:300] if reason else None
    mandate.updated_at = utcnow()
    session.add(mandate)
    driver = session.get(Driver, mandate.driver_id)
    assert driver is not None
    method = PaymentMethod(mandate.scheme.value)
    if status is MandateStatus.active:
        driver.payment_method = method
    else:
        for payment in session.exec(
            select(Payment).where(col(Payment.mandate_id) == mandate.id,
                                  col(Payment.status) == PaymentStatus.pending)
        ):
            payment.status = PaymentStatus.cancelled
            payment.result_text = f"mandate {status}"
            session.add(payment)
        other = session.exec(
            select(Mandate.id).where(col(Mandate.driver_id) == driver.id,
                                     col(Mandate.id) != mandate.id,
                                     col(Mandate.scheme) == mandate.scheme,
                                     col(Mandate.status) == MandateStatus.active)
        ).first()
        if driver.payment_method == method and other is None:
            driver.payment_method = PaymentMethod.invoice
    session.add(driver)
    session.flush()
    return True


def activate_mandate(session: Session, *, mandate_id: int, created_by: str) -> Mandate:
    """Confirm a mandate by hand: a SEPA mandate once its signed form is on file, or an
    Autogiro mandate Bankgirot already holds without a mandate advice of ours to show for it
    (one moved from another system, the demo network). New Autogiro mandates are activated by
    :func:`import_autogiro_mandate_result`: debiting before the payer's bank has accepted the
    mandate would be refused."""
    mandate = _mandate(session, mandate_id, lock=True)
    _set_status(session, mandate, MandateStatus.active, reason=None)
    log.info("mandate activated by hand", mandate_id=mandate_id, scheme=mandate.scheme.value,
             created_by=created_by)
    return mandate


def cancel_mandate(
    session: Session, *, mandate_id: int, created_by: str, reason: str | None = None
) -> Mandate:
    """End a pending or active mandate. Payments not yet in a bank file are cancelled (their
    invoices stay open to be paid by hand); payments already sent still get their result."""
    mandate = _mandate(session, mandate_id, lock=True)
    _set_status(session, mandate, MandateStatus.cancelled, reason=reason or "cancelled")
    log.info("mandate cancelled", mandate_id=mandate_id, created_by=created_by)
    return mandate


# ---------------------------------------------------------------- bank files


@dataclass
class ImportSummary:
    """What a result file changed, and what it holds that needs a person's eye."""

    bank_file_id: int
    already_imported: bool = False
    records: int = 0
    activated: int = 0
    rejected: int = 0
    cancelled: int = 0
    paid: int = 0
    failed: int = 0
    retrying: int = 0
    problems: list[str] = field(default_factory=list)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _store_file(session: Session, *, kind: BankFileKind, filename: str, raw: bytes,
                content: str, records: int, created_by: str) -> BankFile:
    bank_file = BankFile(kind=kind, filename=filename[:120], content=content,
                         sha256=_digest(raw), records=records, created_by=created_by)
    session.add(bank_file)
    session.flush()
    return bank_file


def _raw(content: str | bytes) -> bytes:
    if isinstance(content, bytes):
        return content
    try:
        return content.encode(autogiro.ENCODING)
    except UnicodeEncodeError:
        raise BillingError("an Autogiro file is ISO-8859-1; this text has other "
                           "characters") from None


def _imported(session: Session, raw: bytes) -> BankFile | None:
    return session.exec(select(BankFile).where(col(BankFile.sha256) == _digest(raw))).first()


def _check_payee(customer_number: str, bankgiro: str, settings: Settings | None) -> None:
    if settings is None:
        return
    ours = autogiro.bankgiro_digits(settings.seller_bankgiro)
    if customer_number != settings.autogiro_customer_number or bankgiro != ours:
        raise BillingError(f"the file is for customer number {customer_number}, bankgiro "
                           f"{bankgiro}; ours are {settings.autogiro_customer_number}, {ours}")


def _by_payer_number(session: Session, payer_number: str) -> Mandate | None:
    return session.exec(
        select(Mandate).where(col(Mandate.scheme) == MandateScheme.autogiro,
                              col(Mandate.payer_number) == payer_number).with_for_update()
    ).first()


def export_autogiro_mandates(
    session: Session, *, settings: Settings, created_by: str, today: date
) -> BankFile | None:
    """Put every pending Autogiro mandate not yet sent (TK04) and every mandate we cancelled
    after Bankgirot had it (TK03) into one mandate file; None when there is nothing to send.
    Rows are locked, so two exports running at once never send a mandate twice."""
    new_mandates = session.exec(
        select(Mandate).where(col(Mandate.scheme) == MandateScheme.autogiro,
                              col(Mandate.status) == MandateStatus.pending,
                              col(Mandate.export_file_id).is_(None))
        .order_by(col(Mandate.id)).with_for_update()
    ).all()
    cancelled = session.exec(
        select(Mandate).where(col(Mandate.scheme) == MandateScheme.autogiro,
                              col(Mandate.status) == MandateStatus.cancelled,
                              col(Mandate.export_file_id).is_not(None),
                              col(Mandate.cancel_file_id).is_(None))
        .order_by(col(Mandate.id)).with_for_update()
    ).all()
    if not new_mandates and not cancelled:
        return None
    new = []
    for mandate in new_mandates:
        account = validate_account(mandate.clearing_number or "", mandate.account_number or "")
        new.append(autogiro.NewMandate(payer_number=mandate.payer_number or "",
                                       account=account.bankgirot,
                                       payer_id=mandate.personal_number or ""))
    content = autogiro.write_mandate_file(
        written_on=today, customer_number=settings.autogiro_customer_number,
        bankgiro=settings.seller_bankgiro, new=new,
        cancelled=[m.payer_number or "" for m in cancelled])
    raw = content.encode(autogiro.ENCODING)
    bank_file = _store_file(
        session, kind=BankFileKind.autogiro_mandates, raw=raw, content=content,
        filename=f"autogiro_mandates_{today:%Y%m%d}_{_digest(raw)[:8]}.txt",
        records=len(new) + len(cancelled), created_by=created_by)
    for mandate in new_mandates:
        mandate.export_file_id = bank_file.id
    for mandate in cancelled:
        mandate.cancel_file_id = bank_file.id
    for mandate in (*new_mandates, *cancelled):
        mandate.updated_at = utcnow()
        session.add(mandate)
    session.flush()
    return bank_file


def import_autogiro_mandate_result(
    session: Session,
    *,
    content: str | bytes,
    filename: str,
    created_by: str,
    settings: Settings | None = None,
) -> ImportSummary:
    """Apply Bankgirot's mandate advice: mandates become active, rejected or cancelled.

    The file is kept verbatim. The same file again changes nothing (its digest is already
    stored). Advice for unknown payer numbers, advice that would move a mandate backwards and
    advice that needs a person (a refused cancellation, a payer number change) is reported in
    the summary's problems, never dropped. With ``settings`` the file must be addressed to our
    customer number and bankgiro."""
    raw = _raw(content)
    seen = _imported(session, raw)
    if seen is not None:
        assert seen.id is not None
        return ImportSummary(bank_file_id=seen.id, already_imported=True, records=seen.records)
    advice_file = autogiro.read_mandate_advice(raw)
    _check_payee(advice_file.customer_number, advice_file.bankgiro, settings)
    bank_file = _store_file(session, kind=BankFileKind.autogiro_mandate_result,
                            filename=filename, raw=raw, content=raw.decode(autogiro.ENCODING),
                            records=len(advice_file.advices), created_by=created_by)
    assert bank_file.id is not None
    summary = ImportSummary(bank_file_id=bank_file.id, records=len(advice_file.advices))
    for advice in advice_file.advices:
        where = f"line {advice.line}, payer number {advice.payer_number}"
        mandate = _by_payer_number(session, advice.payer_number)
        if mandate is None:
            summary.problems.append(f"{where}: no such mandate ({advice.text})")
            continue
        if advice.outcome is autogiro.AdviceOutcome.none:
            summary.problems.append(f"{where}: {advice.text}; mandate {mandate.id} unchanged")
            continue
        status = MandateStatus(advice.outcome.value)
        try:
            changed = _set_status(session, mandate, status, reason=advice.text)
        except Conflict as exc:
            summary.problems.append(f"{where}: {exc} ({advice.text})")
            continue
        if changed:
            if status is not MandateStatus.active:
                # Bankgirot ended it: no TK03 of ours is needed.
                mandate.cancel_file_id = bank_file.id
                session.add(mandate)
            if status is MandateStatus.active:
                summary.activated += 1
            elif status is MandateStatus.rejected:
                summary.rejected += 1
            else:
                summary.cancelled += 1
    log.info("autogiro mandate advice imported", bank_file_id=bank_file.id,
             activated=summary.activated, rejected=summary.rejected,
             cancelled=summary.cancelled, problems=len(summary.problems))
    return summary


# ---------------------------------------------------------------- payments


def create_payments(session: Session, *, invoice_ids: Sequence[int]) -> list[Payment]:
    """The first collection attempt of each issued invoice paid by direct debit: invoices of
    drivers paying by Autogiro or SEPA with an active mandate and something to collect.
    Others are left alone (paid by hand with their OCR reference). Invoices that already have
    a payment keep it: calling this again adds nothing."""
    if not invoice_ids:
        return []
    invoices = session.exec(
        select(Invoice).where(col(Invoice.id).in_(invoice_ids),
                              col(Invoice.kind) == InvoiceKind.invoice,
                              col(Invoice.status) == InvoiceStatus.open,
                              col(Invoice.total_ore) > 0,
                              col(Invoice.payment_method).in_([PaymentMethod.autogiro,
                                                               PaymentMethod.sepa]))
        .order_by(col(Invoice.id)).with_for_update()
    ).all()
    if not invoices:
        return []
    ids = [invoice.id for invoice in invoices]
    existing = {payment.invoice_id: payment for payment in session.exec(
        select(Payment).where(col(Payment.invoice_id).in_(ids), col(Payment.attempt) == 1))}
    mandates = {(mandate.driver_id, mandate.scheme): mandate for mandate in session.exec(
        select(Mandate).where(col(Mandate.driver_id).in_({i.driver_id for i in invoices}),
                              col(Mandate.status) == MandateStatus.active))}
    created = []
    for invoice in invoices:
        if invoice.id in existing:
            created.append(existing[invoice.id])
            continue
        scheme = MandateScheme(invoice.payment_method.value)
        mandate = mandates.get((invoice.driver_id, scheme))
        if mandate is None:
            log.warning("no active mandate: invoice left to be paid by hand",
                        invoice_id=invoice.id, driver_id=invoice.driver_id, scheme=scheme.value)
            continue
        if invoice.currency != SCHEME_CURRENCY[scheme]:
            raise BillingError(f"invoice {invoice.display_number} is in {invoice.currency}; "
                               f"{scheme} collects {SCHEME_CURRENCY[scheme]}")
        payment = Payment(invoice_id=invoice.id, driver_id=invoice.driver_id,
                          mandate_id=mandate.id, amount_ore=invoice.total_ore,
                          currency=invoice.currency, due_date=invoice.due_date)
        session.add(payment)
        created.append(payment)
    session.flush()
    return created


def create_payment(session: Session, *, invoice: Invoice) -> Payment | None:
    """The direct debit that collects one issued invoice, or None when it is not collected by
    direct debit (another payment method, no active mandate, nothing to pay). Calling it
    again returns the same payment."""
    assert invoice.id is not None
    payments = create_payments(session, invoice_ids=[invoice.id])
    return payments[0] if payments else None


def _collection_date(payment: Payment, today: date) -> date:
    # A file reaches the bank the day it is sent at the earliest: never debit before tomorrow.
    return max(payment.due_date, today + timedelta(days=1))


def _pending(session: Session, scheme: MandateScheme) -> list[tuple[Payment, Mandate, Invoice]]:
    """Pending payments of a scheme, locked, with their mandate and invoice. Payments whose
    invoice got paid or credited meanwhile, or whose mandate ended, are cancelled here."""
    rows = session.exec(
        select(Payment, Mandate, Invoice)
        .join(Mandate, col(Mandate.id) == Payment.mandate_id)
        .join(Invoice, col(Invoice.id) == Payment.invoice_id)
        .where(col(Mandate.scheme) == scheme, col(Payment.status) == PaymentStatus.pending)
        .order_by(col(Payment.id)).with_for_update(of=Payment)
    ).all()
    collectable = []
    for payment, mandate, invoice in rows:
        if invoice.status not in (InvoiceStatus.open, InvoiceStatus.failed):
            reason = f"invoice {invoice.status}"
        elif mandate.status is not MandateStatus.active:
            reason = f"mandate {mandate.status}"
        else:
            collectable.append((payment, mandate, invoice))
            continue
        payment.status = PaymentStatus.cancelled
        payment.result_text = reason
        session.add(payment)
    session.flush()
    return collectable


def _mark_exported(session: Session, payments: list[Payment], bank_file: BankFile) -> None:
    for payment in payments:
        payment.status = PaymentStatus.exported
        payment.export_file_id = bank_file.id
        session.add(payment)
    session.flush()


def export_autogiro_payments(
    session: Session, *, settings: Settings, created_by: str, today: date
) -> BankFile | None:
    """Put every pending Autogiro payment into one payment file (TK82 debits, the invoice
    number as the payer's reference); None when there is nothing to collect. A payment's due
    date becomes the debit date actually asked for."""
    rows = _pending(session, MandateScheme.autogiro)
    if not rows:
        return None
    debits = []
    for payment, mandate, invoice in rows:
        payment.due_date = _collection_date(payment, today)
        debits.append(autogiro.Debit(payment_date=payment.due_date,
                                     payer_number=mandate.payer_number or "",
                                     amount_ore=payment.amount_ore,
                                     reference=invoice.display_number))
    content = autogiro.write_payment_file(
        written_on=today, customer_number=settings.autogiro_customer_number,
        bankgiro=settings.seller_bankgiro, debits=debits)
    raw = content.encode(autogiro.ENCODING)
    bank_file = _store_file(
        session, kind=BankFileKind.autogiro_payments, raw=raw, content=content,
        filename=f"autogiro_payments_{today:%Y%m%d}_{_digest(raw)[:8]}.txt",
        records=len(debits), created_by=created_by)
    _mark_exported(session, [payment for payment, _, _ in rows], bank_file)
    return bank_file


def export_sepa_payments(
    session: Session, *, settings: Settings, created_by: str, today: date
) -> BankFile | None:
    """Put every pending SEPA payment into one pain.008 (SEPA Core) for our bank; None when
    there is nothing to collect. The first collection under a mandate is sent as FRST, later
    ones as RCUR; the invoice number is the end-to-end id the bank reports results by."""
    rows = _pending(session, MandateScheme.sepa)
    if not rows:
        return None
    creditor = sepa.creditor_from_settings(settings)
    used = set(session.exec(
        select(Payment.mandate_id).distinct()
        .where(col(Payment.mandate_id).in_({m.id for _, m, _ in rows}),
               col(Payment.export_file_id).is_not(None))).all())
    debits = []
    for payment, mandate, invoice in rows:
        payment.due_date = _collection_date(payment, today)
        first = mandate.id not in used
        used.add(mandate.id)
        debits.append(sepa.SepaDebit(
            end_to_end_id=invoice.display_number, amount_cents=payment.amount_ore,
            debtor_name=mandate.holder_name, iban=mandate.iban or "", bic=mandate.bic,
            mandate_reference=mandate.mandate_reference or "",
            mandate_signed_on=mandate.signed_on or mandate.created_at.date(),
            collection_date=payment.due_date, sequence="FRST" if first else "RCUR",
            description=f"{settings.seller_name} invoice {invoice.display_number}",
        ))
    document = sepa.build_pain008(creditor=creditor, debits=debits)
    bank_file = _store_file(
        session, kind=BankFileKind.sepa_pain008, raw=document.xml,
        content=document.xml.decode("utf-8"), filename=f"pain008_{document.message_id}.xml",
        records=len(debits), created_by=created_by)
    _mark_exported(session, [payment for payment, _, _ in rows], bank_file)
    return bank_file


def _sent_payment(session: Session, mandate: Mandate, reference: str) -> Payment | None:
    """The payment a result line is about: this mandate's, for the invoice whose number the
    debit carried as reference; the one still waiting for its result first."""
    candidates = [
        payment for payment, invoice in session.exec(
            select(Payment, Invoice).join(Invoice, col(Invoice.id) == Payment.invoice_id)
            .where(col(Payment.mandate_id) == mandate.id,
                   col(Payment.export_file_id).is_not(None))
            .order_by(col(Payment.attempt).desc())
        ) if invoice.display_number == reference
    ]
    waiting = [p for p in candidates if p.status is PaymentStatus.exported]
    return (waiting or candidates or [None])[0]


def import_autogiro_payment_result(
    session: Session,
    *,
    content: str | bytes,
    filename: str,
    created_by: str,
    settings: Settings,
) -> ImportSummary:
    """Apply Bankgirot's payment specification: debits paid or failed, each through
    :func:`record_payment_result` (failures are dunned). Stopped debits Bankgirot will try
    again (status 9) stay exported. The same file again changes nothing.

    Lines about payer numbers or invoices we do not know, amounts that differ from what we
    asked, results for payments already settled, credits and refunds are reported in the
    summary's problems and change nothing."""
    raw = _raw(content)
    seen = _imported(session, raw)
    if seen is not None:
        assert seen.id is not None
        return ImportSummary(bank_file_id=seen.id, already_imported=True, records=seen.records)
    spec = autogiro.read_payment_specification(raw)
    _check_payee(spec.customer_number, spec.bankgiro, settings)
    records = len(spec.debits) + len(spec.credits) + len(spec.refunds)
    bank_file = _store_file(session, kind=BankFileKind.autogiro_payment_result,
                            filename=filename, raw=raw, content=raw.decode(autogiro.ENCODING),
                            records=records, created_by=created_by)
    assert bank_file.id is not None
    summary = ImportSummary(bank_file_id=bank_file.id, records=records)
    for debit in spec.debits:
        where = (f"line {debit.line}, payer number {debit.payer_number}, "
                 f"reference {debit.reference!r}")
        mandate = _by_payer_number(session, debit.payer_number)
        payment = _sent_payment(session, mandate, debit.reference) if mandate else None
        if payment is None:
            summary.problems.append(f"{where}: no payment of ours ({debit.text}, "
                                    f"{debit.amount_ore} öre)")
            continue
        if payment.amount_ore != debit.amount_ore:
            summary.problems.append(f"{where}: Bankgirot reports {debit.amount_ore} öre, "
                                    f"payment {payment.id} asked {payment.amount_ore}")
            continue
        if payment.status is not PaymentStatus.exported:
            summary.problems.append(f"{where}: payment {payment.id} is already "
                                    f"{payment.status}; result {debit.text!r} not applied")
            continue
        if debit.outcome is autogiro.DebitOutcome.retrying:
            summary.retrying += 1
            continue
        paid = debit.outcome is autogiro.DebitOutcome.paid
        invoice = session.get(Invoice, payment.invoice_id)
        if paid and invoice is not None and invoice.status is InvoiceStatus.paid:
            summary.problems.append(f"{where}: invoice {invoice.display_number} was already "
                                    f"paid; {debit.amount_ore} öre collected twice, refund it")
        record_payment_result(session, payment_id=payment.id or 0, paid=paid,
                              code=debit.status_code, text=debit.text, settings=settings,
                              result_file_id=bank_file.id)
        if paid:
            summary.paid += 1
        else:
            summary.failed += 1
    for credit in spec.credits:
        summary.problems.append(f"line {credit.line}, payer number {credit.payer_number}: a "
                                f"credit of {credit.amount_ore} öre ({credit.text}); we send "
                                "none, check it with the bank")
    for refund in spec.refunds:
        summary.problems.append(f"line {refund.line}, payer number {refund.payer_number}, "
                                f"reference {refund.reference!r}: {refund.amount_ore} öre "
                                f"{refund.text} on {refund.refunded_on}; the invoice must be "
                                "collected again")
    log.info("autogiro payment specification imported", bank_file_id=bank_file.id,
             paid=summary.paid, failed=summary.failed, retrying=summary.retrying,
             problems=len(summary.problems))
    return summary


def record_payment_result(
    session: Session,
    *,
    payment_id: int,
    paid: bool,
    settings: Settings,
    code: str | None = None,
    text: str | None = None,
    result_file_id: int | None = None,
) -> Payment:
    """Settle an exported payment with what the bank answered. Used for Autogiro result files
    and for SEPA results (paid or failed per end-to-end id, e.g. from the bank's portal).

    Paid: the invoice is paid. Failed: the invoice counts one more failed collection, is
    marked failed, a new attempt is scheduled when the reason allows (see the module's
    docstring) and the driver is dunned. The same result again changes nothing; a different
    result for a settled payment is a conflict."""
    payment = session.exec(
        select(Payment).where(col(Payment.id) == payment_id).with_for_update()).first()
    if payment is None:
        raise NotFound(f"no payment {payment_id}")
    outcome = PaymentStatus.paid if paid else PaymentStatus.failed
    if payment.status == outcome:
        return payment
    if payment.status is not PaymentStatus.exported:
        raise Conflict(f"payment {payment_id} is {payment.status}; only a payment sent to the "
                       "bank can be settled")
    invoice = session.exec(
        select(Invoice).where(col(Invoice.id) == payment.invoice_id).with_for_update()).one()
    now = utcnow()
    payment.status = outcome
    payment.result_code = code[:10] if code else None
    payment.result_text = text[:200] if text else None
    payment.result_file_id = result_file_id
    payment.settled_at = now
    session.add(payment)
    if paid:
        invoice.status = InvoiceStatus.paid
        invoice.paid_at = invoice.paid_at or now
        session.add(invoice)
        session.flush()
        return payment
    invoice.payment_failures += 1
    if invoice.status is not InvoiceStatus.paid:
        invoice.status = InvoiceStatus.failed
    session.add(invoice)
    session.flush()
    if invoice.status is InvoiceStatus.failed:
        _schedule_retry(session, payment=payment, invoice=invoice, code=code, settings=settings)
        dun(session, invoice=invoice, settings=settings)
    return payment


def _schedule_retry(session: Session, *, payment: Payment, invoice: Invoice, code: str | None,
                    settings: Settings) -> Payment | None:
    if code not in RETRYABLE_CODES or invoice.payment_failures >= settings.dunning_block_after:
        return None
    mandate = session.get(Mandate, payment.mandate_id) if payment.mandate_id else None
    if mandate is None or mandate.status is not MandateStatus.active:
        return None
    attempt = payment.attempt + 1
    existing = session.exec(
        select(Payment).where(col(Payment.invoice_id) == invoice.id,
                              col(Payment.attempt) == attempt)).first()
    if existing is not None:
        return existing
    retry = Payment(invoice_id=invoice.id, driver_id=payment.driver_id, mandate_id=mandate.id,
                    amount_ore=payment.amount_ore, currency=payment.currency,
                    due_date=payment.due_date + RETRY_AFTER,
                    attempt=attempt)
    session.add(retry)
    session.flush()
    return retry


def payment_by_end_to_end_id(session: Session, *, end_to_end_id: str) -> Payment:
    """The SEPA payment of the invoice whose number a bank reported results by; the latest
    attempt sent."""
    for payment, invoice in session.exec(
        select(Payment, Invoice).join(Invoice, col(Invoice.id) == Payment.invoice_id)
        .join(Mandate, col(Mandate.id) == Payment.mandate_id)
        .where(col(Mandate.scheme) == MandateScheme.sepa,
               col(Payment.export_file_id).is_not(None))
        .order_by(col(Payment.attempt).desc())
    ):
        if invoice.display_number == end_to_end_id:
            return payment
    raise NotFound(f"no SEPA payment with end-to-end id {end_to_end_id}")


# ---------------------------------------------------------------- dunning


_REMINDER = {
    Language.sv: {
        "subject": "Påminnelse: vi kunde inte dra betalningen för faktura {number}",
        "blocked_subject": "Dina laddbrickor är spärrade: faktura {number} är obetald",
        "greeting": "Hej {name}!",
        "failed": "Vi kunde inte dra {amount} från ditt konto för faktura {number}.",
        "pay_sek": "Betala gärna själv till bankgiro {bankgiro} och ange OCR-nummer {ocr}.",
        "pay_eur": "Betala gärna själv till IBAN {iban} (BIC {bic}) och ange referens {ocr}.",
        "retry": "Annars gör vi ett nytt försök att dra beloppet den {date}.",
        "blocked": "Betalningen har nu misslyckats {failures} gånger, så vi har spärrat dina "
                   "laddbrickor. Hör av dig till oss när fakturan är betald så öppnar vi dem "
                   "igen.",
        "signature": "Vänliga hälsningar\n{seller}",
    },
    Language.en: {
        "subject": "Reminder: we could not collect the payment for invoice {number}",
        "blocked_subject": "Your charging tags are blocked: invoice {number} is unpaid",
        "greeting": "Hello {name},",
        "failed": "We could not debit {amount} from your account for invoice {number}.",
        "pay_sek": "Please pay it yourself to bankgiro {bankgiro} with OCR reference {ocr}.",
        "pay_eur": "Please pay it yourself to IBAN {iban} (BIC {bic}) with reference {ocr}.",
        "retry": "Otherwise we will try to debit the amount again on {date}.",
        "blocked": "The payment has now failed {failures} times, so we have blocked your "
                   "charging tags. Let us know once the invoice is paid and we will unblock "
                   "them.",
        "signature": "Kind regards\n{seller}",
    },
}

_LOCALE = {Language.sv: "sv_SE", Language.en: "en_GB"}


def _reminder(invoice: Invoice, *, name: str, blocked: bool, retry_on: date | None,
              settings: Settings) -> tuple[str, str]:
    texts = _REMINDER[invoice.language]
    locale = _LOCALE[invoice.language]
    values = {
        "name": name, "number": invoice.display_number, "ocr": invoice.ocr,
        "amount": format_currency(cents_to_decimal(invoice.total_ore), invoice.currency,
                                  locale=locale),
        "bankgiro": settings.seller_bankgiro, "iban": settings.sepa_iban,
        "bic": settings.sepa_bic, "failures": invoice.payment_failures,
        "seller": settings.seller_name,
        "date": format_date(retry_on, format="long", locale=locale) if retry_on else "",
    }
    paragraphs = [texts["greeting"], texts["failed"],
                  texts["pay_sek" if invoice.currency == "SEK" else "pay_eur"]]
    if blocked:
        paragraphs.append(texts["blocked"])
    elif retry_on is not None:
        paragraphs.append(texts["retry"])
    paragraphs.append(texts["signature"])
    subject = texts["blocked_subject" if blocked else "subject"].format(**values)
    return subject, "\n\n".join(p.format(**values) for p in paragraphs) + "\n"


def dun(session: Session, *, invoice: Invoice, settings: Settings) -> DunningNotice:
    """Act on the invoice's latest failed collection: e-mail the driver a reminder in the
    invoice's language (amount, invoice number, OCR reference, where to pay by hand, and the
    next attempt if one is scheduled); from ``settings.dunning_block_after`` failures on,
    block every id tag of the driver instead and say so. One notice per failure count: calling
    again returns it."""
    level = invoice.payment_failures
    if level < 1:
        raise BillingError(f"invoice {invoice.display_number} has no failed collection")
    blocked = level >= settings.dunning_block_after
    action = DUNNING_BLOCKED if blocked else DUNNING_REMINDER
    notice = session.exec(
        select(DunningNotice).where(col(DunningNotice.invoice_id) == invoice.id,
                                    col(DunningNotice.level) == level,
                                    col(DunningNotice.action) == action)).first()
    if notice is not None:
        return notice
    driver = session.get(Driver, invoice.driver_id)
    if driver is None:
        raise NotFound(f"no driver {invoice.driver_id}")
    if blocked:
        for tag in session.exec(select(DriverIdTag).where(
                col(DriverIdTag.driver_id) == driver.id)):
            stations.update_id_tag(session, id_tag=tag.id_tag, status=IdTagStatus.blocked)
    retry = session.exec(
        select(Payment).where(col(Payment.invoice_id) == invoice.id,
                              col(Payment.status) == PaymentStatus.pending)
        .order_by(col(Payment.attempt).desc())).first()
    email_id = None
    address = invoice.buyer_email or driver.email
    if address:
        subject, body = _reminder(invoice, name=invoice.buyer_name, blocked=blocked,
                                  retry_on=retry.due_date if retry else None, settings=settings)
        email = queue_email(session, to_address=address, subject=subject, body=body,
                            kind="reminder", driver_id=driver.id, invoice_id=invoice.id)
        email_id = email.id
    else:
        log.warning("dunning without e-mail address", invoice_id=invoice.id,
                    driver_id=driver.id)
    notice = DunningNotice(invoice_id=invoice.id, driver_id=driver.id, level=level,
                           action=action, email_id=email_id)
    session.add(notice)
    session.flush()
    log.info("invoice dunned", invoice_id=invoice.id, level=level, action=action)
    return notice
