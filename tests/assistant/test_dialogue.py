"""Conversation tests, Rasa style: user turns in, bot responses and actions out.

The real NLU parses every message; actions come from a small fake registry defined here
(the real ones live in assistant/actions), and one-time codes from a stub identity module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from assistant import service
from assistant.dialogue import builtin_forms, engine, store
from assistant.events import BotUttered
from assistant.models import Conversation, Escalation
from billing_api.models import Driver, DriverIdTag
from chargedesk.db import session_scope
from chargedesk.events import InMemoryEventBus
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from station_api.models import IdTag

# ------------------------------------------------------------------ fakes


class FakeRegistry:
    """The actions registry's interface, with actions that only say what they did."""

    CONFIRM = frozenset({"action_cable_stuck"})

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.ACTIONS = {name: object for name in (
            "action_cable_stuck", "action_price_info", "action_explain_cost",
            "action_billing_history", "action_human_handoff", "action_station_status",
            "action_find_charger")}

    async def execute(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(payload)
        name = payload["next_action"]
        slots = payload["tracker"]["slots"]
        if name == "action_cable_stuck":
            return {"events": [], "responses": [{"text": (
                f"unlocked {slots['station_id']} #{int(slots['connector'])}")}]}
        if name == "action_explain_cost":
            return {"events": [], "responses": [
                {"text": f"cost of session offset {int(slots['offset'] or 0)}"}]}
        if name == "action_human_handoff":
            return {"events": [{"event": "pause"}], "responses": [{"response": "utter_handoff"}]}
        if name == "action_price_info":
            return {"events": [{"event": "slot", "name": "site", "value": "demo"}],
                    "responses": [{"text": "12.50 SEK/kWh"}]}
        return {"events": [], "responses": [{"text": name}]}

    def summary(self, name: str, tracker: Any, language: str) -> str:
        station, connector = tracker.get_slot("station_id"), int(tracker.get_slot("connector"))
        if language == "sv":
            return f"låsa upp uttag {connector} på {station}"
        return f"unlock connector {connector} at {station}"


class FakeIdentity:
    """One-time codes: the code is always 123456, for the demo driver's phone."""

    def __init__(self, driver_id: int) -> None:
        self.driver_id = driver_id
        self.sent: list[str] = []

    def start_verification(self, session: Session, *, contact: str, channel: str,
                           sender: str) -> bool:
        self.sent.append(contact)
        return True

    def check_code(self, session: Session, *, channel: str, sender: str, code: str
                   ) -> int | None:
        return self.driver_id if code == "123456" else None


@dataclass
class Chat:
    """One sender talking to the assistant; each ``say`` returns the bot's texts."""

    runtime: Any
    sender: str = "driver-1"
    channel: str = "web"
    identity: service.Identity | None = None
    replies: list[list[dict[str, Any]]] = field(default_factory=list)

    def say(self, text: str) -> list[str]:
        messages = asyncio.run(service.handle_message(
            self.runtime, channel=self.channel, sender=self.sender, text=text,
            identity=self.identity))
        self.replies.append(messages)
        assert all(m["recipient_id"] == self.sender for m in messages)
        return [m.get("text") or "" for m in messages]

    @property
    def last(self) -> list[dict[str, Any]]:
        return self.replies[-1]

    def utters(self) -> list[str | None]:
        """The response templates of the last turn's messages (None for literal text)."""
        with Session(self.runtime.engine) as session:
            row = store.get_conversation(session, channel=self.channel, sender=self.sender)
            assert row is not None
            events = store.list_events(session, conversation_id=row.id or 0, types=("bot",))
        return [e.data["metadata"].get("utter_action") for e in events][-len(self.last):] \
            if self.last else []

    def conversation(self) -> Conversation:
        with Session(self.runtime.engine) as session:
            row = store.get_conversation(session, channel=self.channel, sender=self.sender)
            assert row is not None
            return row


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()
    monkeypatch.setattr(engine, "registry", lambda: fake)
    return fake


@pytest.fixture
def driver(session: Session) -> Driver:
    row = Driver(name="Alva Lind", email="alva@example.com", phone="+46701234567")
    session.add(row)
    session.add(IdTag(id_tag="RFID-ALVA"))
    session.flush()
    session.add(DriverIdTag(id_tag="RFID-ALVA", driver_id=row.id or 0))
    session.commit()
    return row


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch, driver: Driver) -> FakeIdentity:
    fake = FakeIdentity(driver.id or 0)
    monkeypatch.setattr(builtin_forms, "identity", lambda: fake)
    return fake


@pytest.fixture
def runtime(engine: Any, nlu: Any, registry: FakeRegistry) -> Any:
    settings = Settings(database_url=str(engine.url), log_format="console",
                        scheduler=False, nlu_warm_up=False)
    return SimpleNamespace(settings=settings, engine=engine, bus=InMemoryEventBus())


@pytest.fixture
def chat(runtime: Any) -> Chat:
    return Chat(runtime)


def verified(runtime: Any, driver: Driver) -> Chat:
    return Chat(runtime, identity=service.Identity(driver_id=driver.id or 0, verified=True,
                                                   via="web"))


# ------------------------------------------------------------------ rules and language


def test_greeting_in_the_drivers_language(chat: Chat) -> None:
    chat.say("Hej! Jag behöver hjälp")
    assert chat.utters() == ["utter_greet"]
    swedish = {"Hej! Jag är ChargeDesks assistent. Hur kan jag hjälpa dig med laddningen?",
               "Hej! Fråga mig om laddning, stationer, priser eller dina fakturor.",
               "Hej hej! Vad kan jag hjälpa dig med i dag?"}
    assert chat.last[0]["text"] in swedish
    chat.say("Thanks a lot for the help")
    assert chat.utters() == ["utter_thanks"]
    assert chat.last[0]["text"] in {"You're welcome!", "Happy to help!", "Any time!"}
    assert chat.conversation().language == "en"


def test_anonymous_questions_run_their_action_without_verification(
        chat: Chat, registry: FakeRegistry) -> None:
    assert chat.say("What does charging cost per kWh?") == ["12.50 SEK/kWh"]
    payload = registry.calls[-1]
    assert payload["next_action"] == "action_price_info"
    assert payload["tracker"]["sender_id"] == "driver-1"
    assert payload["tracker"]["latest_message"]["intent"]["name"] == "price_info"
    assert chat.conversation().slots["site"] == "demo"  # the action's slot event applied


def test_bot_messages_are_published_on_the_bus(runtime: Any, chat: Chat) -> None:
    seen: list[BotUttered] = []
    runtime.bus.subscribe(BotUttered, seen.append)

    async def talk() -> list[dict[str, Any]]:
        messages = await service.handle_message(runtime, channel="web", sender="bus-1",
                                                text="hello there")
        await runtime.bus.join()
        return messages

    messages = asyncio.run(talk())
    assert [(e.channel, e.sender, e.message) for e in seen] == [
        ("web", "bus-1", messages[0])]


# ------------------------------------------------------------------ identity and forms


def test_account_request_verifies_first_then_resumes(
        chat: Chat, identity: FakeIdentity, registry: FakeRegistry, driver: Driver) -> None:
    chat.say("Why was my last charge so expensive?")
    assert chat.utters() == ["utter_ask_contact"]
    chat.say("my number is banana")
    assert chat.utters() == ["utter_invalid_contact", "utter_ask_contact"]
    chat.say("+46701234567")
    assert identity.sent == ["+46701234567"]
    assert chat.utters() == ["utter_ask_otp_code"]
    chat.say("999999")
    assert chat.utters() == ["utter_invalid_otp_code", "utter_ask_otp_code"]
    # The right code: verified, and the interrupted question is answered.
    assert chat.say("123456") == ["cost of session offset 0"]
    row = chat.conversation()
    assert (row.driver_id, row.verified, row.active_loop) == (driver.id, True, None)
    assert row.slots["id_tags"] == ["RFID-ALVA"]


def test_channel_identity_skips_verification(runtime: Any, driver: Driver,
                                             registry: FakeRegistry) -> None:
    chat = verified(runtime, driver)
    assert chat.say("Why was my last charge so expensive?") == ["cost of session offset 0"]
    assert registry.calls[-1]["tracker"]["slots"]["driver_id"] == driver.id


def test_form_reasks_on_a_bad_value_then_confirms_before_acting(
        runtime: Any, driver: Driver, registry: FakeRegistry) -> None:
    chat = verified(runtime, driver)
    chat.say("The cable is stuck at SE-STO-CITY-01 and I can't get it out")
    assert chat.utters() == ["utter_ask_connector"]
    chat.say("hmm the blue one")
    assert chat.utters() == ["utter_invalid_connector", "utter_ask_connector"]
    chat.say("2")
    assert chat.utters() == ["utter_confirm_action"]
    assert "unlock connector 2 at SE-STO-CITY-01" in chat.last[0]["text"]
    assert [b["payload"] for b in chat.last[0]["buttons"]] == ["/affirm", "/deny"]
    assert not any(c["next_action"] == "action_cable_stuck" for c in registry.calls)
    assert chat.say("/affirm") == ["unlocked SE-STO-CITY-01 #2"]
    assert chat.conversation().slots["requested_action"] is None


def test_deny_cancels_the_confirmed_action(runtime: Any, driver: Driver,
                                           registry: FakeRegistry) -> None:
    chat = verified(runtime, driver)
    chat.say("Kabeln sitter fast i uttag 1 på SE-STO-CITY-01")
    assert chat.utters() == ["utter_confirm_action"]
    assert "låsa upp uttag 1 på SE-STO-CITY-01" in chat.last[0]["text"]
    chat.say("/deny")
    assert chat.utters() == ["utter_action_cancelled"]
    assert not any(c["next_action"] == "action_cable_stuck" for c in registry.calls)


def test_quick_reply_payload_with_entities_skips_nlu(runtime: Any, driver: Driver,
                                                     registry: FakeRegistry) -> None:
    chat = verified(runtime, driver)
    chat.say('/cable_stuck{"station_id": "SE-STO-CITY-02", "connector": 1}')
    assert chat.utters() == ["utter_confirm_action"]
    assert "SE-STO-CITY-02" in chat.last[0]["text"]


# ------------------------------------------------------------------ fallback and handoff


def test_two_stage_fallback_ends_in_a_handoff_with_an_escalation(
        chat: Chat, runtime: Any, session: Session) -> None:
    chat.say("hmm the blue one")
    assert chat.utters() == ["utter_ask_rephrase"]
    suggestions = chat.last[0].get("buttons", [])
    assert 0 < len(suggestions) <= 3
    assert all(b["payload"].startswith("/") for b in suggestions)
    chat.say("blorp fnord")
    assert chat.utters() == ["utter_offer_human"]
    chat.say("yes please")
    assert chat.utters() == ["utter_handoff"]
    row = chat.conversation()
    assert row.paused
    escalation = session.exec(select(Escalation)).one()
    assert (escalation.conversation_id, escalation.reason, escalation.status) == (
        row.id, "fallback", "open")
    said = [line["text"] for line in escalation.transcript if line["from"] == "driver"]
    assert said == ["hmm the blue one", "blorp fnord", "yes please"]
    assert escalation.transcript[-1]["from"] == "bot"
    # Paused: the driver's messages are kept for the agent, the bot stays quiet.
    assert chat.say("hello? anyone?") == []
    with Session(runtime.engine) as fresh:
        texts = [e.data["text"] for e in store.list_events(
            fresh, conversation_id=row.id or 0, types=("user",))]
    assert texts[-1] == "hello? anyone?"


def test_asking_for_a_human_records_the_drivers_context(
        runtime: Any, driver: Driver, session: Session) -> None:
    chat = verified(runtime, driver)
    chat.say("I want to talk to a real person")
    assert chat.utters() == ["utter_handoff"]
    escalation = session.exec(select(Escalation)).one()
    assert escalation.reason == "asked"
    assert escalation.driver_context["profile"]["name"] == "Alva Lind"
    assert escalation.slots["driver_id"] == driver.id


# ------------------------------------------------------------------ carryover and expiry


def test_and_the_one_before_that_moves_the_offset_back(
        runtime: Any, driver: Driver) -> None:
    chat = verified(runtime, driver)
    assert chat.say("Why was my last charge so expensive?") == ["cost of session offset 0"]
    assert chat.say("and the one before that?") == ["cost of session offset 1"]
    assert chat.say("och den innan dess?") == ["cost of session offset 2"]
    assert chat.say("Why was my last charge so expensive?") == ["cost of session offset 0"]


def test_an_idle_conversation_starts_a_new_session_keeping_identity(
        runtime: Any, driver: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    chat = verified(runtime, driver)
    chat.say("The cable is stuck at SE-STO-CITY-01")
    assert chat.conversation().active_loop == "cable_stuck_form"
    later = utcnow() + timedelta(minutes=61)
    monkeypatch.setattr(store, "utcnow", lambda: later)
    chat.identity = None
    chat.say("hello")
    assert chat.utters() == ["utter_greet"]
    row = chat.conversation()
    assert (row.session_number, row.active_loop) == (2, None)
    assert row.slots["station_id"] is None
    assert (row.slots["driver_id"], row.slots["verified"]) == (driver.id, True)


def test_after_a_restart_the_conversation_comes_back_from_the_database(
        runtime: Any, driver: Driver, engine: Any) -> None:
    chat = verified(runtime, driver)
    chat.say("The cable is stuck at SE-STO-CITY-01")
    store.cache_for(engine).clear()  # what a restart leaves in memory
    chat.say("2")
    assert chat.utters() == ["utter_confirm_action"]  # the form went on where it was
    store.cache_for(engine).clear()
    with Session(engine) as session:  # and idle since
        row = session.exec(select(Conversation)).one()
        row.expires_at = row.expires_at - timedelta(minutes=61)
        session.add(row)
        session.commit()
    chat.identity = None
    chat.say("hello")
    assert chat.utters() == ["utter_greet"]
    row = chat.conversation()
    assert (row.session_number, row.active_loop) == (2, None)
    assert (row.slots["station_id"], row.slots["requested_action"]) == (None, None)
    assert (row.slots["driver_id"], row.slots["verified"]) == (driver.id, True)


# ------------------------------------------------------------------ persistence


def test_a_turn_reads_nothing_and_writes_once_when_the_conversation_is_in_memory(
        chat: Chat, engine: Any) -> None:
    chat.say("Hello there")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()[:3]).upper())

    event.listen(engine, "before_cursor_execute", seen)
    try:
        chat.say("Thanks a lot for the help")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements == ["UPDATE CONVERSATION SET", "INSERT INTO CONVERSATION_EVENT"]
    with Session(engine) as session:  # already in the database when the answer came
        row = store.get_conversation(session, channel=chat.channel, sender=chat.sender)
        assert row is not None
        texts = [e.data.get("text") for e in store.list_events(
            session, conversation_id=row.id or 0, types=("user", "bot"))]
    assert texts[-2:] == ["Thanks a lot for the help", chat.last[0]["text"]]


def test_an_agent_resuming_the_conversation_is_seen_by_the_next_turn(
        runtime: Any, driver: Driver, engine: Any) -> None:
    chat = verified(runtime, driver)
    chat.say("I want to talk to a real person")
    assert chat.conversation().paused
    assert chat.say("hello?") == []
    with session_scope(engine) as session:
        store.resume_conversation(session, channel=chat.channel, sender=chat.sender)
    assert chat.say("Thanks a lot for the help") != []
    assert not chat.conversation().paused


def test_a_pause_written_elsewhere_survives_the_turn_it_raced(
        chat: Chat, engine: Any) -> None:
    chat.say("Hello there")
    with Session(engine) as session:  # e.g. an agent console in another process
        row = session.exec(select(Conversation)).one()
        row.paused = True
        row.updated_at = utcnow()
        session.add(row)
        session.commit()
    chat.say("What does charging cost per kWh?")  # this turn started from memory
    assert chat.conversation().paused  # the agent's pause was kept
    assert chat.say("hello?") == []  # and the next turn starts from the database
    with Session(engine) as session:
        said = [e.data["text"] for e in store.list_events(
            session, conversation_id=chat.conversation().id or 0, types=("user",))]
    assert said == ["Hello there", "What does charging cost per kWh?", "hello?"]
