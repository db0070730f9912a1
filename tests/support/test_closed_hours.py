"""Outside a team's business hours the assistant's handoff turn tells the driver, in their
language and on their channel, when a person will answer: the team's next opening in
Europe/Stockholm, across evenings, weekends, holidays and the change to winter time, by the
team that will take the ticket (on SQLite and PostgreSQL, through the real assistant)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from assistant.service import Identity, handle_message
from chargedesk.db import session_scope
from support import config
from tests.support.conftest import OFFICE, Desk

ZONE = ZoneInfo("Europe/Stockholm")
BILLING_HOURS = {**{d: [["09:00", "12:00"], ["13:00", "16:00"]]
                    for d in ("mon", "tue", "wed", "thu", "fri")},
                 "closed": ["2026-12-24", "2026-12-25", "2026-12-26"]}


def office_hours(world: Desk) -> None:
    with session_scope(world.engine) as session:
        config.update_team(session, team_id=world.teams["technical"],
                           changes={"business_hours": OFFICE})
        config.update_team(session, team_id=world.teams["billing"],
                           changes={"business_hours": BILLING_HOURS})


async def hand_over(world: Desk, sender: str, text: str, channel: str = "web"
                    ) -> list[str]:
    replies = await handle_message(world.runtime, channel=channel, sender=sender, text=text,
                                   identity=Identity(world.drivers["anna"], True, channel))
    await world.runtime.bus.join()
    return [str(r.get("text")) for r in replies]


@pytest.mark.parametrize(("local", "swedish", "english"), [
    # Friday after closing: Monday morning.
    (datetime(2026, 12, 4, 17, 0), "på måndag kl. 08:00", "on Monday at 08:00"),
    # Saturday noon and Sunday evening: Monday, which on Sunday is tomorrow.
    (datetime(2026, 12, 5, 12, 0), "på måndag kl. 08:00", "on Monday at 08:00"),
    (datetime(2026, 12, 6, 21, 30), "i morgon kl. 08:00", "tomorrow at 08:00"),
    # Early on a weekday: later today.
    (datetime(2026, 12, 8, 6, 15), "i dag kl. 08:00", "today at 08:00"),
    # The Saturday before the clocks go back: still 08:00 on Monday, in winter time.
    (datetime(2026, 10, 24, 10, 0), "på måndag kl. 08:00", "on Monday at 08:00"),
])
async def test_closed_the_driver_hears_the_next_opening_in_their_language(
        world: Desk, nlu: Any, local: datetime, swedish: str, english: str) -> None:
    office_hours(world)
    world.clock.now = local.replace(tzinfo=ZONE)

    svenska = await hand_over(world, "web-sv", "jag vill prata med en människa")
    english_ = await hand_over(world, "web-en", "I want to talk to a human please")

    assert any(f"En person svarar dig {swedish} (svensk tid)" in t for t in svenska), svenska
    assert any(f"A person will answer you {english} (Swedish time)" in t
               for t in english_), english_


async def test_the_note_follows_the_team_that_takes_the_ticket_and_its_holidays(
        world: Desk) -> None:
    office_hours(world)
    # Wednesday 23 December at 12:30: Technical is open, Billing at lunch.
    world.clock.now = datetime(2026, 12, 23, 12, 30, tzinfo=ZONE)

    technical = await hand_over(world, "web-tech", '/cable_stuck{"station_id": "SE-X-01"}')
    assert not any("kundtjänst har stängt" in t for t in technical)
    await hand_over(world, "web-bill", "/dispute_charge")
    billing = await hand_over(world, "web-bill", "/human_handoff")
    assert any("En person svarar dig i dag kl. 13:00" in t for t in billing), billing

    # At 16:30 Billing has closed for Christmas: it opens again on Monday the 28th.
    world.clock.now = datetime(2026, 12, 23, 16, 30, tzinfo=ZONE)
    await hand_over(world, "web-bill-2", "/dispute_charge")
    later = await hand_over(world, "web-bill-2", "/human_handoff")
    assert any("En person svarar dig på måndag kl. 09:00" in t for t in later), later


async def test_the_note_goes_out_on_the_drivers_channel(world: Desk) -> None:
    office_hours(world)
    world.clock.now = datetime(2026, 12, 5, 12, 0, tzinfo=ZONE)  # Saturday

    replies = await hand_over(world, "+46701234567", "/human_handoff", channel="sms")

    assert any("En person svarar dig på måndag kl. 08:00" in t for t in replies)
    ticket = world.ticket_of("+46701234567")
    assert ticket.channel == "sms" and ticket.assignee_id is None
