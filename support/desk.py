"""The support desk in a running service: what ``chargedesk.app`` installs.

:func:`install` adds the REST API (``/api/v1/support``) and the console (``/agent``),
subscribes to the assistant's ``ConversationEscalated`` (a ticket at once), registers a
handoff note with the assistant (outside business hours the driver is told when a person
will answer), and adds the desk's jobs (:mod:`support.scheduled`) unless they are off.

Everything that needs the time asks :attr:`Desk.clock`, which tests replace to move time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from chargedesk.db import run_in_session
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from support import routing, service, webhooks
from support.models import WebhookDelivery

log = structlog.get_logger(__name__)


@dataclass
class Desk:
    runtime: Any
    clock: Callable[[], datetime] = utcnow
    # The service's event loop (learnt when the jobs start or a task is spawned).
    loop: asyncio.AbstractEventLoop | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def engine(self) -> Any:
        return self.runtime.engine

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    @property
    def jobs_enabled(self) -> bool:
        enabled = self.settings.support_scheduler
        return bool(self.settings.scheduler if enabled is None else enabled)

    def deliverable(self, channel: str) -> bool:
        from assistant.channels import outbound

        return channel in outbound.channels(self.runtime)

    def is_online(self, station_id: str) -> bool:
        return bool(self.runtime.central.is_online(station_id))

    # ------------------------------------------------------------ messages out

    async def deliver(self, outgoing: list[service.Outgoing]) -> list[str]:
        """Send messages decided in a committed transaction; the errors, if any (a
        channel not installed here, a provider failing)."""
        from assistant.channels import outbound

        problems = []
        for item in outgoing:
            try:
                await outbound.send(self.runtime, channel=item.channel, sender=item.sender,
                                    messages=item.messages,
                                    conversation_id=item.conversation_id)
            except Exception as exc:
                log.warning("support message not delivered", channel=item.channel,
                            conversation_id=item.conversation_id, error=str(exc))
                problems.append(f"{item.channel}: {exc}")
        return problems

    def kick_webhooks(self) -> None:
        """Post new webhook deliveries now rather than at the next job run. Callable from
        the event loop and from the worker threads plain ``def`` endpoints run in."""
        if not self.jobs_enabled:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: hand it to the service's loop
            if self.loop is not None and self.loop.is_running():
                asyncio.run_coroutine_threadsafe(
                    webhooks.deliver_due(self.engine, clock=self.clock), self.loop)
            return  # else the webhook job posts it shortly
        self._spawn(webhooks.deliver_due(self.engine, clock=self.clock))

    def _spawn(self, coroutine: Any) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ the assistant's events

    async def on_escalated(self, event: Any) -> None:
        """A handover: its ticket, routed to an online agent of its team."""
        await self.open_ticket(event.escalation_id)

    async def open_ticket(self, escalation_id: int) -> service.Opened | None:
        try:
            opened = await run_in_session(self.engine, service.open_from_escalation,
                                          escalation_id=escalation_id, now=self.clock(),
                                          settings=self.settings)
        except IntegrityError:
            log.info("escalation already has its ticket", escalation_id=escalation_id)
            return None
        if opened is not None:
            log.info("ticket opened", ticket_id=opened.ticket_id, created=opened.created,
                     escalation_id=escalation_id, assignee_id=opened.assignee_id)
            self.kick_webhooks()
        return opened

    async def handoff_note(self, runtime: Any, conversation: Any, reason: str,
                           intent: str | None) -> list[dict[str, Any]]:
        """For the assistant's handoff turn: when the team is closed, when a person will
        answer."""
        text = await run_in_session(self.engine, routing.handoff_note, intent=intent,
                                    language=conversation.language, now=self.clock())
        return [{"text": text}] if text else []

    # ------------------------------------------------------------ the jobs

    async def read_inbox(self) -> int:
        outgoing, owed = await run_in_session(self.engine, _read_inbox, now=self.clock(),
                                              settings=self.settings)
        await self.deliver(outgoing)
        # Posted now, reply or not: a rating answer that needs none (a new score while a
        # comment is awaited), a message on an open ticket, a rating that reopened one.
        if outgoing or owed:
            self.kick_webhooks()
        return len(outgoing)

    async def run_timers(self) -> service.TimerReport:
        await self.sweep_escalations()
        report = await run_in_session(self.engine, service.run_timers, now=self.clock(),
                                      settings=self.settings)
        await self.deliver(report.outgoing)
        if report.warned or report.breached or report.reassigned or report.routed:
            log.info("support timers", warned=report.warned, breached=report.breached,
                     reassigned=report.reassigned, routed=report.routed)
        return report

    async def sweep_escalations(self) -> int:
        """Escalations without a ticket (recorded by another process, or while this one
        was down) get theirs."""
        ids = await run_in_session(self.engine, service.escalations_without_ticket,
                                   now=self.clock())
        for escalation_id in ids:
            await self.open_ticket(escalation_id)
        return len(ids)

    async def push_webhooks(self) -> webhooks.DeliveryReport:
        return await webhooks.deliver_due(self.engine, clock=self.clock)


def _read_inbox(session: Session, *, now: datetime, settings: Settings
                ) -> tuple[list[service.Outgoing], bool]:
    """:func:`service.read_inbox`, and whether it owes webhook deliveries (rows it added),
    so they are posted at once rather than by the next run of the webhook job."""
    owed: list[bool] = []

    def added(flushing: Session, *_: Any) -> None:
        if not owed and any(isinstance(row, WebhookDelivery) for row in flushing.new):
            owed.append(True)

    event.listen(session, "before_flush", added)
    try:
        outgoing = service.read_inbox(session, now=now, settings=settings)
        added(session)  # anything not flushed yet
    finally:
        event.remove(session, "before_flush", added)
    return outgoing, bool(owed)


def install(app: Any, *, clock: Callable[[], datetime] | None = None) -> Desk:
    """Wire the desk into ``app`` (see the module docstring)."""
    from assistant.events import ConversationEscalated
    from assistant.service import add_handoff_note
    from support import console, scheduled, views

    runtime = app.state.runtime
    desk = Desk(runtime, clock=clock or utcnow)
    app.state.support = desk
    app.include_router(views.router)
    app.include_router(console.router)
    runtime.bus.subscribe(ConversationEscalated, desk.on_escalated)
    add_handoff_note(runtime, desk.handoff_note)
    runtime.jobs.append(lambda _runtime: scheduled.run(desk))
    from support import contacts

    contacts.install(app, desk)  # one history per driver; tickets follow them across channels
    return desk
