"""Billing's scheduled jobs (APScheduler): the monthly invoice run and e-mail delivery."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from billing_api import invoicing, mailer, payments
from billing_api.models import InvoiceRun
from chargedesk.db import run_in_session, session_scope
from chargedesk.settings import Settings

log = structlog.get_logger(__name__)

EMAIL_INTERVAL_SECONDS = 60


def after_invoices(settings: Settings):  # type: ignore[no-untyped-def]
    """What the run does with each batch of new invoices, in the batch's transaction: the
    direct debits of drivers with a mandate. E-mails follow after the run (the mail job),
    since rendering a PDF costs far more than issuing the invoice."""

    def follow_up(session: Session, invoice_ids: list[int]) -> None:
        payments.create_payments(session, invoice_ids=invoice_ids)

    return follow_up


def monthly_invoice_run(engine: Engine, settings: Settings, *, today: date | None = None
                        ) -> invoicing.RunReport:
    """Invoice the month before ``today`` (local time); safe to run again."""
    today = today or datetime.now(ZoneInfo(settings.time_zone)).date()
    return invoicing.run_invoices(
        engine, period_start=invoicing.previous_month(today), settings=settings,
        started_by="scheduler", today=today, after_batch=after_invoices(settings),
    )


def missed_run(engine: Engine, settings: Settings, *, today: date) -> bool:
    """True when the last month's run should have happened and has not completed: the
    service was down on the day. The scheduler keeps jobs in memory, so it cannot tell."""
    if today.day < settings.invoice_run_day:
        return False
    period = invoicing.previous_month(today)
    with session_scope(engine) as session:
        done = session.exec(
            select(InvoiceRun.id).where(col(InvoiceRun.period_start) == period,
                                        col(InvoiceRun.status) == "completed")
        ).first()
    return done is None


def build_scheduler(engine: Engine, settings: Settings) -> AsyncIOScheduler:
    zone = ZoneInfo(settings.time_zone)
    scheduler = AsyncIOScheduler(timezone=zone)

    async def invoice_run() -> None:
        report = await asyncio.to_thread(monthly_invoice_run, engine, settings)
        log.info("scheduled invoice run done", invoices=report.invoices,
                 total_ore=report.total_ore)

    async def deliver_email() -> None:
        await run_in_session(engine, mailer.queue_new_invoices, settings=settings)
        report = await mailer.deliver_pending(engine, settings)
        if report.sent or report.failed:
            log.info("e-mail delivered", sent=report.sent, failed=report.failed)

    scheduler.add_job(
        invoice_run, CronTrigger(day=settings.invoice_run_day, hour=settings.invoice_run_hour,
                                 timezone=zone),
        id="monthly-invoice-run", max_instances=1, coalesce=True, misfire_grace_time=6 * 3600,
    )
    scheduler.add_job(deliver_email, IntervalTrigger(seconds=EMAIL_INTERVAL_SECONDS),
                      id="deliver-email", max_instances=1, coalesce=True)
    if missed_run(engine, settings, today=datetime.now(zone).date()):
        log.info("last month's invoice run is missing: running it now")
        scheduler.add_job(invoice_run, id="catch-up-invoice-run", max_instances=1)
    return scheduler
