"""Tickets from the assistant's handovers, on SQLite and PostgreSQL: opened with their
category, priority and team, routed round robin to online agents, following the driver's
messages, merged, handed back to the bot, resolved with a rating asked and taken in through
the same conversation."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from assistant.dialogue import store
from assistant.models import Conversation, Escalation, EscalationStatus
from assistant.service import Identity, handle_message
from chargedesk.db import run_in_session, session_scope
from support import service
from support.auth import Actor
from support.models import (
    CsatState,
    Priority,
    TicketConversation,
    TicketEvent,
    TicketStatus,
)
from tests.support.conftest import Desk

ALICE = "alice"


def actor(world: Desk, username: str, role: str = "agent") -> Actor:
    agent_id = world.agents[username]
    return Actor(role=role, name=username.title(), label=f"agent:{agent_id}",
                 agent_id=agent_id)


def conversation(world: Desk, sender: str) -> Conversation:
    with session_scope(world.engine) as session:
        return session.exec(select(Conversation).where(Conversation.sender == sender)).one()


def events(world: Desk, ticket_id: int, kind: str) -> list[TicketEvent]:
    with session_scope(world.engine) as session:
        return list(session.exec(select(TicketEvent).where(
            TicketEvent.ticket_id == ticket_id, TicketEvent.kind == kind)).all())


async def say(world: Desk, sender: str, text: str, driver: str = "anna") -> list[Any]:
    return await handle_message(world.runtime, channel="web", sender=sender, text=text,
                                identity=Identity(world.drivers[driver], True, "web"))


async def inbox(world: Desk) -> int:
    return await world.read_inbox()


async def test_a_handover_becomes_a_ticket_routed_to_an_online_agent(world: Desk) -> None:
    world.online("alice", "bob")

    ticket = await world.hand_over("web-anna")

    assert ticket.status == TicketStatus.open
    assert (ticket.reason, ticket.category, ticket.priority) == ("asked", "general", "normal")
    assert ticket.team_id == world.teams["technical"]  # the team taking "general"
    assert ticket.driver_id == world.drivers["anna"] and ticket.channel == "web"
    assert ticket.assignee_id == world.agents["alice"]
    assert ticket.first_response_due_at is not None
    assert conversation(world, "web-anna").paused
    with session_scope(world.engine) as session:
        [escalation] = session.exec(select(Escalation)).all()
        assert escalation.status == EscalationStatus.assigned

    # The next ticket of the team goes to the next online agent; offline ones are skipped.
    second = await world.hand_over("web-erik", driver="erik")
    assert second.assignee_id == world.agents["bob"]
    third = await world.hand_over("web-someone", driver=None)
    assert third.assignee_id == world.agents["alice"] and third.driver_id is None


async def test_nobody_online_leaves_the_ticket_in_its_team_queue_until_someone_is(
        world: Desk) -> None:
    world.online()
    ticket = await world.hand_over("web-anna")
    assert ticket.assignee_id is None

    world.online("bob")
    report = await world.desk.run_timers()

    assert report.routed == 1
    assert world.ticket(ticket.id).assignee_id == world.agents["bob"]


async def test_the_ticket_carries_the_transcript_intent_slots_and_driver_context(
        world: Desk) -> None:
    world.online(ALICE)
    ticket = await world.hand_over("web-anna")

    with session_scope(world.engine) as session:
        detail = service.ticket_detail(session, ticket_id=ticket.id, settings=world.settings,
                                       now=world.clock.now)

    assert [line["from"] for line in detail["transcript"]][:2] == ["driver", "bot"]
    assert detail["transcript"][0]["intent"] == "human_handoff"
    assert detail["escalation"]["reason"] == "asked"
    assert detail["escalation"]["slots"]["driver_id"] == world.drivers["anna"]
    context = detail["driver_context"]
    assert context["profile"]["name"] == "Anna Berg"
    assert context["cards"] == [{"id_tag": "RFID-ANNA", "status": "Accepted"}]
    assert [e["kind"] for e in detail["events"]][:2] == ["created", "assigned"]


async def test_the_drivers_messages_reach_the_ticket_and_start_the_next_reply_clock(
        world: Desk, nlu: Any) -> None:
    world.online(ALICE)
    ticket = await world.hand_over("web-anna")
    assert await say(world, "web-anna", "hallå? kabeln sitter fortfarande fast") == []

    await inbox(world)
    waiting = world.ticket(ticket.id)
    assert waiting.last_driver_message_at is not None
    assert waiting.next_response_due_at is None  # nobody has answered yet: first reply due

    target = await run_in_session(world.engine, service.reply_target, ticket_id=ticket.id)
    await run_in_session(world.engine, service.record_reply, target=target,
                         text="Hej Anna, jag tittar på det nu.", actor=actor(world, ALICE),
                         now=world.clock.advance(minutes=3), settings=world.settings)
    answered = world.ticket(ticket.id)
    assert answered.first_response_at == world.clock.now
    assert answered.first_response_due_at is None

    await say(world, "web-anna", "tack, jag väntar")
    await inbox(world)
    assert world.ticket(ticket.id).next_response_due_at is not None
    # Read once: the same message does not start the clock again.
    assert await inbox(world) == 0


async def test_a_second_handover_reopens_the_ticket_the_bot_was_given_back(world: Desk) -> None:
    world.online(ALICE)
    ticket = await world.hand_over("web-anna")
    sent = await run_in_session(world.engine, service.set_status, ticket_id=ticket.id,
                                status=TicketStatus.pending, actor=actor(world, ALICE),
                                now=world.clock.advance(minutes=5), settings=world.settings)
    await world.deliver(sent)
    assert not conversation(world, "web-anna").paused
    assert "digitala assistent" in world.texts_to("web-anna")[-1]
    assert world.ticket(ticket.id).status == TicketStatus.pending

    # Back with the bot, which answers again; asked for a person again, same ticket.
    again = await world.hand_over("web-anna")

    assert again.id == ticket.id and again.status == TicketStatus.open
    assert conversation(world, "web-anna").paused
    assert [e.text for e in events(world, ticket.id, "escalated")]


async def test_resolving_asks_for_a_rating_and_the_answer_is_taken_in(
        world: Desk, nlu: Any) -> None:
    world.online(ALICE)
    ticket = await world.hand_over("web-anna")

    sent = await run_in_session(world.engine, service.set_status, ticket_id=ticket.id,
                                status=TicketStatus.resolved, actor=actor(world, ALICE),
                                now=world.clock.advance(minutes=10), settings=world.settings,
                                deliverable=world.desk.deliverable)
    await world.deliver(sent)

    question = world.pushed[-1].message
    assert "1 (inte alls nöjd) till 5" in question["text"]
    assert [b["title"] for b in question["buttons"]] == ["1", "2", "3", "4", "5"]
    assert world.ticket(ticket.id).csat_state == CsatState.asked
    assert conversation(world, "web-anna").paused  # the answer must reach us, not the bot

    # The driver presses "4": the widget sends the button's payload.
    assert await say(world, "web-anna", question["buttons"][3]["payload"]) == []
    await inbox(world)
    rated = world.ticket(ticket.id)
    assert (rated.csat_score, rated.csat_state) == (4, CsatState.comment)
    assert "kommentar" in world.texts_to("web-anna")[-1]

    await say(world, "web-anna", "Snabbt och vänligt!")
    await inbox(world)
    done = world.ticket(ticket.id)
    assert (done.csat_score, done.csat_comment, done.csat_state) == (
        4, "Snabbt och vänligt!", CsatState.done)
    assert "Tack för ditt svar" in world.texts_to("web-anna")[-1]
    assert not conversation(world, "web-anna").paused  # the bot has the conversation again
    replies = await say(world, "web-anna", "/greet")
    assert replies  # and answers


async def test_a_typed_score_with_a_comment_counts_and_anything_else_reopens(
        world: Desk, nlu: Any) -> None:
    world.online(ALICE)
    first = await world.hand_over("web-anna")
    second = await world.hand_over("web-erik", driver="erik")
    for ticket in (first, second):
        await world.deliver(await run_in_session(
            world.engine, service.set_status, ticket_id=ticket.id,
            status=TicketStatus.resolved, actor=actor(world, ALICE),
            now=world.clock.advance(minutes=1), settings=world.settings))

    await say(world, "web-anna", "5 - supersnabbt")
    await say(world, "web-erik", "det funkar fortfarande inte", driver="erik")
    await inbox(world)

    anna, erik = world.ticket(first.id), world.ticket(second.id)
    assert (anna.csat_score, anna.csat_comment, anna.csat_state) == (
        5, "supersnabbt", CsatState.done)
    assert erik.status == TicketStatus.open and erik.csat_state == CsatState.cancelled
    assert erik.last_driver_message_at is not None
    assert conversation(world, "web-erik").paused


async def test_an_unanswered_rating_gives_the_conversation_back_to_the_bot(
        world: Desk) -> None:
    ticket = await world.hand_over("web-anna")
    await world.deliver(await run_in_session(
        world.engine, service.set_status, ticket_id=ticket.id, status=TicketStatus.resolved,
        actor="operator:ops", now=world.clock.now, settings=world.settings))

    world.clock.advance(minutes=world.settings.support_csat_timeout_minutes + 1)
    report = await world.desk.run_timers()

    assert report.csat_expired == 1
    assert world.ticket(ticket.id).csat_state == CsatState.expired
    assert not conversation(world, "web-anna").paused


async def test_a_handover_after_the_ticket_was_resolved_opens_a_new_one_for_the_conversation(
        world: Desk) -> None:
    world.online(ALICE)
    first = await world.hand_over("web-anna")
    await world.deliver(await run_in_session(
        world.engine, service.set_status, ticket_id=first.id, status=TicketStatus.resolved,
        actor=actor(world, ALICE), now=world.clock.advance(minutes=5), settings=world.settings))
    world.clock.advance(minutes=world.settings.support_csat_timeout_minutes + 1)
    await world.desk.run_timers()  # the rating goes unanswered: the bot has it again

    second = await world.hand_over("web-anna")

    assert second.id != first.id and second.status == TicketStatus.open
    with session_scope(world.engine) as session:
        link = session.get(TicketConversation, conversation(world, "web-anna").id)
        assert link is not None and link.ticket_id == second.id
    # The agent's reply on the new ticket goes to that conversation.
    target = await run_in_session(world.engine, service.reply_target, ticket_id=second.id)
    assert (target.channel, target.sender) == ("web", "web-anna")


async def test_a_driver_two_conversations_merge_into_one_ticket(world: Desk) -> None:
    world.online(ALICE)
    web = await world.hand_over("web-anna")
    sms = await world.hand_over("+46701234567", channel="sms")
    other = await world.hand_over("web-erik", driver="erik")

    with pytest.raises(service.Conflict):
        await run_in_session(world.engine, service.merge, ticket_id=other.id, into_id=web.id,
                             actor=actor(world, ALICE), now=world.clock.now)
    merged = await run_in_session(world.engine, service.merge, ticket_id=sms.id,
                                  into_id=web.id, actor=actor(world, ALICE),
                                  now=world.clock.now)

    assert merged.id == web.id
    folded = world.ticket(sms.id)
    assert folded.merged_into_id == web.id and folded.status == TicketStatus.resolved
    with session_scope(world.engine) as session:
        detail = service.ticket_detail(session, ticket_id=web.id, settings=world.settings,
                                       now=world.clock.now)
    assert {c["channel"] for c in detail["conversations"]} == {"web", "sms"}
    assert {line["channel"] for line in detail["transcript"]} == {"web", "sms"}
    # The driver's latest message was on SMS: a reply goes there unless told otherwise.
    target = await run_in_session(world.engine, service.reply_target, ticket_id=web.id)
    assert target.channel == "sms"


async def test_priority_and_team_follow_the_intent_and_reason(world: Desk) -> None:
    world.online("alice", "carol")
    escalation_id = await run_in_session(world.engine, escalate, sender="web-anna",
                                         driver_id=world.drivers["anna"], intent="top_up",
                                         reason="action_failed", settings=world.settings)

    opened = await world.desk.open_ticket(escalation_id)

    ticket = world.ticket(opened.ticket_id)
    assert (ticket.category, ticket.team_id) == ("billing", world.teams["billing"])
    assert ticket.assignee_id == world.agents["carol"]
    assert ticket.priority == Priority.high
    assert await world.desk.open_ticket(escalation_id) is None  # one ticket per escalation

    from support.routing import category_of, priority_of

    assert category_of("cable_stuck") == "technical" and category_of("lost_card") == "account"
    assert category_of(None) == "general"
    assert priority_of("action_failed", "cable_stuck") == Priority.urgent
    assert priority_of("damage", "report_station_problem") == Priority.high
    assert priority_of("fallback", None) == Priority.low


def escalate(session: Any, *, sender: str, driver_id: int, intent: str, reason: str,
             settings: Any) -> int:
    """An escalation recorded as the assistant records one, for a given intent."""
    from datetime import timedelta

    snapshot = store.load_conversation(session, channel="web", sender=sender,
                                       initial_slots={}, expiry=timedelta(hours=1),
                                       identity=(driver_id, True))
    snapshot.record({"event": "user", "text": "jag vill fylla på", "parse_data": {
        "intent": {"name": intent, "confidence": 1.0}}})
    snapshot.paused = True
    store.save_turn(session, snapshot=snapshot, expiry=timedelta(hours=1))
    row = store.record_escalation(session, conversation_id=snapshot.id, reason=reason,
                                  intent=intent, slots=snapshot.slots, settings=settings)
    return row.id or 0


async def test_the_assistant_cache_sees_what_the_desk_wrote(world: Desk) -> None:
    """The assistant keeps conversations in memory between turns (this one paused); the
    desk's resume is what the next turn sees: the cached copy goes when the desk commits."""
    ticket = await world.hand_over("web-anna")
    assert await say(world, "web-anna", "/greet") == []  # paused: recorded, not answered
    await world.deliver(await run_in_session(
        world.engine, service.set_status, ticket_id=ticket.id, status=TicketStatus.pending,
        actor="operator:ops", now=world.clock.now, settings=world.settings))

    replies = await say(world, "web-anna", "/greet")

    assert replies and replies[0]["text"]


async def test_a_damage_report_is_a_high_priority_ticket_with_the_flagged_station(
        world: Desk) -> None:
    from tests.station_api.test_central_system import register

    register(world.engine, "SE-TST-BROKEN-01")
    world.online(ALICE)

    ticket = await world.hand_over(
        "web-anna", text='/report_station_problem{"station_id": "SE-TST-BROKEN-01"}')

    assert (ticket.reason, ticket.priority, ticket.category) == ("damage", "high", "technical")
    with session_scope(world.engine) as session:
        detail = service.ticket_detail(session, ticket_id=ticket.id, settings=world.settings,
                                       now=world.clock.now, online=lambda _: False)
    station = detail["station"]
    assert station["id"] == "SE-TST-BROKEN-01" and station["online"] is False
    [flag] = station["problem_reports"]
    assert flag["reports"] == 1


async def test_reopening_a_ticket_the_bot_had_skips_what_the_bot_answered(world: Desk) -> None:
    world.online(ALICE)
    ticket = await world.hand_over("web-anna")
    await world.deliver(await run_in_session(
        world.engine, service.set_status, ticket_id=ticket.id, status=TicketStatus.pending,
        actor=actor(world, ALICE), now=world.clock.now, settings=world.settings))
    assert await say(world, "web-anna", "/greet")  # the bot answers

    await run_in_session(world.engine, service.set_status, ticket_id=ticket.id,
                         status=TicketStatus.open, actor=actor(world, ALICE),
                         now=world.clock.advance(minutes=1), settings=world.settings)
    await inbox(world)

    reopened = world.ticket(ticket.id)
    assert reopened.status == TicketStatus.open and reopened.last_driver_message_at is None
    assert conversation(world, "web-anna").paused  # people have it again
    assert await say(world, "web-anna", "/greet") == []
    await inbox(world)
    assert world.ticket(ticket.id).last_driver_message_at is not None
