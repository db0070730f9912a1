"""One-time codes that bind a driver to a conversation (web chat sign-in, account questions
from an unverified sender)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from chargedesk.types import UTCDateTime, utcnow


class OneTimeCode(SQLModel, table=True):
    """A code sent to a driver's address for one conversation (channel and sender).

    A row is written for every request, also when no driver has the contact, so rate limits
    and answers are the same whether or not an account exists; such a row can never succeed.
    Only a hash of the code is kept.
    """

    __tablename__ = "one_time_code"
    __table_args__ = (
        Index("ix_one_time_code_channel_sender", "channel", "sender"),
        Index("ix_one_time_code_contact_created_at", "contact", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    sender: str = Field(max_length=200)
    # Normalised: a lower-case e-mail address or an E.164 phone number.
    contact: str = Field(max_length=254)
    driver_id: int | None = Field(default=None, foreign_key="driver.id")
    code_hash: str = Field(max_length=200)
    attempts: int = 0
    # Where the code went ("email"), or None when nothing was sent (unknown contact).
    sent_via: str | None = Field(default=None, max_length=20)
    email_message_id: int | None = Field(default=None, foreign_key="email_message.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
