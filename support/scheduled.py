"""The support desk's jobs (APScheduler), each on the desk's clock:

- ``support-inbox`` every ``CHARGEDESK_SUPPORT_POLL_SECONDS``: drivers' messages on tickets
  (and their answers to the satisfaction question);
- ``support-timers`` every ``CHARGEDESK_SUPPORT_SLA_TICK_SECONDS``: SLA warnings and
  breaches (escalated to a supervisor), reassignment without a first reply, queued tickets
  to agents who came online, snoozes ending, unanswered ratings, escalations without a
  ticket;
- ``support-webhooks`` every few seconds: deliveries due (new ones and retries).

They run in the service process beside billing's scheduler when
``CHARGEDESK_SUPPORT_SCHEDULER`` (default: as ``CHARGEDESK_SCHEDULER``) is on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

if TYPE_CHECKING:
    from support.desk import Desk

log = structlog.get_logger(__name__)

WEBHOOK_SECONDS = 5.0


def build_scheduler(desk: Desk) -> AsyncIOScheduler:
    settings = desk.settings
    scheduler = AsyncIOScheduler(timezone=ZoneInfo(settings.time_zone))

    async def guarded(name: str, job) -> None:  # type: ignore[no-untyped-def]
        try:
            await job()
        except Exception:
            log.exception("support job failed", job=name)

    for name, job, seconds in (
            ("support-inbox", desk.read_inbox, settings.support_poll_seconds),
            ("support-timers", desk.run_timers, settings.support_sla_tick_seconds),
            ("support-webhooks", desk.push_webhooks, WEBHOOK_SECONDS)):
        scheduler.add_job(guarded, IntervalTrigger(seconds=seconds), args=(name, job), id=name,
                          max_instances=1, coalesce=True, misfire_grace_time=None)
    return scheduler


async def run(desk: Desk) -> None:
    """A background job of the service: the desk's scheduler until the service stops."""
    if not desk.jobs_enabled:
        return
    desk.loop = asyncio.get_running_loop()
    scheduler = build_scheduler(desk)
    scheduler.start()
    try:
        await asyncio.Event().wait()
    finally:
        scheduler.shutdown(wait=False)
