"""Invoice documents: what an invoice or credit note shows, rendered as HTML and PDF.

:func:`invoice_document` reads everything a document shows in one go, into frozen
dataclasses; :func:`render_html` and :func:`render_pdf` only format it. The content is what
Swedish VAT law requires of a full invoice (ML 2023:200, 17 kap. 24 §) plus the charging
history behind it. Every label lives in :data:`LABELS`, Swedish beside English, and every
number and date is formatted with babel through :class:`Formatter`, so the HTML page, the PDF
and the e-mail read the same.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, format_percent
from fpdf import FPDF
from fpdf.fonts import FontFace
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlmodel import Session, col, select

from billing_api.models import (
    ChargingSession,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    Language,
    PaymentMethod,
    SessionCostLine,
)
from billing_api.money import cents_to_decimal, round_half_up
from billing_api.service import NotFound
from station_api.models import Site, Station

# --------------------------------------------------------------------------- labels

# Each label with both translations side by side: adding a label means writing both.
LABELS: dict[str, dict[str, str]] = {
    "invoice": {"sv": "Faktura", "en": "Invoice"},
    "credit_note": {"sv": "Kreditfaktura", "en": "Credit note"},
    "credits": {"sv": "Kreditfaktura för faktura {number}",
                "en": "Credit note for invoice {number}"},
    "number": {"sv": "Nummer", "en": "Number"},
    "issue_date": {"sv": "Fakturadatum", "en": "Issue date"},
    "due_date": {"sv": "Förfallodatum", "en": "Due date"},
    "period": {"sv": "Period", "en": "Period"},
    "seller": {"sv": "Säljare", "en": "Seller"},
    "buyer": {"sv": "Köpare", "en": "Buyer"},
    "org_number": {"sv": "Org.nr", "en": "Company reg. no."},
    "vat_number": {"sv": "Momsreg.nr", "en": "VAT reg. no."},
    "email": {"sv": "E-post", "en": "E-mail"},
    "reason": {"sv": "Orsak", "en": "Reason"},
    "lines": {"sv": "Specifikation", "en": "Specification"},
    "description": {"sv": "Beskrivning", "en": "Description"},
    "quantity": {"sv": "Antal", "en": "Quantity"},
    "unit": {"sv": "Enhet", "en": "Unit"},
    "unit_price": {"sv": "À-pris exkl. moms", "en": "Unit price excl. VAT"},
    "vat_rate": {"sv": "Momssats", "en": "VAT rate"},
    "amount": {"sv": "Belopp exkl. moms", "en": "Amount excl. VAT"},
    "vat_summary": {"sv": "Moms", "en": "VAT"},
    "taxable": {"sv": "Underlag", "en": "Taxable amount"},
    "vat": {"sv": "Moms", "en": "VAT"},
    "exempt": {"sv": "Momsfri", "en": "Exempt"},
    "net_total": {"sv": "Summa exkl. moms", "en": "Total excl. VAT"},
    "vat_total": {"sv": "Moms totalt", "en": "Total VAT"},
    "total": {"sv": "Totalt inkl. moms", "en": "Total incl. VAT"},
    "payment": {"sv": "Betalning", "en": "Payment"},
    "ocr": {"sv": "OCR-nummer", "en": "OCR reference"},
    "bankgiro": {"sv": "Bankgiro", "en": "Bankgiro"},
    "amount_due": {"sv": "Att betala", "en": "Amount to pay"},
    "amount_credited": {"sv": "Att kreditera", "en": "Amount credited"},
    "pay_invoice": {"sv": "Betala till bankgiro {bankgiro} med OCR-nummer {ocr}.",
                    "en": "Pay to bankgiro {bankgiro} quoting OCR reference {ocr}."},
    "pay_autogiro": {"sv": "Beloppet dras via Autogiro på förfallodagen.",
                     "en": "The amount is debited by Autogiro on the due date."},
    "pay_sepa": {"sv": "Beloppet dras via SEPA-autogiro på förfallodagen.",
                 "en": "The amount is collected by SEPA Direct Debit on the due date."},
    "pay_prepaid": {"sv": "Betalt från ditt förbetalda saldo.",
                    "en": "Paid from your prepaid balance."},
    "pay_credit": {"sv": "Beloppet krediteras dig; du behöver inte göra något.",
                   "en": "The amount is credited to you; there is nothing to pay."},
    "history": {"sv": "Laddhistorik", "en": "Charging history"},
    "no_sessions": {"sv": "Inga laddsessioner.", "en": "No charging sessions."},
    "start": {"sv": "Start", "en": "Start"},
    "end": {"sv": "Slut", "en": "End"},
    "station": {"sv": "Station", "en": "Station"},
    "connector": {"sv": "Uttag", "en": "Conn."},
    "energy": {"sv": "kWh", "en": "kWh"},
    "charging_time": {"sv": "Laddtid", "en": "Charging"},
    "parking_time": {"sv": "Parkering", "en": "Parking"},
    "excl_vat": {"sv": "Exkl. moms", "en": "Excl. VAT"},
    "incl_vat": {"sv": "Inkl. moms", "en": "Incl. VAT"},
    "page": {"sv": "Sida {page} av {pages}", "en": "Page {page} of {pages}"},
    # What a line or a cost item is, by OCPI dimension (ADJUSTMENT is ours).
    "dim_ENERGY": {"sv": "Energi", "en": "Energy"},
    "dim_TIME": {"sv": "Laddtid", "en": "Charging time"},
    "dim_PARKING_TIME": {"sv": "Parkeringstid", "en": "Parking time"},
    "dim_FLAT": {"sv": "Startavgift", "en": "Session fee"},
    "dim_ADJUSTMENT": {"sv": "Justering", "en": "Adjustment"},
    "dim_CREDIT": {"sv": "Kreditering", "en": "Credit"},
    "unit_session": {"sv": "st", "en": "session"},
    "unit_h": {"sv": "tim", "en": "h"},
    "unit_kWh": {"sv": "kWh", "en": "kWh"},
    # E-mail (billing_api.mailer).
    "mail_subject_invoice": {"sv": "Faktura {number} från {seller}",
                             "en": "Invoice {number} from {seller}"},
    "mail_subject_credit_note": {"sv": "Kreditfaktura {number} från {seller}",
                                 "en": "Credit note {number} from {seller}"},
    "mail_greeting": {"sv": "Hej {name}!", "en": "Dear {name},"},
    "mail_invoice": {"sv": "Här kommer faktura {number}{period}. Att betala: {total}, "
                           "senast {due}.",
                     "en": "Here is invoice {number}{period}. Amount to pay: {total}, "
                           "due {due}."},
    "mail_credit_note": {"sv": "Här kommer kreditfaktura {number}, som krediterar faktura "
                               "{credits} med {total}.",
                         "en": "Here is credit note {number}, which credits {total} on "
                               "invoice {credits}."},
    "mail_period": {"sv": " för {period}", "en": " for {period}"},
    "mail_attached": {"sv": "Fakturan och din laddhistorik finns i den bifogade PDF-filen.",
                      "en": "The invoice and your charging history are in the attached PDF."},
    "mail_questions": {"sv": "Frågor? Svara på det här mejlet eller skriv till {contact}.",
                       "en": "Questions? Reply to this e-mail or write to {contact}."},
    "mail_regards": {"sv": "Vänliga hälsningar", "en": "Kind regards"},
    "attachment_invoice": {"sv": "faktura-{number}.pdf", "en": "invoice-{number}.pdf"},
    "attachment_credit_note": {"sv": "kreditfaktura-{number}.pdf",
                               "en": "credit-note-{number}.pdf"},
}

# Typography, written as escapes so that no look-alike character hides in the source.
_EN_DASH = "\u2013"
_TIMES = "\u00d7"

# babel locale, and the date style a reader of that language expects (ISO dates in Sweden).
_LOCALES: dict[str, tuple[str, str]] = {"sv": ("sv_SE", "short"), "en": ("en_GB", "medium")}


def labels(language: Language | str) -> dict[str, str]:
    """Every label in one language."""
    lang = Language(language).value
    return {key: texts[lang] for key, texts in LABELS.items()}


# --------------------------------------------------------------------------- the document

# Dimensions a session's price is made of (a CREDIT line is a sum credited, not a reversal).
_SESSION_DIMENSIONS = ("FLAT", "ENERGY", "TIME", "PARKING_TIME", "ADJUSTMENT")


@dataclass(frozen=True, slots=True)
class Party:
    """Seller or buyer as printed: address lines as written, numbers where known."""

    name: str
    address: tuple[str, ...]
    vat_number: str | None = None
    org_number: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class DocumentLine:
    position: int
    dimension: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal  # excl. VAT
    net_ore: int
    vat_rate: Decimal | None  # percent; None: no VAT
    session_id: int | None


@dataclass(frozen=True, slots=True)
class VatAmount:
    rate: Decimal | None
    base_ore: int
    vat_ore: int


@dataclass(frozen=True, slots=True)
class CostItem:
    """One part of a session's price: a dimension, its volume and price, excl. VAT."""

    dimension: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount_ore: int
    vat_rate: Decimal | None


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """One charging session of the history, with what the document charges for it."""

    session_id: int
    station_id: str
    site_name: str | None
    connector_id: int
    start_at: datetime  # UTC
    end_at: datetime | None
    time_zone: str
    energy_kwh: Decimal
    charging_hours: Decimal  # plugged in and not parking
    parking_hours: Decimal
    excl_vat_ore: int
    incl_vat_ore: int
    costs: tuple[CostItem, ...]


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    """Everything an invoice or credit note shows. Amounts carry their stored sign, so a
    credit note's are negative."""

    invoice_id: int
    kind: InvoiceKind
    number: str  # as printed, e.g. F0000123
    language: Language
    currency: str
    issue_date: date
    due_date: date
    period_start: date | None
    period_end: date | None  # exclusive
    seller: Party
    seller_bankgiro: str | None
    buyer: Party
    lines: tuple[DocumentLine, ...]
    vat: tuple[VatAmount, ...]
    net_ore: int
    vat_ore: int
    total_ore: int
    ocr: str
    payment_method: PaymentMethod
    credits_number: str | None  # a credit note: the invoice it corrects
    reason: str | None
    sessions: tuple[SessionEntry, ...]

    @property
    def is_credit_note(self) -> bool:
        return self.kind == InvoiceKind.credit_note

    @property
    def period_last_day(self) -> date | None:
        return None if self.period_end is None else self.period_end - timedelta(days=1)


def invoice_document(session: Session, *, invoice_id: int) -> InvoiceDocument:
    """Read an invoice or credit note with its lines, parties and charging history.

    An invoice's history is the sessions it bills: those linked to it, priced by their stored
    cost lines, and those a credit note has since reversed, priced as the credit note reversed
    them. A credit note's history is the sessions its lines name, priced by those lines.
    Times and energy come from each session's current CDR.
    """
    invoice = session.get(Invoice, invoice_id)
    if invoice is None:
        raise NotFound(f"no invoice {invoice_id}")
    rows = session.exec(
        select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id)
        .order_by(col(InvoiceLine.position))
    ).all()
    lines = tuple(_document_line(row) for row in rows)
    credits_number = None
    if invoice.credits_invoice_id is not None:
        corrected = session.get(Invoice, invoice.credits_invoice_id)
        if corrected is not None:
            credits_number = corrected.display_number

    seller: dict[str, Any] = json.loads(invoice.seller)
    line_sessions = {line.session_id for line in lines if line.session_id is not None}
    if invoice.kind == InvoiceKind.credit_note:
        history = _history(session, invoice_id=None, session_ids=line_sessions,
                           priced=_costs_by_session(lines))
    else:
        # A session a credit note reversed is no longer linked to this invoice (it awaits the
        # next one), but this invoice did bill it: at the prices the credit note reversed.
        reversed_lines = session.exec(
            select(InvoiceLine).join(Invoice, col(Invoice.id) == col(InvoiceLine.invoice_id))
            .where(col(Invoice.credits_invoice_id) == invoice_id,
                   col(InvoiceLine.session_id).is_not(None),
                   col(InvoiceLine.dimension).in_(_SESSION_DIMENSIONS))
        ).all()
        reversed_costs = _costs_by_session(_document_line(row) for row in reversed_lines)
        billed = {key: [_negated(item) for item in items]
                  for key, items in reversed_costs.items()}
        history = _history(session, invoice_id=invoice_id,
                           session_ids=line_sessions | set(billed), priced=billed)

    return InvoiceDocument(
        invoice_id=invoice_id, kind=invoice.kind, number=invoice.display_number,
        language=Language(invoice.language), currency=invoice.currency,
        issue_date=invoice.issue_date, due_date=invoice.due_date,
        period_start=invoice.period_start, period_end=invoice.period_end,
        seller=Party(
            name=seller.get("name") or "", address=_address_lines(seller.get("address")),
            vat_number=seller.get("vat_number"), org_number=seller.get("org_number"),
            email=seller.get("email"),
        ),
        seller_bankgiro=seller.get("bankgiro"),
        buyer=Party(
            name=invoice.buyer_name, address=_address_lines(invoice.buyer_address),
            vat_number=invoice.buyer_vat_number, email=invoice.buyer_email,
        ),
        lines=lines,
        vat=tuple(
            VatAmount(rate=None if item.get("rate") is None else Decimal(str(item["rate"])),
                      base_ore=int(item["base_ore"]), vat_ore=int(item["vat_ore"]))
            for item in json.loads(invoice.vat_breakdown)
        ),
        net_ore=invoice.net_ore, vat_ore=invoice.vat_ore, total_ore=invoice.total_ore,
        ocr=invoice.ocr, payment_method=PaymentMethod(invoice.payment_method),
        credits_number=credits_number, reason=invoice.reason, sessions=history,
    )


def _address_lines(text: str | None) -> tuple[str, ...]:
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def _document_line(row: InvoiceLine) -> DocumentLine:
    return DocumentLine(
        position=row.position, dimension=row.dimension, description=row.description,
        quantity=Decimal(row.quantity), unit=row.unit, unit_price=Decimal(row.unit_price),
        net_ore=row.net_ore, vat_rate=None if row.vat_rate is None else Decimal(row.vat_rate),
        session_id=row.session_id,
    )


def _costs_by_session(lines: Iterable[DocumentLine]) -> dict[int, list[CostItem]]:
    out: dict[int, list[CostItem]] = defaultdict(list)
    for line in lines:
        if line.session_id is not None:
            out[line.session_id].append(CostItem(
                dimension=line.dimension, quantity=line.quantity, unit=line.unit,
                unit_price=line.unit_price, amount_ore=line.net_ore, vat_rate=line.vat_rate,
            ))
    return out


def _negated(item: CostItem) -> CostItem:
    return replace(item, quantity=-item.quantity, amount_ore=-item.amount_ore)


def _history(
    session: Session, *, invoice_id: int | None, session_ids: set[int],
    priced: dict[int, list[CostItem]],
) -> tuple[SessionEntry, ...]:
    """The sessions linked to ``invoice_id`` or named in ``session_ids``, oldest first.

    A session in ``priced`` shows those costs (what a document's lines charged or credited
    for it); any other shows its stored cost lines and totals, which an invoice's lines sum.
    """
    condition = col(ChargingSession.id).in_(sorted(session_ids))
    if invoice_id is not None:
        condition = condition | (col(ChargingSession.invoice_id) == invoice_id)
    rows = session.exec(
        select(ChargingSession, Site.name)
        .join(Station, col(Station.id) == col(ChargingSession.station_id), isouter=True)
        .join(Site, col(Site.id) == col(Station.site_id), isouter=True)
        .where(condition)
        .order_by(col(ChargingSession.start_at), col(ChargingSession.id))
    ).all()
    stored: dict[int, list[CostItem]] = defaultdict(list)
    unpriced = [row.id for row, _ in rows if row.id not in priced]
    if unpriced:
        for line in session.exec(
            select(SessionCostLine).where(col(SessionCostLine.session_id).in_(unpriced))
            .order_by(col(SessionCostLine.id))
        ):
            stored[line.session_id].append(CostItem(
                dimension=line.dimension, quantity=Decimal(line.quantity), unit=line.unit,
                unit_price=Decimal(line.unit_price), amount_ore=line.net_ore,
                vat_rate=None if line.vat_rate is None else Decimal(line.vat_rate),
            ))
    entries = []
    for row, site_name in rows:
        cdr = json.loads(row.cdr, parse_float=Decimal) if row.cdr else {}
        session_id = row.id or 0
        if session_id in priced:
            costs = priced[session_id]
            excl = sum(item.amount_ore for item in costs)
            incl = excl + _vat_ore(costs)
        else:
            costs = stored[session_id]
            total = cdr.get("total_cost") or {}
            excl = (row.total_excl_vat_ore if row.total_excl_vat_ore is not None
                    else _ore(total.get("excl_vat", 0)))
            incl = (row.total_incl_vat_ore if row.total_incl_vat_ore is not None
                    else _ore(total.get("incl_vat", 0)))
        total_hours = _decimal(cdr.get("total_time", 0))
        parking_hours = _decimal(cdr.get("total_parking_time", 0))
        energy = (Decimal(row.energy_wh) / 1000 if row.energy_wh is not None
                  else _decimal(cdr.get("total_energy", 0)))
        entries.append(SessionEntry(
            session_id=session_id, station_id=row.station_id, site_name=site_name,
            connector_id=row.connector_id, start_at=row.start_at, end_at=row.end_at,
            time_zone=row.time_zone, energy_kwh=energy,
            charging_hours=total_hours - parking_hours, parking_hours=parking_hours,
            excl_vat_ore=excl, incl_vat_ore=incl, costs=tuple(costs),
        ))
    return tuple(entries)


def _vat_ore(costs: list[CostItem]) -> int:
    """VAT per rate on the summed amounts, as a session's receipt computed it."""
    net_by_rate: dict[Decimal, int] = defaultdict(int)
    for item in costs:
        if item.vat_rate is not None:
            net_by_rate[item.vat_rate] += item.amount_ore
    return sum(
        int(round_half_up(Fraction(net) * Fraction(rate) / 100, 0))
        for rate, net in net_by_rate.items()
    )


def _decimal(value: object) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _ore(amount: object) -> int:
    return int(round_half_up(Fraction(_decimal(amount)) * 100, 0))


# --------------------------------------------------------------------------- formatting


@dataclass(frozen=True, slots=True)
class Formatter:
    """Numbers, money and dates for one document's language, all through babel."""

    language: Language
    currency: str

    @property
    def locale(self) -> str:
        return _LOCALES[self.language.value][0]

    def money(self, ore: int) -> str:
        return format_currency(cents_to_decimal(ore), self.currency, locale=self.locale)

    def price(self, amount: Decimal) -> str:
        """A unit price: at least the currency's two decimals, more where the tariff has them
        (0,0533 kr/min must not print as 0,05 kr)."""
        return format_currency(amount.normalize(), self.currency, locale=self.locale,
                               decimal_quantization=False)

    def quantity(self, value: Decimal) -> str:
        return format_decimal(value.normalize(), locale=self.locale, decimal_quantization=False)

    def energy(self, kwh: Decimal) -> str:
        return format_decimal(kwh, locale=self.locale)  # at most 3 decimals: Wh

    def rate(self, percent: Decimal | None) -> str:
        if percent is None:
            return LABELS["exempt"][self.language.value]
        return format_percent(percent / 100, locale=self.locale, decimal_quantization=False)

    def date(self, value: date | None) -> str:
        if value is None:
            return ""
        return format_date(value, _LOCALES[self.language.value][1], locale=self.locale)

    def period(self, start: date | None, last_day: date | None) -> str:
        if start is None or last_day is None:
            return ""
        return f"{self.date(start)} {_EN_DASH} {self.date(last_day)}"

    def local_start(self, entry: SessionEntry) -> str:
        return format_datetime(entry.start_at, "short", tzinfo=ZoneInfo(entry.time_zone),
                               locale=self.locale)

    def local_end(self, entry: SessionEntry) -> str:
        """The end time alone when the session ends on its start day (local time)."""
        if entry.end_at is None:
            return ""
        zone = ZoneInfo(entry.time_zone)
        if entry.end_at.astimezone(zone).date() == entry.start_at.astimezone(zone).date():
            return format_time(entry.end_at, "short", tzinfo=zone, locale=self.locale)
        return format_datetime(entry.end_at, "short", tzinfo=zone, locale=self.locale)

    def duration(self, hours: Decimal) -> str:
        """Hours as h:mm, to the nearest minute."""
        minutes = int(round_half_up(Fraction(hours) * 60, 0))
        sign = "-" if minutes < 0 else ""
        return f"{sign}{abs(minutes) // 60}:{abs(minutes) % 60:02d}"

    def dimension(self, dimension: str) -> str:
        texts = LABELS.get(f"dim_{dimension}")
        return texts[self.language.value] if texts else dimension

    def unit(self, unit: str) -> str:
        texts = LABELS.get(f"unit_{unit}")
        return texts[self.language.value] if texts else unit

    def cost_item(self, item: CostItem) -> str:
        """e.g. ``Energi 20 kWh x 3,20 kr = 64,00 kr`` (with a multiplication sign)."""
        return (f"{self.dimension(item.dimension)} {self.quantity(item.quantity)} "
                f"{self.unit(item.unit)} {_TIMES} {self.price(item.unit_price)} = "
                f"{self.money(item.amount_ore)}")

    def station(self, entry: SessionEntry) -> str:
        return f"{entry.site_name} · {entry.station_id}" if entry.site_name else entry.station_id


def payment_note(doc: InvoiceDocument) -> str:
    """How the buyer pays, or that a credit note asks nothing of them."""
    t = labels(doc.language)
    if doc.is_credit_note:
        return t["pay_credit"]
    key = f"pay_{doc.payment_method.value}"
    return t[key].format(bankgiro=doc.seller_bankgiro or "", ocr=doc.ocr)


def header_facts(doc: InvoiceDocument, f: Formatter) -> list[tuple[str, str]]:
    """Number, dates and period beside the title. A credit note has nothing falling due."""
    t = labels(doc.language)
    facts = [(t["number"], doc.number), (t["issue_date"], f.date(doc.issue_date))]
    if not doc.is_credit_note:
        facts.append((t["due_date"], f.date(doc.due_date)))
    if doc.period_start is not None:
        facts.append((t["period"], f.period(doc.period_start, doc.period_last_day)))
    return facts


def payment_fields(doc: InvoiceDocument, f: Formatter) -> list[tuple[str, str]]:
    """The payment box: what to pay, where, with which reference, by when."""
    t = labels(doc.language)
    if doc.is_credit_note:
        return [(t["ocr"], doc.ocr), (t["amount_credited"], f.money(doc.total_ore))]
    return [(t["ocr"], doc.ocr), (t["bankgiro"], doc.seller_bankgiro or ""),
            (t["due_date"], f.date(doc.due_date)), (t["amount_due"], f.money(doc.total_ore))]


def document_title(doc: InvoiceDocument) -> str:
    return labels(doc.language)["credit_note" if doc.is_credit_note else "invoice"]


def attachment_name(doc: InvoiceDocument) -> str:
    """``faktura-F0000123.pdf`` / ``invoice-F0000123.pdf`` (credit notes likewise)."""
    key = "attachment_credit_note" if doc.is_credit_note else "attachment_invoice"
    return labels(doc.language)[key].format(number=doc.number)


# --------------------------------------------------------------------------- HTML


@cache
def templates() -> Environment:
    """The package's Jinja2 templates; HTML is autoescaped, plain-text mail is not."""
    return Environment(
        loader=PackageLoader("billing_api", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(doc: InvoiceDocument) -> str:
    """The document as one self-contained HTML page (inline CSS, no external resources)."""
    f = Formatter(doc.language, doc.currency)
    return templates().get_template("invoice.html").render(
        doc=doc, t=labels(doc.language), f=f, title=document_title(doc),
        facts=header_facts(doc, f), payment=payment_fields(doc, f),
        payment_note=payment_note(doc),
    )


# --------------------------------------------------------------------------- PDF

# DejaVu Sans covers everything babel prints (U+00A0, U+202F, U+2212, €), unlike the PDF core
# fonts. Debian and Ubuntu ship it in the fonts-dejavu-core package.
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
# Without DejaVu, the core fonts (windows-1252) get these stand-ins.
_CORE_FONT_MAP = str.maketrans({"\u202f": "\u00a0", "\u2212": "-", "\u2009": " "})

_PAGE_WIDTH = 180.0  # A4 less 15 mm margins


class _InvoicePdf(FPDF):
    def __init__(self, doc: InvoiceDocument) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.doc = doc
        self.t = labels(doc.language)
        self.is_unicode = all((FONT_DIR / name).is_file() for name in _FONT_FILES.values())
        if self.is_unicode:
            for style, name in _FONT_FILES.items():
                self.add_font("DejaVu", style, FONT_DIR / name)
            self.face = "DejaVu"
        else:
            self.core_fonts_encoding = "windows-1252"
            self.face = "helvetica"
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, margin=18)

    def text_of(self, text: str) -> str:
        if self.is_unicode:
            return text
        mapped = text.translate(_CORE_FONT_MAP)
        return mapped.encode("windows-1252", "replace").decode("windows-1252")

    def font(self, size: float, bold: bool = False) -> None:
        self.set_font(self.face, "B" if bold else "", size)

    def write_line(self, text: str, *, size: float = 9, bold: bool = False, height: float = 4.5,
             align: str = "L", width: float = 0) -> None:
        self.font(size, bold)
        self.multi_cell(width, height, self.text_of(text), align=align,
                        new_x="LMARGIN" if width == 0 else "LEFT", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-13)
        self.font(7)
        seller = self.doc.seller
        parts = [seller.name]
        if seller.org_number:
            parts.append(f"{self.t['org_number']} {seller.org_number}")
        if seller.vat_number:
            parts.append(f"{self.t['vat_number']} {seller.vat_number}")
        self.cell(130, 4, self.text_of(" · ".join(parts)))
        self.cell(0, 4, self.text_of(self.t["page"].format(page=self.page_no(), pages="{nb}")),
                  align="R")


def render_pdf(doc: InvoiceDocument) -> bytes:
    """The document as an A4 PDF: parties, lines, VAT summary, payment box, charging history."""
    pdf = _InvoicePdf(doc)
    f = Formatter(doc.language, doc.currency)
    title = document_title(doc)
    pdf.set_title(f"{title} {doc.number}")
    pdf.set_author(doc.seller.name)
    pdf.set_lang(doc.language.value)
    pdf.add_page()

    _pdf_header(pdf, doc, f, title)
    _pdf_lines(pdf, doc, f)
    _pdf_totals(pdf, doc, f)
    _pdf_payment(pdf, doc, f)
    _pdf_history(pdf, doc, f)
    return bytes(pdf.output())


def _pdf_header(pdf: _InvoicePdf, doc: InvoiceDocument, f: Formatter, title: str) -> None:
    t = pdf.t
    top = pdf.get_y()
    pdf.write_line(doc.seller.name, size=13, bold=True, height=6, width=95)
    for text in doc.seller.address:
        pdf.write_line(text, width=95)
    if doc.seller.org_number:
        pdf.write_line(f"{t['org_number']} {doc.seller.org_number}", width=95)
    if doc.seller.vat_number:
        pdf.write_line(f"{t['vat_number']} {doc.seller.vat_number}", width=95)
    if doc.seller.email:
        pdf.write_line(doc.seller.email, width=95)
    left_bottom = pdf.get_y()

    pdf.set_xy(115, top)
    pdf.write_line(title.upper(), size=16, bold=True, height=7, width=80)
    for label, value in header_facts(doc, f):
        pdf.set_x(115)
        pdf.font(9)
        pdf.cell(30, 4.5, pdf.text_of(label))
        pdf.font(9, bold=True)
        pdf.cell(50, 4.5, pdf.text_of(value), new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(max(left_bottom, pdf.get_y()) + 6)

    pdf.write_line(t["buyer"], size=8, bold=True)
    pdf.write_line(doc.buyer.name, size=10, bold=True, height=5)
    for text in doc.buyer.address:
        pdf.write_line(text)
    if doc.buyer.vat_number:
        pdf.write_line(f"{t['vat_number']} {doc.buyer.vat_number}")
    if doc.buyer.email:
        pdf.write_line(doc.buyer.email)
    if doc.is_credit_note and doc.credits_number:
        pdf.ln(3)
        pdf.write_line(t["credits"].format(number=doc.credits_number), size=10, bold=True, height=5)
    if doc.reason:
        pdf.write_line(f"{t['reason']}: {doc.reason}")
    pdf.ln(5)


def _pdf_table(pdf: _InvoicePdf, widths: tuple[float, ...], aligns: tuple[str, ...],
               size: float = 8) -> Any:
    pdf.font(size)
    return pdf.table(
        col_widths=widths, width=sum(widths), align="LEFT", text_align=aligns,
        borders_layout="SINGLE_TOP_LINE", line_height=4.6, padding=(0.6, 1),
        headings_style=FontFace(emphasis="BOLD", fill_color=(235, 239, 244)),
    )


def _pdf_lines(pdf: _InvoicePdf, doc: InvoiceDocument, f: Formatter) -> None:
    t = pdf.t
    pdf.write_line(t["lines"], size=11, bold=True, height=6)
    aligns = ("LEFT", "RIGHT", "LEFT", "RIGHT", "RIGHT", "RIGHT")
    with _pdf_table(pdf, (54, 18, 14, 34, 20, 40), aligns) as table:
        table.row([pdf.text_of(x) for x in (t["description"], t["quantity"], t["unit"],
                                              t["unit_price"], t["vat_rate"], t["amount"])])
        for line in doc.lines:
            table.row([pdf.text_of(x) for x in (
                line.description or f.dimension(line.dimension), f.quantity(line.quantity),
                f.unit(line.unit), f.price(line.unit_price), f.rate(line.vat_rate),
                f.money(line.net_ore),
            )])
    pdf.ln(3)


def _pdf_totals(pdf: _InvoicePdf, doc: InvoiceDocument, f: Formatter) -> None:
    t = pdf.t
    pdf.set_x(15 + _PAGE_WIDTH - 100)
    with _pdf_table(pdf, (30, 35, 35), ("LEFT", "RIGHT", "RIGHT")) as table:
        table.row([pdf.text_of(x) for x in (t["vat_rate"], t["taxable"], t["vat"])])
        for item in doc.vat:
            table.row([pdf.text_of(x) for x in (
                f.rate(item.rate), f.money(item.base_ore), f.money(item.vat_ore))])
    pdf.ln(1)
    for label, ore, bold in ((t["net_total"], doc.net_ore, False),
                             (t["vat_total"], doc.vat_ore, False),
                             (t["total"], doc.total_ore, True)):
        pdf.set_x(15 + _PAGE_WIDTH - 100)
        pdf.font(10 if bold else 9, bold)
        pdf.cell(65, 5.5, pdf.text_of(label))
        pdf.cell(35, 5.5, pdf.text_of(f.money(ore)), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(5)


def _pdf_payment(pdf: _InvoicePdf, doc: InvoiceDocument, f: Formatter) -> None:
    if pdf.will_page_break(26):
        pdf.add_page()
    top = pdf.get_y()
    pdf.set_draw_color(60, 60, 60)
    pdf.set_line_width(0.4)
    pdf.rect(15, top, _PAGE_WIDTH, 22)
    fields = payment_fields(doc, f)
    width = _PAGE_WIDTH / 4
    for index, (label, value) in enumerate(fields):
        pdf.set_xy(17 + index * width, top + 2)
        pdf.font(7)
        pdf.cell(width - 4, 4, pdf.text_of(label))
        pdf.set_xy(17 + index * width, top + 6.5)
        pdf.font(11, bold=True)
        pdf.cell(width - 4, 6, pdf.text_of(value))
    pdf.set_xy(17, top + 14)
    pdf.font(8)
    pdf.multi_cell(_PAGE_WIDTH - 4, 4, pdf.text_of(payment_note(doc)), new_x="LMARGIN",
                   new_y="NEXT")
    pdf.set_y(top + 28)


def _pdf_history(pdf: _InvoicePdf, doc: InvoiceDocument, f: Formatter) -> None:
    t = pdf.t
    pdf.write_line(t["history"], size=11, bold=True, height=6)
    if not doc.sessions:
        pdf.write_line(t["no_sessions"])
        return
    widths = (25, 13, 40, 10, 13, 16, 16, 23.5, 23.5)
    aligns = ("LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT")
    with _pdf_table(pdf, widths, aligns, size=7) as table:
        table.row([pdf.text_of(x) for x in (
            t["start"], t["end"], t["station"], t["connector"], t["energy"],
            t["charging_time"], t["parking_time"], t["excl_vat"], t["incl_vat"])])
        detail = FontFace(size_pt=6.5, color=(80, 80, 80))
        for entry in doc.sessions:
            table.row([pdf.text_of(x) for x in (
                f.local_start(entry), f.local_end(entry), f.station(entry),
                str(entry.connector_id), f.energy(entry.energy_kwh),
                f.duration(entry.charging_hours), f.duration(entry.parking_hours),
                f.money(entry.excl_vat_ore), f.money(entry.incl_vat_ore))])
            if entry.costs:
                row = table.row()
                row.cell(pdf.text_of("; ".join(f.cost_item(item) for item in entry.costs)),
                         colspan=len(widths), style=detail, align="LEFT")
