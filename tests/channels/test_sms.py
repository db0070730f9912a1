"""The SMS channel over a real server: webhooks signed as Twilio signs them, the replies
going through the official Twilio client to a stand-in for api.twilio.com on loopback
(:class:`chargedesk.bench.sms.TwilioStub`), which records the exact API requests.

The server checks signatures against ``CHARGEDESK_PUBLIC_BASE_URL`` (an https address, as
behind a proxy) while the tests post to its loopback port. Most tests talk to the real
assistant; the ones about rendering (buttons, long answers) put a recording stand-in in its
place, as the web channel's tests do.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from sqlmodel import Session, col, select
from twilio.request_validator import RequestValidator

import assistant.service
from assistant.channels.models import SmsMessage, SmsOptOut, SmsStatus
from assistant.channels.twilio.segments import segments, smart_encode, split_message
from assistant.channels.twilio.sms import queue_sms
from assistant.dialogue import store
from assistant.dialogue.domain import get_domain
from assistant.events import BotUttered
from assistant.models import Escalation, EscalationReason
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver
from tests.channels.fixtures import SID, TOKEN
from tests.conftest import LiveServer, start_server

OUR_NUMBER = "+46766861000"
PUBLIC = "https://support.chargedesk.example"
SMS = "/webhooks/twilio/sms"
STATUS = "/webhooks/twilio/sms/status"
SUPPORT = "+46812340000"

T = TypeVar("T")


# ------------------------------------------------------------------ fixtures


def twilio_settings(settings: Settings, stub: TwilioStub, **changes: Any) -> Settings:
    return settings.model_copy(update={
        "twilio_account_sid": SID, "twilio_auth_token": TOKEN,
        "twilio_from_number": OUR_NUMBER, "twilio_api_base_url": stub.url,
        "public_base_url": PUBLIC, "support_phone_number": SUPPORT, **changes})


@pytest.fixture
def sms_server(settings: Settings, twilio_api: TwilioStub, nlu: Any) -> Iterator[LiveServer]:
    live = start_server(twilio_settings(settings, twilio_api))
    live.app.state.twilio_sms.retry_delays_s = (0.0, 0.0)  # retries due at once
    yield live
    live.stop()


class StandIn:
    """In place of ``assistant.service.handle_message``: records each call and answers
    with ``answer(text)``, publishing it as the real engine does."""

    def __init__(self, answer: Callable[[str], list[dict[str, Any]]]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, runtime: Any, *, channel: str, sender: str, text: str,
                       identity: Any = None, metadata: Any = None) -> list[dict[str, Any]]:
        self.calls.append({"channel": channel, "sender": sender, "text": text,
                           "identity": identity})
        messages = [{"recipient_id": sender, **m} for m in self.answer(text)]
        for message in messages:
            await runtime.bus.publish(BotUttered(channel=channel, sender=sender,
                                                 message=message))
        return messages


def stand_in(monkeypatch: pytest.MonkeyPatch,
             answer: Callable[[str], list[dict[str, Any]]]) -> StandIn:
    fake = StandIn(answer)
    monkeypatch.setattr(assistant.service, "handle_message", fake)
    return fake


# ------------------------------------------------------------------ helpers


def signed_post(server: LiveServer, path: str, fields: dict[str, str], *,
                token: str = TOKEN, url: str | None = None) -> httpx.Response:
    """POST a form as Twilio does: signed over the public URL with the auth token."""
    signature = RequestValidator(token).compute_signature(url or PUBLIC + path, fields)
    return httpx.post(server.base_url + path, data=fields,
                      headers={"X-Twilio-Signature": signature}, timeout=30)


def incoming(sender: str, body: str, **extra: str) -> dict[str, str]:
    sid = "SM" + uuid.uuid4().hex
    return {"ToCountry": "SE", "SmsMessageSid": sid, "NumMedia": "0", "SmsSid": sid,
            "SmsStatus": "received", "Body": body, "FromCountry": "SE", "To": OUR_NUMBER,
            "NumSegments": "1", "MessageSid": sid, "AccountSid": SID, "From": sender,
            "ApiVersion": "2010-04-01", **extra}


def text(server: LiveServer, sender: str, body: str, **extra: str) -> httpx.Response:
    response = signed_post(server, SMS, incoming(sender, body, **extra))
    assert response.status_code == 200, response.text
    return response


def number() -> str:
    """A fresh Swedish mobile number for one test's driver."""
    return f"+46701{uuid.uuid4().int % 10**6:06d}"


def eventually(check: Callable[[], T], timeout: float = 30.0) -> T:
    """``check()`` once it returns something truthy (the worker runs in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        time.sleep(0.02)


def rows(engine: Any, phone: str, direction: str | None = None) -> list[SmsMessage]:
    with Session(engine) as session:
        query = select(SmsMessage).where(col(SmsMessage.phone) == phone)
        if direction:
            query = query.where(col(SmsMessage.direction) == direction)
        return list(session.exec(query.order_by(col(SmsMessage.id))).all())


def variants(response: str, language: str) -> set[str]:
    """The texts of a domain response in one language."""
    out = set()
    for variation in get_domain().responses[response]:
        conditions = variation.get("condition") or []
        if any(c.get("name") == "language" and c.get("value") == language for c in conditions):
            out.add(smart_encode(variation["text"]))
    return out


def bot_utterances(engine: Any, sender: str) -> list[str | None]:
    with Session(engine) as session:
        row = store.get_conversation(session, channel="sms", sender=sender)
        assert row is not None
        events = store.list_events(session, conversation_id=row.id or 0, types=("bot",))
        return [e.data.get("metadata", {}).get("utter_action") for e in events]


# ------------------------------------------------------------------ segments


def test_segments_are_counted_as_a_phone_counts_them() -> None:
    assert segments("a" * 160) == ("GSM-7", 1)
    assert segments("a" * 161) == ("GSM-7", 2)
    assert segments("a" * 306) == ("GSM-7", 2)
    assert segments("a" * 307) == ("GSM-7", 3)
    # Swedish letters are in GSM-7's default alphabet: one septet each.
    assert segments("Laddaren på Södermalm är ledig, åk dit!" * 4) == ("GSM-7", 1)
    assert segments("åäöÅÄÖé" * 22) == ("GSM-7", 1)  # 154 characters
    # The extension table costs two septets, and an escape pair is never split.
    assert segments("€" * 80) == ("GSM-7", 1)
    assert segments("€" * 81) == ("GSM-7", 2)
    # 306 septets would fill two segments of 153 exactly, but an escape pair can't straddle
    # the first boundary: three.
    assert segments("aa" + "€" * 152) == ("GSM-7", 3)
    # One character outside GSM-7 makes the whole message UCS-2.
    assert segments("Hej 👋") == ("UCS-2", 1)
    assert segments("x" * 69 + "😀") == ("UCS-2", 2)  # the emoji is two UTF-16 units
    assert segments("ж" * 70) == ("UCS-2", 1)
    assert segments("ж" * 71) == ("UCS-2", 2)
    assert segments("ж" * 134) == ("UCS-2", 2)
    assert segments("ж" * 135) == ("UCS-2", 3)


def test_typographic_characters_are_replaced_to_stay_gsm7() -> None:
    price = "Det kostar 3,20\u00a0kr/kWh \u2013 \u201dnattpris\u201d\u2026 och det\u2019s bra"
    assert segments(price)[0] == "UCS-2"
    assert smart_encode(price) == 'Det kostar 3,20 kr/kWh - "nattpris"... och det\'s bra'
    assert segments(smart_encode(price))[0] == "GSM-7"


def test_a_long_answer_is_split_at_sentences_and_numbered() -> None:
    sentences = [f"Mening nummer {i} handlar om laddning på Södermalm och priset där."
                 for i in range(1, 21)]
    long = " ".join(sentences)
    parts = split_message(long)
    count = len(parts)
    assert count == 4  # 1,360 characters; six 68-character sentences fill 3 x 153 septets
    for i, part in enumerate(parts, 1):
        assert part.endswith(f"({i}/{count})")
        assert segments(part)[1] <= 3
        assert part.removesuffix(f" ({i}/{count})").endswith("där.")  # whole sentences
    assert " ".join(p.rsplit(" (", 1)[0] for p in parts) == long
    # Lines stay lines; a short answer stays one message.
    assert split_message("Vill du låsa upp?\n1) Ja\n2) Nej") == ["Vill du låsa upp?\n1) Ja\n2) Nej"]
    # An emoji makes the limit UCS-2's: 3 x 67 units per message.
    parts = split_message("Tack! 🙂 " + "Det här är en lång mening om laddning. " * 8)
    assert all(segments(p)[1] <= 3 for p in parts) and len(parts) >= 2


# ------------------------------------------------------------------ signatures


def test_a_bad_signature_is_refused_and_nothing_is_processed(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    fields = incoming(phone, "Hej")
    wrong_token = signed_post(sms_server, SMS, fields, token="0" * 32)
    # Signed over the address the app sees rather than the public one Twilio calls.
    loopback = signed_post(sms_server, SMS, fields, url=sms_server.base_url + SMS)
    unsigned = httpx.post(sms_server.base_url + SMS, data=fields)
    tampered = httpx.post(
        sms_server.base_url + SMS, data={**fields, "Body": "Hej då"},
        headers={"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(
            PUBLIC + SMS, fields)})
    for response in (wrong_token, loopback, unsigned, tampered):
        assert response.status_code == 403
    status = signed_post(sms_server, STATUS, {"MessageSid": "SMx", "MessageStatus": "failed"},
                         token="0" * 32)
    assert status.status_code == 403
    assert rows(engine, phone) == []
    # The right signature is accepted, and only that message is answered.
    text(sms_server, phone, "Hej")
    twilio_api.wait_for(1, to=phone)
    assert [r.body for r in rows(engine, phone, "inbound")] == ["Hej"]


def test_without_an_auth_token_the_webhooks_are_not_open(server: LiveServer) -> None:
    fields = incoming(number(), "Hej")
    for path in (SMS, STATUS, "/webhooks/twilio/voice", "/webhooks/twilio/voice/gather"):
        response = httpx.post(server.base_url + path, data=fields,
                              headers={"X-Twilio-Signature": "anything"})
        assert response.status_code == 503
        assert "CHARGEDESK_TWILIO_AUTH_TOKEN" in response.json()["detail"]


# ------------------------------------------------------------------ answers


def test_a_text_is_answered_through_twilios_messages_api(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    response = text(sms_server, phone, "Hej!")
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    (request,) = twilio_api.wait_for(1, to=phone)
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.auth == (SID, TOKEN)
    assert set(request.form) == {"To", "From", "Body", "StatusCallback"}
    assert request.form["To"] == phone
    assert request.form["From"] == OUR_NUMBER
    assert request.form["StatusCallback"] == PUBLIC + STATUS
    assert request.form["Body"] in variants("utter_greet", "sv")
    inbound, outbound = eventually(lambda: (r := rows(engine, phone)) and
                                   r[-1].message_sid and r)
    assert (inbound.status, inbound.body) == (SmsStatus.processed, "Hej!")
    assert outbound.status == SmsStatus.queued
    assert outbound.message_sid is not None and outbound.message_sid.startswith("SM")
    assert (outbound.reply_to_id, outbound.encoding, outbound.segments) == (
        inbound.id, "GSM-7", 1)


def test_a_retried_webhook_is_answered_once(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    fields = incoming(phone, "Hej")
    first = signed_post(sms_server, SMS, fields)
    retry = signed_post(sms_server, SMS, fields)  # Twilio retries with the same MessageSid
    assert (first.status_code, first.text) == (retry.status_code, retry.text)
    twilio_api.wait_for(1, to=phone)
    again = signed_post(sms_server, SMS, fields)  # and once more after it was answered
    assert (again.status_code, again.text) == (first.status_code, first.text)
    text(sms_server, phone, "Vad kostar det att ladda?")
    twilio_api.wait_for(2, to=phone)
    inbound = rows(engine, phone, "inbound")
    assert [r.body for r in inbound] == ["Hej", "Vad kostar det att ladda?"]
    assert eventually(lambda: len(twilio_api.sent(phone)) == 2
                      and all(r.status == SmsStatus.processed
                              for r in rows(engine, phone, "inbound")))
    with Session(engine) as session:
        conversation = store.get_conversation(session, channel="sms", sender=phone)
        assert conversation is not None
        said = store.list_events(session, conversation_id=conversation.id or 0,
                                 types=("user",))
    assert [e.data["text"] for e in said] == ["Hej", "Vad kostar det att ladda?"]


def test_buttons_become_numbered_choices_and_a_number_picks_one(
        sms_server: LiveServer, twilio_api: TwilioStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(said: str) -> list[dict[str, Any]]:
        if said.startswith("/"):
            return [{"text": f"Du valde {said}."}]
        return [{"text": "Ska jag låsa upp uttag 2 på SE-STO-CITY-01?",
                 "buttons": [{"title": "Ja", "payload": "/affirm"},
                             {"title": "Nej", "payload": "/deny"}]}]

    fake = stand_in(monkeypatch, answer)
    phone = number()
    text(sms_server, phone, "Kabeln sitter fast")
    (question,) = twilio_api.wait_for(1, to=phone)
    assert question.form["Body"] == ("Ska jag låsa upp uttag 2 på SE-STO-CITY-01?\n"
                                     "1) Ja\n2) Nej\n\nSvara med siffran för ditt val.")
    text(sms_server, phone, "2")
    reply = twilio_api.wait_for(2, to=phone)[1]
    assert [c["text"] for c in fake.calls] == ["Kabeln sitter fast", "/deny"]
    assert reply.form["Body"] == "Du valde /deny."
    text(sms_server, phone, "7")  # not an option: passed on as it is
    twilio_api.wait_for(3, to=phone)
    assert fake.calls[-1]["text"] == "7"


def test_a_long_answer_is_sent_in_parts_in_order(
        sms_server: LiveServer, twilio_api: TwilioStub, monkeypatch: pytest.MonkeyPatch,
        engine: Any) -> None:
    lines = [f"{day}: {i + 10} laddningar, {i * 3 + 20},50 kWh, {i * 41 + 99},00 kr."
             for i, day in enumerate(["måndag", "tisdag", "onsdag", "torsdag", "fredag",
                                      "lördag", "söndag"] * 3)]
    answer = "Här är din laddhistorik för förra månaden.\n" + "\n".join(lines)
    stand_in(monkeypatch, lambda _said: [{"text": answer}])
    phone = number()
    text(sms_server, phone, "Visa min historik")
    first = twilio_api.wait_for(1, to=phone)[0]
    total = int(first.form["Body"].rsplit("/", 1)[1].rstrip(")"))
    parts = twilio_api.wait_for(total, to=phone)
    assert total >= 2
    for i, part in enumerate(parts, 1):
        body = part.form["Body"]
        assert body.endswith(f"({i}/{total})")
        assert segments(body)[1] <= 3
        assert body.removesuffix(f" ({i}/{total})").endswith(("kr.", "månaden."))
    sent = "\n".join(p.form["Body"].rsplit(" (", 1)[0] for p in parts)
    assert sent == answer
    outbound = rows(engine, phone, "outbound")
    assert [(r.part, r.parts) for r in outbound] == [(i, total) for i in range(1, total + 1)]


# ------------------------------------------------------------------ keywords


def opt_out(engine: Any, phone: str) -> SmsOptOut | None:
    with Session(engine) as session:
        return session.get(SmsOptOut, phone)


def test_stop_and_start_are_honoured_and_twilios_own_answers_not_repeated(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    text(sms_server, phone, "STOP")  # Twilio confirms and blocks: we only remember it
    text(sms_server, phone, "Hej, vad kostar laddning?")
    text(sms_server, phone, "start")
    text(sms_server, phone, "Hej!")
    (only,) = twilio_api.wait_for(1, to=phone)
    assert only.form["Body"] in variants("utter_greet", "sv")
    inbound = eventually(lambda: (r := rows(engine, phone, "inbound"))
                         and r[-1].status == SmsStatus.processed and r)
    assert [(r.body, r.keyword, r.status) for r in inbound] == [
        ("STOP", "stop", SmsStatus.processed),
        ("Hej, vad kostar laddning?", None, SmsStatus.ignored),  # opted out: not answered
        ("start", "start", SmsStatus.processed),
        ("Hej!", None, SmsStatus.processed)]
    row = opt_out(engine, phone)
    assert row is not None and (row.opted_out, row.keyword) == (False, "START")
    assert len(twilio_api.sent(phone)) == 1


def test_swedish_keywords_are_confirmed_by_us(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    text(sms_server, phone, "Stopp")
    text(sms_server, phone, "Hej")
    text(sms_server, phone, "STARTA")
    text(sms_server, phone, "Hej")
    stop, start, hello = (r.form["Body"] for r in twilio_api.wait_for(3, to=phone))
    assert stop == "Du får inga fler sms från ChargeDesk. Svara START om du vill ha sms igen."
    assert start.startswith("Välkommen tillbaka!")
    assert hello in variants("utter_greet", "sv")
    row = opt_out(engine, phone)
    assert row is not None and (row.opted_out, row.keyword) == (False, "STARTA")
    # Nothing but the confirmation goes to an opted-out number.
    text(sms_server, phone, "AVSLUTA")
    eventually(lambda: (r := opt_out(engine, phone)) and r.opted_out)
    with session_scope(engine) as session:
        assert queue_sms(session, phone=phone, our_number=OUR_NUMBER, text="Laddningen är klar") \
            == []
    assert rows(engine, phone, "outbound")[-1].status == SmsStatus.suppressed


def test_help_gets_our_help_text_and_advanced_opt_out_is_trusted(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    text(sms_server, phone, "HELP")
    (help_text,) = twilio_api.wait_for(1, to=phone)
    assert help_text.form["Body"] == (
        "ChargeDesk charging support: write your question here and we'll answer. "
        f"Call {SUPPORT} to talk to a person. Reply STOP to get no more texts.")
    text(sms_server, phone, "HJÄLP")
    assert twilio_api.wait_for(2, to=phone)[1].form["Body"].startswith(
        "ChargeDesk laddsupport: skriv din fråga här")
    # A keyword Twilio's Advanced Opt-Out knows (it sends OptOutType and answers it).
    text(sms_server, phone, "Sluta", OptOutType="STOP")
    eventually(lambda: (r := opt_out(engine, phone)) and r.opted_out)
    text(sms_server, phone, "HELP")  # to an opted-out number: nothing is sent
    eventually(lambda: rows(engine, phone, "inbound")[-1].status == SmsStatus.processed)
    assert len(twilio_api.sent(phone)) == 2


# ------------------------------------------------------------------ delivery


def status_callback(server: LiveServer, sid: str, state: str,
                    code: str | None = None) -> httpx.Response:
    fields = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": state, "SmsStatus": state,
              "AccountSid": SID, "From": OUR_NUMBER, "ApiVersion": "2010-04-01"}
    if code is not None:
        fields["ErrorCode"] = code
    response = signed_post(server, STATUS, fields)
    assert response.status_code == 204, response.text
    return response


def reply_row(engine: Any, phone: str, attempts: int = 1) -> SmsMessage:
    return eventually(lambda: (r := rows(engine, phone, "outbound")) and r[-1].message_sid
                      and r[-1].attempts == attempts
                      and r[-1].status == SmsStatus.queued and r[-1])


def test_status_callbacks_move_each_message_forward_only(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    text(sms_server, phone, "Hej")
    row = reply_row(engine, phone)
    assert row.message_sid is not None
    status_callback(sms_server, row.message_sid, "sent")
    assert rows(engine, phone, "outbound")[-1].status == SmsStatus.sent
    status_callback(sms_server, row.message_sid, "delivered")
    status_callback(sms_server, row.message_sid, "sent")  # late and out of order
    status_callback(sms_server, row.message_sid, "delivered")  # repeated
    assert rows(engine, phone, "outbound")[-1].status == SmsStatus.delivered
    status_callback(sms_server, "SM" + "0" * 32, "delivered")  # not ours: ignored
    assert len(twilio_api.sent(phone)) == 1


def test_an_undelivered_reply_is_retried_then_escalated(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    text(sms_server, phone, "Hej")
    first = reply_row(engine, phone)
    status_callback(sms_server, first.message_sid or "", "undelivered", "30003")
    second = reply_row(engine, phone, attempts=2)
    assert second.message_sid != first.message_sid
    status_callback(sms_server, first.message_sid or "", "undelivered", "30003")  # repeated
    status_callback(sms_server, second.message_sid or "", "failed", "30008")
    third = reply_row(engine, phone, attempts=3)
    status_callback(sms_server, third.message_sid or "", "undelivered", "30003")
    final = eventually(lambda: (r := rows(engine, phone, "outbound")[-1]).escalation_id and r)
    assert (final.status, final.attempts, final.error_code) == (SmsStatus.escalated, 3, 30003)
    bodies = [r.form["Body"] for r in twilio_api.sent(phone)]
    assert len(bodies) == 3 and len(set(bodies)) == 1
    with Session(engine) as session:
        escalation = session.get(Escalation, final.escalation_id)
        assert escalation is not None
        assert escalation.reason == EscalationReason.action_failed
        failed = escalation.slots["sms_delivery_failed"]
        assert (failed["to"], failed["text"], failed["error_code"]) == (phone, bodies[0], 30003)
        assert escalation.transcript[0]["text"] == "Hej"


def test_api_errors_are_retried_and_permanent_failures_escalated_at_once(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    twilio_api.fail_next(phone, status=503, code=20503, message="Service unavailable")
    text(sms_server, phone, "Hej")
    row = reply_row(engine, phone, attempts=2)  # the 503, then accepted
    assert len(twilio_api.sent(phone)) == 2
    status_callback(sms_server, row.message_sid or "", "undelivered", "30006")  # a landline
    final = eventually(lambda: (r := rows(engine, phone, "outbound")[-1]).escalation_id and r)
    assert (final.status, final.attempts) == (SmsStatus.escalated, 2)
    assert len(twilio_api.sent(phone)) == 2


def test_twilios_unsubscribed_error_is_stored_as_an_opt_out(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone = number()
    twilio_api.fail_next(phone, status=400, code=21610,
                         message="Attempt to send to unsubscribed recipient")
    text(sms_server, phone, "Hej")
    row = eventually(lambda: (r := rows(engine, phone, "outbound")) and
                     r[-1].status == SmsStatus.suppressed and r[-1])
    assert (row.error_code, row.escalation_id, row.attempts) == (21610, None, 1)
    stored = opt_out(engine, phone)
    assert stored is not None and (stored.opted_out, stored.keyword) == (True, "twilio:21610")
    with Session(engine) as session:
        assert session.exec(select(Escalation)).first() is None


# ------------------------------------------------------------------ identity


def test_a_drivers_phone_number_identifies_them(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone, stranger = number(), number()
    with session_scope(engine) as session:
        driver = make_driver(session, name="Sara Berg", email="sara@example.se", phone=phone)
        driver_id = driver.id
    text(sms_server, phone, "Vad är mitt saldo?")
    text(sms_server, stranger, "Vad är mitt saldo?")
    (answer,) = twilio_api.wait_for(1, to=phone)
    (question,) = twilio_api.wait_for(1, to=stranger)
    # The driver is answered at once (they pay by invoice); the stranger must verify first.
    assert answer.form["Body"] in variants("utter_pays_by_invoice", "sv")
    assert bot_utterances(engine, phone)[-1] == "utter_pays_by_invoice"
    assert question.form["Body"] in variants("utter_ask_contact", "sv")
    with Session(engine) as session:
        known = store.get_conversation(session, channel="sms", sender=phone)
        unknown = store.get_conversation(session, channel="sms", sender=stranger)
        assert known is not None and unknown is not None
        assert (known.driver_id, known.verified) == (driver_id, True)
        assert (unknown.driver_id, unknown.verified) == (None, False)
    # A number two accounts share identifies neither.
    other = number()
    with session_scope(engine) as session:
        make_driver(session, name="A", email="a@example.se", phone=other)
        make_driver(session, name="B", email="b@example.se", phone=other)
    text(sms_server, other, "Vad är mitt saldo?")
    (shared,) = twilio_api.wait_for(1, to=other)
    assert shared.form["Body"] in variants("utter_ask_contact", "sv")


def test_a_stranger_proves_the_account_with_a_code_texted_to_its_number(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    from billing_api.models import EmailMessage

    phone, stranger = number(), number()
    with session_scope(engine) as session:
        driver_id = make_driver(session, name="Sara Berg", email="sara@example.se",
                                phone=phone).id
    text(sms_server, stranger, "Vad är mitt saldo?")
    (question,) = twilio_api.wait_for(1, to=stranger)
    assert question.form["Body"] in variants("utter_ask_contact", "sv")
    # The number on the account, written as people write it: the code goes there by text.
    text(sms_server, stranger, "0" + phone[3:6] + "-" + phone[6:])
    (code_text,) = twilio_api.wait_for(1, to=phone)
    code = re.fullmatch(r"Din kod till ChargeDesk: (\d{6})\. Den gäller i 10 minuter\. Har "
                        r"du inte bett om den kan du bortse från sms:et\.",
                        code_text.form["Body"])
    assert code is not None, code_text.form["Body"]
    assert code_text.form == {"To": phone, "From": OUR_NUMBER, "Body": code_text.form["Body"],
                              "StatusCallback": PUBLIC + STATUS}
    asked = twilio_api.wait_for(2, to=stranger)[-1]
    assert asked.form["Body"] in {v.replace("{contact}", phone)
                                  for v in variants("utter_ask_otp_code", "sv")}
    [row] = rows(engine, phone, "outbound")
    assert (row.keyword, row.reply_to_id) == ("code", None)
    # A wrong code proves nothing; the right one, typed where it was asked for, does.
    text(sms_server, stranger, "000000" if code.group(1) != "000000" else "111111")
    twilio_api.wait_for(3, to=stranger)
    with Session(engine) as session:
        unknown = store.get_conversation(session, channel="sms", sender=stranger)
        assert unknown is not None and not unknown.verified
    text(sms_server, stranger, code.group(1))
    answer = twilio_api.wait_for(4, to=stranger)[-1]
    assert answer.form["Body"] in variants("utter_pays_by_invoice", "sv")
    with Session(engine) as session:
        proven = store.get_conversation(session, channel="sms", sender=stranger)
        assert proven is not None and (proven.driver_id, proven.verified) == (driver_id, True)
        assert session.exec(select(EmailMessage)).all() == []  # nothing by e-mail


def test_a_code_text_that_cannot_be_delivered_fails_without_an_escalation(
        sms_server: LiveServer, twilio_api: TwilioStub, engine: Any) -> None:
    phone, stranger = number(), number()
    with session_scope(engine) as session:
        make_driver(session, name="Sara Berg", email="sara@example.se", phone=phone)
    twilio_api.fail_next(phone, status=400, code=21211, message="Invalid 'To' Phone Number")
    text(sms_server, stranger, "Vad är mitt saldo?")
    twilio_api.wait_for(1, to=stranger)
    text(sms_server, stranger, phone)
    row = eventually(lambda: (r := rows(engine, phone, "outbound")) and
                     r[0].status == SmsStatus.failed and r[0])
    assert (row.keyword, row.error_code, row.escalation_id) == ("code", 21211, None)
    with Session(engine) as session:  # a code is asked for again, nobody calls back
        assert session.exec(select(Escalation)).first() is None
