"""The desk's report from real conversations and tickets, on SQLite and PostgreSQL:
first-response and resolution times, the backlog, ratings, SLA breaches and the
assistant's containment rate by channel and intent; the charts are PNGs."""

from __future__ import annotations

from datetime import timedelta

from assistant.service import Identity, handle_message
from chargedesk.db import run_in_session, session_scope
from chargedesk.types import utcnow
from support import charts, reports, service
from support.auth import Actor
from support.models import TicketStatus
from tests.support.conftest import Desk


async def test_the_report_counts_what_happened(world: Desk) -> None:
    # The assistant stamps conversations with the real time: the desk's clock starts there.
    world.clock.now = utcnow()
    world.online("alice")
    alice = Actor(role="agent", name="Alice", label=f"agent:{world.agents['alice']}",
                  agent_id=world.agents["alice"])
    start = world.clock.now

    # Two bot sessions the assistant finished by itself, one on SMS.
    for channel, sender in (("web", "web-contained"), ("sms", "+46700000001")):
        await handle_message(world.runtime, channel=channel, sender=sender,
                             text="/station_status")
    # Two handed over: Anna's (answered in 4 minutes, resolved after 30, rated 5), Erik's
    # (left waiting past its first-reply target).
    anna = await world.hand_over("web-anna")
    erik = await world.hand_over("web-erik", driver="erik")
    target = await run_in_session(world.engine, service.reply_target, ticket_id=anna.id)
    await run_in_session(world.engine, service.record_reply, target=target, text="Hej!",
                         actor=alice, now=world.clock.advance(minutes=4),
                         settings=world.settings)
    await world.deliver(await run_in_session(
        world.engine, service.set_status, ticket_id=anna.id, status=TicketStatus.resolved,
        actor=alice, now=world.clock.advance(minutes=26), settings=world.settings))
    await handle_message(world.runtime, channel="web", sender="web-anna",
                         text='/csat{"csat_score": 5}',
                         identity=Identity(world.drivers["anna"], True, "web"))
    await world.read_inbox()
    world.clock.advance(minutes=10)
    world.online("alice")
    await world.desk.run_timers()  # Erik's first reply is 40 minutes late: breached

    with session_scope(world.engine) as session:
        report = reports.build(session, period=reports.Period(
            start - timedelta(hours=1), world.clock.now + timedelta(hours=1)),
            now=world.clock.now)

    times = report["times"]
    assert (times["tickets_opened"], times["tickets_resolved"], times["unanswered"]) == (2, 1, 1)
    assert times["first_response"] == {"count": 1, "median": 4.0, "p90": 4.0, "mean": 4.0}
    assert times["resolution"]["median"] == 30.0
    assert times["first_response_by_channel"]["web"]["count"] == 1
    assert times["first_response_by_intent"] == {
        "human_handoff": {"count": 1, "median": 4.0, "p90": 4.0, "mean": 4.0}}
    assert times["resolution_by_channel"]["web"]["median"] == 30.0
    assert times["resolution_by_intent"]["human_handoff"]["count"] == 1
    assert report["backlog"]["by_channel"] == {"web": 1}
    assert report["backlog"]["by_intent"] == {"human_handoff": 1}
    assert report["backlog"]["by_status"] == {"open": 1}
    assert report["backlog"]["by_team"] == {"Technical": {"open": 1}}
    assert report["backlog"]["escalated"] == 1
    assert report["sla_breaches"] == {"first_response": 1}
    csat = report["csat"]
    assert (csat["asked"], csat["answered"], csat["mean"]) == (1, 1, 5.0)
    assert csat["distribution"]["5"] == 1 and csat["satisfied_share"] == 1.0
    assert csat["by_channel"] == {"web": {"asked": 1, "answered": 1, "mean": 5.0}}
    assert csat["by_intent"] == {"human_handoff": {"asked": 1, "answered": 1, "mean": 5.0}}
    contained = report["containment"]
    assert contained["overall"] == {"sessions": 4, "contained": 2, "rate": 0.5}
    assert contained["by_channel"]["sms"] == {"sessions": 1, "contained": 1, "rate": 1.0}
    assert contained["by_channel"]["web"] == {"sessions": 3, "contained": 1, "rate": 0.333}
    assert contained["by_intent"]["station_status"]["rate"] == 1.0
    # Asking for a person straight away is a request of its own, never contained.
    assert contained["by_intent"]["human_handoff"] == {"sessions": 2, "contained": 0,
                                                      "rate": 0.0}
    assert erik.id != anna.id

    for name in charts.CHARTS:
        assert charts.draw(name, report).startswith(b"\x89PNG")


async def test_a_driver_writing_on_to_a_person_is_not_counted_as_contained(
        world: Desk) -> None:
    """A session handed over before the period, in which the driver writes to the agent
    during it, is a session a person took, not one the bot contained."""
    from sqlalchemy import update

    from assistant.models import ConversationEvent, Escalation

    world.clock.now = utcnow()
    ticket = await world.hand_over("web-anna")
    hour_ago = world.clock.now - timedelta(hours=1)
    with session_scope(world.engine) as session:  # the handover was an hour ago
        session.execute(update(Escalation).values(created_at=hour_ago))
        session.execute(update(ConversationEvent).where(
            ConversationEvent.conversation_id == ticket.conversation_id).values(
            timestamp=hour_ago))
    await handle_message(world.runtime, channel="web", sender="web-anna",
                         text="/greet", identity=Identity(world.drivers["anna"], True, "web"))

    with session_scope(world.engine) as session:
        report = reports.containment(session, period=reports.Period(
            world.clock.now - timedelta(minutes=5), utcnow() + timedelta(minutes=5)))

    assert report["overall"] == {"sessions": 1, "contained": 0, "rate": 0.0}
