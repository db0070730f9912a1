"""SEPA direct debit files carry what the scheme needs and validate against pain.008."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pytest
import sepaxml
import xmlschema

from billing_api import sepa
from billing_api.service import BillingError
from chargedesk.settings import Settings

NS = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.008.001.02"}


def debit(**overrides: object) -> sepa.SepaDebit:
    fields: dict[str, object] = {
        "end_to_end_id": "F0000042", "amount_cents": 12_550, "debtor_name": "Jürgen Müller",
        "iban": "DE89370400440532013000", "bic": "COBADEFFXXX",
        "mandate_reference": "CHARGEDESK-7", "mandate_signed_on": date(2026, 9, 30),
        "collection_date": date(2026, 11, 16), "sequence": "FRST",
        "description": "ChargeDesk Demo AB invoice F0000042",
    }
    fields.update(overrides)
    return sepa.SepaDebit(**fields)  # type: ignore[arg-type]


@pytest.fixture
def creditor() -> sepa.Creditor:
    return sepa.creditor_from_settings(Settings())


def text(node: ET.Element, path: str) -> str | None:
    found = node.find(path, NS)
    return None if found is None else found.text


def test_one_transaction_per_debit_with_mandate_and_end_to_end_id(
    creditor: sepa.Creditor,
) -> None:
    document = sepa.build_pain008(creditor=creditor, debits=[
        debit(),
        debit(end_to_end_id="F0000043", amount_cents=990, debtor_name="Anna Schmidt",
              iban="FR1420041010050500013M02606", bic=None, mandate_reference="CHARGEDESK-8",
              mandate_signed_on=date(2026, 10, 2), sequence="RCUR",
              collection_date=date(2026, 11, 17)),
    ])
    root = ET.fromstring(document.xml)
    assert root.tag == f"{{{NS['p']}}}Document"
    header = root.find("p:CstmrDrctDbtInitn/p:GrpHdr", NS)
    assert header is not None
    assert text(header, "p:MsgId") == document.message_id
    assert (text(header, "p:NbOfTxs"), text(header, "p:CtrlSum")) == ("2", "135.40")
    blocks = root.findall("p:CstmrDrctDbtInitn/p:PmtInf", NS)
    # FRST and RCUR on different days are separate payment information blocks.
    by_sequence = {text(b, "p:PmtTpInf/p:SeqTp"): b for b in blocks}
    assert set(by_sequence) == {"FRST", "RCUR"}
    first = by_sequence["FRST"]
    assert text(first, "p:PmtTpInf/p:LclInstrm/p:Cd") == "CORE"
    assert text(first, "p:ReqdColltnDt") == "2026-11-16"
    assert text(first, "p:Cdtr/p:Nm") == "ChargeDesk Demo AB"
    assert text(first, "p:CdtrAcct/p:Id/p:IBAN") == "DE89370400440532013000"
    assert text(first, "p:CdtrAgt/p:FinInstnId/p:BIC") == "COBADEFFXXX"
    assert text(first, "p:CdtrSchmeId/p:Id/p:PrvtId/p:Othr/p:Id") == "DE98ZZZ09999999999"
    tx = first.find("p:DrctDbtTxInf", NS)
    assert tx is not None
    assert text(tx, "p:PmtId/p:EndToEndId") == "F0000042"
    amount = tx.find("p:InstdAmt", NS)
    assert amount is not None and (amount.text, amount.get("Ccy")) == ("125.50", "EUR")
    assert text(tx, "p:DrctDbtTx/p:MndtRltdInf/p:MndtId") == "CHARGEDESK-7"
    assert text(tx, "p:DrctDbtTx/p:MndtRltdInf/p:DtOfSgntr") == "2026-09-30"
    assert text(tx, "p:DbtrAgt/p:FinInstnId/p:BIC") == "COBADEFFXXX"
    assert text(tx, "p:Dbtr/p:Nm") == "Jurgen Muller"  # the SEPA character set has no ü
    assert text(tx, "p:DbtrAcct/p:Id/p:IBAN") == "DE89370400440532013000"
    assert text(tx, "p:RmtInf/p:Ustrd") == "ChargeDesk Demo AB invoice F0000042"
    recurring = by_sequence["RCUR"].find("p:DrctDbtTxInf", NS)
    assert recurring is not None
    # Without a BIC the debtor's bank is found from the IBAN.
    assert text(recurring, "p:DbtrAgt/p:FinInstnId/p:Othr/p:Id") == "NOTPROVIDED"


def test_the_document_validates_against_the_pain_008_schema(creditor: sepa.Creditor) -> None:
    document = sepa.build_pain008(creditor=creditor, debits=[debit()])
    schema_file = Path(sepaxml.__file__).parent / "schemas" / "pain.008.001.02.xsd"
    xmlschema.XMLSchema(str(schema_file)).validate(document.xml.decode())


def test_creditor_details_are_checked() -> None:
    with pytest.raises(BillingError, match="SEPA creditor id 'DE99ZZZ09999999999' is not"):
        sepa.creditor_from_settings(Settings(sepa_creditor_id="DE99ZZZ09999999999"))
    with pytest.raises(BillingError, match="IBAN"):
        sepa.creditor_from_settings(Settings(sepa_iban="DE89370400440532013001"))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"amount_cents": 0}, "amount must be positive"),
    ({"end_to_end_id": "F" * 36}, "end-to-end id .* must have 1 to 35"),
    ({"mandate_reference": ""}, "mandate reference .* must have 1 to 35"),
    ({"iban": "NOT AN IBAN"}, "does not validate against pain.008.001.02"),
])
def test_debits_the_scheme_cannot_carry_are_refused(
    creditor: sepa.Creditor, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(BillingError, match=message):
        sepa.build_pain008(creditor=creditor, debits=[debit(**overrides)])
