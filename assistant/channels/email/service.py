"""The e-mail channel's database work: store what arrives, find its thread, claim it for
answering, record the answer in the outbox, and claim and record deliveries.

Plain keyword-only functions taking a session, each run in one transaction by the caller.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import formataddr, parseaddr
from typing import Any

import structlog
from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from assistant.channels.email import parsing
from assistant.channels.email_models import (
    EmailAttachment,
    EmailThread,
    EmailThreadMessage,
    InboundEmail,
    InboundStatus,
    OutboundEmail,
    OutboundStatus,
)
from billing_api.models import Driver
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

CHANNEL = "email"
# The assistant gets at most this much of a message (the web chat's limit).
MAX_TEXT = 5000
# A claim older than this belongs to a worker that died; the message is taken again.
CLAIM_TIMEOUT = timedelta(minutes=5)
# The per-sender reply limit counts over this window.
RATE_WINDOW = timedelta(hours=1)
# A stored message unclaimed this long was left over (a crash, a shutdown): the sweep takes it.
LEFT_OVER_AFTER = timedelta(seconds=20)
# The assistant failing on one message this often makes it ``failed`` (an agent looks).
MAX_ANSWER_ATTEMPTS = 3
# Delivery attempts of a reply; the delay doubles from RETRY_BASE up to RETRY_MAX.
MAX_SEND_ATTEMPTS = 8
RETRY_BASE = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)

# Message-IDs in the References of a reply (the first and the newest).
MAX_REPLY_REFERENCES = 10

_TOKEN = re.compile(r"^[a-z2-7]{16}$")


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Support:
    """``CHARGEDESK_SUPPORT_ADDRESS`` taken apart."""

    name: str
    address: str  # lower case
    domain: str

    @classmethod
    def of(cls, settings: Settings) -> Support:
        name, address = parseaddr(settings.support_address)
        address = address.strip().lower()
        if "@" not in address:
            raise ValueError(f"CHARGEDESK_SUPPORT_ADDRESS is not an address: "
                             f"{settings.support_address!r}")
        return cls(name=name, address=address, domain=address.rpartition("@")[2])

    @property
    def header(self) -> str:
        return formataddr((self.name, self.address)) if self.name else self.address

    def reply_address(self, token: str) -> str:
        return f"reply+{token}@{self.domain}"

    def reply_header(self, token: str) -> str:
        address = self.reply_address(token)
        return formataddr((self.name, address)) if self.name else address

    def token_of(self, recipient: str) -> str | None:
        """The thread token of a ``reply+<token>@<our domain>`` address, else None."""
        local, _, domain = recipient.strip().strip("<>").lower().rpartition("@")
        if domain != self.domain or not local.startswith("reply+"):
            return None
        token = local[len("reply+"):]
        return token if _TOKEN.match(token) else None

    def is_support(self, recipient: str) -> bool:
        return recipient.strip().strip("<>").lower() == self.address

    def is_ours(self, address: str) -> bool:
        return self.is_support(address) or self.token_of(address) is not None


def new_token() -> str:
    """A thread's token: 16 lower-case base32 characters (80 random bits)."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def token_exists(session: Session, *, token: str) -> bool:
    """Whether a thread has this token (a reply+ recipient is accepted only then)."""
    return session.exec(select(EmailThread.id).where(EmailThread.token == token)).first() \
        is not None


# ---------------------------------------------------------------- storing what arrives


@dataclass(frozen=True)
class SavedFile:
    """An attachment as written to disk (or refused), ready for its row."""

    filename: str
    content_type: str
    declared_type: str
    size: int
    sha256: str
    path: str | None
    refused: str | None


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    thread_id: int
    token: str
    answer: bool  # to be answered (not a machine's mail, not a duplicate)
    duplicate: bool = False
    reason: str | None = None


def store_inbound(
    session: Session, *, mail: parsing.ParsedMail, envelope_from: str, recipients: list[str],
    raw_path: str, raw_sha256: str, raw_size: int, files: list[SavedFile], settings: Settings,
    now: datetime | None = None,
) -> Stored:
    """Record a received message in its thread (a new one when it threads into none of the
    sender's), with its attachments and the driver it comes from.

    A message already stored (the same Message-ID from the same address: the sending server
    retried) is recorded again as ``ignored`` and not answered; so is a machine's mail.
    """
    now = now or utcnow()
    support = Support.of(settings)
    address = mail.from_address
    reason = mail.machine
    if reason is None and (support.is_ours(address) or support.is_ours(envelope_from)):
        reason = "our own address"
    known = None
    if mail.message_id is not None:
        known = session.get(EmailThreadMessage, mail.message_id)
        if known is not None and known.ours:
            reason = "our own message"
    duplicate = False
    if mail.message_id is not None and reason is None:
        duplicate = session.exec(
            select(InboundEmail.id).where(
                col(InboundEmail.message_id) == mail.message_id,
                col(InboundEmail.from_address) == address,
                col(InboundEmail.status) != InboundStatus.ignored)
        ).first() is not None
        if duplicate:
            reason = "duplicate (already received)"

    thread = None
    if known is not None and not known.ours:  # a copy of a message we have: its thread
        candidate = session.get(EmailThread, known.thread_id)
        if candidate is not None and (candidate.address == address or reason is not None):
            thread = candidate
    if thread is None:
        # A machine's mail (a bounce of our reply) is filed with the thread it is about.
        thread = _find_thread(session, mail=mail, recipients=recipients, support=support,
                              any_address=reason is not None)
    new_thread = thread is None
    if thread is None:
        thread = EmailThread(token=new_token(), address=address[:254],
                             subject=mail.base_subject[:300], created_at=now, updated_at=now)
        session.add(thread)
        session.flush()
    assert thread.id is not None

    driver_id, verified = None, False
    if reason is None and address:
        driver_id, verified = _identify(session, mail=mail, settings=settings)
        if driver_id is not None and thread.driver_id is None:
            thread.driver_id = driver_id
    thread.updated_at = now
    session.add(thread)

    text = mail.text
    if new_thread and mail.base_subject and mail.base_subject.casefold() not in text.casefold():
        # The first message's subject often says what the body doesn't ("Laddaren startar inte").
        text = f"{mail.base_subject}\n\n{text}" if text else mail.base_subject
    row = InboundEmail(
        thread_id=thread.id, message_id=mail.message_id, envelope_from=envelope_from[:254],
        in_reply_to=mail.in_reply_to[0] if mail.in_reply_to else None,
        reference_ids=" ".join(mail.references),
        recipients=recipients[:20], from_address=address or "", from_name=mail.from_name,
        subject=mail.subject[:300], text=text[:20000], raw_path=raw_path,
        raw_sha256=raw_sha256, raw_size=raw_size, driver_id=driver_id, verified=verified,
        status=InboundStatus.ignored if reason else InboundStatus.received,
        reason=reason[:200] if reason else None, received_at=now,
        processed_at=now if reason else None,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    for saved in files:
        session.add(EmailAttachment(
            inbound_id=row.id, thread_id=thread.id, filename=saved.filename,
            content_type=saved.content_type, declared_type=saved.declared_type,
            size=saved.size, sha256=saved.sha256, path=saved.path, refused=saved.refused,
            created_at=now))
    if mail.message_id is not None and known is None:
        _index(session, message_id=mail.message_id, thread_id=thread.id, ours=False)
    session.flush()
    return Stored(inbound_id=row.id, thread_id=thread.id, token=thread.token,
                  answer=reason is None, duplicate=duplicate, reason=reason)


def _find_thread(session: Session, *, mail: parsing.ParsedMail, recipients: list[str],
                 support: Support, any_address: bool = False) -> EmailThread | None:
    """The sender's thread this message continues: by the reply+ address it was sent to,
    then by the Message-IDs it answers (the newest first, ours before the sender's own).

    A thread only takes mail from its own address (unless ``any_address``, for mail that is
    only filed, never answered): someone else replying to a forwarded answer starts a
    thread of their own rather than joining the driver's."""
    address = mail.from_address
    if not address and not any_address:
        return None
    own = [] if any_address else [EmailThread.address == address]
    tokens = [t for t in (support.token_of(r) for r in recipients) if t]
    if tokens:
        thread = session.exec(select(EmailThread).where(
            col(EmailThread.token).in_(tokens), *own)).first()
        if thread is not None:
            return thread
    ids = list(dict.fromkeys([*mail.in_reply_to, *reversed(mail.references)]))
    if not ids:
        return None
    rows = session.exec(
        select(EmailThreadMessage, EmailThread)
        .join(EmailThread, col(EmailThread.id) == EmailThreadMessage.thread_id)
        .where(col(EmailThreadMessage.message_id).in_(ids), *own)
    ).all()
    if not rows:
        return None
    order = {message_id: index for index, message_id in enumerate(ids)}
    rows = sorted(rows, key=lambda r: (not r[0].ours, order.get(r[0].message_id, len(ids))))
    return rows[0][1]


def _identify(session: Session, *, mail: parsing.ParsedMail, settings: Settings
              ) -> tuple[int | None, bool]:
    """The driver whose e-mail address wrote this, when it can be trusted: a From header
    alone is anyone's to write, so only when ``CHARGEDESK_EMAIL_TRUSTED_AUTHSERV_ID`` names
    the receiving mail server and its SPF/DKIM/DMARC verdict (Authentication-Results)
    vouches for the From domain. Otherwise the sender is anonymous, and the assistant
    verifies them with a one-time code before it touches an account."""
    driver = session.exec(
        select(Driver).where(func.lower(col(Driver.email)) == mail.from_address)
        .order_by(col(Driver.id))).first()
    if driver is None:
        return None, False
    trusted = settings.email_trusted_authserv_id
    if not trusted or not parsing.authenticated(mail.authentication_results,
                                             authserv_id=trusted, address=mail.from_address):
        log.info("e-mail sender not authenticated: treated as anonymous", driver_id=driver.id)
        return None, False
    return driver.id, True


def _index(session: Session, *, message_id: str, thread_id: int, ours: bool) -> None:
    """Remember a Message-ID of the thread. The caller checked it is new; should the same
    message arrive twice at once, the second transaction fails on the key and its sender
    (told to try again later) then finds it a duplicate."""
    session.add(EmailThreadMessage(message_id=message_id[:250], thread_id=thread_id,
                                   ours=ours))


# ---------------------------------------------------------------- answering


@dataclass(frozen=True)
class AnswerJob:
    """A claimed inbound message with what answering it needs, detached from the session."""

    inbound_id: int
    thread_id: int
    token: str
    from_address: str
    from_name: str
    subject: str
    thread_subject: str
    text: str
    message_id: str | None
    references: list[str]
    driver_id: int | None
    verified: bool
    # Replies to this address in the last :data:`RATE_WINDOW`, when it was claimed.
    recent_replies: int = 0
    attachments: list[dict[str, Any]] = field(default_factory=list)
    # The options our last reply in the thread offered, if any (for "2" or "Ja").
    options: list[dict[str, Any]] = field(default_factory=list)


def claim_inbound(session: Session, *, inbound_id: int | None = None, limit: int = 20,
                  now: datetime | None = None) -> list[AnswerJob]:
    """Take stored messages for answering: one (``inbound_id``), or up to ``limit`` left
    over (unclaimed for :data:`LEFT_OVER_AFTER`, or claimed by a worker that died), oldest
    first."""
    now = now or utcnow()
    claimable = or_(
        col(InboundEmail.status) == InboundStatus.received,
        (col(InboundEmail.status) == InboundStatus.processing)
        & (col(InboundEmail.claimed_at) < now - CLAIM_TIMEOUT),
    )
    if inbound_id is not None:  # the common case, as a message arrives: no subquery
        which: Any = col(InboundEmail.id) == inbound_id
    else:  # fresh ones belong to the task started when they arrived
        which = col(InboundEmail.id).in_(
            select(InboundEmail.id)
            .where(claimable, col(InboundEmail.received_at) < now - LEFT_OVER_AFTER)
            .order_by(col(InboundEmail.id)).limit(limit).with_for_update(skip_locked=True)
            .scalar_subquery())
    claimed = session.execute(
        update(InboundEmail)
        .where(which, claimable)
        .values(status=InboundStatus.processing, claimed_at=now)
        .returning(*_CLAIMED)
        .execution_options(synchronize_session=False)
    ).all()
    return [_job(session, row=_Claimed(*r), now=now) for r in sorted(claimed)]


_CLAIMED = (InboundEmail.id, InboundEmail.thread_id, InboundEmail.from_address,
            InboundEmail.from_name, InboundEmail.subject, InboundEmail.text,
            InboundEmail.message_id, InboundEmail.in_reply_to, InboundEmail.reference_ids,
            InboundEmail.driver_id, InboundEmail.verified)


@dataclass(frozen=True)
class _Claimed:
    id: int
    thread_id: int
    from_address: str
    from_name: str
    subject: str
    text: str
    message_id: str | None
    in_reply_to: str | None
    reference_ids: str
    driver_id: int | None
    verified: bool


def _job(session: Session, *, row: _Claimed, now: datetime) -> AnswerJob:
    token, thread_subject = session.execute(
        select(EmailThread.token, EmailThread.subject).where(EmailThread.id == row.thread_id)
    ).one()
    files = session.exec(select(EmailAttachment).where(
        EmailAttachment.inbound_id == row.id, col(EmailAttachment.path).is_not(None))
        .order_by(col(EmailAttachment.id))).all()
    options = session.execute(
        select(OutboundEmail.buttons).where(OutboundEmail.thread_id == row.thread_id)
        .order_by(col(OutboundEmail.id).desc()).limit(1)).scalar()
    return AnswerJob(
        inbound_id=row.id, thread_id=row.thread_id, token=token,
        from_address=row.from_address, from_name=row.from_name,
        subject=parsing.base_subject(row.subject)[0], thread_subject=thread_subject,
        text=row.text, message_id=row.message_id, references=_references_of(row),
        driver_id=row.driver_id, verified=bool(row.verified),
        recent_replies=replies_since(session, address=row.from_address,
                                     since=now - RATE_WINDOW),
        attachments=[{"id": f.id, "filename": f.filename, "content_type": f.content_type,
                      "size": f.size, "sha256": f.sha256} for f in files],
        options=list(options or []),
    )


def _references_of(row: _Claimed | InboundEmail | OutboundEmail) -> list[str]:
    """The References of our reply: the driver's References (or their In-Reply-To), then
    their Message-ID (RFC 5322 3.6.4); kept to the first and the last few."""
    refs = row.reference_ids.split() or ([row.in_reply_to] if row.in_reply_to else [])
    if row.message_id:
        refs.append(row.message_id)
    refs = list(dict.fromkeys(refs))
    return refs if len(refs) <= MAX_REPLY_REFERENCES else [refs[0],
                                                           *refs[-MAX_REPLY_REFERENCES + 1:]]


def replies_since(session: Session, *, address: str, since: datetime) -> int:
    """Replies created for ``address`` since then (the per-sender rate limit)."""
    return int(session.exec(
        select(func.count()).select_from(OutboundEmail)
        .where(OutboundEmail.to_address == address, col(OutboundEmail.created_at) >= since)
    ).one())


def finish_inbound(session: Session, *, inbound_id: int, status: InboundStatus,
                   reason: str | None = None, now: datetime | None = None) -> None:
    """Set a claimed message's final status (answered, no answer, rate limited)."""
    session.execute(
        update(InboundEmail).where(col(InboundEmail.id) == inbound_id)
        .values(status=status, reason=reason, processed_at=now or utcnow())
        .execution_options(synchronize_session=False))


def release_inbound(session: Session, *, inbound_id: int, error: str) -> InboundStatus:
    """The assistant failed on it: back to ``received`` for another try, or ``failed``."""
    row = session.get(InboundEmail, inbound_id)
    assert row is not None
    row.attempts += 1
    row.reason = error[:200]
    row.claimed_at = None
    row.status = (InboundStatus.failed if row.attempts >= MAX_ANSWER_ATTEMPTS
                  else InboundStatus.received)
    session.add(row)
    return row.status


def record_answer(
    session: Session, *, job: AnswerJob, messages: list[dict[str, Any]], settings: Settings,
    now: datetime | None = None,
) -> int | None:
    """Put the assistant's answer to a claimed message in the outbox (the id), or mark the
    message ``no_answer`` when the assistant said nothing (an agent has the thread)."""
    from assistant.channels.email import outbound
    from assistant.models import Conversation

    now = now or utcnow()
    if not messages:
        finish_inbound(session, inbound_id=job.inbound_id, status=InboundStatus.no_answer,
                       now=now)
        return None
    support = Support.of(settings)
    language = session.exec(select(Conversation.language).where(
        Conversation.channel == CHANNEL, Conversation.sender == job.token)).first() or "sv"
    subject = outbound.subject_for(job.subject or job.thread_subject, language=language)
    body = outbound.compose(messages, language=language,
                            reply_address=support.reply_address(job.token), subject=subject)
    message_id = f"reply-{secrets.token_hex(12)}@{support.domain}"
    row = OutboundEmail(
        thread_id=job.thread_id, inbound_id=job.inbound_id, message_id=message_id,
        in_reply_to=job.message_id, reference_ids=" ".join(job.references),
        to_address=job.from_address,
        to_header=formataddr((job.from_name, job.from_address))[:400],
        subject=subject[:300], language=language, text=body.text, html=body.html,
        buttons=body.buttons, next_attempt_at=now, created_at=now,
    )
    session.add(row)
    _index(session, message_id=message_id, thread_id=job.thread_id, ours=True)
    finish_inbound(session, inbound_id=job.inbound_id, status=InboundStatus.answered, now=now)
    session.flush()
    return row.id


# ---------------------------------------------------------------- the outbox


def claim_outbound(session: Session, *, settings: Settings, limit: int = 50,
                   now: datetime | None = None) -> list[Any]:
    """Take up to ``limit`` replies due for (another) attempt, counting the attempt; one
    conditional UPDATE, so each goes to one deliverer (as the invoice mailer claims)."""
    from assistant.channels.email import outbound

    now = now or utcnow()
    claimable = (
        (col(OutboundEmail.status) == OutboundStatus.queued)
        & (col(OutboundEmail.next_attempt_at) <= now)
        & or_(col(OutboundEmail.claimed_at).is_(None),
              col(OutboundEmail.claimed_at) < now - CLAIM_TIMEOUT)
    )
    oldest = (select(OutboundEmail.id).where(claimable).order_by(col(OutboundEmail.id))
              .limit(limit).with_for_update(skip_locked=True).scalar_subquery())
    rows = session.execute(
        update(OutboundEmail)
        .where(col(OutboundEmail.id).in_(oldest), claimable)
        .values(claimed_at=now, attempts=col(OutboundEmail.attempts) + 1)
        .returning(OutboundEmail.id, OutboundEmail.message_id, OutboundEmail.in_reply_to,
                   OutboundEmail.reference_ids, OutboundEmail.to_header,
                   OutboundEmail.subject, OutboundEmail.language, OutboundEmail.text,
                   OutboundEmail.html, OutboundEmail.thread_id, OutboundEmail.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    support = Support.of(settings)
    tokens = dict(session.exec(select(EmailThread.id, EmailThread.token).where(
        col(EmailThread.id).in_({r[9] for r in rows}))).all()) if rows else {}
    return sorted((outbound.Outgoing(
        id=r[0], message_id=r[1], in_reply_to=r[2], references=r[3], to_header=r[4],
        subject=r[5], language=r[6], text=r[7], html=r[8],
        reply_to=support.reply_header(tokens[r[9]]), attempt=r[10]) for r in rows),
        key=lambda m: m.id)


@dataclass(frozen=True)
class Delivery:
    """How one attempt at a reply went."""

    outbound_id: int
    error: str | None = None
    permanent: bool = False  # refused for good (5xx): no retry


def record_deliveries(session: Session, *, results: list[Delivery],
                      now: datetime | None = None) -> list[OutboundStatus]:
    """Record a batch of attempts (see :func:`record_delivery`)."""
    now = now or utcnow()
    return [record_delivery(session, outbound_id=r.outbound_id, error=r.error,
                            permanent=r.permanent, now=now) for r in results]


def record_delivery(session: Session, *, outbound_id: int, error: str | None,
                    permanent: bool = False, now: datetime | None = None) -> OutboundStatus:
    """Mark a claimed reply sent, or release it for a retry after a doubling delay; after
    :data:`MAX_SEND_ATTEMPTS`, or a permanent refusal (5xx), it has failed."""
    now = now or utcnow()
    row = session.get(OutboundEmail, outbound_id)
    assert row is not None
    if error is None:
        row.status, row.sent_at, row.last_error, row.claimed_at = (
            OutboundStatus.sent, now, None, None)
    else:
        row.last_error, row.claimed_at = error[:500], None
        if permanent or row.attempts >= MAX_SEND_ATTEMPTS:
            row.status = OutboundStatus.failed
        else:
            row.next_attempt_at = now + retry_delay(row.attempts)
    session.add(row)
    session.flush()
    return row.status


def retry_delay(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, … up to an hour."""
    return min(RETRY_BASE * (2 ** max(0, attempts - 1)), RETRY_MAX)


def next_due(session: Session) -> datetime | None:
    """When the next queued reply is due, for the deliverer's sleep."""
    return session.exec(
        select(OutboundEmail.next_attempt_at)
        .where(OutboundEmail.status == OutboundStatus.queued)
        .order_by(col(OutboundEmail.next_attempt_at)).limit(1)).first()


# ---------------------------------------------------------------- messages of our own

_NEW_SUBJECT = {"sv": "Meddelande från ChargeDesk", "en": "A message from ChargeDesk"}


def queue_message(session: Session, *, sender: str, messages: list[dict[str, Any]],
                  settings: Settings, now: datetime | None = None) -> int:
    """Put a message of ours that answers nothing (an agent's reply, a notification, a
    late answer) in the outbox; its id.

    ``sender`` is a thread's token (the e-mail conversation's sender): the message goes in
    that thread, threaded under its newest message from the driver (In-Reply-To, and
    References as a reply to it would have), or under our own newest when the driver has
    not written yet. An e-mail address instead starts a new thread with it, under the
    ``subject`` of the first message that has one (else a neutral one); the driver's reply
    to its ``reply+`` address continues it. Raises LookupError for an unknown token."""
    from assistant.channels.email import outbound
    from assistant.models import Conversation

    now = now or utcnow()
    support = Support.of(settings)
    subject = next((str(m["subject"]) for m in messages if m.get("subject")), "")
    if "@" in sender:
        address = parseaddr(sender)[1].strip().lower() or sender.strip().lower()
        driver = session.exec(select(Driver).where(
            func.lower(col(Driver.email)) == address).order_by(col(Driver.id))).first()
        language = str(driver.language) if driver is not None else "sv"
        language = language if language in _NEW_SUBJECT else "sv"
        thread = EmailThread(token=new_token(), address=address[:254],
                             subject=(subject or _NEW_SUBJECT[language])[:300],
                             driver_id=driver.id if driver is not None else None,
                             created_at=now, updated_at=now)
        session.add(thread)
        session.flush()
    else:
        found = session.exec(select(EmailThread).where(EmailThread.token == sender)).first()
        if found is None:
            raise LookupError(f"no e-mail thread {sender!r}")
        thread = found
        language = session.exec(select(Conversation.language).where(
            Conversation.channel == CHANNEL, Conversation.sender == thread.token)).first() \
            or "sv"
    assert thread.id is not None
    parent: InboundEmail | OutboundEmail | None = session.exec(
        select(InboundEmail)
        .where(InboundEmail.thread_id == thread.id, col(InboundEmail.message_id).is_not(None),
               col(InboundEmail.status) != InboundStatus.ignored)
        .order_by(col(InboundEmail.id).desc()).limit(1)).first()
    if isinstance(parent, InboundEmail):
        to_address = parent.from_address
        to_header = formataddr((parent.from_name, parent.from_address))
    else:
        parent = session.exec(select(OutboundEmail).where(OutboundEmail.thread_id == thread.id)
                              .order_by(col(OutboundEmail.id).desc()).limit(1)).first()
        to_address = to_header = thread.address
    if isinstance(parent, InboundEmail):
        subject = outbound.subject_for(parsing.base_subject(parent.subject)[0]
                                       or thread.subject, language=language)
    elif parent is not None:  # after our own message: its subject, with one Re:
        subject = outbound.subject_for(parsing.base_subject(parent.subject)[0],
                                       language=language)
    else:
        subject = thread.subject
    refs = _references_of(parent) if parent is not None else []
    body = outbound.compose(messages, language=language,
                            reply_address=support.reply_address(thread.token), subject=subject)
    message_id = f"msg-{secrets.token_hex(12)}@{support.domain}"
    row = OutboundEmail(
        thread_id=thread.id, inbound_id=None, message_id=message_id,
        in_reply_to=parent.message_id if parent is not None else None,
        reference_ids=" ".join(refs), to_address=to_address, to_header=to_header[:400],
        subject=subject[:300], language=language, text=body.text, html=body.html,
        buttons=body.buttons, next_attempt_at=now, created_at=now)
    session.add(row)
    _index(session, message_id=message_id, thread_id=thread.id, ours=True)
    thread.updated_at = now
    session.add(thread)
    session.flush()
    return row.id or 0
