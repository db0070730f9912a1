"""The phone channel: Twilio Programmable Voice webhooks answered with TwiML.

A call (``POST /webhooks/twilio/voice``) is greeted inside a ``<Gather input="speech dtmf">``
in the caller's language (their last conversation's, else their account's, else Swedish);
saying "English" or "svenska" switches. Each ``SpeechResult`` (or a key pressed for a
numbered choice) goes to the assistant as a message of channel ``voice`` from the caller's
number, and the answer is spoken with ``<Say>`` inside the next ``<Gather>``, until the
caller says goodbye or thanks (``<Hangup/>`` after the answer) or stays silent twice.

Asking for a person (the assistant hands the conversation over and records an escalation)
puts the call through to ``CHARGEDESK_SUPPORT_PHONE_NUMBER`` with ``<Dial>``; with none
configured, or when nobody answers, the caller leaves a voicemail (``<Record>``), and its
recording callback adds the recording to the conversation's open escalation (or opens one):
the ticket an agent calls back from.

The caller is identified by their number when exactly one driver has it. Caller ID is easy
to forge, so the call counts as verified only with full STIR/SHAKEN attestation
(``StirVerstat=TN-Validation-Passed-A``); otherwise account questions first ask for a
one-time code, as for any unverified sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlmodel import Session, col, select
from twilio.twiml.voice_response import VoiceResponse

from assistant import contacts
from assistant.channels.models import VoiceCall
from assistant.channels.twilio.common import TWIML_TYPE, TwilioConfig, find_driver, signed_form
from assistant.events import ConversationEscalated
from assistant.models import ConversationEvent, Escalation, EscalationStatus
from chargedesk.db import run_in_session
from chargedesk.settings import Settings
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

CHANNEL = "voice"
ROUTE = "/webhooks/twilio/voice"
GATHER_ROUTE = "/webhooks/twilio/voice/gather"
DIAL_ROUTE = "/webhooks/twilio/voice/dial"
VOICEMAIL_ROUTE = "/webhooks/twilio/voice/voicemail"
RECORDING_ROUTE = "/webhooks/twilio/voice/recording"

LOCALES = {"sv": "sv-SE", "en": "en-US"}
VOICES = {"sv": "Polly.Astrid", "en": "Polly.Joanna"}
# A call ends after the assistant answers these.
END_INTENTS = frozenset({"goodbye", "thanks"})
SWITCH_WORDS = {
    "en": frozenset({"english", "engelska", "in english", "på engelska", "english please",
                     "speak english"}),
    "sv": frozenset({"svenska", "swedish", "på svenska", "in swedish", "swedish please"}),
}
STIR_FULL_ATTESTATION = "TN-Validation-Passed-A"
GATHER_TIMEOUT_S = 6
DIAL_TIMEOUT_S = 25
VOICEMAIL_MAX_S = 120

LINES: dict[str, dict[str, str]] = {
    "greeting": {"sv": "Hej, du har kommit till ChargeDesk. Vad kan jag hjälpa dig med?",
                 "en": "Hi, you have reached ChargeDesk. How can I help you?"},
    "other_language": {"sv": "För svenska, säg svenska.", "en": "For English, say English."},
    "switched": {"sv": "Okej, vi tar det på svenska. Vad kan jag hjälpa dig med?",
                 "en": "Sure, let's speak English. How can I help you?"},
    "reprompt": {"sv": "Jag hörde inget. Vad kan jag hjälpa dig med?",
                 "en": "I didn't hear anything. How can I help you?"},
    "again": {"sv": "Förlåt, kan du säga det igen?", "en": "Sorry, could you say that again?"},
    "silent_bye": {"sv": "Jag hör ingenting, så jag lägger på nu. Ring gärna igen. Hej då!",
                   "en": "I can't hear anything, so I'll hang up now. Do call again. Goodbye!"},
    "choices": {"sv": "Tryck siffran eller säg ditt val.",
                "en": "Press the number or say your choice."},
    "connecting": {"sv": "Jag kopplar dig till vår kundtjänst. Ett ögonblick.",
                   "en": "I'm putting you through to our support team. One moment."},
    "with_agent": {"sv": "Ditt ärende ligger redan hos vår kundtjänst.",
                   "en": "Your case is already with our support team."},
    "voicemail": {"sv": "Ingen kan svara just nu. Lämna ett meddelande efter tonen med ditt "
                        "ärende, så ringer vi upp dig. Tryck fyrkant när du är klar.",
                  "en": "Nobody can answer right now. Leave a message after the tone about "
                        "your case, and we will call you back. Press the pound key when done."},
    "voicemail_thanks": {"sv": "Tack, vi har fått ditt meddelande och ringer upp så snart vi "
                               "kan. Hej då!",
                         "en": "Thank you, we have your message and will call you back as "
                               "soon as we can. Goodbye!"},
    "no_voicemail": {"sv": "Jag fick inget meddelande. Ring gärna igen. Hej då!",
                     "en": "I didn't get a message. Do call again. Goodbye!"},
    "error": {"sv": "Något gick fel hos oss. Försök igen om en stund.",
              "en": "Something went wrong on our side. Please try again in a while."},
}


def _lang(value: str | None) -> str:
    return "en" if value == "en" else "sv"


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), media_type=TWIML_TYPE)


def _say(node: Any, text: str, language: str) -> None:
    node.say(text, voice=VOICES[language], language=LOCALES[language])


def _speakable(text: str) -> str:
    """Text for text-to-speech: no markdown marks, links or list bullets."""
    text = re.sub(r"https?://\S+", "", text)
    text = re.sub(r"[*_#`>|]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _gather(response: VoiceResponse, cfg: TwilioConfig, language: str, *, quiet: int = 0
            ) -> Any:
    query = urlencode({"lang": language, "quiet": quiet})
    return response.gather(
        input="speech dtmf", action=cfg.url(f"{GATHER_ROUTE}?{query}"), method="POST",
        language=LOCALES[language], speech_timeout="auto", timeout=GATHER_TIMEOUT_S,
        num_digits=1, action_on_empty_result=True)


def _handoff(response: VoiceResponse, cfg: TwilioConfig, language: str) -> VoiceResponse:
    if cfg.support_phone_number:
        _say(response, LINES["connecting"][language], language)
        dial = response.dial(action=cfg.url(f"{DIAL_ROUTE}?lang={language}"), method="POST",
                             timeout=DIAL_TIMEOUT_S)
        dial.number(cfg.support_phone_number)
        return response
    return _voicemail(response, cfg, language)


def _voicemail(response: VoiceResponse, cfg: TwilioConfig, language: str) -> VoiceResponse:
    _say(response, LINES["voicemail"][language], language)
    response.record(
        action=cfg.url(f"{VOICEMAIL_ROUTE}?lang={language}"), method="POST",
        max_length=VOICEMAIL_MAX_S, timeout=5, finish_on_key="#", play_beep=True,
        recording_status_callback=cfg.url(RECORDING_ROUTE),
        recording_status_callback_method="POST", recording_status_callback_event="completed")
    return response


def switch_language(speech: str) -> str | None:
    """``"en"`` or ``"sv"`` when the caller only asked for that language."""
    said = re.sub(r"[^\wåäö ]+", "", speech.lower()).strip()
    for language, words in SWITCH_WORDS.items():
        if said in words:
            return language
    return None


# ---------------------------------------------------------------- database


@dataclass(frozen=True)
class Call:
    language: str
    driver_id: int | None
    verified: bool
    paused: bool
    options: list[dict[str, Any]]


def _conversation(session: Session, caller: str) -> Any:
    from assistant.dialogue import store

    return store.get_conversation(session, channel=CHANNEL, sender=caller)


def open_call(session: Session, *, call_sid: str, caller: str, stir: str | None = None) -> Call:
    """The call's row (made on its first webhook; the same on Twilio's retries or later
    webhooks) and what the next turn needs."""
    row = session.exec(select(VoiceCall).where(col(VoiceCall.call_sid) == call_sid)).first()
    conversation = _conversation(session, caller)
    if row is None:
        driver = find_driver(session, phone=caller)
        language = (conversation.language if conversation is not None
                    else str(driver.language) if driver is not None else "sv")
        row = VoiceCall(call_sid=call_sid, caller=caller,
                        driver_id=driver.id if driver is not None else None,
                        caller_verified=stir == STIR_FULL_ATTESTATION,
                        language=_lang(language))
        session.add(row)
        session.flush()
    # An idle conversation starts afresh (unpaused) on its next message.
    live = conversation is not None and conversation.expires_at > utcnow()
    return Call(language=row.language, driver_id=row.driver_id,
                verified=row.driver_id is not None and row.caller_verified,
                paused=bool(live and conversation.paused),
                options=list(row.options or []))


def set_language(session: Session, *, call_sid: str, caller: str, language: str,
                 settings: Settings) -> None:
    """Speak ``language`` from now on: the call's, and the conversation's language slot, so
    the assistant answers in it even to a one-word reply."""
    from assistant.dialogue import domain as domain_module
    from assistant.dialogue import store

    row = session.exec(select(VoiceCall).where(col(VoiceCall.call_sid) == call_sid)).first()
    if row is not None:
        row.language, row.updated_at = language, utcnow()
        session.add(row)
    expiry = timedelta(minutes=settings.conversation_expiry_minutes)
    snapshot = store.load_conversation(
        session, channel=CHANNEL, sender=caller,
        initial_slots=domain_module.get_domain().initial_slots(), expiry=expiry)
    snapshot.slots["language"] = language
    snapshot.language = language
    snapshot.record({"event": "slot", "name": "language", "value": language})
    store.save_turn(session, snapshot=snapshot, expiry=expiry)
    # The assistant keeps conversations in memory between turns: drop its copy.
    store.forget_after_commit(session, channel=CHANNEL, sender=caller)


@dataclass(frozen=True)
class Outcome:
    language: str
    paused: bool
    intent: str | None


def after_turn(session: Session, *, call_sid: str, caller: str,
               options: list[dict[str, Any]]) -> Outcome:
    """What the turn left: the language to speak, a handoff, the caller's intent; the
    choices offered are kept for a key press."""
    conversation = _conversation(session, caller)
    language = _lang(conversation.language if conversation is not None else None)
    intent = None
    if conversation is not None:
        event = session.exec(
            select(ConversationEvent)
            .where(col(ConversationEvent.conversation_id) == conversation.id,
                   col(ConversationEvent.type) == "user")
            .order_by(col(ConversationEvent.id).desc()).limit(1)).first()
        if event is not None:
            intent = ((event.data.get("parse_data") or {}).get("intent") or {}).get("name")
    paused = bool(conversation is not None and conversation.paused)
    row = session.exec(select(VoiceCall).where(col(VoiceCall.call_sid) == call_sid)).first()
    if row is not None:
        row.language, row.options, row.turns = language, options or None, row.turns + 1
        row.updated_at = utcnow()
        if paused:
            row.state = "handoff"
            row.escalation_id = _open_escalation_id(session, conversation.id)
        elif intent in END_INTENTS:
            row.state = "ended"
        session.add(row)
    return Outcome(language=language, paused=paused, intent=intent)


def _open_escalation_id(session: Session, conversation_id: int | None) -> int | None:
    return session.exec(
        select(Escalation.id)
        .where(col(Escalation.conversation_id) == conversation_id,
               col(Escalation.status) != EscalationStatus.resolved)
        .order_by(col(Escalation.id).desc()).limit(1)).first()


def set_state(session: Session, *, call_sid: str, state: str) -> None:
    row = session.exec(select(VoiceCall).where(col(VoiceCall.call_sid) == call_sid)).first()
    if row is not None:
        row.state, row.updated_at = state, utcnow()
        session.add(row)


def record_voicemail(session: Session, *, call_sid: str, recording_sid: str,
                     recording_url: str, duration_s: int, settings: Settings
                     ) -> tuple[int, int, str] | None:
    """A finished voicemail: added to the conversation's open escalation, or to a new one,
    with the recording's address. ``(escalation id, conversation id, caller)`` when a new
    escalation was opened. A repeated callback changes nothing."""
    from assistant.dialogue import domain as domain_module
    from assistant.dialogue import store

    row = session.exec(select(VoiceCall).where(col(VoiceCall.call_sid) == call_sid)).first()
    if row is None:
        log.warning("voicemail for an unknown call", call_sid=call_sid)
        return None
    if row.recording_sid is not None:
        return None
    now = utcnow()
    expiry = timedelta(minutes=settings.conversation_expiry_minutes)
    conversation = _conversation(session, row.caller)
    if conversation is None:  # no turn was ever taken: a conversation to hang it on
        snapshot = store.load_conversation(
            session, channel=CHANNEL, sender=row.caller,
            initial_slots=domain_module.get_domain().initial_slots(), expiry=expiry,
            identity=(row.driver_id, row.caller_verified) if row.driver_id else None)
        store.save_turn(session, snapshot=snapshot, expiry=expiry)
        conversation = _conversation(session, row.caller)
    voicemail = {"recording_url": recording_url, "recording_sid": recording_sid,
                 "duration_s": duration_s, "call_sid": call_sid, "caller": row.caller,
                 "language": row.language}
    line = {"from": "driver", "text": f"Voicemail ({duration_s} s): {recording_url}",
            "at": now.isoformat(), "recording_url": recording_url}
    escalation_id = row.escalation_id or _open_escalation_id(session, conversation.id)
    escalation = session.get(Escalation, escalation_id) if escalation_id else None
    created = escalation is None
    if escalation is None:
        escalation = store.record_escalation(
            session, conversation_id=conversation.id or 0, reason="asked",
            intent=conversation.latest_intent,
            slots={**conversation.slots, "voicemail": voicemail}, settings=settings)
    else:  # JSON columns: assign new values so the change is saved
        escalation.slots = {**escalation.slots, "voicemail": voicemail}
    escalation.transcript = [*escalation.transcript, line]
    session.add(escalation)
    session.flush()
    row.recording_sid, row.recording_url = recording_sid, recording_url
    row.recording_duration_s, row.escalation_id = duration_s, escalation.id
    row.state, row.updated_at = "voicemail", now
    session.add(row)
    log.info("voicemail recorded", escalation_id=escalation.id, duration_s=duration_s)
    if created:
        return escalation.id or 0, conversation.id or 0, row.caller
    return None


# ---------------------------------------------------------------- endpoints

router = APIRouter(tags=["twilio"])


def _required(fields: dict[str, str], *names: str) -> list[str]:
    """The named fields, which Twilio always sends: SIDs (34 characters) and numbers."""
    values = [fields.get(name, "").strip() for name in names]
    if not all(values):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{', '.join(names)} are required")
    if any(len(v) > (32 if n == "From" else 64) for n, v in zip(names, values, strict=True)) \
            or len(fields.get("RecordingUrl", "")) > 500:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a Twilio request")
    return values


def _query_lang(request: Request) -> str:
    return _lang(request.query_params.get("lang"))


@router.post(ROUTE)
async def incoming_call(request: Request) -> Response:
    """A call comes in: greet in the caller's language and listen."""
    cfg, fields = await signed_form(request, sending=False)
    call_sid, caller = _required(fields, "CallSid", "From")
    call = await run_in_session(request.app.state.runtime.engine, open_call, call_sid=call_sid,
                                caller=caller, stir=fields.get("StirVerstat"))
    response = VoiceResponse()
    if not call.paused and call.verified:
        # An attested caller is the driver: one holding a ticket people work on goes to
        # them (the call's conversation joins the ticket, paused) before the bot says a word.
        joined = await contacts.join(request.app.state.runtime, channel=CHANNEL, sender=caller,
                                     address=caller, driver_id=call.driver_id, proven=True)
        if joined is not None and joined.followed is not None and joined.followed.paused:
            call = replace(call, paused=True)
    if call.paused:  # an agent has the conversation: straight to a person
        _say(response, LINES["with_agent"][call.language], call.language)
        return _twiml(_handoff(response, cfg, call.language))
    other = "en" if call.language == "sv" else "sv"
    gather = _gather(response, cfg, call.language)
    _say(gather, LINES["greeting"][call.language], call.language)
    _say(gather, LINES["other_language"][other], other)
    return _twiml(response)


@router.post(GATHER_ROUTE)
async def gathered(request: Request) -> Response:
    """What the caller said (or keyed): the assistant's answer, spoken, then listen again."""
    from assistant import service

    cfg, fields = await signed_form(request, sending=False)
    call_sid, caller = _required(fields, "CallSid", "From")
    runtime = request.app.state.runtime
    language = _query_lang(request)
    quiet = request.query_params.get("quiet", "0")
    speech = fields.get("SpeechResult", "").strip()
    digits = fields.get("Digits", "").strip()
    response = VoiceResponse()
    if not speech and not digits:
        if quiet != "0":
            _say(response, LINES["silent_bye"][language], language)
            response.hangup()
            await run_in_session(runtime.engine, set_state, call_sid=call_sid, state="ended")
            return _twiml(response)
        _say(_gather(response, cfg, language, quiet=1), LINES["reprompt"][language], language)
        return _twiml(response)
    switched = switch_language(speech) if speech else None
    if switched is not None:
        await run_in_session(runtime.engine, set_language, call_sid=call_sid, caller=caller,
                             language=switched, settings=runtime.settings)
        _say(_gather(response, cfg, switched), LINES["switched"][switched], switched)
        return _twiml(response)
    call = await run_in_session(runtime.engine, open_call, call_sid=call_sid, caller=caller)
    text = _choice(call.options, digits=digits, speech=speech) or speech or digits
    # Caller ID proves the number only with full attestation; otherwise the call stays with
    # an anonymous contact of that number, never the driver's. Joined before the assistant
    # answers, so a driver people already have is put through to them.
    joined = await contacts.join(runtime, channel=CHANNEL, sender=caller, address=caller,
                                 driver_id=call.driver_id, proven=call.verified)
    identity = (service.Identity(driver_id=call.driver_id, verified=call.verified, via=CHANNEL)
                if call.driver_id is not None else None)
    try:
        messages = await service.handle_message(
            runtime, channel=CHANNEL, sender=caller, text=text, identity=identity,
            metadata={"call_sid": call_sid, "input": "dtmf" if digits else "speech",
                      "confidence": fields.get("Confidence")})
    except Exception:
        log.exception("assistant failed on a call", call_sid=call_sid)
        _say(_gather(response, cfg, language), LINES["error"][language], language)
        return _twiml(response)
    options = [{"title": str(b.get("title")), "payload": str(b.get("payload") or b.get("title"))}
               for m in messages for b in (m.get("buttons") or []) if b.get("title")]
    # People already have the case (joined before this turn, or once a code said in it
    # proved the caller): the caller is told so.
    told = await contacts.after_turn(runtime, channel=CHANNEL, sender=caller, joined=joined,
                                     messages=messages)
    outcome = await run_in_session(runtime.engine, after_turn, call_sid=call_sid,
                                   caller=caller, options=options)
    language = outcome.language
    if outcome.paused:
        for message in (messages if told else []) + told:
            if message.get("text"):
                _say(response, _speakable(str(message["text"])), language)
        return _twiml(_handoff(response, cfg, language))
    spoken = " ".join(_speakable(str(m["text"])) for m in messages if m.get("text"))
    if options:
        listed = " ".join(f"{i}: {o['title']}." for i, o in enumerate(options, 1))
        spoken = f"{spoken} {listed} {LINES['choices'][language]}".strip()
    if outcome.intent in END_INTENTS:
        if spoken:
            _say(response, spoken, language)
        response.hangup()
        return _twiml(response)
    _say(_gather(response, cfg, language), spoken or LINES["again"][language], language)
    return _twiml(response)


def _choice(options: list[dict[str, Any]], *, digits: str, speech: str) -> str | None:
    """The payload of the option the caller keyed or named, if any."""
    if digits.isdigit() and 1 <= int(digits) <= len(options):
        return str(options[int(digits) - 1]["payload"])
    said = re.sub(r"[^\wåäö ]+", "", speech.lower()).strip()
    for option in options:
        if said and said == option["title"].lower().strip(" .!"):
            return str(option["payload"])
    return None


@router.post(DIAL_ROUTE)
async def dial_finished(request: Request) -> Response:
    """The support line's answer: done when it was answered, else a voicemail."""
    cfg, fields = await signed_form(request, sending=False)
    language = _query_lang(request)
    response = VoiceResponse()
    if fields.get("DialCallStatus") in ("completed", "answered"):
        response.hangup()
        return _twiml(response)
    return _twiml(_voicemail(response, cfg, language))


@router.post(VOICEMAIL_ROUTE)
async def voicemail_left(request: Request) -> Response:
    """The caller finished the voicemail (the recording itself arrives by callback)."""
    _, fields = await signed_form(request, sending=False)
    language = _query_lang(request)
    response = VoiceResponse()
    recorded = fields.get("RecordingUrl") and fields.get("RecordingDuration", "0") not in ("",
                                                                                          "0")
    _say(response, LINES["voicemail_thanks" if recorded else "no_voicemail"][language],
         language)
    response.hangup()
    return _twiml(response)


@router.post(RECORDING_ROUTE)
async def recording_ready(request: Request) -> Response:
    """Twilio's recording status callback: a completed voicemail becomes a ticket."""
    _, fields = await signed_form(request, sending=False)
    call_sid, recording_sid = _required(fields, "CallSid", "RecordingSid")
    if fields.get("RecordingStatus", "completed") != "completed" \
            or not fields.get("RecordingUrl"):
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    duration = fields.get("RecordingDuration", "0")
    runtime = request.app.state.runtime
    made = await run_in_session(
        runtime.engine, record_voicemail, call_sid=call_sid, recording_sid=recording_sid,
        recording_url=fields["RecordingUrl"],
        duration_s=int(duration) if duration.isdigit() else 0, settings=runtime.settings)
    if made is not None:
        escalation_id, conversation_id, caller = made
        await runtime.bus.publish(ConversationEscalated(
            escalation_id=escalation_id, conversation_id=conversation_id, channel=CHANNEL,
            sender=caller, reason="voicemail"))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
