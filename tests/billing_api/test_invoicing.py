"""Invoices: monthly runs that bill each session once, gapless numbers, credit notes."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlmodel import Session, col, select
from stdnum import luhn

from billing_api import invoicing
from billing_api.models import (
    ChargingSession,
    Driver,
    Invoice,
    InvoiceKind,
    InvoiceRun,
    InvoiceStatus,
    Language,
    PaymentMethod,
    SessionCostLine,
)
from billing_api.service import BillingError
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver, make_rated_session

OCTOBER = date(2026, 10, 1)
NOVEMBER_2 = date(2026, 11, 2)


def settings() -> Settings:
    return Settings(invoice_due_days=14)


def seed(engine, drivers: int = 3, sessions_each: int = 2) -> list[int]:
    ids = []
    with session_scope(engine) as session:
        for n in range(drivers):
            driver = make_driver(session, name=f"Driver {n}", email=f"d{n}@example.se")
            for k in range(sessions_each):
                make_rated_session(session, driver=driver,
                                   start=datetime(2026, 10, 3 + k, 8, tzinfo=UTC),
                                   energy_wh=10_000 * (k + 1))
            ids.append(driver.id)
    return ids


def run(engine, **kw):
    return invoicing.run_invoices(engine, period_start=OCTOBER, settings=settings(),
                                  started_by="test", today=NOVEMBER_2, **kw)


def test_ocr_reference_has_length_and_luhn_check_digits() -> None:
    ocr = invoicing.ocr_reference(InvoiceKind.invoice, 123)
    assert ocr == "10000123" + "0" + luhn.calc_check_digit("100001230")
    assert luhn.is_valid(ocr)
    assert int(ocr[-2]) == len(ocr) % 10
    assert invoicing.ocr_reference(InvoiceKind.credit_note, 123)[0] == "2"


def test_vat_is_computed_once_per_rate_on_summed_net_amounts() -> None:
    # Three lines of 0.02 kr at 25 %: per line VAT would round 0.005 up three times (0.03);
    # on the sum, 0.06 x 25 % = 0.015 -> 0.02.
    breakdown = invoicing.vat_breakdown([(Decimal(25), 2)] * 3 + [(Decimal(6), 1000)])
    assert breakdown == [
        {"rate": "6", "base_ore": 1000, "vat_ore": 60},
        {"rate": "25", "base_ore": 6, "vat_ore": 2},
    ]


def test_monthly_run_bills_every_session_once_with_summed_lines(engine) -> None:
    drivers = seed(engine)
    report = run(engine)
    assert report.invoices == 3
    with session_scope(engine) as session:
        invoices = session.exec(select(Invoice).order_by(col(Invoice.number))).all()
        assert [i.number for i in invoices] == [1, 2, 3]
        assert {i.driver_id for i in invoices} == set(drivers)
        first = invoices[0]
        lines = invoicing.invoice_lines(session, invoice_id=first.id)
        # Two sessions: 2 x 5.00 session fee, 10 + 20 kWh at 3.20.
        assert [(ln.dimension, ln.quantity, ln.unit_price, ln.net_ore) for ln in lines] == [
            ("FLAT", Decimal(2), Decimal(5), 1000),
            ("ENERGY", Decimal(30), Decimal("3.2"), 9600),
        ]
        assert lines[1].description == "Energi"
        assert (first.net_ore, first.vat_ore, first.total_ore) == (10600, 2650, 13250)
        assert json.loads(first.vat_breakdown) == [
            {"rate": "25", "base_ore": 10600, "vat_ore": 2650}]
        assert first.due_date == date(2026, 11, 16)
        assert first.status == InvoiceStatus.open
        assert luhn.is_valid(first.ocr)
        billed = session.exec(select(ChargingSession).where(
            ChargingSession.driver_id == first.driver_id)).all()
        assert {s.invoice_id for s in billed} == {first.id}
        assert report.total_ore == sum(i.total_ore for i in invoices)
    again = run(engine)
    assert (again.invoices, again.skipped_already_invoiced) == (0, 3)


def test_sessions_after_the_period_wait_for_the_next_run(engine) -> None:
    with session_scope(engine) as session:
        driver = make_driver(session)
        make_rated_session(session, driver=driver, start=datetime(2026, 10, 31, 22, 30,
                                                                  tzinfo=UTC))  # ends 00:30 local
    assert run(engine).invoices == 0


def test_a_run_in_many_batches_numbers_in_driver_order_and_links_every_session(engine) -> None:
    # Seven drivers in batches of two: on PostgreSQL the batches are prepared side by side
    # (stored under provisional numbers) and numbered in order as each commits.
    drivers = seed(engine, drivers=7, sessions_each=2)
    done: list[tuple[int, int]] = []
    report = run(engine, batch_size=2, on_batch=lambda d, n: done.append((d, n)))
    assert report.invoices == 7 and done == [(2, 7), (4, 7), (6, 7), (7, 7)]
    with session_scope(engine) as session:
        invoices = session.exec(select(Invoice).order_by(col(Invoice.number))).all()
        assert [i.number for i in invoices] == [1, 2, 3, 4, 5, 6, 7]
        assert [i.driver_id for i in invoices] == sorted(drivers)
        ids = [i.id for i in invoices]
        assert ids == sorted(ids)  # ids follow the numbers
        for invoice in invoices:
            assert invoice.ocr == invoicing.ocr_reference(InvoiceKind.invoice, invoice.number)
            lines = invoicing.invoice_lines(session, invoice_id=invoice.id)
            assert [(ln.position, ln.dimension) for ln in lines] == [(1, "FLAT"), (2, "ENERGY")]
            assert invoice.net_ore == sum(ln.net_ore for ln in lines) == 10600
            linked = session.exec(select(ChargingSession).where(
                ChargingSession.driver_id == invoice.driver_id)).all()
            assert [s.invoice_id for s in linked] == [invoice.id, invoice.id]
        assert report.total_ore == sum(i.total_ore for i in invoices)
        assert session.exec(select(InvoiceRun)).one().status == "completed"


def test_a_batch_links_exactly_the_sessions_it_billed(engine) -> None:
    # Batches of two. The second driver's session has no cost lines left, so that driver
    # gets no invoice and keeps the session open, while the other driver of its batch is
    # billed; a session that ends after the period stays open too.
    drivers = seed(engine, drivers=4, sessions_each=1)
    with session_scope(engine) as session:
        rows = {s.driver_id: s for s in session.exec(select(ChargingSession)).all()}
        session.execute(SessionCostLine.__table__.delete().where(
            SessionCostLine.__table__.c.session_id == rows[drivers[1]].id))
        driver = session.get(Driver, drivers[2])
        later = make_rated_session(session, driver=driver,
                                   start=datetime(2026, 11, 1, 8, tzinfo=UTC)).id
    report = run(engine, batch_size=2)
    assert report.invoices == 3
    with session_scope(engine) as session:
        invoices = {i.driver_id: i for i in session.exec(select(Invoice)).all()}
        assert sorted(invoices) == sorted([drivers[0], drivers[2], drivers[3]])
        assert [i.number for i in sorted(invoices.values(), key=lambda i: i.driver_id)] == [
            1, 2, 3]
        for s in session.exec(select(ChargingSession)).all():
            expected = None if s.id == later or s.driver_id == drivers[1] else (
                invoices[s.driver_id].id)
            assert s.invoice_id == expected


def test_a_crashed_run_leaves_no_gap_and_a_rerun_completes_it(engine) -> None:
    seed(engine, drivers=5, sessions_each=1)
    calls = 0

    def crash_on_second_batch(session: Session, invoice_ids: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        run(engine, batch_size=2, after_batch=crash_on_second_batch)
    with session_scope(engine) as session:
        assert [i.number for i in session.exec(select(Invoice).order_by(Invoice.number))] == [1, 2]
        failed = session.exec(select(InvoiceRun)).one()
        assert (failed.status, failed.invoices) == ("failed", 2)
    report = run(engine, batch_size=2)
    assert (report.invoices, report.skipped_already_invoiced) == (3, 2)
    with session_scope(engine) as session:
        numbers = [i.number for i in session.exec(select(Invoice).order_by(Invoice.number))]
        assert numbers == [1, 2, 3, 4, 5]
        assert len({i.driver_id for i in session.exec(select(Invoice))}) == 5


def test_concurrent_issuers_take_distinct_consecutive_numbers(engine) -> None:
    taken: list[int] = []
    lock = threading.Lock()

    def issue() -> None:
        for _ in range(10):
            with session_scope(engine) as session:
                number = invoicing.take_numbers(session, series="T")
            with lock:
                taken.append(number)

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(1, 41))


def test_prepaid_drivers_receive_a_settled_receipt(engine) -> None:
    with session_scope(engine) as session:
        driver = make_driver(session, payment_method=PaymentMethod.prepaid,
                             language=Language.en)
        make_rated_session(session, driver=driver)
    run(engine)
    with session_scope(engine) as session:
        invoice = session.exec(select(Invoice)).one()
        assert invoice.status == InvoiceStatus.paid and invoice.paid_at is not None
        assert invoicing.invoice_lines(session, invoice_id=invoice.id)[0].description == \
            "Session fee"


def test_a_period_must_have_ended(engine) -> None:
    with pytest.raises(BillingError, match="has not ended"):
        invoicing.run_invoices(engine, period_start=OCTOBER, settings=settings(),
                               started_by="t", today=date(2026, 10, 20))


def test_a_rerated_session_is_credited_and_billed_again(engine) -> None:
    seed(engine, drivers=1, sessions_each=2)
    run(engine)
    with session_scope(engine) as session:
        row = session.exec(select(ChargingSession).order_by(ChargingSession.id)).first()
        invoice = session.get(Invoice, row.invoice_id)
        old = invoicing.cost_lines(session, session_id=row.id)
        note = invoicing.credit_session(session, row=row, previous_lines=old,
                                        reason="late meter values", settings=settings(),
                                        created_by="test")
        assert note.kind == InvoiceKind.credit_note and note.series == "K"
        assert note.credits_invoice_id == invoice.id
        assert (note.net_ore, note.vat_ore, note.total_ore) == (-3700, -925, -4625)
        assert note.status == InvoiceStatus.settled
        assert row.invoice_id is None
        # The invoice keeps its amounts; it is only partly credited.
        assert (invoice.total_ore, invoice.status) == (13250, InvoiceStatus.open)
    with session_scope(engine) as session:
        again = invoicing.invoice_driver_now(session, driver_id=row.driver_id,
                                             settings=settings(), created_by="test")
        assert again is not None and again.total_ore == 4625 and again.number == 2


def test_credits_cannot_exceed_the_invoice(engine) -> None:
    seed(engine, drivers=1, sessions_each=1)
    run(engine)
    with session_scope(engine) as session:
        invoice = session.exec(select(Invoice)).one()
        invoicing.credit_amount(session, invoice=invoice, net_ore=2000, vat_rate=Decimal(25),
                                reason="goodwill", settings=settings(), created_by="agent")
        with pytest.raises(BillingError, match="exceed"):
            invoicing.credit_amount(session, invoice=invoice, net_ore=invoice.net_ore,
                                    vat_rate=Decimal(25), reason="again", settings=settings(),
                                    created_by="agent")
        invoicing.credit_amount(session, invoice=invoice, net_ore=invoice.net_ore - 2000,
                                vat_rate=Decimal(25), reason="rest", settings=settings(),
                                created_by="agent")
        assert invoice.status == InvoiceStatus.credited
