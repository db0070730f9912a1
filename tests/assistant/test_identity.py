"""One-time codes: hashed, short-lived, few guesses, rate-limited, the same answer for every
contact, and really e-mailed through an SMTP server on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from unittest import mock

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from sqlmodel import Session, select

from assistant import identity
from assistant.identity import (
    CODE_TTL,
    CODES_PER_CONTACT,
    CODES_PER_SENDER,
    MAX_ATTEMPTS,
    InvalidContact,
    check_code,
    deliver_code,
    normalise_contact,
    start_verification,
)
from assistant.identity_models import OneTimeCode
from billing_api.models import EmailMessage, EmailStatus, Language
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from tests.billing_api.factories import make_driver
from tests.billing_api.test_mailer import Inbox, free_port


def issued_code(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Capture the codes ``start_verification`` draws (the database only has hashes)."""
    codes: list[str] = []
    real = identity.secrets.randbelow

    def spy(n: int) -> int:
        value = real(n)
        codes.append(f"{value:06d}")
        return value

    monkeypatch.setattr(identity.secrets, "randbelow", spy)
    return codes


def code_in(message: EmailMessage) -> str:
    match = re.search(r"\b(\d{6})\b", message.body)
    assert match, message.body
    return match.group(1)


@pytest.mark.parametrize(("text", "expected"), [
    ("Anna@Example.SE ", "anna@example.se"),
    ("070-123 45 67", "+46701234567"),
    ("0046 70 123 45 67", "+46701234567"),
    ("+46 (0)70 123 45 67", "+46701234567"),
    ("+4915112345678", "+4915112345678"),
])
def test_contacts_are_normalised(text: str, expected: str) -> None:
    assert normalise_contact(text) == expected


@pytest.mark.parametrize("text", ["hello", "anna@", "12", "+46abc"])
def test_text_that_is_no_contact_is_refused(text: str) -> None:
    with pytest.raises(InvalidContact):
        normalise_contact(text)


def test_a_code_is_emailed_stored_hashed_and_signs_in_once(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(session, email="anna@example.se", language=Language.en)
    codes = issued_code(monkeypatch)

    result = start_verification(session, contact="ANNA@example.se", channel="web",
                                sender="s1")

    assert result.status == "sent" and result.via == "email"
    [code] = codes
    [row] = session.exec(select(OneTimeCode)).all()
    assert code not in row.code_hash and row.code_hash.startswith("scrypt$")
    assert (row.driver_id, row.contact, row.sent_via) == (driver.id, "anna@example.se", "email")
    assert row.expires_at - row.created_at == CODE_TTL
    [mail] = session.exec(select(EmailMessage)).all()
    assert (mail.to_address, mail.kind, mail.id) == (
        "anna@example.se", "one_time_code", result.message_id)
    assert code_in(mail) == code and "sign-in code" in mail.subject

    assert check_code(session, channel="web", sender="s2", code=code) is None  # other chat
    assert check_code(session, channel="web", sender="s1", code=code) == driver.id
    assert check_code(session, channel="web", sender="s1", code=code) is None  # used


def test_a_phone_number_finds_the_driver_and_the_code_goes_by_email(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(session, email="erik@example.se", phone="+46709876543")
    codes = issued_code(monkeypatch)

    start_verification(session, contact="070-987 65 43", channel="web", sender="s1")

    [mail] = session.exec(select(EmailMessage)).all()
    assert mail.to_address == "erik@example.se"
    assert "inloggningskod" in mail.subject  # the driver's language: Swedish
    assert check_code(session, channel="web", sender="s1", code=codes[0]) == driver.id


def test_an_unknown_contact_gets_the_same_answer_and_nothing_is_sent(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_driver(session, email="anna@example.se")
    codes = issued_code(monkeypatch)

    known = start_verification(session, contact="anna@example.se", channel="web", sender="a")
    unknown = start_verification(session, contact="nobody@example.se", channel="web",
                                 sender="b")

    def public(v: identity.Verification) -> tuple[object, ...]:
        return (v.status, v.via, v.retry_after_s, v.expires_at is not None)

    assert public(known) == public(unknown)
    assert len(session.exec(select(EmailMessage)).all()) == 1
    assert check_code(session, channel="web", sender="b", code=codes[1]) is None
    # ...and the unknown address is rate-limited just like a known one.
    for n in range(CODES_PER_CONTACT - 1):
        start_verification(session, contact="nobody@example.se", channel="web", sender=f"c{n}")
        start_verification(session, contact="anna@example.se", channel="web", sender=f"d{n}")
    limited = [start_verification(session, contact=c, channel="web", sender="e")
               for c in ("anna@example.se", "nobody@example.se")]
    assert [v.status for v in limited] == ["rate_limited", "rate_limited"]


def test_a_code_expires(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    make_driver(session)
    codes = issued_code(monkeypatch)
    start_verification(session, contact="anna@example.se", channel="web", sender="s1")

    later = utcnow() + CODE_TTL + timedelta(seconds=1)
    assert check_code(session, channel="web", sender="s1", code=codes[0], now=later) is None


def test_five_wrong_guesses_kill_the_code(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_driver(session)
    codes = issued_code(monkeypatch)
    start_verification(session, contact="anna@example.se", channel="web", sender="s1")
    wrong = f"{(int(codes[0]) + 1) % 10**6:06d}"

    for _ in range(MAX_ATTEMPTS):
        assert check_code(session, channel="web", sender="s1", code=wrong) is None

    assert check_code(session, channel="web", sender="s1", code=codes[0]) is None
    [row] = session.exec(select(OneTimeCode)).all()
    assert row.attempts == MAX_ATTEMPTS


def test_a_new_code_retires_the_previous_one(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(session)
    codes = issued_code(monkeypatch)
    start_verification(session, contact="anna@example.se", channel="web", sender="s1")
    start_verification(session, contact="anna@example.se", channel="web", sender="s1")

    assert check_code(session, channel="web", sender="s1", code=codes[0]) is None or \
        codes[0] == codes[1]
    assert check_code(session, channel="web", sender="s1", code=codes[1]) == driver.id


def test_codes_are_rate_limited_per_contact(session: Session) -> None:
    make_driver(session)
    for n in range(CODES_PER_CONTACT):
        assert start_verification(session, contact="anna@example.se", channel="web",
                                  sender=f"s{n}").status == "sent"

    limited = start_verification(session, contact="anna@example.se", channel="web", sender="x")

    assert limited.status == "rate_limited" and 0 < limited.retry_after_s <= 15 * 60 + 1
    assert len(session.exec(select(EmailMessage)).all()) == CODES_PER_CONTACT
    later = utcnow() + identity.CONTACT_WINDOW + timedelta(seconds=1)
    assert start_verification(session, contact="anna@example.se", channel="web", sender="x",
                              now=later).status == "sent"


def test_codes_are_rate_limited_per_sender(session: Session) -> None:
    for n in range(CODES_PER_SENDER):
        assert start_verification(session, contact=f"d{n}@example.se", channel="sms",
                                  sender="+46700000000").status == "sent"

    limited = start_verification(session, contact="other@example.se", channel="sms",
                                 sender="+46700000000")

    assert limited.status == "rate_limited"
    assert start_verification(session, contact="other@example.se", channel="sms",
                              sender="+46700000001").status == "sent"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


async def test_the_code_is_delivered_by_smtp_at_once(
    engine: Engine, settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    server, port = inbox
    with session_scope(engine) as session:
        driver = make_driver(session, email="anna@example.se", language=Language.sv)
        driver_id = driver.id
    with session_scope(engine) as session, mock.patch.object(
            identity.secrets, "randbelow", return_value=424242):
        result = start_verification(session, contact="anna@example.se", channel="web",
                                    sender="s1")
    smtp = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": port,
                                       "smtp_from": "ChargeDesk <noreply@chargedesk.example>"})

    assert await deliver_code(engine, smtp, result) is True

    [received] = server.messages()
    assert received["To"] == "anna@example.se"
    assert received["Subject"] == "Din inloggningskod till ChargeDesk: 424242"
    body = received.get_body(preferencelist=("plain",)).get_content()
    assert "424242" in body and "10 minuter" in body
    with session_scope(engine) as session:
        mail = session.get(EmailMessage, result.message_id)
        assert mail is not None and (mail.status, mail.attempts) == (EmailStatus.sent, 1)
        assert check_code(session, channel="web", sender="s1", code="424 242") == driver_id
    # Delivered once: the mailer's own round finds nothing left to send.
    assert await deliver_code(engine, smtp, result) is False
    assert len(server.envelopes) == 1


async def test_without_smtp_the_code_stays_queued_for_the_mailer(
    engine: Engine, settings: Settings
) -> None:
    with session_scope(engine) as session:
        make_driver(session)
        result = start_verification(session, contact="anna@example.se", channel="web",
                                    sender="s1")

    assert await deliver_code(engine, settings.model_copy(update={"smtp_host": ""}),
                              result) is False
    with session_scope(engine) as session:
        mail = session.get(EmailMessage, result.message_id)
        assert mail is not None and (mail.status, mail.attempts) == (EmailStatus.queued, 0)
