"""One driver, one contact, one history, whichever channel they use.

Every channel tells :func:`link` who wrote: the conversation (channel and sender), the
address it came from (a phone number, an e-mail address, a web chat session), the driver the
channel recognised, and whether the address is *proven*:

- SMS: a Twilio-signed ``From`` is the number's proof (the signature is checked before
  anything is read);
- phone: caller ID only with full STIR/SHAKEN attestation;
- e-mail: a ``From`` header proves nothing by itself; only a DMARC/SPF pass stamped by the
  mail server named in ``CHARGEDESK_EMAIL_TRUSTED_AUTHSERV_ID`` does;
- web chat: a session counts once signed in with a one-time code;
- any channel: a one-time code used in the conversation proves the driver (not the address).

A proven driver's conversations all go to the driver's one contact, so a driver who started
in the web chat and goes on by SMS has one history. An address nobody proved stays with an
anonymous contact of its own, kept apart from the proven one of the same address: a forged
``From`` or caller ID never reaches a driver's history. When an address is later proven to be
a driver's, the anonymous contact that address's *proven* traffic built up (a number that
texted before its owner was known) is merged into the driver's.

Channels call :func:`join` with every message *before* the assistant sees it: the
conversation joins its contact and, when a proven driver holds an active ticket, the
followers the support desk registered (:func:`add_follower`) put the conversation on that
ticket and pause it, so the bot never answers a driver people already have. The driver is
told so instead, in the language they wrote (:func:`acknowledge`). :class:`ContactLinked` is
published when a conversation joins a contact; agents read :func:`history`.

A one-time code used inside a conversation (the assistant's verification) links it in the
code's own transaction (:func:`prove`, called by :func:`assistant.identity.check_code`), so
the message that carried the code is already the driver's; once that message is answered,
the channel calls :func:`after_turn`, which does what a sign-in does: the followers put the
conversation on the driver's active ticket and the driver is told so.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import structlog
from sqlalchemy import Engine, event, update
from sqlmodel import Session, col, select

from assistant.contact_models import Contact, ContactAddress, ContactConversation
from assistant.identity_models import OneTimeCode
from assistant.models import Conversation, ConversationEvent
from chargedesk.db import run_in_session
from chargedesk.events import Event
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

# The kind of address each channel's sender is reached at.
KINDS = {"sms": "phone", "voice": "phone", "email": "email", "web": "web"}
HISTORY_LIMIT = 500
SYSTEM = "system"  # the support desk's own messages (its satisfaction question, hand-backs)


class ContactLinked(Event):
    """A conversation joined a contact (its first message, or a proof moved it)."""

    topic: ClassVar[str] = "assistant.contact_linked"

    contact_id: int
    driver_id: int | None
    channel: str
    sender: str
    previous_contact_id: int | None = None


@dataclass(frozen=True)
class Linked:
    """What :func:`link` did: the conversation's contact now, and before."""

    channel: str
    sender: str
    contact_id: int
    driver_id: int | None
    previous_contact_id: int | None

    @property
    def changed(self) -> bool:
        return self.contact_id != self.previous_contact_id

    def event(self) -> ContactLinked | None:
        """The event to publish once the transaction has committed, when anything moved."""
        if not self.changed:
            return None
        return ContactLinked(contact_id=self.contact_id, driver_id=self.driver_id,
                             channel=self.channel, sender=self.sender,
                             previous_contact_id=self.previous_contact_id)


# ---------------------------------------------------------------- linking


def link(session: Session, *, channel: str, sender: str, address: str,
         driver_id: int | None = None, proven: bool = False,
         now: datetime | None = None) -> Linked:
    """Put the conversation ``(channel, sender)`` with its contact.

    ``address`` is where the message came from; ``proven`` whether the channel proved it
    (see the module docstring); ``driver_id`` the driver the channel recognised by it, which
    counts only when proven. A one-time code used in the conversation proves its driver
    too. Cheap when nothing changed (one primary-key read, and one indexed read when no
    driver is proven): channels call it for every message."""
    now = now or utcnow()
    kind = KINDS.get(channel, channel[:10])
    address = (address or sender)[:254]
    existing = session.get(ContactConversation, (channel, sender))
    previous = existing.contact_id if existing is not None else None  # before a merge moves it
    who = driver_id if proven and driver_id is not None else None
    if who is None:
        who = code_driver(session, channel=channel, sender=sender)
    if existing is not None and existing.proven == proven and existing.address == address \
            and (who is None or existing.driver_id == who):
        return Linked(channel, sender, existing.contact_id, existing.driver_id,
                      existing.contact_id)

    known = _address(session, kind=kind, address=address, proven=proven)
    if who is not None:
        target = driver_contact(session, driver_id=who, now=now)
        if proven:
            if known is None:
                known = _add_address(session, contact_id=target.id or 0, kind=kind,
                                     address=address, proven=True, now=now)
            elif known.contact_id != target.id:
                other = session.get(Contact, known.contact_id)
                if other is not None and other.driver_id is None:
                    merge(session, source=other, into=target, now=now)
                else:  # the number or address belongs to another driver now
                    log.info("proven address moved to another driver", kind=kind,
                             from_contact=known.contact_id, to_contact=target.id)
                    known.contact_id = target.id or 0
    else:
        if known is None:
            anonymous = Contact(created_at=now, updated_at=now)
            session.add(anonymous)
            session.flush()
            known = _add_address(session, contact_id=anonymous.id or 0, kind=kind,
                                 address=address, proven=proven, now=now)
        target = resolve(session, contact_id=known.contact_id)
    if known is not None:
        known.last_seen_at = now
        session.add(known)

    row = existing or ContactConversation(channel=channel, sender=sender, contact_id=0,
                                          kind=kind, address=address)
    if previous != target.id:
        row.linked_at = now
    row.contact_id, row.driver_id = target.id or 0, target.driver_id
    row.kind, row.address, row.proven = kind, address, proven
    session.add(row)
    target.updated_at = now
    session.add(target)
    session.flush()
    linked = Linked(channel, sender, target.id or 0, target.driver_id, previous)
    if linked.changed:
        log.info("conversation linked to contact", channel=channel, contact_id=target.id,
                 driver_id=target.driver_id, previous_contact_id=previous, proven=proven)
    return linked


def code_driver(session: Session, *, channel: str, sender: str) -> int | None:
    """The driver a one-time code proved in this conversation (the latest), if any."""
    found = session.exec(
        select(OneTimeCode.driver_id)
        .where(col(OneTimeCode.channel) == channel, col(OneTimeCode.sender) == sender,
               col(OneTimeCode.used_at).is_not(None), col(OneTimeCode.driver_id).is_not(None))
        .order_by(col(OneTimeCode.id).desc()).limit(1)).first()
    return int(found) if found is not None else None


# Conversations a code proved in a transaction that committed, waiting for their channel's
# :func:`after_turn` (or the next :func:`join`), per database: {(channel, sender): Linked}.
# Bounded: a channel that never asks (or a turn that failed) only leaves the oldest behind.
_PROOFS_KEPT = 1000
_proofs: weakref.WeakKeyDictionary[Engine, OrderedDict[tuple[str, str], Linked]] = (
    weakref.WeakKeyDictionary())
_proofs_lock = threading.Lock()


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def prove(session: Session, *, channel: str, sender: str, driver_id: int,
          now: datetime | None = None) -> Linked:
    """A one-time code of ``driver_id`` was just used in the conversation ``(channel,
    sender)`` (in this transaction): link it to the driver's contact now, as the code
    proves. The conversation keeps the address and proof its channel gave it; a web chat
    not linked before is proven by the code as a sign-in is (its session is the address),
    so an anonymous contact its proven address built up is merged into the driver's. Once
    the transaction commits, the channel's :func:`after_turn` finishes the join."""
    existing = session.get(ContactConversation, (channel, sender))
    if existing is not None:
        address, proven = existing.address, existing.proven
    else:
        address, proven = sender, channel == "web"
    linked = link(session, channel=channel, sender=sender, address=address,
                  driver_id=driver_id, proven=proven, now=now)
    engine = _engine_of(session)

    def keep(_session: Session) -> None:
        with _proofs_lock:
            waiting = _proofs.setdefault(engine, OrderedDict())
            waiting[(channel, sender)] = linked
            waiting.move_to_end((channel, sender))
            while len(waiting) > _PROOFS_KEPT:
                waiting.popitem(last=False)

    event.listen(session, "after_commit", keep, once=True)
    return linked


def _take_proof(engine: Engine, channel: str, sender: str) -> Linked | None:
    with _proofs_lock:
        waiting = _proofs.get(engine)
        return waiting.pop((channel, sender), None) if waiting else None


def _address(session: Session, *, kind: str, address: str, proven: bool
             ) -> ContactAddress | None:
    return session.exec(select(ContactAddress).where(
        col(ContactAddress.kind) == kind, col(ContactAddress.address) == address,
        col(ContactAddress.proven) == proven)).first()


def _add_address(session: Session, *, contact_id: int, kind: str, address: str, proven: bool,
                 now: datetime) -> ContactAddress:
    row = ContactAddress(contact_id=contact_id, kind=kind, address=address, proven=proven,
                         created_at=now, last_seen_at=now)
    session.add(row)
    session.flush()
    return row


def driver_contact(session: Session, *, driver_id: int, now: datetime | None = None
                   ) -> Contact:
    """The driver's contact (made on first need)."""
    row = session.exec(select(Contact).where(col(Contact.driver_id) == driver_id)).first()
    if row is None:
        now = now or utcnow()
        row = Contact(driver_id=driver_id, created_at=now, updated_at=now)
        session.add(row)
        session.flush()
    return row


def resolve(session: Session, *, contact_id: int) -> Contact:
    """The contact, or the one it was merged into."""
    row = session.get(Contact, contact_id)
    seen = set()
    while row is not None and row.merged_into_id is not None and row.id not in seen:
        seen.add(row.id)
        row = session.get(Contact, row.merged_into_id)
    if row is None:
        raise LookupError(f"no contact {contact_id}")
    return row


def merge(session: Session, *, source: Contact, into: Contact, now: datetime | None = None
          ) -> None:
    """Move an anonymous contact's addresses and conversations to ``into`` (a proven
    address of it turned out to be the driver's)."""
    now = now or utcnow()
    if source.id == into.id:
        return
    session.execute(update(ContactAddress)
                    .where(col(ContactAddress.contact_id) == source.id)
                    .values(contact_id=into.id)
                    .execution_options(synchronize_session="fetch"))
    session.execute(update(ContactConversation)
                    .where(col(ContactConversation.contact_id) == source.id)
                    .values(contact_id=into.id, driver_id=into.driver_id)
                    .execution_options(synchronize_session="fetch"))
    source.merged_into_id, source.updated_at = into.id, now
    session.add(source)
    log.info("contacts merged", source=source.id, into=into.id, driver_id=into.driver_id)


# ---------------------------------------------------------------- reading


def contact_of(session: Session, *, channel: str, sender: str) -> int | None:
    """The contact of a conversation, if it has one."""
    row = session.get(ContactConversation, (channel, sender))
    return resolve(session, contact_id=row.contact_id).id if row is not None else None


def find(session: Session, *, driver_id: int | None = None, phone: str | None = None,
         email: str | None = None) -> Contact | None:
    """A contact by its driver, or by a proven phone number or e-mail address."""
    if driver_id is not None:
        return session.exec(select(Contact).where(col(Contact.driver_id) == driver_id)).first()
    kind, address = ("phone", phone) if phone else ("email", (email or "").strip().lower())
    row = _address(session, kind=kind, address=address or "", proven=True)
    return resolve(session, contact_id=row.contact_id) if row is not None else None


def describe(session: Session, *, contact_id: int) -> dict[str, Any]:
    """The contact, its addresses and its conversations."""
    contact = resolve(session, contact_id=contact_id)
    addresses = session.exec(select(ContactAddress)
                             .where(col(ContactAddress.contact_id) == contact.id)
                             .order_by(col(ContactAddress.id))).all()
    links = session.exec(select(ContactConversation)
                         .where(col(ContactConversation.contact_id) == contact.id)
                         .order_by(col(ContactConversation.linked_at))).all()
    return {
        "id": contact.id, "driver_id": contact.driver_id,
        "anonymous": contact.driver_id is None,
        "addresses": [{"kind": a.kind, "address": a.address, "proven": a.proven,
                       "last_seen_at": a.last_seen_at.isoformat()} for a in addresses],
        "conversations": [{"channel": c.channel, "sender": c.sender, "address": c.address,
                           "proven": c.proven, "linked_at": c.linked_at.isoformat()}
                          for c in links],
    }


def conversations(session: Session, *, contact_ids: Iterable[int]) -> list[Conversation]:
    """The assistant's conversations of these contacts."""
    ids = list(contact_ids)
    if not ids:
        return []
    return list(session.exec(
        select(Conversation)
        .join(ContactConversation, (col(ContactConversation.channel) == Conversation.channel)
              & (col(ContactConversation.sender) == Conversation.sender))
        .where(col(ContactConversation.contact_id).in_(ids))
        .order_by(col(Conversation.id))).all())


def history(session: Session, *, contact_ids: Iterable[int],
            conversation_ids: Iterable[int] = (), limit: int = HISTORY_LIMIT
            ) -> list[dict[str, Any]]:
    """Every message of the contacts' conversations (and of ``conversation_ids``) on every
    channel, oldest first: the driver's, the assistant's, agents' and the desk's, each with
    its channel, the address it went to or came from, and whether that was proven. The
    newest ``limit`` messages."""
    found = {c.id: c for c in conversations(session, contact_ids=contact_ids)}
    extra = [i for i in conversation_ids if i not in found]
    if extra:
        for row in session.exec(select(Conversation).where(col(Conversation.id).in_(extra))):
            found[row.id] = row
    if not found:
        return []
    links = {(c.channel, c.sender): c for c in session.exec(
        select(ContactConversation).where(
            col(ContactConversation.sender).in_({c.sender for c in found.values()})))}
    rows = session.exec(
        select(ConversationEvent)
        .where(col(ConversationEvent.conversation_id).in_(list(found)),
               col(ConversationEvent.type).in_(["user", "bot"]))
        .order_by(col(ConversationEvent.id).desc()).limit(limit)).all()
    lines = []
    for row in rows:
        conversation = found[row.conversation_id]
        link_row = links.get((conversation.channel, conversation.sender))
        data = row.data or {}
        marked = (data.get("metadata") or {}).get("support") or {}
        if row.type == "user":
            author, by = "driver", None
        elif marked:
            author = SYSTEM if marked.get("by") == SYSTEM else "agent"
            by = marked.get("by")
        else:
            author, by = "bot", None
        line: dict[str, Any] = {
            "id": row.id, "conversation_id": conversation.id, "channel": conversation.channel,
            "address": link_row.address if link_row is not None else conversation.sender,
            "proven": link_row.proven if link_row is not None else bool(conversation.verified),
            "from": author, "by": by, "text": data.get("text"), "at": row.timestamp.isoformat()}
        buttons = (data.get("data") or {}).get("buttons")
        if buttons:
            line["buttons"] = [b.get("title") for b in buttons]
        lines.append((row.timestamp, row.id or 0, line))
    lines.sort(key=lambda item: (item[0], item[1]))
    return [line for _, _, line in lines]


async def publish(runtime: Any, linked: Linked | None) -> None:
    """Tell the bus a conversation moved (after its transaction committed)."""
    event = linked.event() if linked is not None else None
    if event is not None:
        await runtime.bus.publish(event)


# ---------------------------------------------------------------- following a driver


@dataclass(frozen=True)
class Followed:
    """A follower put the conversation on a ticket the driver already has."""

    ticket_id: int
    # People have the ticket (open or snoozed): the conversation was paused for them and
    # the driver is to be told so. False for a ticket handed back to the bot (pending).
    paused: bool
    language: str | None = None  # the ticket's
    # The conversation answers a question of the desk's (the rating question texted after
    # a call): paused so the answer reaches the ticket, and nothing to tell the driver.
    quiet: bool = False


# ``follower(session, channel=, sender=, contact_id=, now=)``, in the transaction that
# linked the conversation: the ticket it joined, or None.
Follower = Callable[..., Followed | None]


@dataclass(frozen=True)
class Joined:
    """What :func:`join` did."""

    linked: Linked
    followed: Followed | None = None


ACKNOWLEDGEMENT = {
    "sv": "Tack! En handläggare har redan ditt ärende (nr {ticket}) och svarar dig här.",
    "en": "Thank you! An agent already has your case (no. {ticket}) and will answer you "
          "here.",
}


def add_follower(runtime: Any, follower: Follower) -> None:
    """Have ``follower`` look at every conversation a proven driver writes in before the
    assistant answers it (the support desk: put it on the driver's active ticket)."""
    followers: list[Follower] | None = getattr(runtime, "contact_followers", None)
    if followers is None:
        followers = []
        runtime.contact_followers = followers
    followers.append(follower)


def open_conversation(session: Session, *, channel: str, sender: str,
                      expiry: timedelta, now: datetime | None = None) -> Conversation:
    """The conversation of ``(channel, sender)``, created (with its first session) when
    the driver has not written yet: a follower can then pause it before its first turn."""
    from assistant.dialogue import domain as domain_module
    from assistant.dialogue import store

    row = store.get_conversation(session, channel=channel, sender=sender)
    if row is not None:
        return row
    snapshot = store.load_conversation(
        session, channel=channel, sender=sender,
        initial_slots=domain_module.get_domain().initial_slots(), expiry=expiry, now=now)
    store.save_turn(session, snapshot=snapshot, expiry=expiry, now=now)
    store.forget_after_commit(session, channel=channel, sender=sender)
    session.flush()
    made = session.get(Conversation, snapshot.id)
    assert made is not None
    return made


def _join(session: Session, *, followers: list[Follower], channel: str, sender: str,
          address: str, driver_id: int | None, proven: bool, now: datetime) -> Joined:
    linked = link(session, channel=channel, sender=sender, address=address,
                  driver_id=driver_id, proven=proven, now=now)
    # Followers decide for themselves whom they follow: a proven driver onto their ticket,
    # any number onto the rating question texted to it.
    for follower in followers:
        followed = follower(session, channel=channel, sender=sender,
                            contact_id=linked.contact_id, now=now)
        if followed is not None:
            return Joined(linked, followed)
    return Joined(linked)


def _follow_proof(session: Session, *, followers: list[Follower], channel: str, sender: str,
                  now: datetime) -> tuple[Joined | None, str | None]:
    """:func:`_join` again with what :func:`prove` linked (the conversation's own address
    and proof), so the followers see the driver; and the language the conversation is in
    (the assistant just answered in it: a bare code says nothing of a language)."""
    from assistant.dialogue import store

    row = session.get(ContactConversation, (channel, sender))
    if row is None:
        return None, None
    conversation = store.get_conversation(session, channel=channel, sender=sender)
    language = conversation.language if conversation is not None else None
    return _join(session, followers=followers, channel=channel, sender=sender,
                 address=row.address, driver_id=row.driver_id, proven=row.proven,
                 now=now), language


async def join(runtime: Any, *, channel: str, sender: str, address: str,
               driver_id: int | None = None, proven: bool = False) -> Joined | None:
    """Before the assistant sees a message: :func:`link` the conversation, and when a
    proven driver holds an active ticket let the followers put the conversation on it
    (paused while people have it), all in one transaction; then :func:`publish`.

    A failure is logged and swallowed (None): the message is answered as if nothing had
    been linked, and the next one tries again."""
    followers = list(getattr(runtime, "contact_followers", ()))
    proof = _take_proof(runtime.engine, channel, sender)  # this join covers it
    try:
        joined = await run_in_session(runtime.engine, _join, followers=followers,
                                      channel=channel, sender=sender, address=address,
                                      driver_id=driver_id, proven=proven, now=utcnow())
    except Exception:
        log.exception("conversation not linked to a contact", channel=channel)
        return None
    await publish(runtime, proof)
    await publish(runtime, joined.linked)
    return joined


async def after_turn(runtime: Any, *, channel: str, sender: str, joined: Joined | None,
                     messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After the assistant answered a message (``messages``, perhaps none): what the
    channel sends besides. When a one-time code in that message proved the driver
    (:func:`prove`), the conversation joins as a sign-in does: :class:`ContactLinked` is
    published, the followers put it on the driver's active ticket (after the message, so
    the ticket's inbox starts past the code) and the driver is told people have it.
    Otherwise, when the assistant said nothing, :func:`acknowledge` for ``joined``."""
    proof = _take_proof(runtime.engine, channel, sender)
    if proof is not None:
        await publish(runtime, proof)
        followers = list(getattr(runtime, "contact_followers", ()))
        try:
            rejoined, language = await run_in_session(
                runtime.engine, _follow_proof, followers=followers, channel=channel,
                sender=sender, now=utcnow())
        except Exception:
            log.exception("proven conversation not followed", channel=channel)
            rejoined, language = None, None
        if rejoined is not None:
            await publish(runtime, rejoined.linked)
        return await acknowledge(runtime, channel=channel, sender=sender, joined=rejoined,
                                 language=language)
    if messages:
        return []
    return await acknowledge(runtime, channel=channel, sender=sender, joined=joined)


def record_acknowledgement(session: Session, *, channel: str, sender: str,
                           followed: Followed, now: datetime, language: str | None = None
                           ) -> dict[str, Any] | None:
    """Write the acknowledgement into the conversation (a message of the desk's) in
    ``language`` when given, else that of the driver's latest message, else the
    ticket's."""
    from assistant.dialogue import store

    conversation = store.get_conversation(session, channel=channel, sender=sender)
    if conversation is None or conversation.id is None:
        return None
    data = session.exec(
        select(ConversationEvent.data)
        .where(ConversationEvent.conversation_id == conversation.id,
               ConversationEvent.type == "user")
        .order_by(col(ConversationEvent.id).desc()).limit(1)).first() or {}
    said = language or (data.get("parse_data") or {}).get("language")
    language = "en" if (said or followed.language or conversation.language) == "en" else "sv"
    text = ACKNOWLEDGEMENT[language].format(ticket=followed.ticket_id)
    session.add(ConversationEvent(
        conversation_id=conversation.id, session_number=conversation.session_number,
        type="bot", timestamp=now,
        data={"event": "bot", "text": text, "data": {}, "timestamp": now.timestamp(),
              "metadata": {"support": {"by": SYSTEM, "ticket_id": followed.ticket_id,
                                       "kind": "followed"}}}))
    store.forget_after_commit(session, channel=channel, sender=sender)
    return {"recipient_id": sender, "text": text}


async def acknowledge(runtime: Any, *, channel: str, sender: str,
                      joined: Joined | None, language: str | None = None
                      ) -> list[dict[str, Any]]:
    """After the assistant stored the message of a conversation :func:`join` just paused:
    the message telling the driver that people have their case (recorded in the
    conversation as the desk's), for the channel to send. [] when nothing was paused."""
    followed = joined.followed if joined is not None else None
    if followed is None or not followed.paused or followed.quiet:
        return []
    message = await run_in_session(runtime.engine, record_acknowledgement, channel=channel,
                                   sender=sender, followed=followed, now=utcnow(),
                                   language=language)
    return [message] if message is not None else []
