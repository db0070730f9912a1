"""Contacts: one person across channels (see :mod:`assistant.contacts`).

- ``contact``: a driver's (``driver_id`` set, one per driver) or an anonymous one, known
  only by an address so far;
- ``contact_address``: which contact an address (a phone number, an e-mail address, a web
  chat session) leads to. An address has up to two rows: the *proven* one (a Twilio-signed
  From number, a DMARC-passed From address, a signed-in chat session) and the unproven one
  (caller ID without attestation, an unauthenticated From header), which only ever leads to
  an anonymous contact: a claim nobody proved never reaches a driver's history;
- ``contact_conversation``: the assistant's conversation ``(channel, sender)`` and the
  contact it belongs to, with the address and whether it was proven.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from chargedesk.types import UTCDateTime, utcnow


class Contact(SQLModel, table=True):
    """A person who writes or calls: a driver's contact, or an anonymous one."""

    __tablename__ = "contact"

    id: int | None = Field(default=None, primary_key=True)
    driver_id: int | None = Field(default=None, foreign_key="driver.id", unique=True)
    # Set when an anonymous contact turned out to be a driver's: its rows moved there.
    merged_into_id: int | None = Field(default=None, foreign_key="contact.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ContactAddress(SQLModel, table=True):
    """An address and the contact it leads to; ``proven`` says how it was learnt."""

    __tablename__ = "contact_address"
    __table_args__ = (
        UniqueConstraint("kind", "address", "proven", name="uq_contact_address_kind_address"),
    )

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    # "phone" (E.164), "email" (lower case), "web" (a chat session's sender id).
    kind: str = Field(max_length=10)
    address: str = Field(max_length=254)
    proven: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ContactConversation(SQLModel, table=True):
    """An assistant conversation (one channel and sender) and its contact."""

    __tablename__ = "contact_conversation"
    __table_args__ = (Index("ix_contact_conversation_contact_id", "contact_id"),)

    channel: str = Field(primary_key=True, max_length=20)
    sender: str = Field(primary_key=True, max_length=200)
    contact_id: int = Field(foreign_key="contact.id")
    # The contact's driver when linked (kept here so a message needs one lookup).
    driver_id: int | None = Field(default=None, foreign_key="driver.id")
    kind: str = Field(max_length=10)
    address: str = Field(max_length=254)
    # The last message's address was proven (or a one-time code proved the driver).
    proven: bool = False
    linked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
