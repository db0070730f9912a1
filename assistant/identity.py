"""Who a driver is in a conversation: one-time codes sent to the address of their account.

A web chat driver signs in by giving their e-mail address or phone number; a code goes to the
account and, typed back into the same conversation (channel and sender), binds the driver to
it. Other channels use the same codes when an unverified sender asks about an account.

Rules, each against a way to abuse it:

- the answer to "send me a code" is the same whether or not the contact belongs to a driver,
  and a row is written either way (so the rate limits count the same), so it can't be used to
  learn who has an account;
- codes are 6 random digits, kept only as scrypt hashes, valid :data:`CODE_TTL` and for
  :data:`MAX_ATTEMPTS` guesses; a new code for the same conversation retires the old one;
- :data:`CODES_PER_CONTACT` per :data:`CONTACT_WINDOW` for one address (nobody's inbox is
  flooded) and :data:`CODES_PER_SENDER` per :data:`SENDER_WINDOW` for one conversation.

Codes go to the address given: an e-mail address gets an e-mail; a phone number a text,
when the SMS channel is installed (it registers with :func:`set_sms_codes`), else an e-mail
to the account's address. Which way depends only on what was typed and on the
installation, never on whether an account has it.

One exception, told truthfully: a number that has sent STOP gets no text (nothing may be
sent to it). The answer says so (``opted_out``: reply START to opt back in), and when the
number is a driver's whose account has an e-mail address the code goes there instead
(``sent`` by ``email``, with ``opted_out`` set, so the driver is told where it went). That
answer differs for opted-out numbers on an account with an e-mail address: only a number's
own phone can opt it out, so it tells nothing to someone who does not hold that phone.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage as MimeMessage
from email.utils import formatdate, parseaddr
from typing import Literal

import aiosmtplib
import structlog
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from assistant.identity_models import OneTimeCode
from billing_api.mailer import SMTP_TIMEOUT, queue_email, record_delivery
from billing_api.models import Driver, EmailMessage, EmailStatus, Language
from chargedesk.db import run_in_session
from chargedesk.security import hash_password, verify_password
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

CODE_TTL = timedelta(minutes=10)
MAX_ATTEMPTS = 5
CODES_PER_CONTACT = 3
CONTACT_WINDOW = timedelta(minutes=15)
CODES_PER_SENDER = 5
SENDER_WINDOW = timedelta(hours=1)
EMAIL_KIND = "one_time_code"

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class InvalidContact(ValueError):
    """Neither an e-mail address nor a phone number."""


@dataclass(frozen=True)
class Verification:
    """What the driver is told after asking for a code: the same for known and unknown
    contacts. ``message_id`` is internal (the e-mail to deliver now) and never shown."""

    status: Literal["sent", "rate_limited", "opted_out"]
    via: Literal["email", "sms"] = "email"
    expires_at: datetime | None = None
    retry_after_s: int = 0
    message_id: int | None = None  # via "sms": the text's row in the SMS channel's table
    # The number given has opted out of texts (STOP): with status "sent" the code went by
    # e-mail to the account's address instead; with "opted_out" nothing was sent.
    opted_out: bool = False


@dataclass(frozen=True)
class SmsCodes:
    """How the SMS channel sends codes: ``queue(session, phone=, text=)`` writes the text in
    the verification's transaction (its id); ``send(id)`` sends it once committed (True
    when Twilio took it; else the channel retries it)."""

    queue: Callable[..., int | None]
    send: Callable[[int], Awaitable[bool]]
    # ``opted_out(session, phone=)``: the number has sent STOP (nothing may be texted to it).
    opted_out: Callable[..., bool] | None = None


_sms_codes: weakref.WeakKeyDictionary[Engine, SmsCodes] = weakref.WeakKeyDictionary()


def set_sms_codes(engine: Engine, codes: SmsCodes | None) -> None:
    """Send codes for phone numbers by text on this database's service (or stop)."""
    if codes is None:
        _sms_codes.pop(engine, None)
    else:
        _sms_codes[engine] = codes


def _sms_for(session: Session) -> SmsCodes | None:
    bind = session.get_bind()
    return _sms_codes.get(bind if isinstance(bind, Engine) else bind.engine)


def normalise_contact(contact: str) -> str:
    """A lower-case e-mail address, or a phone number in E.164 (Swedish numbers written
    nationally, ``070-123 45 67``, become ``+46701234567``). Raises :class:`InvalidContact`."""
    text = contact.strip()
    if "@" in text:
        if not _EMAIL.match(text) or len(text) > 254:
            raise InvalidContact("not an e-mail address")
        return text.lower()
    digits = re.sub(r"[\s\-().]", "", text)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif digits.startswith("0"):
        digits = "+46" + digits[1:]
    if digits.startswith("+460"):  # "+46 (0)70 ..."
        digits = "+46" + digits[4:]
    if not _E164.match(digits):
        raise InvalidContact("not a phone number or e-mail address")
    return digits


def _find_driver(session: Session, contact: str) -> Driver | None:
    if "@" in contact:
        where = func.lower(col(Driver.email)) == contact
    else:
        where = col(Driver.phone) == contact
    return session.exec(select(Driver).where(where).order_by(col(Driver.id))).first()


def _count_since(session: Session, *conditions: object) -> tuple[int, datetime | None]:
    count, oldest = session.exec(
        select(func.count(), func.min(OneTimeCode.created_at)).where(*conditions)  # type: ignore[call-overload]
    ).one()
    return int(count), oldest


def _retry_after(oldest: datetime | None, window: timedelta, now: datetime) -> int:
    if oldest is None:
        return int(window.total_seconds())
    return max(1, int((oldest + window - now).total_seconds()) + 1)


def start_verification(
    session: Session, *, contact: str, channel: str, sender: str,
    now: datetime | None = None,
) -> Verification:
    """Send a one-time code to the driver with this e-mail address or phone number, for the
    conversation ``(channel, sender)``.

    Answers ``sent`` whether or not a driver has the contact (nothing goes out when none
    does), or ``rate_limited`` with the seconds to wait. Raises :class:`InvalidContact` for
    text that is neither an address nor a number.
    """
    now = now or utcnow()
    normalised = normalise_contact(contact)
    by_contact, oldest_contact = _count_since(
        session, col(OneTimeCode.contact) == normalised,
        col(OneTimeCode.created_at) > now - CONTACT_WINDOW)
    by_sender, oldest_sender = _count_since(
        session, col(OneTimeCode.channel) == channel, col(OneTimeCode.sender) == sender,
        col(OneTimeCode.created_at) > now - SENDER_WINDOW)
    if by_contact >= CODES_PER_CONTACT or by_sender >= CODES_PER_SENDER:
        wait = max(
            _retry_after(oldest_contact, CONTACT_WINDOW, now) if by_contact >= CODES_PER_CONTACT
            else 0,
            _retry_after(oldest_sender, SENDER_WINDOW, now) if by_sender >= CODES_PER_SENDER
            else 0,
        )
        log.info("one-time code rate limited", channel=channel)
        return Verification(status="rate_limited", retry_after_s=wait)

    # A new code retires the conversation's earlier ones.
    session.execute(
        update(OneTimeCode)
        .where(col(OneTimeCode.channel) == channel, col(OneTimeCode.sender) == sender,
               col(OneTimeCode.used_at).is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    driver = _find_driver(session, normalised)
    code = f"{secrets.randbelow(10**6):06d}"
    # Hashed the same way for unknown contacts: the time taken tells nothing either.
    row = OneTimeCode(
        channel=channel, sender=sender, contact=normalised,
        driver_id=driver.id if driver is not None else None, code_hash=hash_password(code),
        created_at=now, expires_at=now + CODE_TTL,
    )
    message_id: int | None = None
    sms = _sms_for(session) if "@" not in normalised else None
    if sms is not None and sms.opted_out is not None and sms.opted_out(session,
                                                                       phone=normalised):
        # Nothing may be texted to it: the account's e-mail address, if it has one.
        if driver is not None and driver.email:
            message_id = _mail_code(session, row=row, driver=driver, code=code)
        session.add(row)
        session.flush()
        log.info("one-time code not texted: the number opted out",
                 via="email" if message_id is not None else None)
        if message_id is None:
            return Verification(status="opted_out", via="sms", opted_out=True)
        return Verification(status="sent", via="email", expires_at=row.expires_at,
                            message_id=message_id, opted_out=True)
    if sms is not None:
        if driver is not None:
            message_id = sms.queue(session, phone=normalised,
                                   text=code_text(code, driver.language))
            row.sent_via = "sms" if message_id is not None else None
        session.add(row)
        session.flush()
        return Verification(status="sent", via="sms", expires_at=row.expires_at,
                            message_id=message_id)
    if driver is not None and driver.email:
        message_id = _mail_code(session, row=row, driver=driver, code=code)
    session.add(row)
    session.flush()
    return Verification(status="sent", expires_at=row.expires_at, message_id=message_id)


def _mail_code(session: Session, *, row: OneTimeCode, driver: Driver, code: str) -> int | None:
    """Queue the code's e-mail to the account's address (sent by :func:`deliver_code`)."""
    subject, body = code_mail(code, driver.language)
    message = queue_email(session, to_address=str(driver.email), subject=subject, body=body,
                          kind=EMAIL_KIND, driver_id=driver.id)
    row.sent_via, row.email_message_id = "email", message.id
    return message.id


def check_code(
    session: Session, *, channel: str, sender: str, code: str, now: datetime | None = None
) -> int | None:
    """The driver id when ``code`` is this conversation's current code, else None.

    Each call counts as a guess, right or wrong; after :data:`MAX_ATTEMPTS` guesses or
    :data:`CODE_TTL` the code is dead and a new one must be asked for. A code works once.
    """
    now = now or utcnow()
    row = session.exec(
        select(OneTimeCode)
        .where(col(OneTimeCode.channel) == channel, col(OneTimeCode.sender) == sender,
               col(OneTimeCode.used_at).is_(None))
        .order_by(col(OneTimeCode.id).desc())
        .with_for_update()
    ).first()
    if row is None or row.expires_at <= now or row.attempts >= MAX_ATTEMPTS:
        return None
    row.attempts += 1
    guess = re.sub(r"[\s\-]", "", code)
    ok = verify_password(guess, row.code_hash) if len(guess) == 6 and guess.isdigit() else False
    if ok and row.driver_id is not None:
        row.used_at = now
    session.add(row)
    session.flush()
    if ok and row.driver_id is not None:
        # The code proves the driver here and now: this very message is theirs (one
        # contact, one history), not only the next one.
        from assistant import contacts

        contacts.prove(session, channel=channel, sender=sender, driver_id=row.driver_id,
                       now=now)
    return row.driver_id if ok else None


def code_mail(code: str, language: Language | str) -> tuple[str, str]:
    """Subject and body of the e-mail carrying a code, in the driver's language."""
    minutes = int(CODE_TTL.total_seconds() // 60)
    if str(language) == Language.en.value:
        return (f"Your ChargeDesk sign-in code: {code}",
                f"Hello,\n\nyour sign-in code is {code}. It is valid for {minutes} minutes "
                "and works once.\n\nIf you did not ask for it, ignore this message; nobody "
                "can sign in without the code.\n")
    return (f"Din inloggningskod till ChargeDesk: {code}",
            f"Hej!\n\nDin inloggningskod är {code}. Den gäller i {minutes} minuter och kan "
            "användas en gång.\n\nHar du inte bett om den kan du bortse från det här "
            "meddelandet; ingen kan logga in utan koden.\n")


def code_text(code: str, language: Language | str) -> str:
    """The text message carrying a code, in the driver's language."""
    minutes = int(CODE_TTL.total_seconds() // 60)
    if str(language) == Language.en.value:
        return (f"Your ChargeDesk code: {code}. Valid for {minutes} minutes. If you did not "
                "ask for it, ignore this text.")
    return (f"Din kod till ChargeDesk: {code}. Den gäller i {minutes} minuter. Har du inte "
            "bett om den kan du bortse från sms:et.")


# ---------------------------------------------------------------- delivery


def _claim(session: Session, *, message_id: int, now: datetime) -> tuple[str, str, str] | None:
    """Take one queued message for sending (the mailer's claim, for this message only)."""
    row = session.execute(
        update(EmailMessage)
        .where(col(EmailMessage.id) == message_id,
               col(EmailMessage.status) == EmailStatus.queued,
               col(EmailMessage.sent_at).is_(None))
        .values(sent_at=now, attempts=col(EmailMessage.attempts) + 1)
        .returning(EmailMessage.to_address, EmailMessage.subject, EmailMessage.body)
        .execution_options(synchronize_session=False)
    ).first()
    return (row[0], row[1], row[2]) if row is not None else None


async def deliver_code(engine: Engine, settings: Settings, verification: Verification) -> bool:
    """Send a code's e-mail at once rather than at the mailer's next round (a driver is
    waiting for it). Without SMTP settings, or on failure, the message stays queued for the
    mailer, which retries it. True when the server accepted it."""
    if verification.via == "sms":
        sms = _sms_codes.get(engine)
        if verification.message_id is None or sms is None:
            return False
        return await sms.send(verification.message_id)
    if verification.message_id is None or not settings.smtp_host:
        return False
    claimed = await run_in_session(engine, _claim, message_id=verification.message_id,
                                   now=utcnow())
    if claimed is None:
        return False
    to_address, subject, body = claimed
    mime = MimeMessage()
    mime["From"] = settings.smtp_from
    mime["To"] = to_address
    mime["Subject"] = subject
    mime["Date"] = formatdate(localtime=False)
    domain = parseaddr(settings.smtp_from)[1].rpartition("@")[2] or "chargedesk.invalid"
    mime["Message-ID"] = f"<email-{verification.message_id}.{secrets.token_hex(6)}@{domain}>"
    mime.set_content(body)
    error: str | None = None
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port,
        username=settings.smtp_username or None, password=settings.smtp_password or None,
        start_tls=settings.smtp_starttls, timeout=SMTP_TIMEOUT,
    )
    try:
        await smtp.connect()
        await smtp.send_message(mime)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("one-time code e-mail not sent", email_id=verification.message_id,
                    error=error)
    finally:
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
    await run_in_session(engine, record_delivery, message_id=verification.message_id,
                         error=error)
    return error is None
