"""Conversation tests in Rasa's test-story format, played through the real assistant.

A test story (``assistant/intents/tests/test_stories*.yml``) is Rasa's ``stories:`` format
with end-to-end user steps::

    - story: a stuck cable is released
      metadata: {driver: anna, world: anna_finished_on_connector_2}
      steps:
      - user: |
          kabeln sitter fast
        intent: cable_stuck
      - action: cable_stuck_form
      - active_loop: cable_stuck_form
      - action: utter_ask_station_id
      - user: |
          SE-TST-HAMN-01
      - slot_was_set:
        - station_id: SE-TST-HAMN-01
      ...

:class:`StoryRunner` sends each ``user`` text through :func:`assistant.service.handle_message`
(the real NLU, dialogue engine, actions and database) and compares what the conversation
recorded for that turn:

- ``intent`` (and ``entities``, when given) with the NLU's parse of the text; a user step
  without ``intent`` (an answer to a form's question) checks none;
- the ``action`` steps up to the next user step with the turn's actions, exactly and in
  order: every action that ran (forms included) and every response the bot sent, by its
  template name, as Rasa lists ``utter_*`` responses as actions;
- ``slot_was_set`` with the slots the turn set (the last value of each);
- ``active_loop`` with the forms the turn activated or ended (``null``), in order.

A story stops at its first turn that differs. ``metadata`` is for whoever sets the world up
(tests/assistant/test_stories.py): who is writing, what happened before, what to check in
the world afterwards. Rasa's ``bot:`` text steps and ``checkpoint``/``or`` are not supported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session, col, select

from assistant import service
from assistant.models import Conversation, ConversationEvent

STORIES_DIR = Path(__file__).resolve().parent / "intents" / "tests"
# Bookkeeping actions a Rasa test story never lists.
UNLISTED_ACTIONS = frozenset({"action_listen", "action_session_start"})


@dataclass(frozen=True)
class ExpectedTurn:
    """One user step and what should follow it."""

    text: str
    intent: str | None = None
    entities: tuple[tuple[str, Any], ...] = ()
    actions: tuple[str, ...] = ()
    slots: tuple[tuple[str, Any], ...] = ()
    loops: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class TestStory:
    name: str
    turns: tuple[ExpectedTurn, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    __test__ = False  # not a pytest class


@dataclass
class PlayedTurn:
    """What one user message did: the parse, the actions and responses, slots, loops."""

    text: str
    intent: str | None
    entities: list[dict[str, Any]]
    actions: list[str]
    slots: dict[str, Any]
    loops: list[str | None]
    messages: list[dict[str, Any]]

    @property
    def texts(self) -> list[str]:
        return [str(m.get("text") or "") for m in self.messages]


@dataclass
class StoryResult:
    story: TestStory
    turns: list[PlayedTurn] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    conversation_id: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        """The story as played, turn by turn, with what differed."""
        lines = [f"story: {self.story.name} ({self.story.source})"]
        for n, turn in enumerate(self.turns, 1):
            lines.append(f"  {n}. user: {turn.text!r} -> intent {turn.intent}, "
                         f"entities {[(e.get('entity'), e.get('value')) for e in turn.entities]}")
            lines.append(f"     actions: {turn.actions}")
            if turn.slots:
                lines.append(f"     slots: {turn.slots}")
            for text in turn.texts:
                lines.append(f"     bot: {text!r}")
        lines += [f"  FAILED: {failure}" for failure in self.failures]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading stories


def _pairs(items: Any, what: str, story: str) -> tuple[tuple[str, Any], ...]:
    pairs: list[tuple[str, Any]] = []
    for item in items or []:
        if isinstance(item, dict) and len(item) == 1:
            pairs.append(next(iter(item.items())))
        elif isinstance(item, str):
            pairs.append((item, ...))  # any value
        else:
            raise ValueError(f"{story}: a {what} item is one 'name: value', not {item!r}")
    return tuple(pairs)


def parse_story(item: dict[str, Any], source: str = "") -> TestStory:
    """One ``- story:`` item of a test-story file."""
    name = str(item.get("story") or "")
    if not name:
        raise ValueError(f"{source}: a story without a name")
    turns: list[dict[str, Any]] = []
    for step in item.get("steps") or []:
        if "user" in step:
            turns.append({"text": str(step["user"]).strip(), "intent": step.get("intent"),
                          "entities": _pairs(step.get("entities"), "entities", name),
                          "actions": [], "slots": [], "loops": []})
            continue
        if not turns:
            if step.get("action") in UNLISTED_ACTIONS:
                continue
            raise ValueError(f"{name}: a test story starts with a user step, not {step!r}")
        turn = turns[-1]
        if "action" in step:
            if step["action"] not in UNLISTED_ACTIONS:
                turn["actions"].append(str(step["action"]))
        elif "slot_was_set" in step:
            turn["slots"].extend(_pairs(step["slot_was_set"], "slot_was_set", name))
        elif "active_loop" in step:
            turn["loops"].append(step["active_loop"])
        else:
            raise ValueError(f"{name}: unsupported test-story step {step!r}")
    if not turns:
        raise ValueError(f"{name}: no user steps")
    return TestStory(
        name=name, metadata=dict(item.get("metadata") or {}), source=source,
        turns=tuple(ExpectedTurn(text=t["text"], intent=t["intent"], entities=t["entities"],
                                 actions=tuple(t["actions"]), slots=tuple(t["slots"]),
                                 loops=tuple(t["loops"])) for t in turns))


def load_stories(directory: Path = STORIES_DIR, pattern: str = "test_stories*.yml"
                 ) -> list[TestStory]:
    """Every test story of the files matching ``pattern``, in file order."""
    stories: list[TestStory] = []
    for path in sorted(directory.glob(pattern)):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        stories += [parse_story(item, path.name) for item in data.get("stories") or []]
    names = [s.name for s in stories]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"test stories with the same name: {duplicates}")
    return stories


# ---------------------------------------------------------------- playing them


def _same(actual: Any, expected: Any) -> bool:
    if expected is ...:
        return True
    if actual == expected:
        return True
    try:
        return float(actual) == float(expected)
    except (TypeError, ValueError):
        return str(actual) == str(expected)


def _turn_record(events: list[ConversationEvent]) -> tuple[dict[str, Any], list[str],
                                                           dict[str, Any], list[str | None]]:
    """(the user event's data, the action trace, slots set, loops) of one turn's events."""
    user: dict[str, Any] = {}
    actions: list[str] = []
    slots: dict[str, Any] = {}
    loops: list[str | None] = []
    for event in events:
        data = event.data
        kind = data.get("event")
        if kind == "user" and not user:
            user = data
        elif kind == "action" and data.get("name") not in UNLISTED_ACTIONS:
            actions.append(str(data.get("name")))
        elif kind == "bot":
            name = (data.get("metadata") or {}).get("utter_action")
            actions.append(str(name) if name else "bot")
        elif kind == "slot":
            slots[str(data.get("name"))] = data.get("value")
        elif kind == "active_loop":
            loops.append(data.get("name"))
    return user, actions, slots, loops


def compare(expected: ExpectedTurn, played: PlayedTurn) -> list[str]:
    """How a played turn differs from the story's step; empty when it does not."""
    where = f"after {expected.text!r}"
    problems = []
    if expected.intent is not None and played.intent != expected.intent:
        problems.append(f"{where}: intent {played.intent}, the story says {expected.intent}")
    for name, value in expected.entities:
        if not any(e.get("entity") == name and _same(e.get("value"), value)
                   for e in played.entities):
            problems.append(f"{where}: no entity {name}={value!r} in {played.entities}")
    if list(expected.actions) != played.actions:
        problems.append(f"{where}: actions {played.actions}, the story says "
                        f"{list(expected.actions)}")
    for name, value in expected.slots:
        if name not in played.slots:
            problems.append(f"{where}: slot {name} was not set (set: {played.slots})")
        elif not _same(played.slots[name], value):
            problems.append(f"{where}: slot {name} = {played.slots[name]!r}, the story says "
                            f"{value!r}")
    remaining = iter(played.loops)
    if not all(any(loop == wanted for loop in remaining) for wanted in expected.loops):
        problems.append(f"{where}: active loops {played.loops}, the story says "
                        f"{list(expected.loops)}")
    return problems


Submit = Callable[[Coroutine[Any, Any, list[dict[str, Any]]]], Awaitable[list[dict[str, Any]]]]


async def _direct(coroutine: Coroutine[Any, Any, list[dict[str, Any]]]
                  ) -> list[dict[str, Any]]:
    return await coroutine


@dataclass
class StoryRunner:
    """Plays test stories against a running assistant (a ``chargedesk.app.Runtime``).

    ``submit`` runs each turn's coroutine where the runtime's connections live: a test that
    serves the app in another thread passes one that schedules it on that thread's loop.
    """

    runtime: Any
    channel: str = "web"
    submit: Submit = _direct

    async def play(self, story: TestStory, *, sender: str,
                   identity: service.Identity | None = None) -> StoryResult:
        result = StoryResult(story)
        seen = self._last_event_id(sender)
        for expected in story.turns:
            messages = await self.submit(service.handle_message(
                self.runtime, channel=self.channel, sender=sender, text=expected.text,
                identity=identity))
            conversation_id, events = self._events_after(sender, seen)
            result.conversation_id = conversation_id
            if events:
                seen = events[-1].id or seen
            user, actions, slots, loops = _turn_record(events)
            parse = user.get("parse_data") or {}
            played = PlayedTurn(
                text=expected.text, intent=(parse.get("intent") or {}).get("name"),
                entities=list(parse.get("entities") or []), actions=actions, slots=slots,
                loops=loops, messages=messages)
            result.turns.append(played)
            problems = compare(expected, played)
            if problems:
                result.failures += problems
                break
        return result

    def _conversation(self, session: Session, sender: str) -> Conversation | None:
        return session.exec(select(Conversation).where(
            Conversation.channel == self.channel, Conversation.sender == sender)).first()

    def _last_event_id(self, sender: str) -> int:
        with Session(self.runtime.engine) as session:
            row = self._conversation(session, sender)
            if row is None:
                return 0
            last = session.exec(select(ConversationEvent.id)
                                .where(ConversationEvent.conversation_id == row.id)
                                .order_by(col(ConversationEvent.id).desc())).first()
            return last or 0

    def _events_after(self, sender: str, after: int
                      ) -> tuple[int | None, list[ConversationEvent]]:
        with Session(self.runtime.engine) as session:
            row = self._conversation(session, sender)
            if row is None:
                return None, []
            events = session.exec(select(ConversationEvent)
                                  .where(ConversationEvent.conversation_id == row.id,
                                         col(ConversationEvent.id) > after)
                                  .order_by(col(ConversationEvent.id))).all()
            return row.id, list(events)
