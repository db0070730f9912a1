"""Outgoing e-mail: messages are recorded first, then delivered over SMTP.

A message is a row (:class:`EmailMessage`) written in the transaction that decides to send it;
:func:`deliver_pending` sends queued rows later, attaching an invoice's PDF rendered at send
time. A deliverer claims a row before sending it, by stamping ``sent_at`` on the still-queued
row in one conditional UPDATE: while ``status`` is ``queued``, ``sent_at`` is when a deliverer
took it, and no other deliverer takes it again until that claim is :data:`CLAIM_TIMEOUT` old
(the first one crashed). On success ``status`` becomes ``sent`` and ``sent_at`` the time it
went; on failure the claim is released and the error kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage as MimeMessage
from email.utils import formatdate, parseaddr

import aiosmtplib
import structlog
from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session, col, select

from billing_api.documents import (
    Formatter,
    InvoiceDocument,
    attachment_name,
    invoice_document,
    labels,
    payment_note,
    render_pdf,
)
from billing_api.models import Driver, EmailMessage, EmailStatus, Invoice, InvoiceKind
from billing_api.service import BillingError
from chargedesk.db import run_in_session
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

# Attempts (connection, refusal, timeout) before a message is given up as failed.
MAX_ATTEMPTS = 5
# A claim older than this belongs to a deliverer that died; well above SMTP_TIMEOUT, so a slow
# but live deliverer never has its message taken and sent a second time.
CLAIM_TIMEOUT = timedelta(minutes=15)
SMTP_TIMEOUT = 60.0
# Messages whose invoice is the point of the mail: delivering one records Invoice.sent_at.
INVOICE_KINDS = frozenset({InvoiceKind.invoice.value, InvoiceKind.credit_note.value})


def queue_email(
    session: Session,
    *,
    to_address: str,
    subject: str,
    body: str,
    kind: str,
    driver_id: int | None = None,
    invoice_id: int | None = None,
) -> EmailMessage:
    """Record a message to send; it is delivered after the caller's transaction commits,
    so a rolled-back invoice never e-mails anyone and an SMTP outage loses nothing."""
    message = EmailMessage(
        driver_id=driver_id, to_address=to_address, subject=subject, body=body, kind=kind,
        invoice_id=invoice_id,
    )
    session.add(message)
    session.flush()
    return message


# ---------------------------------------------------------------- invoices by e-mail


def send_invoice(session: Session, *, invoice_id: int, settings: Settings) -> EmailMessage:
    """Queue an invoice or credit note for e-mail to its buyer, in the invoice's language;
    the PDF is attached when the message is delivered.

    It goes to the driver's current address (where they want mail now), or, for a driver
    without one, to the address the invoice was issued to. Raises ``NotFound`` for an unknown
    invoice and ``BillingError`` when there is no address at all.
    """
    doc = invoice_document(session, invoice_id=invoice_id)
    invoice = session.get(Invoice, invoice_id)
    assert invoice is not None  # invoice_document found it
    driver = session.get(Driver, invoice.driver_id)
    to_address = (driver.email if driver is not None else None) or invoice.buyer_email
    if not to_address:
        raise BillingError(
            f"cannot e-mail {doc.number}: {doc.buyer.name} has no e-mail address"
        )
    t = labels(doc.language)
    subject_key = "mail_subject_credit_note" if doc.is_credit_note else "mail_subject_invoice"
    return queue_email(
        session, to_address=to_address,
        subject=t[subject_key].format(number=doc.number, seller=doc.seller.name),
        body=invoice_mail_body(doc, contact=doc.seller.email or settings.seller_email),
        kind=doc.kind.value, driver_id=invoice.driver_id, invoice_id=invoice_id,
    )


def queue_new_invoices(session: Session, *, settings: Settings, limit: int = 200) -> int:
    """Queue the e-mail of invoices and credit notes never queued yet (the monthly run
    issues thousands at once; this drains them a few hundred per call, after the run).
    Buyers without any e-mail address are skipped: their invoices are fetched on request."""
    queued = select(EmailMessage.id).where(col(EmailMessage.invoice_id) == Invoice.id)
    rows = session.exec(
        select(Invoice.id).join(Driver, col(Driver.id) == Invoice.driver_id)
        .where(~queued.exists(), col(Invoice.sent_at).is_(None),
               or_(col(Driver.email).is_not(None), col(Invoice.buyer_email).is_not(None)))
        .order_by(col(Invoice.id)).limit(limit)
    ).all()
    for invoice_id in rows:
        send_invoice(session, invoice_id=invoice_id or 0, settings=settings)
    return len(rows)


def invoice_mail_body(doc: InvoiceDocument, *, contact: str) -> str:
    """The short plain-text letter that carries an invoice's PDF."""
    t = labels(doc.language)
    f = Formatter(doc.language, doc.currency)
    if doc.is_credit_note:
        intro = t["mail_credit_note"].format(
            number=doc.number, credits=doc.credits_number or "",
            total=f.money(abs(doc.total_ore)))
    else:
        period = f.period(doc.period_start, doc.period_last_day)
        intro = t["mail_invoice"].format(
            number=doc.number, period=t["mail_period"].format(period=period) if period else "",
            total=f.money(doc.total_ore), due=f.date(doc.due_date))
    paragraphs = [
        t["mail_greeting"].format(name=doc.buyer.name),
        f"{intro}\n{payment_note(doc)}",
        t["mail_attached"],
        t["mail_questions"].format(contact=contact),
        f"{t['mail_regards']}\n{doc.seller.name}",
    ]
    return "\n\n".join(paragraphs) + "\n"


# ---------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed message, detached from its session so SMTP work needs no database."""

    id: int
    to_address: str
    subject: str
    body: str
    kind: str
    invoice_id: int | None
    attempt: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one :func:`deliver_pending` call did."""

    smtp_configured: bool
    sent: int = 0
    retrying: int = 0  # failed this time, still queued for another attempt
    failed: int = 0  # failed for the last time (MAX_ATTEMPTS)
    queued: int = 0  # left waiting when SMTP is not configured
    errors: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        if not self.smtp_configured:
            return (f"SMTP is not configured (CHARGEDESK_SMTP_HOST is empty): "
                    f"{self.queued} message(s) stay queued")
        return f"sent {self.sent}, to retry {self.retrying}, given up {self.failed}"


def claim_messages(
    session: Session, *, limit: int, now: datetime | None = None
) -> list[Outgoing]:
    """Take up to ``limit`` queued messages for sending, oldest first, counting the attempt.

    One conditional UPDATE: a row another deliverer claimed meanwhile no longer matches
    (PostgreSQL re-checks the condition on the row it locks, SQLite has a single writer), so
    each message goes to one deliverer only.
    """
    now = now or utcnow()
    claimable = (col(EmailMessage.status) == EmailStatus.queued) & or_(
        col(EmailMessage.sent_at).is_(None), col(EmailMessage.sent_at) < now - CLAIM_TIMEOUT
    )
    # SKIP LOCKED (PostgreSQL; SQLite has no row locks and ignores it): concurrent deliverers
    # take different rows instead of queueing behind each other's locks.
    oldest = (select(EmailMessage.id).where(claimable).order_by(col(EmailMessage.id))
              .limit(limit).with_for_update(skip_locked=True).scalar_subquery())
    rows = session.execute(
        update(EmailMessage)
        .where(col(EmailMessage.id).in_(oldest), claimable)
        .values(sent_at=now, attempts=col(EmailMessage.attempts) + 1)
        .returning(EmailMessage.id, EmailMessage.to_address, EmailMessage.subject,
                   EmailMessage.body, EmailMessage.kind, EmailMessage.invoice_id,
                   EmailMessage.attempts, EmailMessage.created_at)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((Outgoing(*row) for row in rows), key=lambda message: message.id)


def record_delivery(
    session: Session, *, message_id: int, error: str | None, now: datetime | None = None
) -> EmailStatus:
    """Mark a claimed message sent, or release it with its error (failed for good after
    :data:`MAX_ATTEMPTS`). An invoice's first delivery is stamped on the invoice."""
    now = now or utcnow()
    message = session.get(EmailMessage, message_id)
    if message is None:
        raise BillingError(f"no e-mail message {message_id}")
    if error is None:
        message.status, message.sent_at, message.last_error = EmailStatus.sent, now, None
        if message.invoice_id is not None and message.kind in INVOICE_KINDS:
            invoice = session.get(Invoice, message.invoice_id)
            if invoice is not None and invoice.sent_at is None:
                invoice.sent_at = now
                session.add(invoice)
    else:
        message.sent_at, message.last_error = None, error[:500]
        if message.attempts >= MAX_ATTEMPTS:
            message.status = EmailStatus.failed
    session.add(message)
    session.flush()
    return message.status


def count_queued(session: Session) -> int:
    """Messages waiting to be sent."""
    return int(session.exec(
        select(func.count()).select_from(EmailMessage)
        .where(col(EmailMessage.status) == EmailStatus.queued)
    ).one())


async def deliver_pending(engine: Engine, settings: Settings, *, limit: int = 50) -> DeliveryReport:
    """Send up to ``limit`` queued messages over one SMTP connection.

    Database work runs in the engine's worker threads, each step in its own transaction:
    a message is claimed before it is sent and recorded right after, so a crash in between
    sends it again only after :data:`CLAIM_TIMEOUT`. With no ``smtp_host`` nothing is sent.
    """
    if not settings.smtp_host:
        queued = await run_in_session(engine, count_queued)
        return DeliveryReport(smtp_configured=False, queued=queued)
    claimed = await run_in_session(engine, claim_messages, limit=limit)
    if not claimed:
        return DeliveryReport(smtp_configured=True)
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port,
        username=settings.smtp_username or None, password=settings.smtp_password or None,
        start_tls=settings.smtp_starttls, timeout=SMTP_TIMEOUT,
    )
    sent = retrying = failed = 0
    errors: list[str] = []
    try:
        for message in claimed:
            error = await _send_one(engine, settings, smtp, message)
            status = await run_in_session(engine, record_delivery, message_id=message.id,
                                          error=error)
            if error is None:
                sent += 1
                log.info("e-mail sent", email_id=message.id, kind=message.kind)
                continue
            errors.append(f"message {message.id} to {message.to_address}: {error}")
            if status == EmailStatus.failed:
                failed += 1
                log.error("e-mail given up", email_id=message.id, attempts=message.attempt,
                          error=error)
            else:
                retrying += 1
                log.warning("e-mail not sent", email_id=message.id, attempt=message.attempt,
                            error=error)
    finally:
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
    return DeliveryReport(smtp_configured=True, sent=sent, retrying=retrying, failed=failed,
                          errors=tuple(errors))


async def _send_one(
    engine: Engine, settings: Settings, smtp: aiosmtplib.SMTP, message: Outgoing
) -> str | None:
    """Send one message; the error as text, or None when the server accepted it."""
    try:
        mime = await _mime(engine, settings, message)
        # (Re)connect here rather than once up front: a server that dropped the connection
        # after one message fails only the messages it really refused.
        if not smtp.is_connected:
            await smtp.connect()
        await smtp.send_message(mime)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a document that cannot be rendered must not stop the batch
        log.exception("e-mail could not be built", email_id=message.id)
        return f"{type(exc).__name__}: {exc}"
    return None


async def _mime(engine: Engine, settings: Settings, message: Outgoing) -> MimeMessage:
    mime = MimeMessage()
    mime["From"] = settings.smtp_from
    mime["To"] = message.to_address
    mime["Subject"] = message.subject
    mime["Date"] = formatdate(localtime=False)
    # Stable per message: a resend after a crash reads as the same mail to the receiver.
    domain = parseaddr(settings.smtp_from)[1].rpartition("@")[2] or "chargedesk.invalid"
    mime["Message-ID"] = f"<email-{message.id}.{int(message.created_at.timestamp())}@{domain}>"
    mime.set_content(message.body)
    if message.invoice_id is not None:
        doc = await run_in_session(engine, invoice_document, invoice_id=message.invoice_id)
        # Rendering is CPU work: off the event loop, and out of the database threads.
        pdf = await asyncio.to_thread(render_pdf, doc)
        mime.add_attachment(pdf, maintype="application", subtype="pdf",
                            filename=attachment_name(doc))
        mime["Content-Language"] = doc.language.value
    return mime
