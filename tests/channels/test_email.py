"""The e-mail channel over real SMTP: mail is sent to the service's inbound server on
loopback and the replies are caught by a second SMTP server (aiosmtpd) standing in for the
outgoing relay. Each test runs on SQLite and PostgreSQL.

Most tests replace the assistant with a recording stand-in (they are about the channel: what
text it hands over, with which identity, and how the answer is mailed); the last ones talk to
the real dialogue engine and NLU.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import re
import smtplib
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

import assistant.service
from assistant.channels.email import parsing, service
from assistant.channels.email.server import EmailChannel
from assistant.channels.email_models import (
    EmailAttachment,
    EmailThread,
    InboundEmail,
    InboundStatus,
    OutboundEmail,
    OutboundStatus,
)
from assistant.events import BotUttered
from assistant.models import Conversation, ConversationEvent
from assistant.nlu import data as nlu_data
from assistant.nlu.engine import NluEngine, load_or_train, set_engine
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver
from tests.channels.fixtures import Relay, free_port
from tests.conftest import LiveServer, start_server

SUPPORT = "support@chargedesk.test"
SUPPORT_HEADER = "ChargeDesk Support <support@chargedesk.test>"
DRIVER = "anna.lindqvist@example.se"


# ---------------------------------------------------------------- SMTP on loopback


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll until ``condition()`` is truthy (not a timing assertion: a generous deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def mail_settings(settings: Settings, relay: tuple[Relay, int], tmp_path: Path) -> Settings:
    return settings.model_copy(update={
        "data_dir": tmp_path, "smtp_inbound_port": free_port(), "support_address": SUPPORT_HEADER,
        "smtp_host": "127.0.0.1", "smtp_port": relay[1],
        "smtp_inbound_max_bytes": 200_000, "email_attachment_max_bytes": 50_000,
        "email_attachments_max_bytes": 80_000,
    })


def start_mail_server(settings: Settings) -> LiveServer:
    live = start_server(settings)

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", settings.smtp_inbound_port), 0.5):
                return True
        except OSError:
            return False

    wait_for(listening, "the inbound SMTP server")
    return live


@pytest.fixture
def server(mail_settings: Settings) -> Iterator[LiveServer]:
    live = start_mail_server(mail_settings)
    yield live
    live.stop()


def mail(*, subject: str = "Laddning", text: str | None = "Hej!", html: str | None = None,
         sender: str = "Kim Berg <kim.berg@example.com>", to: str = SUPPORT,
         message_id: str | None = None, headers: dict[str, str] | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id or make_msgid(domain="example.com")
    for name, value in (headers or {}).items():
        message[name] = value
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    return message


def send(server: LiveServer, message: EmailMessage, *, envelope_from: str | None = None,
         to: list[str] | None = None) -> None:
    """Deliver over SMTP to the service, as a mail server would."""
    port = server.runtime.settings.smtp_inbound_port
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.example.com", timeout=30) as smtp:
        sender = envelope_from if envelope_from is not None else \
            email.utils.parseaddr(str(message["From"]))[1]
        smtp.send_message(message, from_addr=sender, to_addrs=to or [str(message["To"])])


# ---------------------------------------------------------------- the assistant stand-in


class Assistant:
    """Stands in for ``assistant.service.handle_message``: records each call and answers
    with a text that needs escaping and two quick replies."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, runtime: Any, *, channel: str, sender: str, text: str,
                       identity: Any = None, metadata: dict[str, Any] | None = None
                       ) -> list[dict[str, Any]]:
        self.calls.append({"channel": channel, "sender": sender, "text": text,
                           "identity": identity, "metadata": metadata})
        message = {"recipient_id": sender, "text": f"Du skrev: {text}\n<b>5 & 6</b>",
                   "buttons": [{"title": "Ja", "payload": "/affirm"},
                               {"title": "Nej, tack", "payload": "/deny"}]}
        await runtime.bus.publish(BotUttered(channel=channel, sender=sender, message=message))
        return [message]


@pytest.fixture
def bot(monkeypatch: pytest.MonkeyPatch) -> Assistant:
    stub = Assistant()
    monkeypatch.setattr(assistant.service, "handle_message", stub)
    return stub


def rows(server: LiveServer, model: Any, *where: Any) -> list[Any]:
    with session_scope(server.runtime.engine) as session:
        return list(session.exec(select(model).where(*where).order_by(col(model.id))).all())


def thread_of(server: LiveServer, address: str) -> EmailThread:
    threads = rows(server, EmailThread, EmailThread.address == address)
    assert len(threads) == 1
    return threads[0]


def body(message: EmailMessage, kind: str = "plain") -> str:
    """A part's text with the wire's CRLF line ends as newlines."""
    part = message.get_body((kind,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def replies(relay: tuple[Relay, int], count: int) -> list[EmailMessage]:
    wait_for(lambda: len(relay[0].envelopes) >= count, f"{count} replies")
    return relay[0].messages()


# ---------------------------------------------------------------- in and out


def test_a_plain_message_is_answered_with_exact_threading_headers(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    sent = mail(subject="SV: Re: Laddning på Odenplan", text="Vad kostar det?\n",
                message_id="<first.1@example.com>",
                headers={"References": "<older.0@example.com>",
                         "In-Reply-To": "<older.0@example.com>"})
    send(server, sent)

    [reply] = replies(relay, 1)
    thread = thread_of(server, "kim.berg@example.com")
    assert bot.calls == [{"channel": "email", "sender": thread.token,
                          "text": "Laddning på Odenplan\n\nVad kostar det?", "identity": None,
                          "metadata": {"email": {"inbound_id": 1,
                                                 "subject": "Laddning på Odenplan",
                                                 "attachments": []}}}]
    assert reply["From"] == SUPPORT_HEADER
    assert reply["To"] == "Kim Berg <kim.berg@example.com>"
    assert reply["Subject"] == "Re: Laddning på Odenplan"
    assert reply["In-Reply-To"] == "<first.1@example.com>"
    assert reply["References"] == "<older.0@example.com> <first.1@example.com>"
    assert reply["Reply-To"] == f"ChargeDesk Support <reply+{thread.token}@chargedesk.test>"
    assert re.fullmatch(r"<reply-[0-9a-f]{24}@chargedesk\.test>", reply["Message-ID"])
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Auto-Response-Suppress"] == "All"
    assert reply["Content-Language"] == "sv"
    assert reply["Date"] is not None
    assert reply.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in reply.iter_parts()] == ["text/plain", "text/html"]
    envelope = relay[0].envelopes[0]
    assert (envelope.mail_from, envelope.rcpt_tos) == (SUPPORT, ["kim.berg@example.com"])

    plain = body(reply)
    assert plain == (
        "Du skrev: Laddning på Odenplan\n\nVad kostar det?\n<b>5 & 6</b>\n\n"
        "Svara på det här mejlet med ett av alternativen (siffran räcker) eller skriv med "
        "egna ord:\n1. Ja\n2. Nej, tack\n")
    html = body(reply, "html")
    assert "&lt;b&gt;5 &amp; 6&lt;/b&gt;" in html and "<b>" not in html
    assert (f'<a href="mailto:reply+{thread.token}@chargedesk.test?subject=Re%3A%20Laddning'
            f'%20p%C3%A5%20Odenplan&amp;body=Nej%2C%20tack">Nej, tack</a>') in html

    [inbound] = rows(server, InboundEmail)
    assert (inbound.status, inbound.from_address, inbound.recipients) == (
        InboundStatus.answered, "kim.berg@example.com", [SUPPORT])
    raw = (server.runtime.settings.data_dir / inbound.raw_path).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == inbound.raw_sha256
    assert b"Vad kostar det?" in raw
    [outbound] = wait_for(lambda: rows(server, OutboundEmail,
                                       OutboundEmail.status == OutboundStatus.sent), "sent")
    assert f"<{outbound.message_id}>" == reply["Message-ID"]
    assert outbound.buttons == [{"title": "Ja", "payload": "/affirm"},
                                {"title": "Nej, tack", "payload": "/deny"}]


def test_an_html_only_message_is_reduced_to_its_new_text(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    html = ("<html><head><style>p {color: red}</style></head><body>"
            "<div dir='ltr'>Laddaren p&aring; <b>SE-STO-CITY-01</b> startar inte.<br>"
            "Vad g&ouml;r jag?<ul><li>Kabeln sitter i</li><li>Appen visar fel</li></ul></div>"
            "<div class='gmail_quote'><div class='gmail_attr'>Den tis 4 mars 2025 skrev "
            "Support &lt;support@chargedesk.test&gt;:</div><blockquote>Gammal text</blockquote>"
            "</div></body></html>")
    send(server, mail(subject="", text=None, html=html))

    replies(relay, 1)
    assert bot.calls[0]["text"] == ("Laddaren på SE-STO-CITY-01 startar inte.\nVad gör jag?"
                                    "\n\n- Kabeln sitter i\n- Appen visar fel")
    assert relay[0].messages()[0]["Subject"] == "Re: Din fråga till ChargeDesk"


def png(width: int = 2, height: int = 2) -> bytes:
    """A real, small PNG image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows_ = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows_)) + chunk(b"IEND", b""))


def test_a_photo_is_kept_and_handed_to_the_conversation_and_other_files_are_not(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    photo = png()
    message = mail(subject="Trasig station", text="Se bilden, skärmen är sönder.")
    message.add_attachment(photo, maintype="image", subtype="png", filename="skarm.png")
    program = b"MZ\x90\x00 not a picture"
    message.add_attachment(program, maintype="application", subtype="octet-stream",
                           filename="virus.exe")
    message.add_attachment(b"%PDF-1.4\n" + b"0" * 60_000, maintype="application",
                           subtype="pdf", filename="stor.pdf")  # over the 50 kB per file
    send(server, message)

    replies(relay, 1)
    stored = rows(server, EmailAttachment)
    assert [(a.filename, a.content_type, a.size, a.refused) for a in stored] == [
        ("skarm.png", "image/png", len(photo), None),
        ("virus.exe", "application/octet-stream", len(program), "not an image or a PDF"),
        ("stor.pdf", "application/pdf", 60_009, "larger than 50000 bytes"),
    ]
    kept = stored[0]
    assert kept.sha256 == hashlib.sha256(photo).hexdigest()
    assert (server.runtime.settings.data_dir / kept.path).read_bytes() == photo
    assert stored[1].path is None and stored[2].path is None
    assert bot.calls[0]["text"] == "Trasig station\n\nSe bilden, skärmen är sönder."
    assert bot.calls[0]["metadata"]["email"]["attachments"] == [
        {"id": kept.id, "filename": "skarm.png", "content_type": "image/png",
         "size": len(photo), "sha256": kept.sha256}]


def test_a_quoted_reply_threads_into_the_same_conversation_as_does_the_reply_address(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    send(server, mail(subject="Fakturan", text="Jag har en fråga om fakturan.",
                      message_id="<q1@example.com>"))
    [first] = replies(relay, 1)
    thread = thread_of(server, "kim.berg@example.com")

    # A reply from a phone: Swedish attribution, quoted lines, a mobile signature.
    answer = mail(subject="SV: " + str(first["Subject"]), message_id="<q2@example.com>",
                  text=("2\n\nSkickat från min iPhone\n\n"
                        "4 mars 2025 kl. 10:12 skrev ChargeDesk Support "
                        "<support@chargedesk.test>:\n> Du skrev: Jag har en fråga\n"),
                  headers={"In-Reply-To": str(first["Message-ID"]),
                           "References": f"<q1@example.com> {first['Message-ID']}"})
    send(server, answer)
    second = replies(relay, 2)[1]
    # "2" picks the second option of our last reply: its payload goes to the assistant.
    assert bot.calls[1]["text"] == "/deny"
    assert bot.calls[1]["sender"] == thread.token
    assert second["Subject"] == "Re: Fakturan"
    assert second["In-Reply-To"] == "<q2@example.com>"
    assert second["References"] == f"<q1@example.com> {first['Message-ID']} <q2@example.com>"

    # No threading headers at all, but written to the thread's reply+ address (Outlook
    # "-----Original Message-----" quoting and an RFC 3676 signature).
    third = mail(subject="VB: Fakturan", to=f"reply+{thread.token}@chargedesk.test",
                 text=("Och förra månaden?\n-- \nKim Berg\n"
                       "-----Original Message-----\nFrom: ChargeDesk\n"))
    send(server, third)
    replies(relay, 3)
    assert bot.calls[2]["text"] == "Och förra månaden?"
    assert {c["sender"] for c in bot.calls} == {thread.token}
    assert len(rows(server, EmailThread)) == 1

    # Someone else writing to that reply+ address does not join Kim's conversation.
    send(server, mail(sender="eve@example.org", to=f"reply+{thread.token}@chargedesk.test",
                      subject="Re: Fakturan", text="Visa fakturan"))
    replies(relay, 4)
    assert bot.calls[3]["sender"] == thread_of(server, "eve@example.org").token != thread.token


def test_swedish_and_stacked_prefixes_give_one_re(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    send(server, mail(subject="SV: SV: Re: VB: Laddkort borttappat", text="Spärra kortet"))
    [reply] = replies(relay, 1)
    assert reply["Subject"] == "Re: Laddkort borttappat"
    assert thread_of(server, "kim.berg@example.com").subject == "Laddkort borttappat"


@pytest.mark.parametrize(("subject_prefix", "expected"), [
    ("SV: SV: Re: ", ("Laddning", False)), ("VB: ", ("Laddning", True)),
    ("Fwd: Re: ", ("Laddning", True)), ("AW: Re[3]: ", ("Laddning", False)),
    ("[Extern] SV: ", ("Laddning", False)), ("", ("Laddning", False)),
])
def test_subject_prefixes(subject_prefix: str, expected: tuple[str, bool]) -> None:
    assert parsing.base_subject(subject_prefix + "Laddning") == expected


# ---------------------------------------------------------------- refusals at SMTP time


def test_an_oversized_message_is_refused_with_552_and_not_stored(
        server: LiveServer, bot: Assistant) -> None:
    message = mail(text="x" * 10 + "\n")
    message.add_attachment(b"%PDF-1.4\n" + b"0" * 250_000, maintype="application",
                           subtype="pdf", filename="huge.pdf")
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as refused:
        send(server, message)
    assert refused.value.smtp_code == 552
    assert rows(server, InboundEmail) == [] and bot.calls == []


@pytest.mark.parametrize("recipient", [
    "sales@chargedesk.test", "support@elsewhere.example", "reply+aaaaaaaaaaaaaaaa@chargedesk.test",
    "reply+nottoken@chargedesk.test",
])
def test_an_unknown_recipient_is_refused_with_550(
        server: LiveServer, bot: Assistant, recipient: str) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(server, mail(to=recipient))
    assert refused.value.recipients[recipient][0] == 550
    assert rows(server, InboundEmail) == []


# ---------------------------------------------------------------- loops and limits


@pytest.mark.parametrize(("headers", "sender", "envelope_from", "subject", "reason"), [
    ({"Auto-Submitted": "auto-replied"}, "kim@example.com", None, "Laddning",
     "auto-submitted: auto-replied"),
    ({"Precedence": "bulk"}, "kim@example.com", None, "Laddning", "precedence: bulk"),
    ({"X-Autoreply": "yes"}, "kim@example.com", None, "Laddning", "x-autoreply header"),
    ({"List-Id": "<news.example.com>"}, "kim@example.com", None, "Laddning", "mailing list"),
    ({}, "MAILER-DAEMON@mx.example.com", None, "Laddning", "machine sender: mailer-daemon"),
    ({}, "no-reply@shop.example", None, "Laddning", "machine sender: no-reply"),
    ({}, "kim@example.com", "", "Laddning", "bounce (empty envelope sender)"),
    ({}, SUPPORT_HEADER, None, "Laddning", "our own address"),
    ({}, "kim@example.com", None, "Automatiskt svar: Laddning", "auto-reply subject"),
])
def test_auto_replies_bounces_and_our_own_mail_are_stored_never_answered(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant, headers: dict[str, str],
        sender: str, envelope_from: str | None, subject: str, reason: str) -> None:
    send(server, mail(sender=sender, subject=subject, headers=headers),
         envelope_from=envelope_from)
    # A person's message after it: answered, so the first one was dealt with by then.
    send(server, mail(sender="lisa@example.com", text="Hej"))
    replies(relay, 1)
    first, second = rows(server, InboundEmail)
    assert (first.status, first.reason) == (InboundStatus.ignored, reason)
    assert second.status == InboundStatus.answered
    assert [c["text"] for c in bot.calls] == ["Laddning\n\nHej"]
    assert len(relay[0].envelopes) == 1


def test_replies_to_one_sender_are_rate_limited(
        mail_settings: Settings, relay: tuple[Relay, int], bot: Assistant) -> None:
    live = start_mail_server(mail_settings.model_copy(update={"email_replies_per_hour": 2}))
    try:
        for n in range(3):
            send(live, mail(text=f"Meddelande {n}", message_id=f"<rate{n}@example.com>"))
        wait_for(lambda: all(r.status != InboundStatus.received and
                             r.status != InboundStatus.processing
                             for r in rows(live, InboundEmail)) and
                 len(rows(live, InboundEmail)) == 3, "three messages handled")
        statuses = sorted(r.status for r in rows(live, InboundEmail))
        assert statuses == [InboundStatus.answered, InboundStatus.answered,
                            InboundStatus.rate_limited]
        replies(relay, 2)
        # Another sender is not held back by Kim's limit.
        send(live, mail(sender="lisa@example.com", text="Hej"))
        replies(relay, 3)
        assert len(bot.calls) == 3
    finally:
        live.stop()


def test_the_same_message_delivered_twice_is_answered_once(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    message = mail(text="Hej", message_id="<twice@example.com>")
    send(server, message)
    replies(relay, 1)
    send(server, message)  # the sending server retried after a lost 250
    wait_for(lambda: len(rows(server, InboundEmail)) == 2, "the second copy")
    first, second = rows(server, InboundEmail)
    assert (second.status, second.reason) == (InboundStatus.ignored,
                                              "duplicate (already received)")
    assert second.thread_id == first.thread_id
    assert len(bot.calls) == 1


def test_a_bounce_of_our_reply_is_filed_in_its_thread_and_not_answered(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    send(server, mail(text="Hej"))
    [reply] = replies(relay, 1)
    bounce = mail(sender="MAILER-DAEMON@mx.example.com", subject="Undelivered Mail",
                  text="The mail system: user unknown",
                  headers={"In-Reply-To": str(reply["Message-ID"]),
                           "Auto-Submitted": "auto-replied"})
    send(server, bounce, envelope_from="")
    wait_for(lambda: len(rows(server, InboundEmail)) == 2, "the bounce")
    first, filed = rows(server, InboundEmail)
    assert (filed.status, filed.thread_id) == (InboundStatus.ignored, first.thread_id)
    assert len(rows(server, EmailThread)) == 1 and len(bot.calls) == 1


# ---------------------------------------------------------------- identity


def test_a_known_address_alone_does_not_identify_without_a_trusted_mail_server(
        server: LiveServer, relay: tuple[Relay, int], bot: Assistant) -> None:
    # A From header is anyone's to write: with no trusted mail server configured, even a
    # driver's own address is anonymous until they prove it with a one-time code.
    assert server.runtime.settings.email_trusted_authserv_id == ""
    with session_scope(server.runtime.engine) as session:
        make_driver(session, name="Anna Lindqvist", email=DRIVER)
    passed = "mx.chargedesk.test; spf=pass smtp.mailfrom=example.se; dmarc=pass"
    send(server, mail(sender="Anna <Anna.Lindqvist@Example.SE>", text="Mitt saldo?",
                      headers={"Authentication-Results": passed}))
    replies(relay, 1)
    assert bot.calls[0]["identity"] is None
    [inbound] = rows(server, InboundEmail)
    assert (inbound.driver_id, inbound.verified) == (None, False)


def test_a_known_driver_is_identified_by_their_authenticated_address(
        mail_settings: Settings, relay: tuple[Relay, int], bot: Assistant) -> None:
    live = start_mail_server(mail_settings.model_copy(
        update={"email_trusted_authserv_id": "mx.chargedesk.test"}))
    try:
        with session_scope(live.runtime.engine) as session:
            driver_id = make_driver(session, name="Anna Lindqvist", email=DRIVER).id
        passed = "mx.chargedesk.test; spf=pass smtp.mailfrom=example.se; dmarc=pass"
        send(live, mail(sender="Anna <Anna.Lindqvist@Example.SE>", text="Mitt saldo?",
                        headers={"Authentication-Results": passed}))
        replies(relay, 1)
        identity = bot.calls[0]["identity"]
        assert (identity.driver_id, identity.verified, identity.via) == (
            driver_id, True, "email")
        [inbound] = rows(live, InboundEmail)
        assert (inbound.driver_id, inbound.verified) == (driver_id, True)
        assert thread_of(live, DRIVER).driver_id == driver_id
        # An unknown address is anonymous.
        send(live, mail(sender="stranger@example.org", text="Mitt saldo?",
                        headers={"Authentication-Results": passed}))
        replies(relay, 2)
        assert bot.calls[1]["identity"] is None
    finally:
        live.stop()


def test_with_a_trusted_mail_server_only_its_dmarc_pass_identifies(
        mail_settings: Settings, relay: tuple[Relay, int], bot: Assistant) -> None:
    live = start_mail_server(mail_settings.model_copy(
        update={"email_trusted_authserv_id": "mx.chargedesk.test"}))
    try:
        with session_scope(live.runtime.engine) as session:
            driver_id = make_driver(session, name="Anna Lindqvist", email=DRIVER).id
        forged = "mx.elsewhere.example; dmarc=pass header.from=example.se"
        send(live, mail(sender=DRIVER, text="Saldo?",
                        headers={"Authentication-Results": forged}))
        replies(relay, 1)
        assert bot.calls[0]["identity"] is None
        passed = "mx.chargedesk.test; spf=pass smtp.mailfrom=example.se; dmarc=pass"
        send(live, mail(sender=DRIVER, text="Saldo?",
                        headers={"Authentication-Results": passed}))
        replies(relay, 2)
        assert bot.calls[1]["identity"].driver_id == driver_id
    finally:
        live.stop()


# ---------------------------------------------------------------- nothing lost


def test_a_reply_the_relay_refuses_for_now_is_kept_and_sent_on_a_later_attempt(
        mail_settings: Settings, relay: tuple[Relay, int], bot: Assistant) -> None:
    closed = free_port()  # nothing listens here: connection refused
    live = start_mail_server(mail_settings.model_copy(update={"smtp_port": closed}))
    try:
        send(live, mail(text="Hej"))
        [row] = wait_for(lambda: rows(live, OutboundEmail, col(OutboundEmail.attempts) == 1,
                                      col(OutboundEmail.last_error).is_not(None)),
                         "a failed attempt")
        assert row.status == OutboundStatus.queued
        assert row.next_attempt_at > row.created_at
        assert "Connect" in (row.last_error or "") or "refused" in (row.last_error or "")
    finally:
        live.stop()

    # The retry falls due (moved forward here rather than waited for) and the relay is up.
    with session_scope(live.runtime.engine) as session:
        stored = session.get(OutboundEmail, row.id)
        assert stored is not None
        stored.next_attempt_at = stored.created_at
        session.add(stored)
    channel = EmailChannel(live.runtime)
    channel.settings = mail_settings
    assert asyncio.run(channel.deliver_due()) == 1
    [delivered] = relay[0].messages()
    assert delivered["Message-ID"] == f"<{row.message_id}>"
    [after] = rows(live, OutboundEmail)
    assert (after.status, after.attempts, after.last_error) == (OutboundStatus.sent, 2, None)


def test_retry_delays_double_up_to_an_hour() -> None:
    assert [service.retry_delay(n).total_seconds() for n in (1, 2, 3, 8, 20)] == [
        30, 60, 120, 3600, 3600]


def test_a_message_left_unanswered_by_a_crash_is_answered_by_the_sweep(
        mail_settings: Settings, relay: tuple[Relay, int], bot: Assistant,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        # Stored, then the process dies before answering it.
        patch.setattr(EmailChannel, "answer", _never_answer)
        live = start_mail_server(mail_settings)
        try:
            send(live, mail(text="Hej"))
            wait_for(lambda: rows(live, InboundEmail), "the stored message")
        finally:
            live.stop()
    with session_scope(live.runtime.engine) as session:
        row = session.exec(select(InboundEmail)).one()
        assert row.status == InboundStatus.received
        row.received_at = row.received_at - service.LEFT_OVER_AFTER * 2
        session.add(row)
    restarted = start_mail_server(mail_settings)
    try:
        replies(relay, 1)
        assert rows(restarted, InboundEmail)[0].status == InboundStatus.answered
    finally:
        restarted.stop()


async def _never_answer(self: EmailChannel, *, inbound_id: int | None = None,
                        address: str = "") -> None:
    return None


# ---------------------------------------------------------------- the real assistant


@pytest.fixture(scope="module")
def nlu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NluEngine]:
    engine = load_or_train(tmp_path_factory.mktemp("models"), nlu_data.load())
    set_engine(engine)
    yield engine
    set_engine(None)


def conversation_of(server: LiveServer, token: str) -> tuple[Conversation, list[str]]:
    with session_scope(server.runtime.engine) as session:
        row = session.exec(select(Conversation).where(
            Conversation.channel == "email", Conversation.sender == token)).one()
        said = session.exec(select(ConversationEvent).where(
            ConversationEvent.conversation_id == row.id, ConversationEvent.type == "user")
            .order_by(col(ConversationEvent.id))).all()
        return row, [e.data["text"] for e in said]


def test_the_assistant_answers_in_the_thread_and_keeps_one_conversation(
        server: LiveServer, relay: tuple[Relay, int], nlu: NluEngine) -> None:
    send(server, mail(subject="", text="Hej! Jag behöver hjälp\n\n-- \nKim",
                      message_id="<real1@example.com>"))
    [first] = replies(relay, 1)
    assert body(first).strip() in {
        "Hej! Jag är ChargeDesks assistent. Hur kan jag hjälpa dig med laddningen?",
        "Hej! Fråga mig om laddning, stationer, priser eller dina fakturor.",
        "Hej hej! Vad kan jag hjälpa dig med i dag?"}
    send(server, mail(subject="Re: " + str(first["Subject"]),
                      text="Tack så mycket!\n\nOn Tue, 4 Mar 2025, Support wrote:\n> Hej!",
                      headers={"In-Reply-To": str(first["Message-ID"])}))
    replies(relay, 2)
    thread = thread_of(server, "kim.berg@example.com")
    conversation, said = conversation_of(server, thread.token)
    assert said == ["Hej! Jag behöver hjälp", "Tack så mycket!"]
    assert (conversation.driver_id, conversation.verified) == (None, False)


def test_the_assistant_trusts_an_authenticated_drivers_address_and_asks_others_to_verify(
        mail_settings: Settings, relay: tuple[Relay, int], nlu: NluEngine) -> None:
    server = start_mail_server(mail_settings.model_copy(
        update={"email_trusted_authserv_id": "mx.chargedesk.test"}))
    try:
        with session_scope(server.runtime.engine) as session:
            driver_id = make_driver(session, name="Anna Lindqvist", email=DRIVER,
                                    id_tags=("RFID-ANNA-01",)).id
        question = "Why was my last charge so expensive?"
        asks = ("First I need to check it's you. What's the phone number or e-mail address on "
                "your account?")
        send(server, mail(sender="stranger@example.org", subject="", text=question))
        [asked] = replies(relay, 1)
        assert body(asked).strip() == asks
        # The driver's own address without the trusted server's DMARC pass: asked too.
        send(server, mail(sender=DRIVER, subject="", text=question))
        assert body(replies(relay, 2)[1]).strip() == asks
        passed = "mx.chargedesk.test; spf=pass smtp.mailfrom=example.se; dmarc=pass"
        send(server, mail(sender=DRIVER, subject="", text=question,
                          headers={"Authentication-Results": passed}))
        answered = replies(relay, 3)[2]
        assert "First I need to check" not in body(answered)
        verified = [conversation_of(server, t.token)[0]
                    for t in rows(server, EmailThread, EmailThread.address == DRIVER)]
        assert [(c.driver_id, c.verified) for c in verified if c.verified] == [
            (driver_id, True)]
        assert [c.slots["id_tags"] for c in verified if c.verified] == [["RFID-ANNA-01"]]
    finally:
        server.stop()


# ---------------------------------------------------------------- the bench


def test_the_bench_messages_are_real_mail_that_threads() -> None:
    from chargedesk.bench.email import DEMO_DRIVERS, build_messages

    messages = build_messages(20)
    parsed = [parsing.parse(m.data, envelope_from=m.sender) for m in messages]
    firsts, follow_ups = parsed[:10], parsed[10:]
    assert all(p.machine is None and p.text for p in parsed)
    assert [p.in_reply_to for p in follow_ups] == [[f.message_id] for f in firsts]
    assert all("Skickat från" not in p.text and "skrev" not in p.text for p in follow_ups)
    assert sum(bool(p.attachments) for p in parsed) == 2
    assert {p.attachments[0].content_type for p in parsed if p.attachments} == {"image/png"}
    assert firsts[0].from_address == DEMO_DRIVERS[0]


def test_the_bench_sends_stores_and_answers_every_message() -> None:
    from chargedesk.bench.email import run

    figures = run(messages=6, concurrency=2, database_url=None)

    assert figures["failures"] == []
    assert figures["ingest"]["completed"] == figures["answered"]["completed"] == 6
    assert figures["stored"]["by_status"] == {"answered": 6}
    assert figures["stored"]["threads"] == 3
    assert figures["baseline"]["completed"] == 6
