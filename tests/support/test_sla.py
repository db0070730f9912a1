"""SLA timers, reassignment and snoozes on a clock the test moves, on SQLite and PostgreSQL:
a warning before a target, then a breach escalated to a supervisor; business hours stop the
clock; a ticket nobody answers goes to the next online agent; and the APScheduler jobs run
the same timers on the desk's clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import select

from chargedesk.db import run_in_session, session_scope
from support import config, scheduled, service
from support.auth import Actor
from support.models import Priority, SupportTeam, TicketEvent, TicketStatus
from tests.support.conftest import OFFICE, Desk

ZONE = ZoneInfo("Europe/Stockholm")


def kinds(world: Desk, ticket_id: int) -> list[str]:
    with session_scope(world.engine) as session:
        return [e.kind for e in session.exec(select(TicketEvent).where(
            TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)).all()]  # type: ignore[arg-type]


def agent(world: Desk, username: str) -> Actor:
    agent_id = world.agents[username]
    return Actor(role="agent", name=username.title(), label=f"agent:{agent_id}",
                 agent_id=agent_id)


async def reply(world: Desk, ticket_id: int, username: str) -> None:
    target = await run_in_session(world.engine, service.reply_target, ticket_id=ticket_id)
    await run_in_session(world.engine, service.record_reply, target=target, text="Hej!",
                         actor=agent(world, username), now=world.clock.now,
                         settings=world.settings)


async def test_a_first_reply_target_warns_then_escalates_to_a_supervisor(world: Desk) -> None:
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    created = world.clock.now
    assert ticket.first_response_due_at == created + timedelta(minutes=30)

    world.clock.advance(minutes=19)
    world.online("alice")
    assert (await world.desk.run_timers()).warned == 0
    world.clock.advance(minutes=2)  # 10 minutes before: a warning, once
    world.online("alice")
    assert (await world.desk.run_timers()).warned == 1
    assert (await world.desk.run_timers()).warned == 0
    assert world.ticket(ticket.id).sla_state == {"first_response": "warned"}

    world.clock.advance(minutes=10)  # past due
    report = await world.desk.run_timers()

    assert report.breached == 1
    breached = world.ticket(ticket.id)
    assert breached.sla_state == {"first_response": "breached"}
    assert breached.escalated_at == world.clock.now
    assert breached.supervisor_id == world.agents["sam"]
    assert breached.priority == Priority.high  # one step up from normal
    assert kinds(world, ticket.id).count("sla_warning") == 1
    assert kinds(world, ticket.id).count("sla_breach") == 1
    assert (await world.desk.run_timers()).breached == 0  # not twice


async def test_the_next_reply_clock_runs_from_the_drivers_message(world: Desk, nlu: object) -> None:
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    world.clock.advance(minutes=5)
    await reply(world, ticket.id, "alice")
    assert world.ticket(ticket.id).first_response_due_at is None

    from assistant.service import Identity, handle_message

    await handle_message(world.runtime, channel="web", sender="web-anna", text="Det hjälpte inte",
                         identity=Identity(world.drivers["anna"], True, "web"))
    await world.read_inbox()
    written = world.ticket(ticket.id).last_driver_message_at
    due = world.ticket(ticket.id).next_response_due_at
    assert written is not None and due == written + timedelta(minutes=60)

    world.clock.now = due + timedelta(seconds=1)
    world.online("alice")
    report = await world.desk.run_timers()
    assert report.breached == 1
    assert world.ticket(ticket.id).sla_state["next_response"] == "breached"

    await reply(world, ticket.id, "alice")  # answered: the clock stops until the next message
    assert world.ticket(ticket.id).next_response_due_at is None
    assert "next_response" not in world.ticket(ticket.id).sla_state


async def test_outside_business_hours_the_clock_waits_for_the_team_to_open(
        world: Desk) -> None:
    with session_scope(world.engine) as session:
        config.update_team(session, team_id=world.teams["technical"],
                           changes={"business_hours": OFFICE})
    world.clock.now = datetime(2026, 12, 4, 16, 50, tzinfo=ZONE)  # Friday, 10 min to close

    ticket = await world.hand_over("web-anna")

    monday = datetime(2026, 12, 7, 8, 20, tzinfo=ZONE)  # 10 min on Friday, 20 on Monday
    assert ticket.first_response_due_at == monday
    world.clock.now = datetime(2026, 12, 5, 12, 0, tzinfo=ZONE)
    assert (await world.desk.run_timers()).breached == 0
    world.clock.now = monday + timedelta(minutes=1)
    assert (await world.desk.run_timers()).breached == 1


async def test_closed_teams_tell_the_driver_when_a_person_will_answer(world: Desk) -> None:
    with session_scope(world.engine) as session:
        config.update_team(session, team_id=world.teams["technical"],
                           changes={"business_hours": OFFICE})
    world.clock.now = datetime(2026, 12, 4, 18, 30, tzinfo=ZONE)  # Friday evening

    from assistant.service import Identity, handle_message

    replies = await handle_message(world.runtime, channel="web", sender="web-anna",
                                   text="/human_handoff",
                                   identity=Identity(world.drivers["anna"], True, "web"))

    texts = [r["text"] for r in replies]
    assert texts[0].startswith("Jag lämnar över dig")
    assert "En person svarar dig på måndag kl. 08:00" in texts[1]

    world.clock.now = datetime(2026, 12, 1, 10, 0, tzinfo=ZONE)  # open: nothing added
    replies = await handle_message(world.runtime, channel="web", sender="web-erik",
                                   text="/human_handoff",
                                   identity=Identity(world.drivers["erik"], True, "web"))
    assert len(replies) == 1
    await world.runtime.bus.join()


async def test_no_first_reply_in_time_moves_the_ticket_to_the_next_online_agent(
        world: Desk) -> None:
    world.online("alice", "bob")
    ticket = await world.hand_over("web-anna")
    assert ticket.assignee_id == world.agents["alice"]

    world.clock.advance(minutes=4)
    world.online("alice", "bob")
    assert (await world.desk.run_timers()).reassigned == 0
    world.clock.advance(minutes=2)  # the team's five minutes are up
    world.online("alice", "bob")
    assert (await world.desk.run_timers()).reassigned == 1
    moved = world.ticket(ticket.id)
    assert moved.assignee_id == world.agents["bob"] and moved.reassignments == 1

    await reply(world, ticket.id, "bob")  # answered: it stays
    world.clock.advance(minutes=30)
    world.online("alice", "bob")
    assert (await world.desk.run_timers()).reassigned == 0
    assert world.ticket(ticket.id).assignee_id == world.agents["bob"]


async def test_an_agent_gone_offline_without_replying_gives_the_ticket_back_to_the_queue(
        world: Desk) -> None:
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    world.clock.advance(minutes=6)
    # Alice's console stopped reporting (closed tab): her presence ran out.
    world.online("alice", at=world.clock.now - timedelta(minutes=5))

    await world.desk.run_timers()

    assert world.ticket(ticket.id).assignee_id is None


async def test_a_snoozed_ticket_wakes_when_its_time_is_up(world: Desk) -> None:
    ticket = await world.hand_over("web-anna")
    actor = Actor(role="operator", name="ops", label="operator:ops")
    await run_in_session(world.engine, service.set_status, ticket_id=ticket.id,
                         status=TicketStatus.snoozed, actor=actor, now=world.clock.now,
                         settings=world.settings,
                         snooze_until=world.clock.now + timedelta(hours=1))
    world.clock.advance(minutes=59)
    assert (await world.desk.run_timers()).woken == 0
    world.clock.advance(minutes=2)
    assert (await world.desk.run_timers()).woken == 1
    assert world.ticket(ticket.id).status == TicketStatus.open


async def test_the_scheduler_runs_the_timers_on_the_desks_clock(world: Desk) -> None:
    world.runtime.settings = world.settings.model_copy(update={
        "support_sla_tick_seconds": 0.05, "support_poll_seconds": 0.05})
    world.online("alice")
    ticket = await world.hand_over("web-anna")
    scheduler = scheduled.build_scheduler(world.desk)
    scheduler.start()
    try:
        world.clock.advance(minutes=31)  # no wall time passes: only the desk's clock moves
        for _ in range(400):
            if world.ticket(ticket.id).sla_state.get("first_response") == "breached":
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.shutdown(wait=False)
    assert world.ticket(ticket.id).escalated_at == world.clock.now
    with session_scope(world.engine) as session:
        team = session.get(SupportTeam, world.teams["technical"])
        assert team is not None


async def test_reassignment_goes_round_robin_to_online_agents_only(world: Desk) -> None:
    # Technical has Alice, Bob and Sam; Bob's console is closed.
    world.online("alice", "sam")
    first = await world.hand_over("web-anna")
    assert first.assignee_id == world.agents["alice"]

    world.clock.advance(minutes=6)
    world.online("alice", "sam")
    assert (await world.desk.run_timers()).reassigned == 1
    assert world.ticket(first.id).assignee_id == world.agents["sam"]  # Bob skipped

    # The round goes on from Sam: the next new ticket is Alice's again.
    second = await world.hand_over("web-erik", driver="erik")
    assert second.assignee_id == world.agents["alice"]
    world.online("alice", "bob", "sam")  # Bob is back
    third = await world.hand_over("web-someone", driver=None)
    assert third.assignee_id == world.agents["bob"]

    # Sam does not answer either: the ticket moves on, never back to Sam himself.
    world.clock.advance(minutes=6)
    world.online("alice", "bob", "sam")
    report = await world.desk.run_timers()
    assert world.ticket(first.id).assignee_id not in (None, world.agents["sam"])
    assert world.ticket(first.id).reassignments == 2
    assert report.reassigned == 3  # the second and third waited six minutes too
    assert kinds(world, first.id).count("assigned") == 3


async def test_a_breach_puts_the_ticket_in_the_supervisors_escalated_list(world: Desk) -> None:
    import httpx

    from chargedesk.models import Role
    from tests.conftest import make_key

    world.online("alice", "sam")
    ticket = await world.hand_over("web-anna")
    other = await world.hand_over("web-erik", driver="erik")
    target = await run_in_session(world.engine, service.reply_target, ticket_id=other.id)
    await run_in_session(world.engine, service.record_reply, target=target, text="Hej!",
                         actor=agent(world, "sam"), now=world.clock.now,
                         settings=world.settings)

    world.clock.advance(minutes=31)
    world.online("alice", "sam")
    assert (await world.desk.run_timers()).breached == 1

    key = make_key(world.engine, Role.operator)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=world.app),
                                 base_url="http://testserver",
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        listed = await http.get("/api/v1/support/tickets",
                                params={"supervisor": str(world.agents["sam"])})
        assert [t["id"] for t in listed.json()["tickets"]] == [ticket.id]
        assert listed.json()["tickets"][0]["supervisor_id"] == world.agents["sam"]
        mine = await http.get("/api/v1/support/tickets", params={"supervisor": "me"})
        assert mine.status_code == 422  # an API key is nobody's supervisor
    assert world.ticket(ticket.id).escalated_at is not None
    assert world.ticket(other.id).escalated_at is None
