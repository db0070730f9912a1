"""Bank account numbers we may debit: Swedish accounts for Autogiro, IBAN and BIC for SEPA.

Swedish accounts follow Bankgirot's "Bankernas kontonummer / Bank account numbers in Swedish
banks" (bankernaskontonummeruppbyggnad_anvandarmanual_sv.pdf): the clearing number names the
bank, and the bank's row in that document gives the account's *type* and *comment*:

- type 1: a four-digit clearing number and a seven-digit account. The last account digit is a
  modulus-11 check (weights 1, 2, ..., 10, 1, ... from the right) over the clearing number's
  last three digits and the account (comment 1), or over all four clearing digits and the
  account (comment 2).
- type 2: the account alone carries the check, the clearing number only routes. Comment 1:
  ten digits, modulus 10 (Luhn). Comment 2 (Handelsbanken): nine digits, modulus 11.
  Comment 3 (Swedbank's 8xxx-x series, Plusgirot): up to ten digits, zero-filled on the left,
  modulus 10. Swedbank's five-digit clearing numbers carry a Luhn check digit of their own.

Luhn is python-stdnum's. It has no plain weighted modulus-11 helper (its ``iso7064.mod_11_2``
is ISO 7064's pure system, with powers of two as weights), so that one sum lives here.

The table is the document's as of 2024; a new bank is a new row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stdnum import bic as stdnum_bic
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.exceptions import ValidationError
from stdnum.se import orgnr, personnummer

from billing_api.service import BillingError


@dataclass(frozen=True)
class _Series:
    first: int
    last: int
    bank: str
    type: int
    comment: int


_SERIES: tuple[_Series, ...] = (
    _Series(1100, 1199, "Nordea", 1, 1),
    _Series(1200, 1399, "Danske Bank", 1, 1),
    _Series(1400, 2099, "Nordea", 1, 1),
    _Series(2300, 2399, "Ålandsbanken", 1, 2),
    _Series(2400, 2499, "Danske Bank", 1, 1),
    _Series(3000, 3299, "Nordea", 1, 1),
    _Series(3300, 3300, "Nordea (personkonto)", 2, 1),
    _Series(3301, 3399, "Nordea", 1, 1),
    _Series(3400, 3409, "Länsförsäkringar Bank", 1, 1),
    _Series(3410, 3781, "Nordea", 1, 1),
    _Series(3782, 3782, "Nordea (personkonto)", 2, 1),
    _Series(3783, 3999, "Nordea", 1, 1),
    _Series(4000, 4999, "Nordea", 1, 2),
    _Series(5000, 5999, "SEB", 1, 1),
    _Series(6000, 6999, "Handelsbanken", 2, 2),
    _Series(7000, 7999, "Swedbank", 1, 1),
    _Series(8000, 8999, "Swedbank", 2, 3),
    _Series(9020, 9029, "Länsförsäkringar Bank", 1, 2),
    _Series(9040, 9049, "Citibank", 1, 2),
    _Series(9060, 9069, "Länsförsäkringar Bank", 1, 1),
    _Series(9070, 9079, "Multitude Bank", 1, 1),
    _Series(9100, 9109, "Nordnet Bank", 1, 2),
    _Series(9120, 9124, "SEB", 1, 1),
    _Series(9130, 9149, "SEB", 1, 1),
    _Series(9150, 9169, "Skandiabanken", 1, 2),
    _Series(9170, 9179, "Ikano Bank", 1, 1),
    _Series(9180, 9189, "Danske Bank", 2, 1),
    _Series(9190, 9199, "DNB Bank", 1, 2),
    _Series(9230, 9239, "Marginalen Bank", 1, 1),
    _Series(9250, 9259, "SBAB", 1, 1),
    _Series(9260, 9269, "DNB Bank", 1, 2),
    _Series(9270, 9279, "ICA Banken", 1, 1),
    _Series(9280, 9289, "Resurs Bank", 1, 1),
    _Series(9300, 9349, "Swedbank (f.d. Sparbanken Öresund)", 2, 1),
    _Series(9390, 9399, "Landshypotek", 1, 2),
    _Series(9400, 9449, "Forex Bank", 1, 1),
    _Series(9460, 9469, "Santander Consumer Bank", 1, 1),
    _Series(9470, 9479, "BNP Paribas", 1, 2),
    _Series(9500, 9549, "Nordea (Plusgirot)", 2, 3),
    _Series(9550, 9569, "Avanza Bank", 1, 2),
    _Series(9570, 9579, "Sparbanken Syd", 2, 1),
    _Series(9580, 9589, "Aion Bank", 1, 1),
    _Series(9590, 9599, "Erik Penser Bank", 1, 2),
    _Series(9630, 9639, "Lån & Spar Bank Sverige", 1, 1),
    _Series(9640, 9649, "Nordax Bank", 1, 2),
    _Series(9660, 9669, "Svea Bank", 1, 2),
    _Series(9670, 9679, "JAK Medlemsbank", 1, 2),
    _Series(9680, 9689, "Bluestep Finans", 1, 1),
    _Series(9700, 9709, "Ekobanken", 1, 2),
    _Series(9710, 9719, "Lunar Bank", 1, 2),
    _Series(9750, 9759, "Northmill Bank", 1, 2),
    _Series(9780, 9789, "Klarna Bank", 1, 2),
    _Series(9880, 9889, "Riksgälden", 1, 2),
    _Series(9890, 9899, "Riksgälden", 2, 1),
    _Series(9960, 9969, "Nordea (Plusgirot)", 2, 3),
)

# Digits of the account part, and whether shorter input may be zero-filled on the left.
_ACCOUNT_DIGITS: dict[tuple[int, int], tuple[int, bool]] = {
    (1, 1): (7, False),
    (1, 2): (7, False),
    (2, 1): (10, False),
    (2, 2): (9, True),
    (2, 3): (10, True),
}

_SEPARATORS = re.compile(r"[\s.\-]")


@dataclass(frozen=True)
class BankAccount:
    """A validated Swedish bank account.

    ``clearing`` keeps all digits the bank gave (five for Swedbank's 8xxx-x), ``account`` is
    zero-filled to the length its type has.
    """

    clearing: str
    account: str
    bank: str
    type: int
    comment: int

    @property
    def bankgirot(self) -> str:
        """The 16-digit form of Bankgirot's files: the first four clearing digits (a fifth,
        Swedbank's check digit, is left out) and the account right-aligned in twelve."""
        return self.clearing[:4] + self.account.rjust(12, "0")

    def __str__(self) -> str:
        clearing = self.clearing[:4] + (f"-{self.clearing[4]}" if len(self.clearing) == 5 else "")
        return f"{clearing}, {self.account}"


def _digits(value: str, what: str) -> str:
    digits = _SEPARATORS.sub("", value or "")
    if not digits:
        raise BillingError(f"{what} is missing")
    if not digits.isdigit():
        raise BillingError(f"{what} {value!r} may only contain digits, spaces and hyphens")
    return digits


def _mod11(digits: str) -> bool:
    """Bankgirot's modulus-11 check: weights 1..10 from the right, repeating."""
    total = sum(int(d) * (i % 10 + 1) for i, d in enumerate(reversed(digits)))
    return total % 11 == 0


def _series(clearing: str) -> _Series:
    number = int(clearing[:4])
    for series in _SERIES:
        if series.first <= number <= series.last:
            return series
    raise BillingError(f"clearing number {clearing} belongs to no Swedish bank")


def validate_account(clearing: str, account: str) -> BankAccount:
    """Check a Swedish clearing and account number by the banks' published rules.

    Separators (spaces, hyphens, dots) are ignored. Raises :class:`BillingError` saying which
    part is wrong: unknown clearing number, wrong length for the bank, or a failed check digit.
    """
    clearing = _digits(clearing, "clearing number")
    account = _digits(account, "account number")
    if len(clearing) not in (4, 5):
        raise BillingError(f"clearing number {clearing} must have four digits "
                           "(five for Swedbank's 8xxx-x)")
    series = _series(clearing)
    if len(clearing) == 5:
        if series.first != 8000:
            raise BillingError(f"clearing number {clearing} has five digits; only Swedbank's "
                               "8xxx-x series has a fifth")
        if not luhn.is_valid(clearing):
            raise BillingError(f"clearing number {clearing[:4]}-{clearing[4]}: "
                               "the fifth digit is not its check digit")
    if series.first in (3300, 3782) and len(account) == 12:
        account = account[2:]  # a personkonto written with the century
    length, zero_fill = _ACCOUNT_DIGITS[series.type, series.comment]
    if len(account) > length or (len(account) < length and not zero_fill):
        raise BillingError(f"account number {account} at {series.bank} must have "
                           f"{'at most ' if zero_fill else ''}{length} digits")
    account = account.rjust(length, "0")
    if series.type == 1:
        checked = (clearing[1:4] if series.comment == 1 else clearing[:4]) + account
        valid = _mod11(checked)
    elif series.comment == 2:
        valid = _mod11(account)
    else:
        valid = luhn.is_valid(account)
    if not valid:
        raise BillingError(f"account number {clearing[:4]} {account} at {series.bank}: "
                           "the check digit is wrong")
    return BankAccount(clearing=clearing, account=account, bank=series.bank,
                       type=series.type, comment=series.comment)


def validate_payer_id(number: str) -> str:
    """A Swedish personal identity number (personnummer) or organisation number, in the
    12-digit form Autogiro's mandate records carry: century and ten digits for a person,
    ``00`` and ten digits for an organisation."""
    text = (number or "").strip()
    if not text:
        raise BillingError("personal or organisation number is missing")
    if personnummer.is_valid(text):
        compact = personnummer.compact(text).replace("-", "").replace("+", "")
        if len(compact) == 12:
            return compact
        return f"{personnummer.get_birth_date(text).year // 100}{compact}"
    if orgnr.is_valid(text):
        return "00" + orgnr.compact(text)
    raise BillingError(f"{number!r} is neither a valid personnummer nor organisation number")


def validate_iban(iban: str) -> str:
    """An IBAN in compact form (no spaces, upper case), its country format and check digits
    verified by python-stdnum."""
    try:
        return stdnum_iban.validate(iban or "")
    except ValidationError as exc:
        raise BillingError(f"IBAN {iban!r} is not valid: {exc.message}") from None


def validate_bic(bic: str) -> str:
    """A BIC (SWIFT code) of 8 or 11 characters in compact form."""
    try:
        return stdnum_bic.validate(bic or "")
    except ValidationError as exc:
        raise BillingError(f"BIC {bic!r} is not valid: {exc.message}") from None
