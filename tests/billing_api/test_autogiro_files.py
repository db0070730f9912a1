"""Autogiro files are written and read by the positions of Bankgirot's technical manual."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

import pytest

from billing_api import autogiro
from billing_api.autogiro import AdviceOutcome, Debit, DebitOutcome, NewMandate
from billing_api.service import BillingError
from tests.billing_api.factories import (
    bankgirot_mandate_advice,
    bankgirot_payment_specification,
)

DATA = Path(__file__).parent / "data"


def field(record: str, first: int, last: int) -> str:
    """Positions as the manual numbers them: 1-based, inclusive."""
    return record[first - 1:last]


def records(text: str) -> list[str]:
    assert text.endswith("\r\n")
    return text.removesuffix("\r\n").split("\r\n")


def test_mandate_file_has_an_opening_record_and_a_tk04_per_mandate() -> None:
    text = autogiro.write_mandate_file(
        written_on=date(2026, 11, 2), customer_number="123456", bankgiro="5050-1055",
        new=[NewMandate(payer_number="1175", account="5000000000123455",
                        payer_id="198009286249")],
        cancelled=["1662"],
    )
    opening, cancel, new = records(text)
    assert all(len(r) == 80 for r in (opening, cancel, new))
    assert field(opening, 1, 2) == "01"
    assert field(opening, 3, 10) == "20261102"
    assert field(opening, 11, 18) == "AUTOGIRO"
    assert field(opening, 19, 62).strip() == ""
    assert field(opening, 63, 68) == "123456"
    assert field(opening, 69, 78) == "0050501055"
    assert field(cancel, 1, 28) == "03" + "0050501055" + "0000000000001662"
    assert field(cancel, 29, 80).strip() == ""
    assert field(new, 1, 2) == "04"
    assert field(new, 3, 12) == "0050501055"
    assert field(new, 13, 28) == "0000000000001175"
    assert field(new, 29, 44) == "5000000000123455"
    assert field(new, 45, 56) == "198009286249"
    assert field(new, 57, 80).strip() == ""


def test_payment_file_has_a_tk82_per_debit_in_ore() -> None:
    text = autogiro.write_payment_file(
        written_on=date(2026, 11, 2), customer_number="123456", bankgiro="5050-1055",
        debits=[Debit(payment_date=date(2026, 11, 16), payer_number="1175",
                      amount_ore=125_050, reference="F0000001")],
    )
    opening, debit = records(text)
    assert field(opening, 1, 18) == "0120261102AUTOGIRO"
    assert len(debit) == 80
    assert field(debit, 1, 2) == "82"
    assert field(debit, 3, 10) == "20261116"
    assert field(debit, 11, 11) == "0"  # once, not recurring
    assert field(debit, 12, 15) == "    "
    assert field(debit, 16, 31) == "0000000000001175"
    assert field(debit, 32, 43) == "000000125050"
    assert field(debit, 44, 53) == "0050501055"
    assert field(debit, 54, 69) == "F0000001        "
    assert field(debit, 70, 80).strip() == ""


@pytest.mark.parametrize(("debit", "message"), [
    (Debit(date(2026, 11, 16), "1175", 0, "F1"), "must be positive"),
    (Debit(date(2026, 11, 16), "1175", 100, "F" * 17), "longer than 16"),
    (Debit(date(2026, 11, 16), "1175", 100, "€ FAKTURA"), "ISO-8859-1"),
    (Debit(date(2026, 11, 16), "0000", 100, "F1"), "not all zeros"),
    (Debit(date(2026, 11, 16), "12345678901234567", 100, "F1"), "1 to 16 digits"),
])
def test_debits_bankgirot_cannot_carry_are_refused(debit: Debit, message: str) -> None:
    with pytest.raises(BillingError, match=message):
        autogiro.write_payment_file(written_on=date(2026, 11, 2), customer_number="123456",
                                    bankgiro="5050-1055", debits=[debit])


def test_our_own_numbers_are_checked_too() -> None:
    debit = Debit(date(2026, 11, 16), "1175", 100, "F1")
    with pytest.raises(BillingError, match="bankgiro number '5050-1056' is not valid"):
        autogiro.write_payment_file(written_on=date(2026, 11, 2), customer_number="123456",
                                    bankgiro="5050-1056", debits=[debit])
    with pytest.raises(BillingError, match="customer number"):
        autogiro.write_payment_file(written_on=date(2026, 11, 2), customer_number="12345",
                                    bankgiro="5050-1055", debits=[debit])


def test_mandate_advice_file_gives_each_mandates_outcome() -> None:
    advice = autogiro.read_mandate_advice((DATA / "autogiro_mandate_advice.txt").read_bytes())
    assert (advice.written_on, advice.customer_number, advice.bankgiro) == (
        date(2026, 11, 3), "123456", "50501055")
    assert [(a.payer_number, a.info_code, a.comment_code, a.outcome) for a in advice.advices] == [
        ("1175", "04", "32", AdviceOutcome.active),
        ("1258", "42", "32", AdviceOutcome.active),
        ("1332", "04", "23", AdviceOutcome.rejected),
        ("1415", "43", "07", AdviceOutcome.rejected),
        ("1589", "46", "02", AdviceOutcome.cancelled),
        ("1662", "03", "33", AdviceOutcome.cancelled),
        ("1746", "03", "21", AdviceOutcome.none),
    ]
    first = advice.advices[0]
    assert (first.line, first.account, first.payer_id) == (2, "5000000000123455",
                                                           "198009286249")
    assert advice.advices[2].text == ("new mandate initiated by the payee: "
                                      "incorrect bank account number")


def test_payment_specification_reads_debits_credits_and_refunds() -> None:
    spec = autogiro.read_payment_specification(
        (DATA / "autogiro_payment_specification.txt").read_bytes())
    assert spec.written_at == datetime(2026, 11, 16, 6, 30, 12)
    assert [(d.payer_number, d.amount_ore, d.reference, d.outcome) for d in spec.debits] == [
        ("1175", 125_000, "F0000001", DebitOutcome.paid),
        ("1258", 31_250, "F0000002", DebitOutcome.failed),
        ("1332", 9_900, "HYRA ÖREBRO", DebitOutcome.retrying),  # ISO-8859-1 read as such
    ]
    assert spec.debits[1].text == "insufficient funds"
    assert [(c.payer_number, c.amount_ore, c.reference) for c in spec.credits] == [
        ("1415", 4_500, "ÅTERBETALNING")]
    refund = spec.refunds[0]
    assert (refund.payer_number, refund.amount_ore, refund.refunded_on, refund.code) == (
        "1589", 20_000, date(2026, 11, 16), "02")


def test_what_we_send_is_what_bankgirot_answers_about() -> None:
    """Our TK82 fields come back in the specification's TK82 at the same positions."""
    sent = autogiro.write_payment_file(
        written_on=date(2026, 11, 2), customer_number="123456", bankgiro="5050-1055",
        debits=[Debit(date(2026, 11, 16), "1175", 125_050, "F0000001"),
                Debit(date(2026, 11, 16), "1258", 9_900, "F0000002")])
    answer = [records(sent)[1][:69] + " " * 10 + "0", records(sent)[2][:69] + " " * 10 + "1"]
    spec_text = bankgirot_payment_specification(
        [("1175", 125_050, "F0000001", "0"), ("1258", 9_900, "F0000002", "1")]).decode(
        autogiro.ENCODING)
    assert records(spec_text)[2:4] == answer
    spec = autogiro.read_payment_specification(spec_text)
    assert [(d.payer_number, d.amount_ore, d.reference, d.status_code) for d in spec.debits] == [
        ("1175", 125_050, "F0000001", "0"), ("1258", 9_900, "F0000002", "1")]


def replace_line(content: bytes, number: int, new: str) -> bytes:
    lines = content.decode(autogiro.ENCODING).split("\r\n")
    lines[number - 1] = new
    return "\r\n".join(lines).encode(autogiro.ENCODING)


def test_a_record_of_the_wrong_length_is_refused_by_line() -> None:
    content = (DATA / "autogiro_mandate_advice.txt").read_bytes()
    lines = content.decode(autogiro.ENCODING).split("\r\n")
    broken = replace_line(content, 3, lines[2].rstrip())
    with pytest.raises(BillingError, match="line 3: a record has 80 characters, this one has"):
        autogiro.read_mandate_advice(broken)


def test_unknown_codes_are_refused_by_line() -> None:
    with pytest.raises(BillingError, match=r"line 2 \(TK73\): unknown information code 99"):
        autogiro.read_mandate_advice(bankgirot_mandate_advice([("1175", "99", "32")]))
    with pytest.raises(BillingError, match="comment code 33 is not defined for information "
                                           "code 04"):
        autogiro.read_mandate_advice(bankgirot_mandate_advice([("1175", "04", "33")]))
    with pytest.raises(BillingError, match=r"line 3 \(TK82\): unknown payment status code '7'"):
        autogiro.read_payment_specification(
            bankgirot_payment_specification([("1175", 100, "F1", "7")]))


def test_totals_that_disagree_with_the_records_are_refused() -> None:
    content = bankgirot_payment_specification([("1175", 125_000, "F0000001", "0")])
    section = content.decode(autogiro.ENCODING).split("\r\n")[1]
    inflated = section[:50] + f"{125_100:018d}" + section[68:]
    with pytest.raises(BillingError, match=r"line 2 \(TK15\): the section totals 1 payments "
                                           r"of 125100 öre, its records 1 of 125000 öre"):
        autogiro.read_payment_specification(replace_line(content, 2, inflated))
    closing = content.decode(autogiro.ENCODING).split("\r\n")[3]
    miscounted = closing[:20] + f"{2:012d}" + closing[32:]
    with pytest.raises(BillingError, match=r"line 4 \(TK09\): the closing record counts 1 "
                                           r"TK15 and 2 approved TK82"):
        autogiro.read_payment_specification(replace_line(content, 4, miscounted))
    advice = bankgirot_mandate_advice([("1175", "04", "32")])
    closing = advice.decode(autogiro.ENCODING).split("\r\n")[2]
    with pytest.raises(BillingError, match="counts 2 TK73 records, the file has 1"):
        autogiro.read_mandate_advice(replace_line(advice, 3, closing[:14] + "0000002"
                                                  + closing[21:]))


def test_files_must_be_what_they_claim_to_be() -> None:
    advice = bankgirot_mandate_advice([("1175", "04", "32")])
    with pytest.raises(BillingError, match=re.escape(
            "content at positions 45-64 must be 'BET. SPEC & STOPP TK', found 'AG-MEDAVI'")):
        autogiro.read_payment_specification(advice)
    spec = bankgirot_payment_specification([("1175", 100, "F1", "0")])
    lines = spec.decode(autogiro.ENCODING).split("\r\n")
    without_section = "\r\n".join([lines[0], lines[2], lines[3]]).encode(autogiro.ENCODING)
    with pytest.raises(BillingError, match=r"line 2 .*must follow its section record"):
        autogiro.read_payment_specification(without_section)
    with pytest.raises(BillingError, match="the file is empty"):
        autogiro.read_mandate_advice(b"\r\n")
