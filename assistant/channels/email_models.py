"""The e-mail channel's tables: threads (one per assistant conversation), the Message-IDs
that thread replies into them, every message in and out, and the attachments drivers send.

An inbound message is written here, with its raw bytes and attachments on disk, before the
SMTP server says 250; it is answered afterwards, and an answer is a row of ``email_outbound``
(an outbox with retries) before it is sent. So a crash or an SMTP outage loses nothing.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import EnumText, UTCDateTime, utcnow


class EmailThread(SQLModel, table=True):
    """One e-mail conversation with one address: the assistant's conversation is
    ``("email", token)``, and ``reply+<token>@<support domain>`` reaches it."""

    __tablename__ = "email_thread"

    id: int | None = Field(default=None, primary_key=True)
    # Random, lower-case base32 (80 bits): knowing it is what lets mail into the thread.
    token: str = Field(max_length=32, unique=True)
    # The address the thread is with, lower case; replies into it must come from it.
    address: str = Field(max_length=254, index=True)
    # The first message's subject without Re:/SV:/Fwd: prefixes.
    subject: str = Field(default="", max_length=300)
    driver_id: int | None = Field(default=None, foreign_key="driver.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class EmailThreadMessage(SQLModel, table=True):
    """A Message-ID seen in a thread (ours or the driver's): In-Reply-To and References
    find the thread through it."""

    __tablename__ = "email_thread_message"

    # Without the angle brackets, as written.
    message_id: str = Field(primary_key=True, max_length=250)
    thread_id: int = Field(foreign_key="email_thread.id", index=True)
    # True for the Message-IDs of our replies: only a recipient of our mail knows them.
    ours: bool = False


class InboundStatus(StrEnum):
    received = "received"  # stored, not answered yet
    processing = "processing"  # claimed by an answering task (``claimed_at``)
    answered = "answered"  # a reply is in the outbox
    no_answer = "no_answer"  # the assistant had nothing to say (an agent has the thread)
    ignored = "ignored"  # never answered: an auto-reply, a bounce, a list, a duplicate
    rate_limited = "rate_limited"  # the sender had all the replies one hour allows
    failed = "failed"  # the assistant failed on it repeatedly


class InboundEmail(SQLModel, table=True):
    """A message received for the support address or a thread's reply+ address."""

    __tablename__ = "email_inbound"
    __table_args__ = (
        Index("ix_email_inbound_status_claimed_at", "status", "claimed_at"),
        Index("ix_email_inbound_message_id", "message_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    thread_id: int = Field(foreign_key="email_thread.id", index=True)
    message_id: str | None = Field(default=None, max_length=250)
    in_reply_to: str | None = Field(default=None, max_length=250)
    # The References header's Message-IDs, space-separated, without angle brackets.
    reference_ids: str = Field(default="", sa_column=Column(Text, nullable=False))
    # SMTP envelope: MAIL FROM (empty for bounces) and the accepted RCPT TO addresses.
    envelope_from: str = Field(default="", max_length=254)
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    from_address: str = Field(max_length=254)
    from_name: str = Field(default="", max_length=200)
    subject: str = Field(default="", max_length=300)
    # What the assistant is given: the new text, without quotes and signatures.
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    # The message as received, under the data directory (content-addressed by SHA-256).
    raw_path: str = Field(max_length=300)
    raw_sha256: str = Field(max_length=64)
    raw_size: int
    driver_id: int | None = Field(default=None, foreign_key="driver.id", index=True)
    verified: bool = False
    status: InboundStatus = Field(default=InboundStatus.received,
                                  sa_type=EnumText(InboundStatus))
    # Why it was ignored or failed, e.g. "auto-submitted: auto-replied".
    reason: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class EmailAttachment(SQLModel, table=True):
    """A file that came with an inbound message: kept (images, PDFs within the limits) or
    listed with the reason it was not."""

    __tablename__ = "email_attachment"

    id: int | None = Field(default=None, primary_key=True)
    inbound_id: int = Field(foreign_key="email_inbound.id", index=True)
    thread_id: int = Field(foreign_key="email_thread.id", index=True)
    filename: str = Field(default="", max_length=200)
    # What the bytes are (sniffed), and what the sender's mail program called them.
    content_type: str = Field(max_length=100)
    declared_type: str = Field(default="", max_length=100)
    size: int
    sha256: str = Field(max_length=64, index=True)
    # Under the data directory; None when the file was refused.
    path: str | None = Field(default=None, max_length=300)
    refused: str | None = Field(default=None, max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OutboundStatus(StrEnum):
    queued = "queued"
    sent = "sent"
    failed = "failed"


class OutboundEmail(SQLModel, table=True):
    """A reply, with the headers that thread it, kept until the SMTP server accepts it;
    a failed attempt is retried at ``next_attempt_at`` with a growing delay."""

    __tablename__ = "email_outbound"
    __table_args__ = (
        UniqueConstraint("message_id"),
        Index("ix_email_outbound_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_email_outbound_to_address_created_at", "to_address", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    thread_id: int = Field(foreign_key="email_thread.id", index=True)
    inbound_id: int | None = Field(default=None, foreign_key="email_inbound.id")
    message_id: str = Field(max_length=250)
    in_reply_to: str | None = Field(default=None, max_length=250)
    # The References header we send (space-separated, with angle brackets).
    reference_ids: str = Field(default="", sa_column=Column(Text, nullable=False))
    # The bare address (lower case), for the rate limit, and the To header as written.
    to_address: str = Field(max_length=254)
    to_header: str = Field(max_length=400)
    subject: str = Field(max_length=300)
    language: str = Field(default="sv", max_length=2)
    text: str = Field(sa_column=Column(Text, nullable=False))
    html: str = Field(sa_column=Column(Text, nullable=False))
    # The options offered, numbered from 1: [{"title", "payload"}]; a reply of "2" or of
    # an option's title chooses it.
    buttons: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False))
    status: OutboundStatus = Field(default=OutboundStatus.queued,
                                   sa_type=EnumText(OutboundStatus))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
