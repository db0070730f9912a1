"""One driver, one contact: what each channel proves decides which contact a conversation
joins (:func:`assistant.contacts.link`), on SQLite and PostgreSQL.

The last test is end to end over real SMTP: with a trusted mail server configured, a
forged ``From`` stays an anonymous contact and the same address with a DMARC pass joins the
driver's.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

import assistant.service
from assistant import contacts
from assistant.contact_models import Contact, ContactAddress, ContactConversation
from assistant.identity_models import OneTimeCode
from assistant.models import Conversation, ConversationEvent
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from tests.billing_api.factories import make_driver
from tests.channels.test_email import (
    Assistant,
    Relay,
    free_port,
    mail,
    send,
    start_mail_server,
    wait_for,
)

ANNA_PHONE = "+46701112233"
ANNA_EMAIL = "anna@example.se"


@pytest.fixture
def anna(engine: Any) -> int:
    with session_scope(engine) as session:
        return make_driver(session, name="Anna Berg", email=ANNA_EMAIL, phone=ANNA_PHONE).id or 0


def link(engine: Any, **kwargs: Any) -> contacts.Linked:
    with session_scope(engine) as session:
        return contacts.link(session, **kwargs)


def used_code(engine: Any, *, channel: str, sender: str, driver_id: int) -> None:
    """A one-time code the driver typed into the conversation (as identity.check_code
    leaves it)."""
    now = utcnow()
    with session_scope(engine) as session:
        session.add(OneTimeCode(channel=channel, sender=sender, contact=ANNA_EMAIL,
                                driver_id=driver_id, code_hash="x", attempts=1,
                                sent_via="email", created_at=now,
                                expires_at=now + timedelta(minutes=10), used_at=now))


def test_a_driver_is_one_contact_on_sms_phone_web_and_authenticated_email(
        engine: Any, anna: int) -> None:
    by_sms = link(engine, channel="sms", sender=ANNA_PHONE, address=ANNA_PHONE,
                  driver_id=anna, proven=True)
    by_phone = link(engine, channel="voice", sender=ANNA_PHONE, address=ANNA_PHONE,
                    driver_id=anna, proven=True)
    by_web = link(engine, channel="web", sender="web-abc", address="web-abc", driver_id=anna,
                  proven=True)
    by_mail = link(engine, channel="email", sender="thread0000000001", address=ANNA_EMAIL,
                   driver_id=anna, proven=True)

    assert {by_sms.contact_id, by_phone.contact_id, by_web.contact_id,
            by_mail.contact_id} == {by_sms.contact_id}
    assert by_sms.driver_id == anna and by_sms.changed
    assert by_sms.event() is not None
    # The next message changes nothing and publishes nothing.
    again = link(engine, channel="sms", sender=ANNA_PHONE, address=ANNA_PHONE, driver_id=anna,
                 proven=True)
    assert not again.changed and again.event() is None
    with session_scope(engine) as session:
        [contact] = session.exec(select(Contact)).all()
        assert contact.driver_id == anna
        described = contacts.describe(session, contact_id=contact.id or 0)
    assert {(a["kind"], a["address"], a["proven"]) for a in described["addresses"]} == {
        ("phone", ANNA_PHONE, True), ("web", "web-abc", True), ("email", ANNA_EMAIL, True)}
    assert {c["channel"] for c in described["conversations"]} == {"sms", "voice", "web",
                                                                 "email"}


def test_unproven_claims_stay_anonymous_and_apart_from_the_driver(
        engine: Any, anna: int) -> None:
    drivers = link(engine, channel="sms", sender=ANNA_PHONE, address=ANNA_PHONE,
                   driver_id=anna, proven=True)
    # A From header nobody vouched for, and caller ID without attestation.
    forged_mail = link(engine, channel="email", sender="thread0000000002", address=ANNA_EMAIL,
                       driver_id=anna, proven=False)
    spoofed_call = link(engine, channel="voice", sender=ANNA_PHONE, address=ANNA_PHONE,
                        driver_id=anna, proven=False)

    assert forged_mail.driver_id is None and spoofed_call.driver_id is None
    assert len({drivers.contact_id, forged_mail.contact_id, spoofed_call.contact_id}) == 3
    with session_scope(engine) as session:
        described = contacts.describe(session, contact_id=drivers.contact_id)
        spoofed = contacts.describe(session, contact_id=spoofed_call.contact_id)
    assert [(c["channel"], c["sender"]) for c in described["conversations"]] == [
        ("sms", ANNA_PHONE)]
    assert spoofed["anonymous"] and spoofed["addresses"] == [
        {"kind": "phone", "address": ANNA_PHONE, "proven": False,
         "last_seen_at": spoofed["addresses"][0]["last_seen_at"]}]
    # The same unproven address keeps its one anonymous contact.
    later = link(engine, channel="email", sender="thread0000000003", address=ANNA_EMAIL,
                 driver_id=anna, proven=False)
    assert later.contact_id == forged_mail.contact_id


def test_a_number_that_texted_before_its_owner_was_known_joins_the_driver_on_proof(
        engine: Any, anna: int) -> None:
    stranger = "+46709998877"
    first = link(engine, channel="sms", sender=stranger, address=stranger, proven=True)
    assert first.driver_id is None
    # In the conversation the driver proves who she is with a one-time code.
    used_code(engine, channel="sms", sender=stranger, driver_id=anna)

    proven = link(engine, channel="sms", sender=stranger, address=stranger, proven=True)

    assert proven.driver_id == anna and proven.previous_contact_id == first.contact_id
    web = link(engine, channel="web", sender="web-xyz", address="web-xyz", driver_id=anna,
               proven=True)
    assert web.contact_id == proven.contact_id
    with session_scope(engine) as session:
        merged = session.get(Contact, first.contact_id)
        assert merged is not None and merged.merged_into_id == proven.contact_id
        assert contacts.resolve(session, contact_id=first.contact_id).driver_id == anna
        address = session.exec(select(ContactAddress).where(
            ContactAddress.address == stranger)).one()
        assert (address.contact_id, address.proven) == (proven.contact_id, True)
        assert contacts.find(session, phone=stranger).id == proven.contact_id  # type: ignore[union-attr]


def test_a_code_proves_the_driver_of_an_unauthenticated_email_thread_not_its_address(
        engine: Any, anna: int) -> None:
    token = "thread0000000004"
    anonymous = link(engine, channel="email", sender=token, address="someone@example.org")
    used_code(engine, channel="email", sender=token, driver_id=anna)

    proven = link(engine, channel="email", sender=token, address="someone@example.org")

    assert proven.driver_id == anna and proven.previous_contact_id == anonymous.contact_id
    with session_scope(engine) as session:
        assert contacts.find(session, email="someone@example.org") is None
        row = session.get(ContactConversation, ("email", token))
        assert row is not None and (row.driver_id, row.proven) == (anna, False)


def test_a_number_given_to_another_driver_leads_to_them_from_then_on(
        engine: Any, anna: int) -> None:
    before = link(engine, channel="sms", sender=ANNA_PHONE, address=ANNA_PHONE,
                  driver_id=anna, proven=True)
    with session_scope(engine) as session:
        erik = make_driver(session, name="Erik Lund", email="erik@example.se").id

    after = link(engine, channel="voice", sender=ANNA_PHONE, address=ANNA_PHONE,
                 driver_id=erik, proven=True)

    assert after.driver_id == erik and after.contact_id != before.contact_id
    with session_scope(engine) as session:
        assert contacts.find(session, phone=ANNA_PHONE).driver_id == erik  # type: ignore[union-attr]
        assert contacts.contact_of(session, channel="sms", sender=ANNA_PHONE) == \
            before.contact_id  # Anna's conversation stays hers


def test_history_is_every_channel_in_time_order_with_the_channel_marked(
        engine: Any, anna: int) -> None:
    start = utcnow() - timedelta(hours=1)
    script = [("web", "web-abc", "user", "Laddaren startar inte"),
              ("web", "web-abc", "bot", "Jag kopplar dig till en person."),
              ("sms", ANNA_PHONE, "user", "Jag står vid laddaren nu"),
              ("web", "web-abc", "bot", "Vi har startat om den."),
              ("sms", ANNA_PHONE, "user", "Nu laddar den, tack!")]
    with session_scope(engine) as session:
        ids = {}
        for channel, sender in sorted({(c, s) for c, s, _, _ in script}):
            row = Conversation(channel=channel, sender=sender, driver_id=anna, verified=True)
            session.add(row)
            session.flush()
            ids[channel] = row.id
        for minute, (channel, _sender, kind, text) in enumerate(script):
            session.add(ConversationEvent(
                conversation_id=ids[channel], type=kind,
                timestamp=start + timedelta(minutes=minute), data={"event": kind, "text": text}))
    web = link(engine, channel="web", sender="web-abc", address="web-abc", driver_id=anna,
               proven=True)
    link(engine, channel="sms", sender=ANNA_PHONE, address=ANNA_PHONE, driver_id=anna,
         proven=True)

    with session_scope(engine) as session:
        lines = contacts.history(session, contact_ids=[web.contact_id])

    assert [(line["channel"], line["from"], line["text"]) for line in lines] == [
        (channel, "driver" if kind == "user" else "bot", text)
        for channel, _, kind, text in script]
    assert {line["address"] for line in lines if line["channel"] == "sms"} == {ANNA_PHONE}
    assert all(line["proven"] for line in lines)


# ---------------------------------------------------------------- over SMTP


def test_only_a_dmarc_pass_from_the_trusted_server_joins_an_address_to_the_driver(
        settings: Settings, relay: tuple[Relay, int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bot = Assistant()
    monkeypatch.setattr(assistant.service, "handle_message", bot)
    live = start_mail_server(settings.model_copy(update={
        "data_dir": tmp_path, "smtp_inbound_port": free_port(),
        "support_address": "ChargeDesk Support <support@chargedesk.test>",
        "smtp_host": "127.0.0.1", "smtp_port": relay[1],
        "email_trusted_authserv_id": "mx.chargedesk.test"}))
    engine = live.runtime.engine
    try:
        with session_scope(engine) as session:
            anna = make_driver(session, name="Anna Berg", email=ANNA_EMAIL).id
        forged = "mx.elsewhere.example; dmarc=pass header.from=example.se"
        send(live, mail(sender=ANNA_EMAIL, text="Mitt saldo?", subject="Saldo",
                        headers={"Authentication-Results": forged}))
        passed = "mx.chargedesk.test; spf=pass smtp.mailfrom=example.se; dmarc=pass"
        send(live, mail(sender=ANNA_EMAIL, text="Mitt saldo?", subject="Saldo igen",
                        headers={"Authentication-Results": passed}))

        def linked() -> list[ContactConversation]:
            with Session(engine) as session:
                rows = session.exec(select(ContactConversation)).all()
                return list(rows) if len(rows) == 2 else []

        first, second = sorted(wait_for(linked, "two linked threads"),
                               key=lambda r: r.linked_at)
        senders = [call["sender"] for call in bot.calls]
        by_sender = {first.sender: first, second.sender: second}
        forged_row, passed_row = by_sender[senders[0]], by_sender[senders[1]]
        assert (forged_row.driver_id, forged_row.proven) == (None, False)
        assert (passed_row.driver_id, passed_row.proven) == (anna, True)
        assert forged_row.contact_id != passed_row.contact_id
        with Session(engine) as session:
            assert contacts.find(session, email=ANNA_EMAIL).driver_id == anna  # type: ignore[union-attr]
    finally:
        live.stop()
