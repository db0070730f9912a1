"""The phone channel over a real server and the real assistant: a call is a series of
webhooks signed as Twilio signs them, each following the action URL of the TwiML before
(as Twilio does), in Swedish and English, until the caller hangs up, is put through to a
person, or leaves a voicemail that becomes a ticket."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlmodel import Session, col, select

from assistant.channels.models import VoiceCall
from assistant.dialogue import store
from assistant.dialogue.domain import get_domain
from assistant.models import Escalation, EscalationReason
from chargedesk.bench.sms import TwilioStub
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver
from tests.channels.test_sms import (
    OUR_NUMBER,
    PUBLIC,
    SID,
    SUPPORT,
    TOKEN,
    eventually,
    number,
    signed_post,
    stand_in,
    text,
    twilio_settings,
)
from tests.conftest import LiveServer, start_server

VOICE = "/webhooks/twilio/voice"


@pytest.fixture
def launch(settings: Settings, nlu: Any) -> Iterator[Callable[..., LiveServer]]:
    """Start the server with Twilio configured (and ``changes`` to its settings)."""
    stub = TwilioStub(account_sid=SID, auth_token=TOKEN).start()
    servers: list[LiveServer] = []

    def start(**changes: Any) -> LiveServer:
        servers.append(start_server(twilio_settings(settings, stub, **changes)))
        return servers[-1]

    yield start
    for live in servers:
        live.stop()
    stub.stop()


class Call:
    """One phone call as Twilio makes it: the call webhook, then each TwiML's action URL."""

    def __init__(self, server: LiveServer, caller: str, **extra: str) -> None:
        self.server, self.caller, self.extra = server, caller, extra
        self.sid = "CA" + uuid.uuid4().hex
        self.twiml: ET.Element | None = None

    def fields(self, **more: str) -> dict[str, str]:
        return {"CallSid": self.sid, "AccountSid": SID, "From": self.caller,
                "Caller": self.caller, "To": OUR_NUMBER, "Called": OUR_NUMBER,
                "CallStatus": "in-progress", "Direction": "inbound",
                "ApiVersion": "2010-04-01", **self.extra, **more}

    def post(self, url: str, **more: str) -> ET.Element:
        assert url.startswith(PUBLIC), url  # Twilio calls the public address
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = signed_post(self.server, path, self.fields(**more), url=url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/xml")
        self.twiml = ET.fromstring(response.text)
        assert self.twiml.tag == "Response"
        return self.twiml

    def start(self) -> ET.Element:
        return self.post(PUBLIC + VOICE, CallStatus="ringing")

    def action(self, verb: str) -> str:
        assert self.twiml is not None
        node = self.twiml.find(verb)
        assert node is not None, ET.tostring(self.twiml)
        return node.attrib["action"]

    def say(self, speech: str = "", digits: str = "") -> ET.Element:
        """Answer the current <Gather> (nothing: the caller kept quiet)."""
        more = {"SpeechResult": speech, "Confidence": "0.93"} if speech else {}
        if digits:
            more["Digits"] = digits
        return self.post(self.action("Gather"), **more)


def spoken(twiml: ET.Element) -> list[tuple[str, str]]:
    """(language, text) of every <Say>, inside a <Gather> or not, in order."""
    return [(s.attrib.get("language", ""), s.text or "") for s in twiml.iter("Say")]


def verbs(twiml: ET.Element) -> list[str]:
    return [child.tag for child in twiml]


def texts(response: str, language: str) -> set[str]:
    return {v["text"] for v in get_domain().responses[response]
            if any(c.get("value") == language for c in v.get("condition") or [])}


def conversation(engine: Any, caller: str) -> Any:
    with Session(engine) as session:
        row = store.get_conversation(session, channel="voice", sender=caller)
        assert row is not None
        return row


# ------------------------------------------------------------------ the loop


def test_a_swedish_call_goes_on_until_the_caller_says_goodbye(
        launch: Callable[..., LiveServer], engine: Any) -> None:
    caller = number()
    call = Call(launch(), caller)
    twiml = call.start()
    assert verbs(twiml) == ["Gather"]
    gather = twiml.find("Gather")
    assert gather is not None
    assert gather.attrib["input"] == "speech dtmf"
    assert gather.attrib["language"] == "sv-SE"
    assert gather.attrib["actionOnEmptyResult"] == "true"
    assert gather.attrib["action"] == f"{PUBLIC}{VOICE}/gather?lang=sv&quiet=0"
    assert spoken(twiml) == [
        ("sv-SE", "Hej, du har kommit till ChargeDesk. Vad kan jag hjälpa dig med?"),
        ("en-US", "For English, say English.")]

    twiml = call.say("Hej")
    assert verbs(twiml) == ["Gather"]
    ((language, said),) = spoken(twiml)
    assert language == "sv-SE" and said in texts("utter_greet", "sv")

    twiml = call.say("Vad kostar det att ladda?")
    assert verbs(twiml) == ["Gather"]
    assert spoken(twiml)[0][0] == "sv-SE" and spoken(twiml)[0][1]

    twiml = call.say("Tack så mycket, hej då")
    assert verbs(twiml) == ["Say", "Hangup"]
    ((language, said),) = spoken(twiml)
    assert language == "sv-SE" and said in texts("utter_thanks", "sv") | texts(
        "utter_goodbye", "sv")

    with Session(engine) as session:
        row = store.get_conversation(session, channel="voice", sender=caller)
        assert row is not None
        said_by_caller = [e.data["text"] for e in store.list_events(
            session, conversation_id=row.id or 0, types=("user",))]
        voice_call = session.exec(select(VoiceCall).where(
            col(VoiceCall.call_sid) == call.sid)).one()
    assert said_by_caller == ["Hej", "Vad kostar det att ladda?", "Tack så mycket, hej då"]
    assert (voice_call.turns, voice_call.state, voice_call.language) == (3, "ended", "sv")


def test_an_english_call(launch: Callable[..., LiveServer], engine: Any) -> None:
    server = launch()
    call = Call(server, number())
    call.start()
    ((language, said),) = spoken(call.say("Hej"))
    assert language == "sv-SE" and said in texts("utter_greet", "sv")
    twiml = call.say("English")
    gather = twiml.find("Gather")
    assert gather is not None and gather.attrib["language"] == "en-US"
    assert spoken(twiml) == [("en-US", "Sure, let's speak English. How can I help you?")]
    twiml = call.say("Hi")  # one word: English because the caller chose it
    ((language, said),) = spoken(twiml)
    assert language == "en-US" and said in texts("utter_greet", "en")
    twiml = call.say("Goodbye")
    assert verbs(twiml) == ["Say", "Hangup"]
    assert spoken(twiml)[0][1] in texts("utter_goodbye", "en")
    assert conversation(engine, call.caller).language == "en"

    # A driver whose account is in English is greeted in English.
    english = number()
    with session_scope(engine) as session:
        make_driver(session, name="John Smith", email="john@example.com", phone=english,
                    language="en")
    twiml = Call(server, english).start()
    gather = twiml.find("Gather")
    assert gather is not None and gather.attrib["language"] == "en-US"
    assert spoken(twiml) == [("en-US", "Hi, you have reached ChargeDesk. How can I help you?"),
                             ("sv-SE", "För svenska, säg svenska.")]


def test_silence_twice_ends_the_call(launch: Callable[..., LiveServer]) -> None:
    call = Call(launch(), number())
    call.start()
    twiml = call.say()
    assert spoken(twiml) == [("sv-SE", "Jag hörde inget. Vad kan jag hjälpa dig med?")]
    assert call.action("Gather").endswith("quiet=1")
    twiml = call.say()
    assert verbs(twiml) == ["Say", "Hangup"]


def test_keys_pick_a_choice(launch: Callable[..., LiveServer],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(said: str) -> list[dict[str, Any]]:
        if said.startswith("/"):
            return [{"text": f"Du valde {said}."}]
        return [{"text": "Ska jag **låsa upp** uttag 2?",
                 "buttons": [{"title": "Ja", "payload": "/affirm"},
                             {"title": "Nej", "payload": "/deny"}]}]

    fake = stand_in(monkeypatch, answer)
    call = Call(launch(), number())
    call.start()
    twiml = call.say("Kabeln sitter fast")
    assert spoken(twiml) == [("sv-SE", "Ska jag låsa upp uttag 2? 1: Ja. 2: Nej. "
                                       "Tryck siffran eller säg ditt val.")]
    twiml = call.say(digits="2")
    assert spoken(twiml) == [("sv-SE", "Du valde /deny.")]
    call.say("Kabeln sitter fast")
    call.say("ja")  # saying the choice works too
    assert [c["text"] for c in fake.calls] == [
        "Kabeln sitter fast", "/deny", "Kabeln sitter fast", "/affirm"]
    assert all(c["channel"] == "voice" and c["sender"] == call.caller for c in fake.calls)


# ------------------------------------------------------------------ a person


def escalations(engine: Any, caller: str) -> list[Escalation]:
    row = conversation(engine, caller)
    with Session(engine) as session:
        return list(session.exec(select(Escalation).where(
            col(Escalation.conversation_id) == row.id).order_by(col(Escalation.id))).all())


def test_asking_for_a_person_dials_the_support_number(
        launch: Callable[..., LiveServer], engine: Any) -> None:
    server = launch()
    call = Call(server, number())
    call.start()
    twiml = call.say("Jag vill prata med en människa")
    assert verbs(twiml) == ["Say", "Dial"]
    assert spoken(twiml) == [("sv-SE", "Jag kopplar dig till vår kundtjänst. Ett ögonblick.")]
    dial = twiml.find("Dial")
    assert dial is not None and dial.attrib["action"] == f"{PUBLIC}{VOICE}/dial?lang=sv"
    assert [n.text for n in dial.iter("Number")] == [SUPPORT]
    (escalation,) = escalations(engine, call.caller)
    assert escalation.reason == EscalationReason.asked
    assert conversation(engine, call.caller).paused

    # Nobody answers: the caller may leave a voicemail.
    twiml = call.post(call.action("Dial"), DialCallStatus="no-answer")
    assert verbs(twiml) == ["Say", "Record"]
    record = twiml.find("Record")
    assert record is not None
    assert record.attrib["recordingStatusCallback"] == f"{PUBLIC}{VOICE}/recording"
    # Answered: the call is the agent's.
    assert verbs(call.post(f"{PUBLIC}{VOICE}/dial?lang=sv", DialCallStatus="completed")) == [
        "Hangup"]
    # Calling again while an agent has the conversation goes straight to a person.
    twiml = Call(server, call.caller).start()
    assert verbs(twiml) == ["Say", "Say", "Dial"]
    assert spoken(twiml)[0] == ("sv-SE", "Ditt ärende ligger redan hos vår kundtjänst.")


def test_a_voicemail_becomes_a_ticket_with_the_recording(
        launch: Callable[..., LiveServer], engine: Any) -> None:
    server = launch(support_phone_number="")
    call = Call(server, number())
    call.start()
    call.say("English")
    twiml = call.say("I want to talk to a person")
    assert verbs(twiml) == ["Say", "Record"]
    assert spoken(twiml)[0][0] == "en-US"
    record = twiml.find("Record")
    assert record is not None
    assert record.attrib["maxLength"] == "120"
    assert record.attrib["recordingStatusCallbackEvent"] == "completed"
    (handoff,) = escalations(engine, call.caller)

    url = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Recordings/RE{'7' * 32}"
    recording = {"AccountSid": SID, "CallSid": call.sid, "RecordingSid": f"RE{'7' * 32}",
                 "RecordingUrl": url, "RecordingStatus": "completed",
                 "RecordingDuration": "17", "RecordingChannels": "1",
                 "RecordingSource": "RecordVerb"}
    callback = f"{VOICE}/recording"
    for _ in range(2):  # Twilio may repeat a callback: one ticket, one line
        response = signed_post(server, callback, recording)
        assert response.status_code == 204
    (ticket,) = escalations(engine, call.caller)
    assert ticket.id == handoff.id  # the handoff's escalation carries the voicemail
    assert ticket.slots["voicemail"] == {
        "recording_url": url, "recording_sid": f"RE{'7' * 32}", "duration_s": 17,
        "call_sid": call.sid, "caller": call.caller, "language": "en"}
    assert [line for line in ticket.transcript if line.get("recording_url")] == [
        {"from": "driver", "text": f"Voicemail (17 s): {url}", "at": ticket.transcript[-1]["at"],
         "recording_url": url}]
    twiml = call.post(call.action("Record"), RecordingUrl=url, RecordingDuration="17")
    assert verbs(twiml) == ["Say", "Hangup"]
    assert spoken(twiml)[0][1].startswith("Thank you, we have your message")

    # A voicemail without an open escalation opens one.
    with session_scope(engine) as session:
        session.get(Escalation, ticket.id).status = "resolved"  # type: ignore[union-attr]
    other = Call(server, call.caller)
    with session_scope(engine) as session:
        session.add(VoiceCall(call_sid=other.sid, caller=call.caller, language="en"))
    response = signed_post(server, callback, {**recording, "CallSid": other.sid,
                                              "RecordingSid": f"RE{'8' * 32}"})
    assert response.status_code == 204
    old, new = escalations(engine, call.caller)
    assert (old.id, new.reason) == (ticket.id, EscalationReason.asked)
    assert new.slots["voicemail"]["recording_sid"] == f"RE{'8' * 32}"


# ------------------------------------------------------------------ identity


def test_the_caller_is_identified_by_their_number(
        launch: Callable[..., LiveServer], engine: Any) -> None:
    server = launch()
    forged, attested = number(), number()
    with session_scope(engine) as session:
        first = make_driver(session, name="Sara Berg", email="sara@example.se", phone=forged)
        second = make_driver(session, name="Nils Ek", email="nils@example.se", phone=attested)
        first_id, second_id = first.id, second.id
    # Caller ID alone: known, but asked to verify before account questions.
    call = Call(server, forged)
    call.start()
    twiml = call.say("Vad är mitt saldo?")
    assert spoken(twiml)[0][1] in texts("utter_ask_contact", "sv")
    row = conversation(engine, forged)
    assert (row.driver_id, row.verified) == (first_id, False)
    # With full STIR/SHAKEN attestation the number is the driver's own phone.
    call = Call(server, attested, StirVerstat="TN-Validation-Passed-A")
    call.start()
    twiml = call.say("Vad är mitt saldo?")
    assert spoken(twiml)[0][1] in texts("utter_pays_by_invoice", "sv")
    row = conversation(engine, attested)
    assert (row.driver_id, row.verified) == (second_id, True)


def test_an_attested_caller_whose_case_people_have_is_put_through_at_once(
        launch: Callable[..., LiveServer], engine: Any) -> None:
    from support.models import TicketConversation

    server = launch()
    phone = number()
    with session_scope(engine) as session:
        make_driver(session, name="Nils Ek", email="nils@example.se", phone=phone)
    # He asked for a person by text...
    text(server, phone, "Jag vill prata med en person")
    ticket_id = eventually(lambda: ticket_on(engine, "sms", phone))
    # A call showing his number that nobody attested is not taken for him: the bot
    # greets it, and it joins nothing.
    assert verbs(Call(server, phone).start()) == ["Gather"]
    assert ticket_on(engine, "voice", phone) is None
    # His own phone (full attestation): the bot does not take the call, people do.
    call = Call(server, phone, StirVerstat="TN-Validation-Passed-A")
    twiml = call.start()
    assert verbs(twiml) == ["Say", "Say", "Dial"]
    assert spoken(twiml)[0] == ("sv-SE", "Ditt ärende ligger redan hos vår kundtjänst.")
    assert ticket_on(engine, "voice", phone) == ticket_id
    assert conversation(engine, phone).paused
    with Session(engine) as session:
        assert len(session.exec(select(TicketConversation)).all()) == 2


def ticket_on(engine: Any, channel: str, sender: str) -> int | None:
    from support.models import TicketConversation

    with Session(engine) as session:
        row = store.get_conversation(session, channel=channel, sender=sender)
        link = session.get(TicketConversation, row.id) if row is not None else None
        return link.ticket_id if link is not None else None


def test_voice_webhooks_need_twilios_signature(launch: Callable[..., LiveServer]) -> None:
    server = launch()
    fields = {"CallSid": "CA" + "1" * 32, "From": number(), "To": OUR_NUMBER}
    for path in (VOICE, f"{VOICE}/gather?lang=sv&quiet=0", f"{VOICE}/recording"):
        assert httpx.post(server.base_url + path, data=fields).status_code == 403
        assert signed_post(server, path, fields, token="f" * 32).status_code == 403
