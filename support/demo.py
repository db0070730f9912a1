"""The support desk of the demo network: teams with Swedish business hours, agents, SLA
policies, canned responses in Swedish and English, and three drivers already handed over by
the assistant (on the web chat, by SMS and by e-mail), so ``/agent`` has something to show.

Agents' passwords are new random ones at every demo start (printed with the operator key):
the demo ships no secret.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from assistant.dialogue import store
from billing_api.models import Driver
from chargedesk.db import session_scope
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from support import config, service
from support.auth import set_password
from support.models import AgentRole, SupportAgent

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
HOLIDAYS = ["2026-12-24", "2026-12-25", "2026-12-26", "2026-12-31", "2027-01-01",
            "2027-01-06"]
TEAMS = [
    {"key": "technical", "name": "Teknisk support", "categories": ["technical", "account",
                                                                  "general"],
     "business_hours": {**{d: [["07:00", "22:00"]] for d in WEEKDAYS},
                        "sat": [["09:00", "18:00"]], "sun": [["09:00", "18:00"]],
                        "closed": HOLIDAYS}, "reassign_after_minutes": 5},
    {"key": "billing", "name": "Fakturor och betalningar", "categories": ["billing"],
     "business_hours": {**{d: [["08:00", "17:00"]] for d in WEEKDAYS}, "closed": HOLIDAYS},
     "reassign_after_minutes": 15},
]
AGENTS = [  # username, name, role, teams
    ("lisa", "Lisa Ek", AgentRole.agent, ["technical"]),
    ("omar", "Omar Haddad", AgentRole.agent, ["technical"]),
    ("maja", "Maja Holm", AgentRole.agent, ["billing"]),
    ("sara", "Sara Nyström", AgentRole.supervisor, ["technical", "billing"]),
]
POLICIES: list[dict[str, Any]] = [
    {"name": "Standard", "first_response_minutes": 30, "next_response_minutes": 60,
     "resolution_minutes": 8 * 60, "warn_before_minutes": 10, "business_hours": True},
    {"name": "Urgent: a driver stuck at a station", "priority": "urgent",
     "first_response_minutes": 10, "next_response_minutes": 15, "resolution_minutes": 120,
     "warn_before_minutes": 3, "business_hours": False},
    {"name": "Billing", "team": "billing", "first_response_minutes": 4 * 60,
     "next_response_minutes": 8 * 60, "resolution_minutes": 3 * 24 * 60,
     "warn_before_minutes": 30, "business_hours": True},
]
CANNED = [
    ("greeting", "sv", "Hälsning",
     "Hej {driver_first_name}! Jag heter {agent_name} och tar hand om ditt ärende."),
    ("greeting", "en", "Greeting",
     "Hi {driver_first_name}! I'm {agent_name} and I'm looking into this for you."),
    ("unlocked", "sv", "Kabeln upplåst",
     "Nu har jag låst upp uttag {connector} på {station_id}. Dra ut kabeln inom en minut, "
     "annars låser den sig igen."),
    ("unlocked", "en", "Cable unlocked",
     "I have unlocked connector {connector} at {station_id}. Please pull the cable out "
     "within a minute, or it locks again."),
    ("restarted", "sv", "Station omstartad",
     "Jag har startat om {station_id}. Vänta två minuter och försök sedan igen."),
    ("restarted", "en", "Station restarted",
     "I have restarted {station_id}. Please wait two minutes and try again."),
    ("credited", "sv", "Kreditering",
     "Jag har krediterat dig och du får en kreditfaktura per e-post. Förlåt för besväret!"),
    ("credited", "en", "Credited",
     "I have credited you; the credit note is on its way by e-mail. Sorry for the trouble!"),
    ("more_info", "sv", "Behöver mer information",
     "Kan du berätta vilken station och vilket uttag det gäller, och ungefär när?"),
    ("more_info", "en", "Need more information",
     "Could you tell me which station and connector, and roughly when?"),
    ("closing", "sv", "Avslut",
     "Skönt att det löste sig! Hör av dig om något mer dyker upp. /{agent_name}"),
    ("closing", "en", "Closing",
     "Glad that's sorted! Get in touch if anything else comes up. /{agent_name}"),
]


def seed(session: Session) -> bool:
    """Teams, agents (with throw-away passwords), policies and canned responses, once.
    False when the desk was set up already."""
    if not config.unused(session):
        return False
    agents: dict[str, int] = {}
    for username, name, role, _ in AGENTS:
        agent = config.add_agent(session, username=username, name=name, role=role,
                                 password=secrets.token_urlsafe(16),
                                 email=f"{username}@chargedesk.example")
        agents[username] = agent.id or 0
    teams: dict[str, int] = {}
    for spec in TEAMS:
        members = [agents[u] for u, _, _, team_keys in AGENTS if spec["key"] in team_keys]
        team = config.create_team(session, members=members, **spec)
        teams[spec["key"]] = team.id or 0
    for spec in POLICIES:
        values = {k: v for k, v in spec.items() if k != "team"}
        if spec.get("team"):
            values["team_id"] = teams[spec["team"]]
        config.save_policy(session, values=values)
    for shortcut, language, title, body in CANNED:
        config.save_canned(session, values={"shortcut": shortcut, "language": language,
                                            "title": title, "body": body})
    return True


def fresh_passwords(session: Session) -> list[tuple[str, str, str]]:
    """New random passwords for the demo agents: (username, role, password), to print."""
    printed = []
    for username, _, role, _ in AGENTS:
        agent = session.exec(select(SupportAgent).where(
            SupportAgent.username == username)).first()
        if agent is None:
            continue
        password = secrets.token_urlsafe(9)
        set_password(session, agent=agent, password=password)
        printed.append((username, str(role), password))
    return printed


# ---------------------------------------------------------------- handed-over drivers

STORIES = [
    {"channel": "web", "sender": "web-demo-anna", "driver": "anna.lindqvist@example.se",
     "language": "sv", "intent": "cable_stuck", "reason": "action_failed",
     "slots": {"station_id": "SE-STO-CITY-01", "connector": 2.0},
     "lines": [
         ("user", "kabeln sitter fast på SE-STO-CITY-01 uttag 2", "cable_stuck"),
         ("bot", "Bara för att bekräfta: ska jag låsa upp uttag 2 på SE-STO-CITY-01?", None),
         ("user", "ja", "affirm"),
         ("bot", "Laddstationen SE-STO-CITY-01 kunde inte göra det. Jag kopplar dig till en "
                 "person som kan hjälpa dig vidare.", None)]},
    {"channel": "sms", "sender": "+46709876543", "driver": "erik.johansson@example.se",
     "language": "sv", "intent": "dispute_charge", "reason": "dispute",
     "slots": {},
     "lines": [
         ("user", "Varför drogs 180 kr för laddningen i går? Jag laddade bara 10 minuter",
          "dispute_charge"),
         ("bot", "Jag har registrerat ditt ärende om laddningen. En handläggare beslutar och "
                 "hör av sig.", None),
         ("user", "ok, men jag vill prata med en människa", "human_handoff")]},
]


# An English driver by e-mail, in a thread of her own (her replies reach it through its
# reply+ address; an agent's reply goes to her address in that thread).
EMAIL_STORY: dict[str, Any] = {
    "channel": "email", "driver": "sara.berg@example.com", "subject": "Charge at Odenplan",
    "language": "en", "intent": "explain_cost", "reason": "asked", "slots": {},
    "lines": [
        ("user", "Hi, why was I charged 89 kr at Odenplan on Sunday? I only charged for "
                 "twenty minutes.", "explain_cost"),
        ("bot", "I could not tell which session you mean. Which station was it, and when?",
         None),
        ("user", "I don't know the station number. Can I talk to a person instead?",
         "human_handoff")]}


def _email_thread(session: Session, story: dict[str, Any]) -> str | None:
    """The token of the demo driver's new e-mail thread (the conversation's sender); None
    when the thread was made before or the driver is not in the network."""
    from assistant.channels.email.service import new_token
    from assistant.channels.email_models import EmailThread

    driver = session.exec(select(Driver).where(Driver.email == story["driver"])).first()
    if driver is None or session.exec(select(EmailThread.id).where(
            EmailThread.address == story["driver"],
            EmailThread.subject == story["subject"])).first() is not None:
        return None
    thread = EmailThread(token=new_token(), address=story["driver"], subject=story["subject"],
                         driver_id=driver.id)
    session.add(thread)
    session.flush()
    return thread.token


def _hand_over(session: Session, story: dict[str, Any], *, settings: Settings) -> int | None:
    driver = session.exec(select(Driver).where(Driver.email == story["driver"])).first()
    if driver is None:
        return None
    expiry = timedelta(minutes=settings.conversation_expiry_minutes)
    snapshot = store.load_conversation(
        session, channel=story["channel"], sender=story["sender"], initial_slots={},
        expiry=expiry, identity=(driver.id or 0, True))
    snapshot.language = story["language"]
    snapshot.slots.update(story["slots"], language=story["language"])
    for kind, text, intent in story["lines"]:
        if kind == "user":
            snapshot.record({"event": "user", "text": text, "input_channel": story["channel"],
                             "parse_data": {"intent": {"name": intent, "confidence": 0.93},
                                            "entities": [], "text": text,
                                            "language": story["language"]}})
        else:
            snapshot.record({"event": "bot", "text": text, "data": {}, "metadata": {}})
    snapshot.latest_intent = story["intent"]
    snapshot.paused = True
    snapshot.record({"event": "pause"})
    store.save_turn(session, snapshot=snapshot, expiry=expiry)
    session.flush()
    row = store.record_escalation(session, conversation_id=snapshot.id,
                                  reason=story["reason"], intent=story["intent"],
                                  slots=snapshot.slots, settings=settings)
    return row.id


def seed_tickets(engine: Engine, *, settings: Settings) -> int:
    """The demo's handed-over drivers, as tickets; once."""
    opened = 0
    for story in STORIES:
        with session_scope(engine) as session:
            if store.get_conversation(session, channel=story["channel"],
                                      sender=story["sender"]) is not None:
                continue
            escalation_id = _hand_over(session, story, settings=settings)
        if escalation_id is None:
            continue
        with session_scope(engine) as session:
            service.open_from_escalation(session, escalation_id=escalation_id, now=utcnow(),
                                         settings=settings)
        opened += 1
    with session_scope(engine) as session:
        token = _email_thread(session, EMAIL_STORY)
        escalation_id = None if token is None else _hand_over(
            session, {**EMAIL_STORY, "sender": token}, settings=settings)
    if escalation_id is not None:
        with session_scope(engine) as session:
            service.open_from_escalation(session, escalation_id=escalation_id, now=utcnow(),
                                         settings=settings)
        opened += 1
    return opened


def prepare(engine: Engine, *, settings: Settings) -> list[tuple[str, str, str]]:
    """Everything the desk shows in the demo; the agents' new passwords to print."""
    with session_scope(engine) as session:
        seed(session)
    seed_tickets(engine, settings=settings)
    with session_scope(engine) as session:
        return fresh_passwords(session)
