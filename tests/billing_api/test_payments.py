"""Direct debit from mandate to paid invoice, on SQLite and PostgreSQL: mandates, bank files
out and results in, and dunning when a collection fails."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlmodel import Session, col, func, select

from billing_api import payments
from billing_api.models import (
    BankFile,
    BankFileKind,
    Driver,
    DriverIdTag,
    DunningNotice,
    EmailMessage,
    Invoice,
    InvoiceStatus,
    Language,
    Mandate,
    MandateScheme,
    MandateStatus,
    Payment,
    PaymentMethod,
    PaymentStatus,
)
from billing_api.service import BillingError, NotFound
from chargedesk.errors import Conflict
from chargedesk.settings import Settings
from station_api.models import IdTag, IdTagStatus
from tests.billing_api.factories import (
    bankgirot_mandate_advice,
    bankgirot_payment_specification,
    make_driver,
    make_invoice,
)

EXPORT_DAY = date(2026, 11, 10)  # invoices are issued 2026-11-01 and due 2026-11-15


def autogiro_mandate(session: Session, driver: Driver, **overrides: str) -> Mandate:
    fields = {"clearing_number": "8327-9", "account_number": "123 456 789-7",
              "personal_number": "800928-6249"}
    fields.update(overrides)
    return payments.create_mandate(session, driver_id=driver.id or 0, scheme="autogiro",
                                   holder_name=driver.name, created_by="test", **fields)


def active_autogiro_driver(session: Session, settings: Settings, **driver_fields: object
                           ) -> tuple[Driver, Mandate]:
    """A driver whose Autogiro mandate Bankgirot has confirmed."""
    driver = make_driver(session, **driver_fields)  # type: ignore[arg-type]
    mandate = autogiro_mandate(session, driver)
    payments.export_autogiro_mandates(session, settings=settings, created_by="test",
                                      today=EXPORT_DAY)
    summary = payments.import_autogiro_mandate_result(
        session, content=bankgirot_mandate_advice([(mandate.payer_number or "", "04", "32")],
                                                  written_on=EXPORT_DAY),
        filename=f"medavi-{mandate.id}.txt", created_by="test", settings=settings)
    assert summary.activated == 1
    return driver, mandate


def debit_lines(bank_file: BankFile) -> list[str]:
    return [line for line in bank_file.content.split("\r\n") if line.startswith("82")]


def pay_result(session: Session, settings: Settings,
               results: list[tuple[str, int, str, str]], name: str = "spec.txt",
               day: date = date(2026, 11, 15)) -> payments.ImportSummary:
    return payments.import_autogiro_payment_result(
        session, content=bankgirot_payment_specification(results, payment_date=day),
        filename=name, created_by="test", settings=settings)


def count(session: Session, model: type) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


# ---------------------------------------------------------------- mandates


def test_a_new_autogiro_mandate_is_pending_with_a_checked_account_and_payer_number(
    session: Session,
) -> None:
    driver = make_driver(session)
    mandate = autogiro_mandate(session, driver)
    assert mandate.status is MandateStatus.pending
    assert (mandate.clearing_number, mandate.account_number) == ("83279", "1234567897")
    assert mandate.personal_number == "198009286249"
    # The mandate id with a Luhn check digit: 1 -> "18", 2 -> "26".
    assert mandate.payer_number == f"{mandate.id}" + {1: "8", 2: "6"}[mandate.id or 0]
    assert driver.payment_method is PaymentMethod.invoice  # not until the bank confirms


def test_an_account_that_fails_its_check_is_refused_and_nothing_is_stored(
    session: Session,
) -> None:
    driver = make_driver(session)
    with pytest.raises(BillingError, match="check digit is wrong"):
        autogiro_mandate(session, driver, account_number="123 456 789-8")
    with pytest.raises(BillingError, match="personnummer"):
        autogiro_mandate(session, driver, personal_number="800928-6248")
    assert count(session, Mandate) == 0


def test_one_pending_or_active_mandate_per_driver_and_scheme(session: Session) -> None:
    driver = make_driver(session)
    first = autogiro_mandate(session, driver)
    with pytest.raises(Conflict, match=f"already has a pending autogiro mandate \\({first.id}"):
        autogiro_mandate(session, driver)
    payments.cancel_mandate(session, mandate_id=first.id or 0, created_by="test")
    assert autogiro_mandate(session, driver).status is MandateStatus.pending


def test_sepa_mandates_are_for_euro_drivers_and_activated_by_an_operator(
    session: Session,
) -> None:
    sek_driver = make_driver(session)
    with pytest.raises(BillingError, match="sepa collects EUR"):
        payments.create_mandate(session, driver_id=sek_driver.id or 0, scheme="sepa",
                                holder_name="Anna", iban="DE89370400440532013000",
                                created_by="test")
    driver = make_driver(session, name="Jan de Vries", currency="EUR", language=Language.en)
    with pytest.raises(BillingError, match="autogiro collects SEK"):
        autogiro_mandate(session, driver)
    mandate = payments.create_mandate(
        session, driver_id=driver.id or 0, scheme=MandateScheme.sepa, holder_name="Jan de Vries",
        iban="NL91 ABNA 0417 1643 00", bic="ABNANL2A", signed_on=date(2026, 10, 1),
        created_by="test")
    assert (mandate.iban, mandate.bic) == ("NL91ABNA0417164300", "ABNANL2A")
    assert mandate.mandate_reference == f"CHARGEDESK-{mandate.id}"
    payments.activate_mandate(session, mandate_id=mandate.id or 0, created_by="operator")
    assert (mandate.status, driver.payment_method) == (MandateStatus.active, PaymentMethod.sepa)
    payments.cancel_mandate(session, mandate_id=mandate.id or 0, created_by="operator",
                            reason="driver moved")
    assert (mandate.status, mandate.reason) == (MandateStatus.cancelled, "driver moved")
    assert driver.payment_method is PaymentMethod.invoice


def test_the_state_machine_refuses_going_back(session: Session, settings: Settings) -> None:
    driver = make_driver(session)
    mandate = autogiro_mandate(session, driver)
    payments.import_autogiro_mandate_result(
        session, content=bankgirot_mandate_advice([(mandate.payer_number or "", "04", "23")]),
        filename="rejected.txt", created_by="test", settings=settings)
    assert mandate.status is MandateStatus.rejected
    assert mandate.reason == "new mandate initiated by the payee: incorrect bank account number"
    with pytest.raises(Conflict, match=f"mandate {mandate.id} is rejected; it cannot become "
                                       "cancelled"):
        payments.cancel_mandate(session, mandate_id=mandate.id or 0, created_by="test")
    with pytest.raises(Conflict, match="is rejected; it cannot become active"):
        payments.activate_mandate(session, mandate_id=mandate.id or 0, created_by="operator")
    late = payments.import_autogiro_mandate_result(
        session, content=bankgirot_mandate_advice([(mandate.payer_number or "", "42", "32")]),
        filename="late.txt", created_by="test", settings=settings)
    assert late.activated == 0
    assert late.problems == [f"line 2, payer number {mandate.payer_number}: mandate "
                             f"{mandate.id} is rejected; it cannot become active (answer to "
                             "the account inquiry at the payer's bank: new mandate)"]
    assert mandate.status is MandateStatus.rejected
    with pytest.raises(NotFound):
        payments.cancel_mandate(session, mandate_id=999, created_by="test")


def test_pending_mandates_go_to_bankgirot_once(session: Session, settings: Settings) -> None:
    first = autogiro_mandate(session, make_driver(session))
    second = autogiro_mandate(session, make_driver(session, name="Bo Berg"),
                              clearing_number="5000", account_number="0123455",
                              personal_number="556677-8899")
    bank_file = payments.export_autogiro_mandates(session, settings=settings, created_by="ops",
                                                  today=EXPORT_DAY)
    assert bank_file is not None
    assert (bank_file.kind, bank_file.records) == (BankFileKind.autogiro_mandates, 2)
    opening, *mandates = bank_file.content.removesuffix("\r\n").split("\r\n")
    assert opening.startswith("0120261110AUTOGIRO")
    assert mandates == [
        f"040050501055{first.payer_number:0>16}8327001234567897198009286249{'':24}",
        f"040050501055{second.payer_number:0>16}5000000000123455005566778899{'':24}",
    ]
    assert first.export_file_id == second.export_file_id == bank_file.id
    assert payments.export_autogiro_mandates(session, settings=settings, created_by="ops",
                                             today=EXPORT_DAY) is None


def test_a_mandate_we_cancel_after_export_goes_to_bankgirot_as_a_cancellation(
    session: Session, settings: Settings
) -> None:
    _, mandate = active_autogiro_driver(session, settings)
    never_sent = autogiro_mandate(session, make_driver(session, name="Bo Berg"))
    payments.cancel_mandate(session, mandate_id=never_sent.id or 0, created_by="ops")
    payments.cancel_mandate(session, mandate_id=mandate.id or 0, created_by="ops",
                            reason="driver left")
    bank_file = payments.export_autogiro_mandates(session, settings=settings, created_by="ops",
                                                  today=EXPORT_DAY)
    assert bank_file is not None and bank_file.records == 1
    _, *records = bank_file.content.removesuffix("\r\n").split("\r\n")
    assert records == [f"030050501055{mandate.payer_number:0>16}{'':52}"]
    assert mandate.cancel_file_id == bank_file.id and never_sent.cancel_file_id is None
    assert mandate.created_by == "test"
    assert payments.export_autogiro_mandates(session, settings=settings, created_by="ops",
                                             today=EXPORT_DAY) is None


def test_mandate_advice_activates_rejects_and_cancels_and_reports_the_rest(
    session: Session, settings: Settings,
) -> None:
    drivers = [make_driver(session, name=name) for name in ("A", "B", "C", "D")]
    accepted, refused, withdrawn, unclear = (autogiro_mandate(session, d) for d in drivers)
    payments.import_autogiro_mandate_result(
        session, content=bankgirot_mandate_advice([(withdrawn.payer_number or "", "04", "32")]),
        filename="first.txt", created_by="test", settings=settings)
    advice = bankgirot_mandate_advice([
        (accepted.payer_number or "", "04", "32"),
        (refused.payer_number or "", "04", "20"),
        (withdrawn.payer_number or "", "46", "02"),
        (unclear.payer_number or "", "03", "21"),
        ("999999", "04", "32"),
    ])
    summary = payments.import_autogiro_mandate_result(
        session, content=advice, filename="medavi.txt", created_by="test", settings=settings)
    assert (summary.records, summary.activated, summary.rejected, summary.cancelled) == (
        5, 1, 1, 1)
    assert [m.status for m in (accepted, refused, withdrawn, unclear)] == [
        MandateStatus.active, MandateStatus.rejected, MandateStatus.cancelled,
        MandateStatus.pending]
    assert [d.payment_method for d in drivers[:3]] == [
        PaymentMethod.autogiro, PaymentMethod.invoice, PaymentMethod.invoice]
    assert summary.problems == [
        f"line 5, payer number {unclear.payer_number}: cancellation initiated by the payee: "
        f"incorrect payer number; mandate {unclear.id} unchanged",
        "line 6, payer number 999999: no such mandate (new mandate initiated by the payee: "
        "new mandate)",
    ]
    stored = session.get(BankFile, summary.bank_file_id)
    assert stored is not None and stored.content.encode("iso-8859-1") == advice

    again = payments.import_autogiro_mandate_result(
        session, content=advice, filename="medavi-again.txt", created_by="test",
        settings=settings)
    assert again.already_imported and again.bank_file_id == summary.bank_file_id
    assert (again.activated, again.rejected, again.cancelled, again.problems) == (0, 0, 0, [])
    assert count(session, BankFile) == 2


def test_a_file_for_another_payee_is_refused(session: Session, settings: Settings) -> None:
    advice = bankgirot_mandate_advice([("18", "04", "32")], customer_number="654321")
    with pytest.raises(BillingError, match="customer number 654321"):
        payments.import_autogiro_mandate_result(session, content=advice, filename="x.txt",
                                                created_by="test", settings=settings)
    assert count(session, BankFile) == 0


# ---------------------------------------------------------------- payments


def test_an_invoice_of_an_autogiro_driver_gets_one_payment(
    session: Session, settings: Settings,
) -> None:
    driver, mandate = active_autogiro_driver(session, settings)
    invoice = make_invoice(session, driver=driver, total_ore=125_000)
    payment = payments.create_payment(session, invoice=invoice)
    assert payment is not None
    assert (payment.status, payment.amount_ore, payment.mandate_id, payment.due_date) == (
        PaymentStatus.pending, 125_000, mandate.id, date(2026, 11, 15))
    assert payments.create_payment(session, invoice=invoice) is payment
    assert payments.create_payments(session, invoice_ids=[invoice.id or 0]) == [payment]
    assert count(session, Payment) == 1


def test_invoices_not_collected_by_direct_debit_get_no_payment(
    session: Session, settings: Settings,
) -> None:
    by_hand = make_driver(session, name="By Hand")
    assert payments.create_payment(
        session, invoice=make_invoice(session, driver=by_hand, total_ore=5_000)) is None
    driver, mandate = active_autogiro_driver(session, settings)
    assert payments.create_payment(
        session, invoice=make_invoice(session, driver=driver, total_ore=0)) is None
    payments.cancel_mandate(session, mandate_id=mandate.id or 0, created_by="test")
    driver.payment_method = PaymentMethod.autogiro  # as copied onto an invoice issued earlier
    assert payments.create_payment(
        session, invoice=make_invoice(session, driver=driver, total_ore=5_000)) is None
    assert count(session, Payment) == 0


def test_a_paid_debit_pays_the_invoice_and_the_same_file_twice_changes_nothing(
    session: Session, settings: Settings,
) -> None:
    driver, mandate = active_autogiro_driver(session, settings)
    invoice = make_invoice(session, driver=driver, total_ore=125_000)
    payment = payments.create_payment(session, invoice=invoice)
    assert payment is not None
    bank_file = payments.export_autogiro_payments(session, settings=settings, created_by="ops",
                                                  today=EXPORT_DAY)
    assert bank_file is not None and bank_file.kind is BankFileKind.autogiro_payments
    assert debit_lines(bank_file) == [
        f"82202611150    {mandate.payer_number:0>16}0000001250000050501055"
        f"{invoice.display_number:<16}{'':11}"]
    assert (payment.status, payment.export_file_id) == (PaymentStatus.exported, bank_file.id)
    assert payments.export_autogiro_payments(session, settings=settings, created_by="ops",
                                             today=EXPORT_DAY) is None

    results = [(mandate.payer_number or "", 125_000, invoice.display_number, "0")]
    summary = pay_result(session, settings, results)
    assert (summary.paid, summary.failed, summary.problems) == (1, 0, [])
    assert (payment.status, payment.result_file_id) == (PaymentStatus.paid,
                                                        summary.bank_file_id)
    assert invoice.status is InvoiceStatus.paid and invoice.paid_at is not None
    paid_at = invoice.paid_at

    again = pay_result(session, settings, results, name="spec-again.txt")
    assert again.already_imported and (again.paid, again.failed) == (0, 0)
    assert invoice.paid_at == paid_at
    assert count(session, BankFile) == 4  # mandates, advice, payments, one result


def test_results_we_cannot_match_are_reported_and_change_nothing(
    session: Session, settings: Settings,
) -> None:
    driver, mandate = active_autogiro_driver(session, settings)
    invoice = make_invoice(session, driver=driver, total_ore=125_000)
    payment = payments.create_payment(session, invoice=invoice)
    assert payment is not None
    payments.export_autogiro_payments(session, settings=settings, created_by="ops",
                                      today=EXPORT_DAY)
    payer, number = mandate.payer_number or "", invoice.display_number
    summary = pay_result(session, settings, [
        (payer, 120_000, number, "0"),
        ("777777", 125_000, number, "0"),
        (payer, 125_000, "F9999999", "1"),
        (payer, 125_000, number, "9"),
    ])
    assert (summary.paid, summary.failed, summary.retrying) == (0, 0, 1)
    assert summary.problems == [
        f"line 3, payer number {payer}, reference '{number}': Bankgirot reports 120000 öre, "
        f"payment {payment.id} asked 125000",
        f"line 4, payer number 777777, reference '{number}': no payment of ours (approved, "
        "125000 öre)",
        f"line 5, payer number {payer}, reference 'F9999999': no payment of ours "
        "(insufficient funds, 125000 öre)",
    ]
    assert payment.status is PaymentStatus.exported  # status 9: Bankgirot tries again
    assert invoice.status is InvoiceStatus.open


def fail_once(session: Session, settings: Settings, mandate: Mandate, invoice: Invoice,
              code: str, day: date) -> payments.ImportSummary:
    bank_file = payments.export_autogiro_payments(session, settings=settings, created_by="ops",
                                                  today=day - timedelta(days=5))
    assert bank_file is not None
    return pay_result(session, settings, [(mandate.payer_number or "", invoice.total_ore,
                                           invoice.display_number, code)],
                      name=f"spec-{day}.txt", day=day)


def test_a_failed_debit_is_retried_and_the_driver_reminded_in_swedish(
    session: Session, settings: Settings,
) -> None:
    driver, mandate = active_autogiro_driver(session, settings)
    invoice = make_invoice(session, driver=driver, total_ore=125_000)
    first = payments.create_payment(session, invoice=invoice)
    assert first is not None
    summary = fail_once(session, settings, mandate, invoice, "1", date(2026, 11, 15))
    assert summary.failed == 1
    assert (first.status, first.result_code, first.result_text) == (
        PaymentStatus.failed, "1", "insufficient funds")
    assert (invoice.status, invoice.payment_failures) == (InvoiceStatus.failed, 1)
    retry = session.exec(select(Payment).where(col(Payment.attempt) == 2)).one()
    assert (retry.status, retry.due_date, retry.amount_ore) == (
        PaymentStatus.pending, date(2026, 11, 22), 125_000)

    notice = session.exec(select(DunningNotice)).one()
    assert (notice.level, notice.action, notice.invoice_id) == (1, "reminder", invoice.id)
    email = session.get(EmailMessage, notice.email_id)
    assert email is not None
    assert (email.to_address, email.kind, email.invoice_id) == (
        "anna@example.se", "reminder", invoice.id)
    assert email.subject == ("Påminnelse: vi kunde inte dra betalningen för faktura "
                             f"{invoice.display_number}")
    assert "Vi kunde inte dra 1\xa0250,00\xa0kr från ditt konto" in email.body
    assert (f"bankgiro 5050-1055 och ange OCR-nummer {invoice.ocr}") in email.body
    assert "nytt försök att dra beloppet den 22 november 2026" in email.body
    assert payments.dun(session, invoice=invoice, settings=settings).id == notice.id

    fail_once(session, settings, mandate, invoice, "0", date(2026, 11, 22))
    assert (retry.status, invoice.status) == (PaymentStatus.paid, InvoiceStatus.paid)


def test_reminders_follow_the_invoice_language(session: Session, settings: Settings) -> None:
    driver, mandate = active_autogiro_driver(session, settings, language=Language.en,
                                             email="sam@example.com")
    invoice = make_invoice(session, driver=driver, total_ore=99_000)
    payments.create_payment(session, invoice=invoice)
    fail_once(session, settings, mandate, invoice, "2", date(2026, 11, 15))
    email = session.exec(select(EmailMessage)).one()
    assert email.to_address == "sam@example.com"
    assert email.subject == ("Reminder: we could not collect the payment for invoice "
                             f"{invoice.display_number}")
    assert "We could not debit SEK990.00 from your account" in email.body
    assert f"to bankgiro 5050-1055 with OCR reference {invoice.ocr}" in email.body
    # A closed account is not debited again: no retry, no promise of one.
    assert "try to debit" not in email.body
    assert session.exec(select(Payment).where(col(Payment.attempt) == 2)).first() is None


def test_tags_are_blocked_after_the_configured_number_of_failures(
    session: Session, settings: Settings,
) -> None:
    settings = settings.model_copy(update={"dunning_block_after": 2})
    driver, mandate = active_autogiro_driver(session, settings, id_tags=("CARD-1", "APP-1"))
    invoice = make_invoice(session, driver=driver, total_ore=50_000)
    payments.create_payment(session, invoice=invoice)
    fail_once(session, settings, mandate, invoice, "1", date(2026, 11, 15))
    assert {session.get(IdTag, t).status for t in ("CARD-1", "APP-1")} == {IdTagStatus.accepted}
    fail_once(session, settings, mandate, invoice, "1", date(2026, 11, 22))

    assert invoice.payment_failures == 2
    assert {session.get(IdTag, t).status for t in ("CARD-1", "APP-1")} == {IdTagStatus.blocked}
    notices = session.exec(select(DunningNotice).order_by(col(DunningNotice.level))).all()
    assert [(n.level, n.action) for n in notices] == [(1, "reminder"), (2, "blocked")]
    blocked_mail = session.get(EmailMessage, notices[1].email_id)
    assert blocked_mail is not None
    assert blocked_mail.subject.startswith("Dina laddbrickor är spärrade")
    assert "misslyckats 2 gånger" in blocked_mail.body
    # Nothing more is scheduled once the driver is blocked.
    assert session.exec(select(Payment).where(col(Payment.status) == PaymentStatus.pending)
                        ).first() is None
    assert count(session, DriverIdTag) == 2


def test_an_invoice_paid_by_hand_is_not_debited_again(
    session: Session, settings: Settings,
) -> None:
    driver, mandate = active_autogiro_driver(session, settings)
    invoice = make_invoice(session, driver=driver, total_ore=125_000)
    payments.create_payment(session, invoice=invoice)
    fail_once(session, settings, mandate, invoice, "1", date(2026, 11, 15))
    invoice.status = InvoiceStatus.paid  # the driver paid to our bankgiro with the OCR
    session.add(invoice)
    assert payments.export_autogiro_payments(session, settings=settings, created_by="ops",
                                             today=date(2026, 11, 20)) is None
    retry = session.exec(select(Payment).where(col(Payment.attempt) == 2)).one()
    assert (retry.status, retry.result_text) == (PaymentStatus.cancelled, "invoice paid")


def test_cancelling_the_mandate_cancels_payments_not_yet_sent(
    session: Session, settings: Settings,
) -> None:
    driver, mandate = active_autogiro_driver(session, settings)
    payment = payments.create_payment(
        session, invoice=make_invoice(session, driver=driver, total_ore=5_000))
    assert payment is not None
    payments.cancel_mandate(session, mandate_id=mandate.id or 0, created_by="agent")
    assert (payment.status, driver.payment_method) == (PaymentStatus.cancelled,
                                                       PaymentMethod.invoice)
    assert payments.export_autogiro_payments(session, settings=settings, created_by="ops",
                                             today=EXPORT_DAY) is None


# ---------------------------------------------------------------- SEPA


def test_sepa_payments_go_out_as_pain_008_and_results_settle_them(
    session: Session, settings: Settings,
) -> None:
    driver = make_driver(session, name="Jan de Vries", email="jan@example.nl", currency="EUR",
                         language=Language.en)
    mandate = payments.create_mandate(
        session, driver_id=driver.id or 0, scheme="sepa", holder_name="Jan de Vries",
        iban="NL91ABNA0417164300", bic="ABNANL2A", signed_on=date(2026, 10, 1),
        created_by="test")
    payments.activate_mandate(session, mandate_id=mandate.id or 0, created_by="operator")
    first = make_invoice(session, driver=driver, total_ore=4_500)
    second = make_invoice(session, driver=driver, total_ore=9_900)
    created = payments.create_payments(session, invoice_ids=[first.id or 0, second.id or 0])
    assert [p.amount_ore for p in created] == [4_500, 9_900]

    bank_file = payments.export_sepa_payments(session, settings=settings, created_by="ops",
                                              today=EXPORT_DAY)
    assert bank_file is not None and bank_file.kind is BankFileKind.sepa_pain008
    assert bank_file.records == 2
    for invoice in (first, second):
        assert f"<EndToEndId>{invoice.display_number}</EndToEndId>" in bank_file.content
    assert f"<MndtId>{mandate.mandate_reference}</MndtId>" in bank_file.content
    assert "<DtOfSgntr>2026-10-01</DtOfSgntr>" in bank_file.content
    assert "<CtrlSum>144.00</CtrlSum>" in bank_file.content
    assert "<SeqTp>FRST</SeqTp>" in bank_file.content  # the mandate's first collection
    assert all(p.status is PaymentStatus.exported for p in created)

    paid = payments.payment_by_end_to_end_id(session, end_to_end_id=first.display_number)
    payments.record_payment_result(session, payment_id=paid.id or 0, paid=True,
                                   settings=settings)
    assert first.status is InvoiceStatus.paid
    failed = payments.payment_by_end_to_end_id(session, end_to_end_id=second.display_number)
    payments.record_payment_result(session, payment_id=failed.id or 0, paid=False,
                                   code="AM04", text="insufficient funds", settings=settings)
    payments.record_payment_result(session, payment_id=failed.id or 0, paid=False,
                                   code="AM04", text="insufficient funds", settings=settings)
    assert (second.status, second.payment_failures) == (InvoiceStatus.failed, 1)
    with pytest.raises(Conflict, match="only a payment sent to the bank can be settled"):
        payments.record_payment_result(session, payment_id=failed.id or 0, paid=True,
                                       settings=settings)
    email = session.exec(select(EmailMessage)).one()
    assert "We could not debit €99.00 from your account" in email.body
    assert (f"to IBAN {settings.sepa_iban} (BIC {settings.sepa_bic}) with reference "
            f"{second.ocr}") in email.body

    retry_file = payments.export_sepa_payments(session, settings=settings, created_by="ops",
                                               today=date(2026, 11, 20))
    assert retry_file is not None
    assert "<SeqTp>RCUR</SeqTp>" in retry_file.content
    assert "<ReqdColltnDt>2026-11-22</ReqdColltnDt>" in retry_file.content
