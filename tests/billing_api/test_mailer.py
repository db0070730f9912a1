"""Invoice e-mail: queued in the driver's language, delivered to a real SMTP server on
loopback (aiosmtpd) with the PDF attached; an unreachable server loses nothing."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pypdf import PdfReader
from sqlalchemy import Engine
from sqlmodel import Session, select

from billing_api.mailer import (
    CLAIM_TIMEOUT,
    MAX_ATTEMPTS,
    claim_messages,
    deliver_pending,
    queue_email,
    send_invoice,
)
from billing_api.models import EmailMessage, EmailStatus, Invoice, Language
from billing_api.service import BillingError
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from tests.billing_api.factories import (
    make_credit_note,
    make_driver,
    make_invoice_with_lines,
    make_rated_session,
)


class Inbox:
    """An aiosmtpd handler keeping every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
                for e in self.envelopes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def smtp(settings: Settings, port: int, host: str = "127.0.0.1") -> Settings:
    return settings.model_copy(update={"smtp_host": host, "smtp_port": port,
                                       "smtp_from": "Laddnät Norr <faktura@laddnat.example>"})


def invoice_for(engine: Engine, language: Language, **driver: Any) -> tuple[int, int]:
    """A committed invoice over two 100 kWh sessions (812,50 kr) and its queued e-mail."""
    with session_scope(engine) as session:
        owner = make_driver(session, language=language, **driver)
        rows = [make_rated_session(session, driver=owner, energy_wh=100_000),
                make_rated_session(session, driver=owner, energy_wh=100_000,
                                   station_id="SE-TEST-02")]
        invoice = make_invoice_with_lines(session, driver=owner, sessions=rows)
        message = send_invoice(session, invoice_id=invoice.id, settings=Settings())
        return invoice.id, message.id


def message_row(engine: Engine, message_id: int) -> EmailMessage:
    with session_scope(engine) as session:
        row = session.get(EmailMessage, message_id)
        assert row is not None
        return row


@pytest.mark.parametrize(("language", "subject", "phrases"), [
    (Language.sv, "Faktura F0000001 från Laddnät Norr AB",
     ["Hej Anna Andersson!", "Här kommer faktura F0000001 för 2026-10-01 \u2013 2026-10-31",
      "Att betala: 812,50 kr, senast 2026-11-15", "OCR-nummer"]),
    (Language.en, "Invoice F0000001 from Laddnät Norr AB",
     ["Dear Anna Andersson,", "Here is invoice F0000001 for 1 Oct 2026 \u2013 31 Oct 2026",
      "Amount to pay: SEK812.50, due 15 Nov 2026", "OCR reference"]),
])
def test_send_invoice_queues_a_letter_in_the_invoice_language(
    session: Session, language: Language, subject: str, phrases: list[str]
) -> None:
    driver = make_driver(session, language=language)
    rows = [make_rated_session(session, driver=driver, energy_wh=100_000, station_id=station)
            for station in ("SE-TEST-01", "SE-TEST-02")]
    invoice = make_invoice_with_lines(session, driver=driver, sessions=rows)

    message = send_invoice(session, invoice_id=invoice.id, settings=Settings())

    assert (message.to_address, message.subject, message.kind) == (
        "anna@example.se", subject, "invoice")
    assert (message.status, message.invoice_id, message.attempts) == (
        EmailStatus.queued, invoice.id, 0)
    body = message.body.replace("\u00a0", " ")
    for phrase in phrases:
        assert phrase in body
    assert invoice.ocr in body


def test_send_invoice_without_any_address_is_refused(session: Session) -> None:
    driver = make_driver(session, email=None)
    invoice = make_invoice_with_lines(session, driver=driver,
                                      sessions=[make_rated_session(session, driver=driver)])
    with pytest.raises(BillingError, match="has no e-mail address"):
        send_invoice(session, invoice_id=invoice.id, settings=Settings())
    assert session.exec(select(EmailMessage)).all() == []


def test_send_invoice_goes_to_the_drivers_current_address(session: Session) -> None:
    driver = make_driver(session)
    invoice = make_invoice_with_lines(session, driver=driver,
                                      sessions=[make_rated_session(session, driver=driver)])
    driver.email = "anna.new@example.se"
    session.add(driver)
    message = send_invoice(session, invoice_id=invoice.id, settings=Settings())
    assert message.to_address == "anna.new@example.se"


@pytest.mark.parametrize(("language", "filename", "title"), [
    (Language.sv, "faktura-F0000001.pdf", "FAKTURA"),
    (Language.en, "invoice-F0000001.pdf", "INVOICE"),
])
async def test_invoice_is_delivered_with_its_pdf(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int], language: Language,
    filename: str, title: str,
) -> None:
    server, port = inbox
    invoice_id, message_id = invoice_for(engine, language)

    report = await deliver_pending(engine, smtp(settings, port))

    assert (report.sent, report.retrying, report.failed) == (1, 0, 0)
    [envelope] = server.envelopes
    assert envelope.rcpt_tos == ["anna@example.se"]
    [received] = server.messages()
    assert received["To"] == "anna@example.se"
    assert received["From"] == "Laddnät Norr <faktura@laddnat.example>"
    assert received["Subject"].startswith(title.capitalize() + " F0000001")
    assert "F0000001" in received.get_body(preferencelist=("plain",)).get_content()
    [attachment] = list(received.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == filename
    pdf = PdfReader(io.BytesIO(attachment.get_content()))
    text = " ".join(page.extract_text() for page in pdf.pages)
    assert title in text and "F0000001" in text

    row = message_row(engine, message_id)
    assert (row.status, row.attempts, row.last_error) == (EmailStatus.sent, 1, None)
    assert row.sent_at is not None
    with session_scope(engine) as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None and invoice.sent_at is not None


async def test_credit_note_attachment_is_named_as_a_credit_note(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    with session_scope(engine) as session:
        driver = make_driver(session, language=Language.sv)
        row = make_rated_session(session, driver=driver)
        invoice = make_invoice_with_lines(session, driver=driver, sessions=[row])
        note = make_credit_note(session, invoice=invoice, sessions=[row])
        send_invoice(session, invoice_id=note.id, settings=Settings())

    await deliver_pending(engine, smtp(settings, port))

    [received] = server.messages()
    assert received["Subject"] == "Kreditfaktura K0000001 från Laddnät Norr AB"
    assert "krediterar faktura F0000001" in received.get_body(
        preferencelist=("plain",)).get_content()
    [attachment] = list(received.iter_attachments())
    assert attachment.get_filename() == "kreditfaktura-K0000001.pdf"
    text = PdfReader(io.BytesIO(attachment.get_content())).pages[0].extract_text()
    assert "Kreditfaktura för faktura F0000001" in text


async def test_a_down_server_leaves_the_message_queued_until_it_gives_up(
    engine: Engine, settings: Settings
) -> None:
    _, message_id = invoice_for(engine, Language.sv)
    down = smtp(settings, free_port())  # nothing listens there

    for attempt in range(1, MAX_ATTEMPTS):
        report = await deliver_pending(engine, down)
        assert (report.sent, report.retrying, report.failed) == (0, 1, 0)
        row = message_row(engine, message_id)
        assert (row.status, row.attempts, row.sent_at) == (EmailStatus.queued, attempt, None)
        assert row.last_error and "SMTPConnectError" in row.last_error
        assert report.errors and str(message_id) in report.errors[0]

    report = await deliver_pending(engine, down)
    assert (report.sent, report.retrying, report.failed) == (0, 0, 1)
    row = message_row(engine, message_id)
    assert (row.status, row.attempts) == (EmailStatus.failed, MAX_ATTEMPTS)
    assert row.last_error


async def test_without_smtp_host_nothing_is_sent(engine: Engine, settings: Settings) -> None:
    _, message_id = invoice_for(engine, Language.sv)

    report = await deliver_pending(engine, settings.model_copy(update={"smtp_host": ""}))

    assert not report.smtp_configured
    assert report.queued == 1
    assert "not configured" in report.summary
    row = message_row(engine, message_id)
    assert (row.status, row.attempts, row.sent_at) == (EmailStatus.queued, 0, None)


def queue_plain(engine: Engine, count: int) -> list[int]:
    with session_scope(engine) as session:
        return [queue_email(session, to_address=f"driver{n}@example.se",
                            subject=f"Meddelande {n}", body="Hej!", kind="notice").id or 0
                for n in range(count)]


async def test_two_deliverers_never_send_a_message_twice(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    ids = queue_plain(engine, 12)
    target = smtp(settings, port)

    reports = await asyncio.gather(*(deliver_pending(engine, target, limit=5)
                                     for _ in range(4)))

    assert sum(report.sent for report in reports) == 12
    subjects = sorted(message["Subject"] for message in server.messages())
    assert subjects == sorted(f"Meddelande {n}" for n in range(12))
    assert all(not list(message.iter_attachments()) for message in server.messages())
    for message_id in ids:
        row = message_row(engine, message_id)
        assert (row.status, row.attempts) == (EmailStatus.sent, 1)


async def test_a_message_claimed_by_another_deliverer_is_left_alone_until_stale(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    [message_id] = queue_plain(engine, 1)
    with session_scope(engine) as session:
        # Another deliverer took it a moment ago and is still talking to the server.
        assert [m.id for m in claim_messages(session, limit=10)] == [message_id]

    report = await deliver_pending(engine, smtp(settings, port))
    assert report.sent == 0 and server.envelopes == []

    with session_scope(engine) as session:
        row = session.get(EmailMessage, message_id)
        assert row is not None
        # ...but that deliverer died: its claim grows old.
        row.sent_at = utcnow() - CLAIM_TIMEOUT - timedelta(seconds=1)
        session.add(row)

    report = await deliver_pending(engine, smtp(settings, port))
    assert report.sent == 1 and len(server.envelopes) == 1
    row = message_row(engine, message_id)
    assert (row.status, row.attempts) == (EmailStatus.sent, 2)
