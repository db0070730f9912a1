"""Conversations in the database: per channel and sender, events in order, expiry,
escalations, and the 0005 migration both ways on both databases."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, inspect, text
from sqlmodel import Session, col

from assistant.dialogue import store
from assistant.models import Conversation, Escalation
from chargedesk.db import _alembic_config, normalise_url, session_scope, upgrade
from chargedesk.settings import Settings
from chargedesk.types import utcnow

INITIAL = {"station_id": None, "verified": False, "language": None, "driver_id": None,
           "offset": 0}
HOUR = timedelta(minutes=60)


def load(session: Session, **kwargs: Any) -> store.Snapshot:
    return store.load_conversation(session, initial_slots=INITIAL, expiry=HOUR, **kwargs)


def test_one_conversation_per_channel_and_sender(session: Session) -> None:
    web = load(session, channel="web", sender="a")
    again = load(session, channel="web", sender="a")
    sms = load(session, channel="sms", sender="a")
    assert web.id == again.id != sms.id
    assert web.new_session and not again.new_session


def test_a_turn_is_saved_with_its_events_in_order(session: Session) -> None:
    snapshot = load(session, channel="web", sender="a")
    snapshot.record({"event": "user", "text": "hej"})
    snapshot.record({"event": "bot", "text": "Hej!", "data": {}, "metadata": {}})
    snapshot.slots["station_id"] = "SE-STO-CITY-01"
    snapshot.active_loop = "cable_stuck_form"
    store.save_turn(session, snapshot=snapshot, expiry=HOUR)
    session.commit()
    later = load(session, channel="web", sender="a")
    assert [e["event"] for e in later.events] == [
        "session_started", "action", "user", "bot"]
    assert (later.slots["station_id"], later.active_loop) == ("SE-STO-CITY-01",
                                                              "cable_stuck_form")


def test_expiry_starts_a_new_session_keeping_identity_and_language(session: Session) -> None:
    snapshot = load(session, channel="web", sender="a")
    snapshot.slots.update(station_id="SE-STO-CITY-01", verified=True, driver_id=None,
                          language="en")
    snapshot.active_loop = "cable_stuck_form"
    store.save_turn(session, snapshot=snapshot, expiry=HOUR, now=utcnow() - 2 * HOUR)
    session.commit()
    fresh = load(session, channel="web", sender="a")
    assert fresh.new_session and fresh.session_number == 2
    assert (fresh.slots["station_id"], fresh.slots["verified"], fresh.slots["language"],
            fresh.active_loop) == (None, True, "en", None)
    assert [e["event"] for e in fresh.events] == ["session_started", "action"]


def test_escalation_holds_the_transcript_and_resume_unpauses(session: Session) -> None:
    snapshot = load(session, channel="sms", sender="+46701234567")
    snapshot.record({"event": "user", "text": "the screen is smashed",
                     "parse_data": {"intent": {"name": "report_station_problem"}}})
    snapshot.record({"event": "bot", "text": "I'll get a person.", "data": {},
                     "metadata": {}})
    snapshot.paused = True
    store.save_turn(session, snapshot=snapshot, expiry=HOUR)
    session.flush()
    row = store.record_escalation(session, conversation_id=snapshot.id, reason="damage",
                                  intent="report_station_problem", slots=snapshot.slots,
                                  settings=Settings())
    assert isinstance(row, Escalation) and row.reason == "damage" and row.status == "open"
    assert [(line["from"], line["text"]) for line in row.transcript] == [
        ("driver", "the screen is smashed"), ("bot", "I'll get a person.")]
    assert row.transcript[0]["intent"] == "report_station_problem"
    assert row.driver_context == {}  # anonymous: nothing to add
    assert store.resume_conversation(session, channel="sms",
                                     sender="+46701234567").paused is False


async def test_turns_saved_together_are_all_written_and_a_bad_one_fails_alone(
        engine: Any) -> None:
    with session_scope(engine) as session:
        first = load(session, channel="web", sender="first")
        second = load(session, channel="web", sender="second")
        gone = load(session, channel="web", sender="gone")
    with session_scope(engine) as session:
        session.execute(delete(Conversation).where(col(Conversation.id) == gone.id))
    for snapshot in (first, second, gone):
        snapshot.record({"event": "user", "text": f"hej from {snapshot.sender}"})
    writer = store.writer_for(engine)
    results = await asyncio.gather(*(writer.save(s, HOUR) for s in (first, second, gone)),
                                   return_exceptions=True)
    assert results[:2] == [None, None] and isinstance(results[2], LookupError)
    with Session(engine) as session:
        for snapshot in (first, second):
            said = [e.data["text"] for e in store.list_events(
                session, conversation_id=snapshot.id, types=("user",))]
            assert said == [f"hej from {snapshot.sender}"]
            assert snapshot.new_events == [] and not snapshot.stale
    assert gone.new_events  # not written: the turn failed and is not cached


def test_a_save_over_a_row_changed_by_someone_else_keeps_their_pause(
        session: Session) -> None:
    snapshot = load(session, channel="sms", sender="+46701234567")
    store.save_turn(session, snapshot=snapshot, expiry=HOUR)
    session.commit()
    row = store.get_conversation(session, channel="sms", sender="+46701234567")
    assert row is not None
    row.paused, row.updated_at = True, utcnow()  # an agent took over meanwhile
    session.add(row)
    session.commit()
    snapshot.record({"event": "user", "text": "hello?"})
    snapshot.slots["station_id"] = "SE-STO-CITY-01"
    store.save_turn(session, snapshot=snapshot, expiry=HOUR)
    session.commit()
    session.expire_all()
    row = store.get_conversation(session, channel="sms", sender="+46701234567")
    assert row is not None and row.paused and row.slots["station_id"] == "SE-STO-CITY-01"
    assert snapshot.stale and snapshot.paused
    events = store.list_events(session, conversation_id=snapshot.id, types=("user",))
    assert [e.data["text"] for e in events] == ["hello?"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0005_upgrades_and_downgrades(backend: str, tmp_path: Any) -> None:
    import alembic.command

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
        admin = None
    else:
        base = os.environ.get("CHARGEDESK_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
        schema = f"chargedesk_mig_{os.getpid()}"
        admin = create_engine(normalise_url(base))
        try:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA {schema}"))
        except Exception as exc:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"PostgreSQL unreachable: {exc}")
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        upgrade(url)
        engine = create_engine(normalise_url(url))
        tables = set(inspect(engine).get_table_names())
        assert {"conversation", "conversation_event", "escalation"} <= tables
        fks = {fk["name"] for fk in inspect(engine).get_foreign_keys("escalation")}
        assert fks == {"fk_escalation_conversation_id_conversation"}
        engine.dispose()
        alembic.command.downgrade(_alembic_config(url), "0004")
        engine = create_engine(normalise_url(url))
        assert "conversation" not in set(inspect(engine).get_table_names())
        engine.dispose()
        upgrade(url)
    finally:
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()
