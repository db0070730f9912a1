"""Outgoing e-mail: messages are recorded first, then delivered over SMTP."""

from __future__ import annotations

from sqlmodel import Session

from billing_api.models import EmailMessage


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
