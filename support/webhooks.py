"""Outgoing webhooks: other systems hear about tickets as they change.

Events: ``conversation.created`` (a ticket was opened from an escalation),
``conversation.status_changed``, ``message.created`` (a driver's or an agent's message on a
ticket's conversation), ``conversation.assigned`` and ``conversation.sla_breached``.

Deliveries are written in the same transaction as the change they report (an outbox), so
nothing is announced that did not happen and nothing that happened is lost; the delivery
job posts them and retries failures with growing pauses (:data:`BACKOFF`), giving up after
the last. Each POST carries::

    X-ChargeDesk-Event: message.created
    X-ChargeDesk-Delivery: 42
    X-ChargeDesk-Signature: t=1767225600,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>

The receiver recomputes the HMAC over the timestamp, a dot and the raw body with its
webhook's secret, compares in constant time, and refuses old timestamps (replays);
:func:`verify` does exactly that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from chargedesk.db import run_in_session
from support.models import DeliveryStatus, Webhook, WebhookDelivery

log = structlog.get_logger(__name__)

EVENTS = ("conversation.created", "conversation.status_changed", "message.created",
          "conversation.assigned", "conversation.sla_breached")
# Pauses before the 2nd, 3rd, ... attempt; after the last, the delivery has failed.
BACKOFF = (timedelta(seconds=10), timedelta(seconds=30), timedelta(minutes=2),
           timedelta(minutes=10), timedelta(minutes=30), timedelta(hours=2),
           timedelta(hours=6))
MAX_ATTEMPTS = len(BACKOFF) + 1
# A delivery being posted is leased for this long, so a second process leaves it alone.
LEASE = timedelta(seconds=60)
TIMEOUT_S = 10.0
BATCH = 50
TOLERANCE_S = 300


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           tolerance_s: int = TOLERANCE_S) -> bool:
    """Whether ``header`` (X-ChargeDesk-Signature) signs ``body`` with ``secret``,
    recently."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def enqueue(session: Session, *, event: str, data: dict[str, Any], now: datetime) -> int:
    """Owe ``event`` to every active webhook that wants it; returns how many."""
    assert event in EVENTS, event
    hooks = [h for h in session.exec(select(Webhook).where(col(Webhook.active))).all()
             if not h.events or event in h.events]
    for hook in hooks:
        row = WebhookDelivery(webhook_id=hook.id or 0, event=event, body="",
                              next_attempt_at=now, created_at=now)
        session.add(row)
        session.flush()
        row.body = json.dumps({"id": row.id, "event": event, "created_at": now.isoformat(),
                               "data": data}, separators=(",", ":"), default=str)
        session.add(row)
    return len(hooks)


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    url: str
    secret: str
    event: str
    body: str
    attempts: int


def _claim(session: Session, *, now: datetime) -> list[Attempt]:
    rows = session.exec(
        select(WebhookDelivery, Webhook)
        .join(Webhook, col(Webhook.id) == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.status == DeliveryStatus.pending,
               col(WebhookDelivery.next_attempt_at) <= now)
        .order_by(col(WebhookDelivery.id)).limit(BATCH)
        .with_for_update(skip_locked=True, of=WebhookDelivery)).all()
    claimed = []
    for delivery, hook in rows:
        delivery.next_attempt_at = now + LEASE
        session.add(delivery)
        claimed.append(Attempt(delivery.id or 0, hook.url, hook.secret, delivery.event,
                               delivery.body, delivery.attempts))
    return claimed


def _settle(session: Session, *, delivery_id: int, now: datetime, status_code: int | None,
            error: str | None) -> None:
    row = session.get(WebhookDelivery, delivery_id)
    if row is None:
        return
    row.attempts += 1
    row.last_status_code = status_code
    if error is None:
        row.status = DeliveryStatus.delivered
        row.delivered_at = now
        row.last_error = None
    else:
        row.last_error = error[:500]
        if row.attempts >= MAX_ATTEMPTS:
            row.status = DeliveryStatus.failed
        else:
            row.next_attempt_at = now + BACKOFF[row.attempts - 1]
    session.add(row)


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0


async def deliver_due(engine: Engine, *, clock: Callable[[], datetime],
                      client: httpx.AsyncClient | None = None) -> DeliveryReport:
    """Post every delivery that is due; record each outcome (and when to retry)."""
    report = DeliveryReport()
    claimed = await run_in_session(engine, _claim, now=clock())
    if not claimed:
        return report
    own = client is None
    http = client or httpx.AsyncClient(timeout=TIMEOUT_S)
    try:
        for attempt in claimed:
            body = attempt.body.encode()
            headers = {"Content-Type": "application/json",
                       "User-Agent": "ChargeDesk-Webhooks/1",
                       "X-ChargeDesk-Event": attempt.event,
                       "X-ChargeDesk-Delivery": str(attempt.delivery_id),
                       "X-ChargeDesk-Signature": signature(attempt.secret, body,
                                                           int(clock().timestamp()))}
            status_code: int | None = None
            error: str | None = None
            try:
                response = await http.post(attempt.url, content=body, headers=headers)
                status_code = response.status_code
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            await run_in_session(engine, _settle, delivery_id=attempt.delivery_id,
                                 now=clock(), status_code=status_code, error=error)
            if error is None:
                report.delivered += 1
            else:
                report.failed += 1
                log.info("webhook delivery failed", delivery_id=attempt.delivery_id,
                         url=attempt.url, attempt=attempt.attempts + 1, error=error)
    finally:
        if own:
            await http.aclose()
    return report


def list_deliveries(session: Session, *, webhook_id: int, limit: int = 100
                    ) -> list[WebhookDelivery]:
    return list(session.exec(select(WebhookDelivery).where(
        WebhookDelivery.webhook_id == webhook_id)
        .order_by(col(WebhookDelivery.id).desc()).limit(limit)).all())
