"""The monthly invoice run as the scheduler starts it, and catching up a missed one."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlmodel import select

from billing_api import scheduled
from billing_api.models import Invoice, Payment, PaymentStatus
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver, make_rated_session
from tests.billing_api.test_payments import active_autogiro_driver


def test_the_scheduled_run_invoices_last_month_and_creates_direct_debits(engine) -> None:
    settings = Settings()
    with session_scope(engine) as session:
        plain = make_driver(session, name="Plain")
        debited, _ = active_autogiro_driver(session, settings, name="Debited")
        for driver in (plain, debited):
            make_rated_session(session, driver=driver,
                               start=datetime(2026, 10, 12, 9, tzinfo=UTC))
    assert scheduled.missed_run(engine, settings, today=date(2026, 11, 24))
    report = scheduled.monthly_invoice_run(engine, settings, today=date(2026, 11, 1))
    assert (report.period_start, report.invoices) == (date(2026, 10, 1), 2)
    assert not scheduled.missed_run(engine, settings, today=date(2026, 11, 24))
    with session_scope(engine) as session:
        invoice = session.exec(select(Invoice).where(Invoice.driver_id == debited.id)).one()
        payment = session.exec(select(Payment)).one()
        assert (payment.invoice_id, payment.amount_ore, payment.status) == (
            invoice.id, invoice.total_ore, PaymentStatus.pending)


def test_the_scheduler_has_the_monthly_run_and_the_mail_job(engine) -> None:
    settings = Settings(invoice_run_day=2, invoice_run_hour=4)
    scheduler = scheduled.build_scheduler(engine, settings)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert {"monthly-invoice-run", "deliver-email"} <= set(jobs)
    trigger = str(jobs["monthly-invoice-run"].trigger)
    assert "day='2'" in trigger and "hour='4'" in trigger
    # Nothing was ever run for last month: a catch-up run is queued at start.
    assert "catch-up-invoice-run" in jobs
