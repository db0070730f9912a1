"""SEPA Direct Debit initiation (ISO 20022 pain.008.001.02, SEPA Core) built with ``sepaxml``.

Pure: settings and debits in, validated XML out. sepaxml checks every document against the
pain.008 schema it ships before we see it; a document that fails is never stored or sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from sepaxml import SepaDD
from sepaxml.validation import ValidationError as SchemaError
from stdnum.eu import at_02
from stdnum.exceptions import ValidationError

from billing_api.bankaccount import validate_bic, validate_iban
from billing_api.service import BillingError
from chargedesk.settings import Settings

SCHEMA = "pain.008.001.02"
# EPC rulebook: mandate references and end-to-end ids are at most 35 characters.
MAX_ID = 35

SequenceType = Literal["FRST", "RCUR", "OOFF", "FNAL"]


@dataclass(frozen=True)
class Creditor:
    name: str
    creditor_id: str
    iban: str
    bic: str


def creditor_from_settings(settings: Settings) -> Creditor:
    """Our side of every collection, checked: a creditor id whose ISO 7064 check digits hold,
    the IBAN collections are paid into and its bank's BIC."""
    try:
        creditor_id = at_02.validate(settings.sepa_creditor_id)
    except ValidationError as exc:
        raise BillingError(f"SEPA creditor id {settings.sepa_creditor_id!r} is not valid: "
                           f"{exc.message}") from None
    return Creditor(name=settings.sepa_creditor_name, creditor_id=creditor_id,
                    iban=validate_iban(settings.sepa_iban), bic=validate_bic(settings.sepa_bic))


@dataclass(frozen=True)
class SepaDebit:
    """One collection: a DrctDbtTxInf in the document."""

    end_to_end_id: str
    amount_cents: int
    debtor_name: str
    iban: str
    bic: str | None
    mandate_reference: str
    mandate_signed_on: date
    collection_date: date
    sequence: SequenceType
    description: str


@dataclass(frozen=True)
class Pain008:
    message_id: str
    xml: bytes


def build_pain008(*, creditor: Creditor, debits: Sequence[SepaDebit]) -> Pain008:
    """A pain.008 with one payment information block per (sequence type, collection date),
    as the scheme requires, and one transaction per debit."""
    if not debits:
        raise BillingError("a SEPA direct debit file needs at least one debit")
    document = SepaDD({
        "name": creditor.name, "IBAN": creditor.iban, "BIC": creditor.bic, "batch": True,
        "creditor_id": creditor.creditor_id, "currency": "EUR",
    }, schema=SCHEMA)
    for debit in debits:
        if debit.amount_cents <= 0:
            raise BillingError(f"debit {debit.end_to_end_id}: amount must be positive")
        for value, what in ((debit.end_to_end_id, "end-to-end id"),
                            (debit.mandate_reference, "mandate reference")):
            if not value or len(value) > MAX_ID:
                raise BillingError(f"{what} {value!r} must have 1 to {MAX_ID} characters")
        payment = {
            "name": debit.debtor_name, "IBAN": debit.iban, "amount": debit.amount_cents,
            "type": debit.sequence, "collection_date": debit.collection_date,
            "mandate_id": debit.mandate_reference, "mandate_date": debit.mandate_signed_on,
            "description": debit.description, "endtoend_id": debit.end_to_end_id,
        }
        if debit.bic:
            payment["BIC"] = debit.bic
        document.add_payment(payment)
    try:
        xml = document.export(validate=True)
    except SchemaError as exc:
        raise BillingError(f"the SEPA file does not validate against {SCHEMA}: "
                           f"{exc.__cause__}") from None
    return Pain008(message_id=document.msg_id, xml=xml)
