"""Bankgirot Autogiro files in the new layout: the mandate and payment files we send, the
mandate advice and payment specification Bankgirot sends back. Pure text in and out; no
database.

Layouts from Bankgirot's "Bg Autogiro Technical Manual" (bankgirot.se, "directdebit_autogiro_
technicalmanual_en.pdf"; Swedish "Teknisk manual Autogiro"), chapter 7 "Record and file
descriptions - files to Bankgirot" and chapter 8 "... files from Bankgirot with new file
layout": 8.2 payment specification (TK01, TK15, TK82, TK16, TK32, TK17, TK77, TK09) and
8.3 mandate advice (TK01, TK73, TK09), with the codes of 8.2.3 and 8.3.3. Cross-checked
against Bankgirot's published example files. Payment status code 4 is not in the 2016
manual; integrators document it (no Autogiro connection while an account change or mandate
registration is under way), so it is read as a failure rather than refused.

Every record is 80 characters of ISO-8859-1. Positions below are the manual's: 1-based,
inclusive. Readers are strict: a record of another length, a field that is not what its
position must hold, a code the manual does not define or totals that disagree with the
records raise :class:`BillingError` naming the line, so a damaged file is never half-read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from stdnum import luhn

from billing_api.service import BillingError

RECORD_LENGTH = 80
ENCODING = "iso-8859-1"
LINE_END = "\r\n"

# ---------------------------------------------------------------- codes


class DebitOutcome(StrEnum):
    paid = "paid"
    failed = "failed"
    # Stopped at the balance check; Bankgirot tries again the next banking day (renewed
    # funds), so this is not the debit's last word.
    retrying = "retrying"


# TK82 / TK32 position 80 (manual 8.2.3).
PAYMENT_STATUS: dict[str, tuple[DebitOutcome, str]] = {
    "0": (DebitOutcome.paid, "approved"),
    "1": (DebitOutcome.failed, "insufficient funds"),
    "2": (DebitOutcome.failed, "no Autogiro connection: account closed or mandate cancelled"),
    "4": (DebitOutcome.failed, "no Autogiro connection: account change or mandate registration "
                               "under way"),
    "9": (DebitOutcome.retrying, "insufficient funds, renewed balance check next banking day"),
}

# TK77 positions 78-79: why the payer's bank paid a debit back.
REFUND_CODES: dict[str, str] = {
    "01": "refunded: no mandate",
    "02": "refunded: mandate withdrawn",
    "03": "refunded: unreasonable amount",
}


class AdviceOutcome(StrEnum):
    """What a mandate advice means for our mandate."""

    active = "active"
    rejected = "rejected"
    cancelled = "cancelled"
    none = "none"  # information only, or an answer to a request we never send


# TK73 positions 62-63 (manual 8.3.3), with the comment codes each may carry.
ADVICE_INFO: dict[str, tuple[str, frozenset[str] | None]] = {
    "03": ("cancellation initiated by the payee",
           frozenset({"04", "09", "21", "29", "30", "33"})),
    "04": ("new mandate initiated by the payee",
           frozenset({"09", "10", "20", "21", "23", "29", "30", "32"})),
    "05": ("payer number change initiated by the payee",
           frozenset({"04", "10", "21", "29", "30", "32", "33"})),
    # The manual lists no comment for 10; whatever Bankgirot puts there is only a detail.
    "10": ("cancelled: the payee's bankgiro number is closed", None),
    "42": ("answer to the account inquiry at the payer's bank", frozenset({"03", "05", "32"})),
    "43": ("removed: the account inquiry was never answered", frozenset({"07"})),
    "44": ("cancelled: the payer's bankgiro number is closed", frozenset({"98"})),
    "46": ("cancelled by the payer or the payer's bank", frozenset({"02"})),
}

# TK73 positions 64-65.
ADVICE_COMMENT: dict[str, str] = {
    "00": "",
    "02": "cancelled on the initiative of the payer or the payer's bank",
    "03": "account type not approved for Autogiro",
    "04": "mandate not found in Bankgirot's mandate register",
    "05": "incorrect bank account or personal details",
    "07": "cancelled because the account inquiry was not answered",
    "09": "payer's bankgiro number not found at Bankgirot",
    "10": "mandate already registered or under inquiry",
    "20": "incorrect personal or organisation number",
    "21": "incorrect payer number",
    "23": "incorrect bank account number",
    "29": "incorrect payee bankgiro number",
    "30": "payee bankgiro number deregistered",
    "32": "new mandate",
    "33": "cancelled",
    "98": "cancelled because the payer's bankgiro number was closed",
}


def _advice_outcome(info: str, comment: str) -> AdviceOutcome:
    if info in ("04", "42"):
        return AdviceOutcome.active if comment == "32" else AdviceOutcome.rejected
    if info == "43":
        # The inquiry was for a new mandate: it never became active.
        return AdviceOutcome.rejected
    if info == "03":
        # Anything but 33 means our cancellation request itself was refused.
        return AdviceOutcome.cancelled if comment == "33" else AdviceOutcome.none
    if info in ("10", "44", "46"):
        return AdviceOutcome.cancelled
    return AdviceOutcome.none


# ---------------------------------------------------------------- numbers


def bankgiro_digits(bankgiro: str) -> str:
    """A bankgiro number (7 or 8 digits, Luhn check digit last) as digits only."""
    digits = bankgiro.replace("-", "").replace(" ", "")
    if not digits.isdigit() or len(digits) not in (7, 8) or not luhn.is_valid(digits):
        raise BillingError(f"bankgiro number {bankgiro!r} is not valid")
    return digits


def _customer_number(number: str) -> str:
    if len(number) != 6 or not number.isdigit():
        raise BillingError(f"Autogiro customer number {number!r} must be six digits")
    return number


def _payer_number(number: str) -> str:
    if not number.isdigit() or not 1 <= len(number) <= 16 or not number.strip("0"):
        raise BillingError(f"payer number {number!r} must be 1 to 16 digits, not all zeros")
    return number.rjust(16, "0")


def _text(value: str, width: int, what: str) -> str:
    if len(value) > width:
        raise BillingError(f"{what} {value!r} is longer than {width} characters")
    try:
        value.encode(ENCODING)
    except UnicodeEncodeError:
        raise BillingError(f"{what} {value!r} has characters ISO-8859-1 cannot carry") from None
    if not value.isprintable():
        raise BillingError(f"{what} {value!r} has control characters")
    return value.ljust(width)


def _record(*parts: str) -> str:
    text = "".join(parts)
    if len(text) != RECORD_LENGTH:  # a layout bug here, never bad input
        raise AssertionError(f"record of {len(text)} characters: {text!r}")
    return text


# ---------------------------------------------------------------- writers


@dataclass(frozen=True)
class NewMandate:
    """A TK04: a payer's consent, for Bankgirot to register with the payer's bank."""

    payer_number: str
    account: str  # the 16-digit form, see bankaccount.BankAccount.bankgirot
    payer_id: str  # 12 digits: personnummer with century, or 00 + organisation number


@dataclass(frozen=True)
class Debit:
    """A TK82: collect ``amount_ore`` from a payer on ``payment_date``, once."""

    payment_date: date
    payer_number: str
    amount_ore: int
    reference: str  # up to 16 characters, shown to the payer


def _opening(written_on: date, customer_number: str, bankgiro: str) -> str:
    # TK01: 3-10 date written, 11-18 AUTOGIRO, 19-62 blank, 63-68 customer number,
    # 69-78 payee bankgiro, 79-80 blank.
    return _record("01", f"{written_on:%Y%m%d}", "AUTOGIRO", " " * 44,
                   _customer_number(customer_number), bankgiro_digits(bankgiro).rjust(10, "0"),
                   "  ")


def _file(records: list[str]) -> str:
    return LINE_END.join(records) + LINE_END


def write_mandate_file(
    *,
    written_on: date,
    customer_number: str,
    bankgiro: str,
    new: Sequence[NewMandate] = (),
    cancelled: Sequence[str] = (),
) -> str:
    """A mandate file: TK01, a TK04 per new mandate and a TK03 per payer number whose
    mandate we cancel."""
    if not new and not cancelled:
        raise BillingError("a mandate file needs at least one mandate")
    bg = bankgiro_digits(bankgiro).rjust(10, "0")
    records = [_opening(written_on, customer_number, bankgiro)]
    for payer in cancelled:
        # TK03: 3-12 payee bankgiro, 13-28 payer number, 29-80 blank.
        records.append(_record("03", bg, _payer_number(payer), " " * 52))
    for mandate in new:
        account = mandate.account
        if len(account) != 16 or not account.isdigit():
            raise BillingError(f"account {account!r} must be Bankgirot's 16-digit form")
        if len(mandate.payer_id) != 12 or not mandate.payer_id.isdigit():
            raise BillingError(f"personal number {mandate.payer_id!r} must have 12 digits")
        # TK04: 3-12 payee bankgiro, 13-28 payer number, 29-44 account, 45-56 personal or
        # organisation number, 57-76 blank, 77-78 blank (AV only rejects an e-mandate),
        # 79-80 blank.
        records.append(_record("04", bg, _payer_number(mandate.payer_number), account,
                               mandate.payer_id, " " * 24))
    return _file(records)


def write_payment_file(
    *, written_on: date, customer_number: str, bankgiro: str, debits: Sequence[Debit]
) -> str:
    """A payment initiation file: TK01 and a TK82 per debit."""
    if not debits:
        raise BillingError("a payment file needs at least one debit")
    bg = bankgiro_digits(bankgiro).rjust(10, "0")
    records = [_opening(written_on, customer_number, bankgiro)]
    for debit in debits:
        if not 0 < debit.amount_ore < 10**12:
            raise BillingError(f"debit amount {debit.amount_ore} öre must be positive and "
                               "fit twelve digits")
        # TK82: 3-10 payment date, 11 period code (0: once), 12-14 repetitions (blank),
        # 15 blank, 16-31 payer number, 32-43 amount in öre, 44-53 payee bankgiro,
        # 54-69 reference, 70-80 blank.
        records.append(_record("82", f"{debit.payment_date:%Y%m%d}", "0", "   ", " ",
                               _payer_number(debit.payer_number), f"{debit.amount_ore:012d}",
                               bg, _text(debit.reference, 16, "reference"), " " * 11))
    return _file(records)


# ---------------------------------------------------------------- reading


class _Line:
    """One record with the line number it came from, read by the manual's positions."""

    def __init__(self, number: int, text: str) -> None:
        self.number = number
        self.text = text
        self.code = text[:2]

    def error(self, message: str) -> BillingError:
        return BillingError(f"line {self.number} (TK{self.code}): {message}")

    def field(self, first: int, last: int) -> str:
        return self.text[first - 1:last]

    def digits(self, first: int, last: int, what: str) -> str:
        value = self.field(first, last)
        if not value.isdigit():
            raise self.error(f"{what} at positions {first}-{last} must be digits, "
                             f"found {value!r}")
        return value

    def number_at(self, first: int, last: int, what: str) -> int:
        return int(self.digits(first, last, what))

    def date_at(self, first: int, what: str) -> date:
        value = self.digits(first, first + 7, what)
        try:
            return datetime.strptime(value, "%Y%m%d").date()
        except ValueError:
            raise self.error(f"{what} {value!r} is not a date") from None

    def expect(self, first: int, last: int, expected: str, what: str) -> None:
        if self.field(first, last) != expected:
            raise self.error(f"{what} at positions {first}-{last} must be {expected.strip()!r}, "
                             f"found {self.field(first, last).strip()!r}")


def _records(content: str | bytes) -> list[_Line]:
    text = content.decode(ENCODING) if isinstance(content, bytes) else content
    rows = text.split("\n")
    while rows and rows[-1].strip("\r") == "":
        rows.pop()
    if not rows:
        raise BillingError("the file is empty")
    lines = []
    for number, row in enumerate(rows, start=1):
        row = row.removesuffix("\r")
        if len(row) != RECORD_LENGTH:
            raise BillingError(f"line {number}: a record has {RECORD_LENGTH} characters, "
                               f"this one has {len(row)}")
        lines.append(_Line(number, row))
    return lines


def _payer(line: _Line, first: int) -> str:
    return line.digits(first, first + 15, "payer number").lstrip("0")


@dataclass(frozen=True)
class _Opening:
    customer_number: str
    bankgiro: str


def _read_opening(line: _Line, layout: str) -> _Opening:
    if line.code != "01":
        raise line.error("the file must start with an opening record TK01")
    line.expect(3, 24, "AUTOGIRO".ljust(22), "layout name")
    line.expect(45, 64, layout.ljust(20), "content")
    return _Opening(customer_number=line.digits(65, 70, "customer number"),
                    bankgiro=line.digits(71, 80, "payee bankgiro").lstrip("0"))


def _closing(lines: list[_Line]) -> _Line:
    last = lines[-1]
    if last.code != "09" or len(lines) < 2:
        raise last.error("the file must end with a closing record TK09")
    last.expect(11, 14, "9900", "clearing number")
    return last


# ---------------------------------------------------------------- mandate advice


@dataclass(frozen=True)
class MandateAdvice:
    """A TK73: what happened to one mandate."""

    line: int
    payer_number: str
    account: str  # 16 digits, blank for a bankgiro mandate
    payer_id: str
    info_code: str
    comment_code: str
    changed_on: date
    outcome: AdviceOutcome

    @property
    def text(self) -> str:
        comment = ADVICE_COMMENT[self.comment_code]
        info = ADVICE_INFO[self.info_code][0]
        return f"{info}: {comment}" if comment else info


@dataclass(frozen=True)
class MandateAdviceFile:
    written_on: date
    customer_number: str
    bankgiro: str
    advices: list[MandateAdvice]


def read_mandate_advice(content: str | bytes) -> MandateAdviceFile:
    """Read a mandate advice file (medgivandeavisering, "AG-MEDAVI")."""
    lines = _records(content)
    opening = _read_opening(lines[0], "AG-MEDAVI")
    written_on = lines[0].date_at(25, "date written")
    closing = _closing(lines)
    advices = []
    for line in lines[1:-1]:
        if line.code != "73":
            raise line.error("a mandate advice holds only TK73 records between TK01 and TK09")
        # TK73: 3-12 payee bankgiro, 13-28 payer number, 29-44 account, 45-56 personal
        # number, 57-61 blank, 62-63 information code, 64-65 comment code, 66-73 date.
        if line.digits(3, 12, "payee bankgiro").lstrip("0") != opening.bankgiro:
            raise line.error("payee bankgiro differs from the opening record's")
        info = line.digits(62, 63, "information code")
        comment = line.digits(64, 65, "comment code")
        if info not in ADVICE_INFO:
            raise line.error(f"unknown information code {info}")
        allowed = ADVICE_INFO[info][1]
        if comment not in ADVICE_COMMENT or (allowed is not None and comment not in allowed):
            raise line.error(f"comment code {comment} is not defined for information code {info}")
        advices.append(MandateAdvice(
            line=line.number, payer_number=_payer(line, 13), account=line.field(29, 44).strip(),
            payer_id=line.field(45, 56).strip(), info_code=info, comment_code=comment,
            changed_on=line.date_at(66, "date"), outcome=_advice_outcome(info, comment),
        ))
    # TK09: 3-10 date written, 11-14 9900, 15-21 number of TK73 records.
    count = closing.number_at(15, 21, "number of TK73 records")
    if count != len(advices):
        raise closing.error(f"the closing record counts {count} TK73 records, "
                            f"the file has {len(advices)}")
    return MandateAdviceFile(written_on=written_on, customer_number=opening.customer_number,
                             bankgiro=opening.bankgiro, advices=advices)


# ---------------------------------------------------------------- payment specification


@dataclass(frozen=True)
class DebitResult:
    """A TK82 (debit) or TK32 (credit to the payer) of a payment specification."""

    line: int
    code: str  # 82 or 32
    payment_date: date
    payer_number: str
    amount_ore: int
    reference: str
    status_code: str
    outcome: DebitOutcome
    text: str


@dataclass(frozen=True)
class RefundResult:
    """A TK77: a debit the payer's bank paid back to the payer."""

    line: int
    payment_date: date
    payer_number: str
    amount_ore: int
    reference: str
    refunded_on: date
    code: str
    text: str


@dataclass(frozen=True)
class PaymentSpecification:
    written_at: datetime
    customer_number: str
    bankgiro: str
    debits: list[DebitResult] = field(default_factory=list)
    credits: list[DebitResult] = field(default_factory=list)
    refunds: list[RefundResult] = field(default_factory=list)


# Section opening record -> the payment records it may hold.
_SECTIONS = {"15": "82", "16": "32", "17": "77"}


@dataclass
class _Section:
    opening: _Line
    count: int
    amount_ore: int
    seen_count: int = 0
    seen_ore: int = 0

    def check(self) -> None:
        if (self.seen_count, self.seen_ore) != (self.count, self.amount_ore):
            raise self.opening.error(
                f"the section totals {self.count} payments of {self.amount_ore} öre, its "
                f"records {self.seen_count} of {self.seen_ore} öre")


def _debit(line: _Line, opening: _Opening) -> DebitResult:
    # TK82/TK32: 3-10 payment date, 11 period code, 12-14 repetitions, 15 blank,
    # 16-31 payer number, 32-43 amount, 44-53 payee bankgiro, 54-69 reference,
    # 70-79 blank, 80 status code.
    if line.digits(44, 53, "payee bankgiro").lstrip("0") != opening.bankgiro:
        raise line.error("payee bankgiro differs from the opening record's")
    status = line.field(80, 80)
    if status not in PAYMENT_STATUS:
        raise line.error(f"unknown payment status code {status!r}")
    outcome, text = PAYMENT_STATUS[status]
    return DebitResult(
        line=line.number, code=line.code, payment_date=line.date_at(3, "payment date"),
        payer_number=_payer(line, 16), amount_ore=line.number_at(32, 43, "amount"),
        reference=line.field(54, 69).rstrip(), status_code=status, outcome=outcome, text=text,
    )


def _refund(line: _Line, opening: _Opening) -> RefundResult:
    # TK77: as TK82 to position 69, then 70-77 refund date, 78-79 refund code, 80 blank.
    if line.digits(44, 53, "payee bankgiro").lstrip("0") != opening.bankgiro:
        raise line.error("payee bankgiro differs from the opening record's")
    code = line.field(78, 79)
    if code not in REFUND_CODES:
        raise line.error(f"unknown refund code {code!r}")
    return RefundResult(
        line=line.number, payment_date=line.date_at(3, "payment date"),
        payer_number=_payer(line, 16), amount_ore=line.number_at(32, 43, "amount"),
        reference=line.field(54, 69).rstrip(), refunded_on=line.date_at(70, "refund date"),
        code=code, text=REFUND_CODES[code],
    )


def read_payment_specification(content: str | bytes) -> PaymentSpecification:
    """Read a payment specification ("BET. SPEC & STOPP TK"): debits paid or stopped at the
    balance check, credits, refunds. Section and file totals must agree with the records:
    a section record (TK15/16/17) gives the number and sum of its approved payments, the
    closing record the number of sections and of approved payment records of each kind."""
    lines = _records(content)
    opening = _read_opening(lines[0], "BET. SPEC & STOPP TK")
    stamp = lines[0].digits(25, 44, "date and time written")
    try:
        written_at = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise lines[0].error(f"date and time written {stamp!r} is not a timestamp") from None
    closing = _closing(lines)
    spec = PaymentSpecification(written_at=written_at, customer_number=opening.customer_number,
                                bankgiro=opening.bankgiro)
    sections: list[tuple[str, _Section]] = []
    approved = {"82": 0, "32": 0, "77": 0}
    for line in lines[1:-1]:
        if line.code in _SECTIONS:
            # TK15/16/17: 3-37 payee account, 38-45 payment date, 46-50 serial number,
            # 51-68 approved amount, 69-71 blank, 72-79 number of approved payments.
            line.date_at(38, "payment date")
            sections.append((line.code, _Section(
                opening=line, count=line.number_at(72, 79, "number of payments"),
                amount_ore=line.number_at(51, 68, "amount"))))
            continue
        if line.code not in ("82", "32", "77"):
            raise line.error("not a record of a payment specification")
        if not sections or _SECTIONS[sections[-1][0]] != line.code:
            raise line.error(f"a TK{line.code} must follow its section record")
        section = sections[-1][1]
        if line.code == "77":
            refund = _refund(line, opening)
            spec.refunds.append(refund)
            amount, counts = refund.amount_ore, True
        else:
            result = _debit(line, opening)
            (spec.debits if line.code == "82" else spec.credits).append(result)
            amount, counts = result.amount_ore, result.outcome is DebitOutcome.paid
        if counts:
            section.seen_count += 1
            section.seen_ore += amount
            approved[line.code] += 1
    for _, section in sections:
        section.check()
    # TK09: 3-10 date, 11-14 9900, then (count of sections, count of approved records) for
    # deposits 15-20/21-32, withdrawals 33-38/39-50, refunds 51-56/57-68.
    for opening_code, record_code, (first, last) in (("15", "82", (15, 21)),
                                                     ("16", "32", (33, 39)),
                                                     ("17", "77", (51, 57))):
        declared_sections = closing.number_at(first, first + 5, f"number of TK{opening_code}")
        declared_records = closing.number_at(last, last + 11, f"number of TK{record_code}")
        found_sections = sum(1 for code, _ in sections if code == opening_code)
        if (declared_sections, declared_records) != (found_sections, approved[record_code]):
            raise closing.error(
                f"the closing record counts {declared_sections} TK{opening_code} and "
                f"{declared_records} approved TK{record_code}, the file has {found_sections} "
                f"and {approved[record_code]}")
    return spec
