"""Billing tables: tariffs, drivers and their wallets, rated sessions, invoices, payments.

Money is integer öre (or cent) in ``*_ore`` columns, signed where it can go both ways.
Rows that record money moving (ledger entries, issued invoices and their lines, bank files)
are written once and never updated in their amounts: corrections are new rows.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Numeric, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow

# ---------------------------------------------------------------- tariffs


class TariffVersion(SQLModel, table=True):
    """One version of an OCPI tariff, kept as the OCPI JSON it was imported as.

    Versions are never edited: a change is a new version, so a session can always be priced
    with the tariff that was in force when it started.
    """

    __tablename__ = "tariff_version"
    __table_args__ = (UniqueConstraint("tariff_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    tariff_id: str = Field(max_length=36, index=True)
    version: int
    currency: str = Field(max_length=3)
    # Text, not JSON: prices must round-trip as written (0.1 is no float).
    body: str = Field(sa_column=Column(Text, nullable=False))
    valid_from: datetime = Field(sa_type=UTCDateTime)
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TariffAssignment(SQLModel, table=True):
    """Which tariff applies where, and to whom, from when.

    Scope, most specific first: a connector (station and connector set), a station, a site,
    or the whole network (nothing set). ``driver_group`` empty means everyone; a group's own
    assignment overrides the general one at the same scope.
    """

    __tablename__ = "tariff_assignment"

    id: int | None = Field(default=None, primary_key=True)
    tariff_id: str = Field(max_length=36, index=True)
    site_id: str | None = Field(default=None, foreign_key="site.id", max_length=48, index=True)
    station_id: str | None = Field(default=None, foreign_key="station.id", max_length=48,
                                   index=True)
    connector_id: int | None = None
    driver_group: str | None = Field(default=None, max_length=40)
    valid_from: datetime = Field(sa_type=UTCDateTime)
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# ---------------------------------------------------------------- drivers


class Language(StrEnum):
    sv = "sv"
    en = "en"


class PaymentMethod(StrEnum):
    # Sessions are paid from the wallet; the monthly invoice is a receipt, settled at issue.
    prepaid = "prepaid"
    # Monthly invoice debited from a Swedish bank account through Bankgirot Autogiro.
    autogiro = "autogiro"
    # Monthly invoice debited from a EUR account by SEPA Direct Debit (pain.008).
    sepa = "sepa"
    # Monthly invoice paid by the driver to our bankgiro with its OCR reference.
    invoice = "invoice"


class Driver(SQLModel, table=True):
    """A customer of the network: who charges, how they pay, where their invoices go."""

    __tablename__ = "driver"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=120)
    email: str | None = Field(default=None, max_length=254, index=True)
    # E.164, e.g. +46701234567: SMS and voice find the driver by it.
    phone: str | None = Field(default=None, max_length=32, index=True)
    language: Language = Field(default=Language.sv, sa_type=EnumText(Language))
    # Tariff assignments may target a group (members, fleet); empty is ad hoc.
    driver_group: str | None = Field(default=None, max_length=40)
    # Postal address as printed on invoices, lines separated by newlines.
    address: str | None = Field(default=None, max_length=300)
    # A business buyer's VAT number, printed on its invoices.
    vat_number: str | None = Field(default=None, max_length=20)
    currency: str = Field(default="SEK", max_length=3)
    payment_method: PaymentMethod = Field(
        default=PaymentMethod.invoice, sa_type=EnumText(PaymentMethod)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DriverIdTag(SQLModel, table=True):
    """The id tags (RFID cards, app tokens) a driver charges with."""

    __tablename__ = "driver_id_tag"

    id_tag: str = Field(foreign_key="id_tag.id_tag", primary_key=True, max_length=20)
    driver_id: int = Field(foreign_key="driver.id", index=True)


# ---------------------------------------------------------------- wallets


class Wallet(SQLModel, table=True):
    """A driver's prepaid balance.

    ``balance_ore`` is a cache of the sum of the driver's ledger entries, updated in the same
    transaction as each entry under a row lock; the ledger is the truth.
    """

    __tablename__ = "wallet"

    driver_id: int = Field(foreign_key="driver.id", primary_key=True)
    currency: str = Field(max_length=3)
    balance_ore: int = 0
    # Sum of open holds: what sessions in progress may still cost.
    held_ore: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LedgerKind(StrEnum):
    topup = "topup"
    debit = "debit"  # a rated session paid from the wallet
    refund = "refund"
    adjustment = "adjustment"  # a re-rated session, an approved dispute, an operator's fix


class LedgerEntry(SQLModel, table=True):
    """One movement of a wallet's money; entries are only ever appended."""

    __tablename__ = "ledger_entry"
    __table_args__ = (UniqueConstraint("driver_id", "idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    driver_id: int = Field(foreign_key="driver.id", index=True)
    kind: LedgerKind = Field(sa_type=EnumText(LedgerKind))
    amount_ore: int  # signed: credits positive, debits negative
    balance_after_ore: int
    currency: str = Field(max_length=3)
    # A retried request with the same key returns the first entry instead of a second one.
    idempotency_key: str | None = Field(default=None, max_length=100)
    session_id: int | None = Field(default=None, foreign_key="charging_session.id", index=True)
    note: str | None = Field(default=None, max_length=300)
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class HoldStatus(StrEnum):
    open = "open"
    settled = "settled"  # the session was rated and debited
    released = "released"  # the session never started or cost nothing


class WalletHold(SQLModel, table=True):
    """Money set aside at a session's start, settled against the debit at its stop."""

    __tablename__ = "wallet_hold"

    id: int | None = Field(default=None, primary_key=True)
    driver_id: int = Field(foreign_key="driver.id", index=True)
    transaction_id: int = Field(foreign_key="transaction.id", unique=True)
    amount_ore: int
    status: HoldStatus = Field(default=HoldStatus.open, sa_type=EnumText(HoldStatus))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# ---------------------------------------------------------------- rated sessions


class SessionStatus(StrEnum):
    open = "open"  # charging; not rated yet
    rated = "rated"
    failed = "failed"  # could not be rated (see error); an operator must look


class ChargingSession(SQLModel, table=True):
    """Billing's view of one OCPP transaction: who pays, which tariff, and the CDR.

    The tariff is fixed when the transaction starts. Re-rating (late meter values) replaces
    ``cdr`` and the totals; an invoice already issued for the old totals is corrected by a
    credit note, and the session is billed again on the next invoice.
    """

    __tablename__ = "charging_session"

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int = Field(foreign_key="transaction.id", unique=True)
    station_id: str = Field(max_length=48, index=True)
    connector_id: int
    id_tag: str = Field(max_length=20)
    driver_id: int | None = Field(default=None, foreign_key="driver.id", index=True)
    start_at: datetime = Field(sa_type=UTCDateTime)
    end_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    energy_wh: int | None = None
    tariff_id: str | None = Field(default=None, max_length=36)
    tariff_version: int | None = None
    currency: str = Field(default="SEK", max_length=3)
    time_zone: str = Field(default="Europe/Stockholm", max_length=64)
    status: SessionStatus = Field(default=SessionStatus.open, sa_type=EnumText(SessionStatus))
    total_excl_vat_ore: int | None = None
    total_incl_vat_ore: int | None = None
    # The CDR as OCPI JSON (Cdr.to_json), with cost_breakdown and vat.
    cdr: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, max_length=500)
    rated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The invoice that bills the current totals; cleared when a credit note reverses it.
    invoice_id: int | None = Field(default=None, foreign_key="invoice.id", index=True)


class SessionCostLine(SQLModel, table=True):
    """A rated session's cost line (the CDR's cost_breakdown, plus any min/max price
    adjustment), kept as rows so invoice runs and revenue reports aggregate in SQL.
    Replaced when the session is rated again."""

    __tablename__ = "session_cost_line"

    id: int | None = Field(default=None, primary_key=True)
    session_id: int = Field(foreign_key="charging_session.id", index=True)
    dimension: str = Field(max_length=20)  # ENERGY, TIME, PARKING_TIME, FLAT, ADJUSTMENT
    quantity: Decimal = Field(sa_column=Column(Numeric(20, 6), nullable=False))
    unit: str = Field(max_length=16)
    unit_price: Decimal = Field(sa_column=Column(Numeric(20, 6), nullable=False))
    net_ore: int
    vat_rate: Decimal | None = Field(default=None, sa_column=Column(Numeric(5, 2)))


# ---------------------------------------------------------------- invoices


class InvoiceKind(StrEnum):
    invoice = "invoice"
    credit_note = "credit_note"


class InvoiceStatus(StrEnum):
    open = "open"  # issued, awaiting payment
    paid = "paid"
    failed = "failed"  # the last debit attempt failed; dunning runs
    credited = "credited"  # fully reversed by a credit note
    settled = "settled"  # a credit note: nothing to collect


class InvoiceSeries(SQLModel, table=True):
    """The next number of a series. Taken under a row lock in the transaction that issues
    the invoice, so a rolled-back invoice gives its number back: numbering has no gaps."""

    __tablename__ = "invoice_series"

    series: str = Field(primary_key=True, max_length=10)
    next_number: int = 1


class InvoiceRun(SQLModel, table=True):
    """One execution of the monthly invoice run for a period."""

    __tablename__ = "invoice_run"

    id: int | None = Field(default=None, primary_key=True)
    period_start: date
    period_end: date  # exclusive
    status: str = Field(default="running", max_length=20)  # running, completed, failed
    invoices: int = 0
    # A month's run over a whole network passes 2^31 öre (21 M SEK).
    total_ore: int = Field(default=0, sa_type=BigInteger)
    error: str | None = Field(default=None, max_length=1000)
    started_by: str = Field(max_length=120)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Invoice(SQLModel, table=True):
    """An issued invoice or credit note. Its amounts and parties never change once issued:
    buyer and seller are copied in, so later edits to a driver do not rewrite history."""

    __tablename__ = "invoice"
    __table_args__ = (UniqueConstraint("series", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: InvoiceKind = Field(sa_type=EnumText(InvoiceKind))
    series: str = Field(max_length=10)
    number: int
    driver_id: int = Field(foreign_key="driver.id", index=True)
    run_id: int | None = Field(default=None, foreign_key="invoice_run.id", index=True)
    # "<driver>:<period start>" for a run's invoice: a re-run cannot invoice a period twice.
    run_key: str | None = Field(default=None, max_length=40, unique=True)
    period_start: date | None = None
    period_end: date | None = None  # exclusive
    issue_date: date
    due_date: date
    currency: str = Field(max_length=3)
    net_ore: int
    vat_ore: int
    total_ore: int
    # JSON list of {"rate": "25", "base_ore": ..., "vat_ore": ...}, one per VAT rate.
    vat_breakdown: str = Field(sa_column=Column(Text, nullable=False))
    ocr: str = Field(max_length=25, unique=True)
    language: Language = Field(sa_type=EnumText(Language))
    payment_method: PaymentMethod = Field(sa_type=EnumText(PaymentMethod))
    status: InvoiceStatus = Field(sa_type=EnumText(InvoiceStatus))
    credits_invoice_id: int | None = Field(default=None, foreign_key="invoice.id")
    buyer_name: str = Field(max_length=120)
    buyer_address: str | None = Field(default=None, max_length=300)
    buyer_email: str | None = Field(default=None, max_length=254)
    buyer_vat_number: str | None = Field(default=None, max_length=20)
    # JSON of the seller's name, address, VAT and organisation numbers, bankgiro, at issue.
    seller: str = Field(sa_column=Column(Text, nullable=False))
    reason: str | None = Field(default=None, max_length=300)  # why a credit note was issued
    payment_failures: int = 0
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    @property
    def display_number(self) -> str:
        return f"{self.series}{self.number:07d}"


class InvoiceLine(SQLModel, table=True):
    """A line of an invoice: what was sold, how much of it, at what unit price.

    A run's invoice has one line per (dimension, unit price, VAT rate) over its sessions:
    each session was rounded to öre on its own (as its receipt showed) and a line's amount
    is the sum of those. A credit note's lines are the negated lines it reverses.
    """

    __tablename__ = "invoice_line"

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: int = Field(foreign_key="invoice.id", index=True)
    position: int
    session_id: int | None = Field(default=None, foreign_key="charging_session.id")
    dimension: str = Field(max_length=20)  # ENERGY, TIME, PARKING_TIME, FLAT, ADJUSTMENT
    description: str = Field(max_length=300)
    quantity: Decimal = Field(sa_column=Column(Numeric(20, 6), nullable=False))
    unit: str = Field(max_length=16)
    unit_price: Decimal = Field(sa_column=Column(Numeric(20, 6), nullable=False))
    net_ore: int
    vat_rate: Decimal | None = Field(default=None, sa_column=Column(Numeric(5, 2)))


# ---------------------------------------------------------------- payments


class MandateScheme(StrEnum):
    autogiro = "autogiro"
    sepa = "sepa"


class MandateStatus(StrEnum):
    pending = "pending"  # created; not yet confirmed by the bank
    active = "active"
    cancelled = "cancelled"
    rejected = "rejected"


class Mandate(SQLModel, table=True):
    """A driver's consent to be debited: an Autogiro medgivande or a SEPA mandate."""

    __tablename__ = "mandate"

    id: int | None = Field(default=None, primary_key=True)
    driver_id: int = Field(foreign_key="driver.id", index=True)
    scheme: MandateScheme = Field(sa_type=EnumText(MandateScheme))
    status: MandateStatus = Field(default=MandateStatus.pending, sa_type=EnumText(MandateStatus))
    holder_name: str = Field(max_length=120)
    # Autogiro: the payer number we give Bankgirot (betalarnummer), and the account.
    payer_number: str | None = Field(default=None, max_length=16, unique=True)
    personal_number: str | None = Field(default=None, max_length=12)
    clearing_number: str | None = Field(default=None, max_length=5)
    account_number: str | None = Field(default=None, max_length=16)
    # SEPA: the account, and the mandate reference and date of signature.
    iban: str | None = Field(default=None, max_length=34)
    bic: str | None = Field(default=None, max_length=11)
    mandate_reference: str | None = Field(default=None, max_length=35, unique=True)
    signed_on: date | None = None
    # The bank file that sent the mandate to Bankgirot (autogiro), once exported.
    export_file_id: int | None = Field(default=None, foreign_key="bank_file.id")
    # The file that ended it at Bankgirot: our cancellation (TK03), or their advice.
    cancel_file_id: int | None = Field(default=None, foreign_key="bank_file.id")
    reason: str | None = Field(default=None, max_length=300)
    created_by: str = Field(default="system", max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PaymentStatus(StrEnum):
    pending = "pending"  # to be exported to the bank
    exported = "exported"  # in a bank file, awaiting the result
    paid = "paid"
    failed = "failed"
    cancelled = "cancelled"


class Payment(SQLModel, table=True):
    """One attempt to collect an invoice by direct debit."""

    __tablename__ = "payment"
    __table_args__ = (UniqueConstraint("invoice_id", "attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: int = Field(foreign_key="invoice.id", index=True)
    driver_id: int = Field(foreign_key="driver.id", index=True)
    mandate_id: int | None = Field(default=None, foreign_key="mandate.id")
    amount_ore: int
    currency: str = Field(max_length=3)
    due_date: date
    attempt: int = 1
    status: PaymentStatus = Field(default=PaymentStatus.pending, sa_type=EnumText(PaymentStatus))
    export_file_id: int | None = Field(default=None, foreign_key="bank_file.id")
    result_file_id: int | None = Field(default=None, foreign_key="bank_file.id")
    result_code: str | None = Field(default=None, max_length=10)
    result_text: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    settled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BankFileKind(StrEnum):
    autogiro_mandates = "autogiro_mandates"  # out: new mandates (TK04)
    autogiro_payments = "autogiro_payments"  # out: debits (TK82)
    autogiro_mandate_result = "autogiro_mandate_result"  # in: mandate answers
    autogiro_payment_result = "autogiro_payment_result"  # in: debits paid or failed
    sepa_pain008 = "sepa_pain008"  # out: SEPA direct debit initiation


class BankFile(SQLModel, table=True):
    """Every file exchanged with a bank, kept verbatim. An import's digest is unique: the
    same result file read twice changes nothing the second time."""

    __tablename__ = "bank_file"

    id: int | None = Field(default=None, primary_key=True)
    kind: BankFileKind = Field(sa_type=EnumText(BankFileKind, length=30))
    filename: str = Field(max_length=120)
    content: str = Field(sa_column=Column(Text, nullable=False))
    sha256: str = Field(max_length=64, unique=True)
    records: int = 0
    created_by: str = Field(max_length=120)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DunningNotice(SQLModel, table=True):
    """A reminder sent for an unpaid invoice, or the blocking of the driver's id tags."""

    __tablename__ = "dunning_notice"

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: int = Field(foreign_key="invoice.id", index=True)
    driver_id: int = Field(foreign_key="driver.id", index=True)
    level: int  # the number of failed collections when it was sent
    action: str = Field(max_length=20)  # reminder, blocked
    email_id: int | None = Field(default=None, foreign_key="email_message.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# ---------------------------------------------------------------- e-mail


class EmailStatus(StrEnum):
    queued = "queued"
    sent = "sent"
    failed = "failed"  # gave up after retries; the error says why


class EmailMessage(SQLModel, table=True):
    """An e-mail to a driver, recorded before it is sent so none is lost when SMTP is down.

    Attachments are rendered again when sending (an invoice PDF from its invoice)."""

    __tablename__ = "email_message"

    id: int | None = Field(default=None, primary_key=True)
    driver_id: int | None = Field(default=None, foreign_key="driver.id", index=True)
    to_address: str = Field(max_length=254)
    subject: str = Field(max_length=200)
    body: str = Field(sa_column=Column(Text, nullable=False))
    kind: str = Field(max_length=30)  # invoice, credit_note, reminder, ...
    invoice_id: int | None = Field(default=None, foreign_key="invoice.id")
    status: EmailStatus = Field(default=EmailStatus.queued, sa_type=EnumText(EmailStatus))
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# ---------------------------------------------------------------- disputes


class DisputeStatus(StrEnum):
    open = "open"
    approved = "approved"
    rejected = "rejected"


class Dispute(SQLModel, table=True):
    """A driver contests a session; the credit proposed waits for a human agent's decision."""

    __tablename__ = "dispute"

    id: int | None = Field(default=None, primary_key=True)
    session_id: int = Field(foreign_key="charging_session.id", index=True)
    driver_id: int = Field(foreign_key="driver.id", index=True)
    reason: str = Field(max_length=1000)
    proposed_credit_ore: int
    status: DisputeStatus = Field(default=DisputeStatus.open, sa_type=EnumText(DisputeStatus))
    opened_by: str = Field(max_length=120)
    decided_by: str | None = Field(default=None, max_length=120)
    decision_note: str | None = Field(default=None, max_length=500)
    # What the approval produced: a credit note (invoiced session) or a ledger refund.
    credit_invoice_id: int | None = Field(default=None, foreign_key="invoice.id")
    ledger_entry_id: int | None = Field(default=None, foreign_key="ledger_entry.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
