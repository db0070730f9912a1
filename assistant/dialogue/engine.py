"""One turn of a conversation: slots from the message, then the first policy that applies.

In order: a paused conversation only records the message; a pending confirmation takes
yes/no; an active form takes the value it asked for (validating it, re-asking on a bad one);
"and the one before that?" repeats the last account question one further back; otherwise the
rules and stories predict actions. Actions run in-process through the actions registry
(Rasa's action-server protocol); their events change the state and their responses are
rendered from the domain's templates in the conversation's language.

What the engine knows beyond the YAML is the machinery Rasa also builds in: forms, the
confirmation step (Rasa would need a custom action for it), two-stage fallback, handoff.
"""

from __future__ import annotations

import importlib
import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import structlog

from assistant.dialogue import builtin_forms
from assistant.dialogue.domain import Domain
from assistant.dialogue.policy import Policy
from assistant.dialogue.store import IDENTITY_SLOTS, Snapshot

log = structlog.get_logger(__name__)

LISTEN = "action_listen"
HANDOFF_ACTION = "action_human_handoff"
HANDOFF_INTENT = "human_handoff"
FALLBACK_INTENT = "nlu_fallback"
FALLBACK_ACTION = "action_two_stage_fallback"
# Intents that never count as "the driver asked something else" inside a form or as topic.
SMALL_TALK = frozenset({"affirm", "deny", FALLBACK_INTENT, "greet", "thanks", "goodbye",
                        HANDOFF_INTENT, "out_of_scope"})
SUGGESTIONS = 3
MAX_ACTIONS_PER_TURN = 10
PAYLOAD = re.compile(r"^/(?P<intent>[A-Za-z0-9_]+)(?P<entities>\{.*\})?\s*$", re.S)


def registry() -> ModuleType | None:
    """The actions registry, once the actions package provides it."""
    try:
        return importlib.import_module("assistant.actions.registry")
    except ModuleNotFoundError as exc:
        if exc.name in ("assistant.actions.registry", "assistant.actions"):
            return None
        raise


def parse_payload(text: str) -> dict[str, Any] | None:
    """A quick-reply payload (``/intent`` or ``/intent{"entity": "value"}``) as a parse
    result, without NLU; None when ``text`` is not one."""
    match = PAYLOAD.match(text.strip())
    if match is None:
        return None
    entities: list[dict[str, Any]] = []
    if match["entities"]:
        try:
            values = json.loads(match["entities"])
        except json.JSONDecodeError:
            return None
        entities = [{"entity": k, "value": v, "extractor": "payload"}
                    for k, v in (values or {}).items()]
    intent = {"name": match["intent"], "confidence": 1.0}
    return {"text": text, "intent": intent, "entities": entities, "intent_ranking": [intent]}


@dataclass
class Turn:
    """A conversation while the engine works on one message."""

    conversation: Snapshot
    parse: dict[str, Any]
    rng: random.Random
    messages: list[dict[str, Any]] = field(default_factory=list)
    escalate: str | None = None
    actions_run: list[str] = field(default_factory=list)

    @property
    def slots(self) -> dict[str, Any]:
        return self.conversation.slots

    @property
    def state(self) -> dict[str, Any]:
        return self.conversation.state

    @property
    def intent(self) -> str:
        return str(self.parse.get("intent", {}).get("name") or FALLBACK_INTENT)

    def set_slot(self, name: str, value: Any) -> None:
        self.slots[name] = value
        self.conversation.record({"event": "slot", "name": name, "value": value})


class DialogueEngine:
    """Policies and rendering over one domain; stateless between turns."""

    def __init__(self, *, domain: Domain, policy: Policy, runtime: Any) -> None:
        self.domain = domain
        self.policy = policy
        self.runtime = runtime

    # ------------------------------------------------------------ the turn

    async def handle(self, turn: Turn) -> None:
        conversation = turn.conversation
        conversation.record({
            "event": "user", "text": turn.parse.get("text"), "parse_data": turn.parse,
            "input_channel": conversation.channel})
        if conversation.paused:
            return  # an agent has the conversation: store the message, say nothing
        self._fill_slots(turn)
        if await self._confirmation(turn):
            return
        if conversation.active_loop and await self._form_turn(turn):
            return
        intent = self._carry_over(turn)
        if intent != FALLBACK_INTENT:
            turn.state.pop("fallbacks", None)
        if intent not in SMALL_TALK:
            turn.state["topic"] = intent
        conversation.latest_intent = intent
        await self.predict_and_run(turn, intent=intent)
        if intent == HANDOFF_INTENT and not conversation.paused:
            self._pause(turn)

    async def predict_and_run(self, turn: Turn, *, intent: str,
                              entities: list[dict[str, Any]] | None = None) -> None:
        entity_names = {e["entity"] for e in (entities if entities is not None
                                              else turn.parse.get("entities") or [])}
        trigger = self.policy.predict(
            intent=intent, entities=entity_names, slots=turn.slots,
            active_loop=turn.conversation.active_loop,
            latest_action=turn.conversation.latest_action)
        if trigger is None:
            log.info("no rule for intent", intent=intent)
            await self.run_actions(turn, [FALLBACK_ACTION])
            return
        await self.run_actions(turn, list(trigger.actions))

    # ------------------------------------------------------------ slots

    def _fill_slots(self, turn: Turn) -> None:
        """Rasa's slot mappings: entities (and intents) of this message fill slots whose
        mapping conditions hold; the slot a form asked for is left to the form."""
        parse = turn.parse
        language = parse.get("language")
        text = str(parse.get("text") or "")
        # Words inside an entity ("SE-STO-CITY-01", "uttag 2") say nothing of the language.
        for entity in sorted(parse.get("entities") or [], key=lambda e: -(e.get("start") or 0)):
            if isinstance(entity.get("start"), int) and isinstance(entity.get("end"), int):
                text = text[:entity["start"]] + " " + text[entity["end"]:]
        words = len(re.findall(r"\w+", text))
        # A short "ok" or "2" says little about the language; a payload says nothing.
        if language in ("sv", "en") and ("language" not in parse or words >= 2
                                         or not turn.slots.get("language")):
            if turn.slots.get("language") != language:
                turn.set_slot("language", language)
            turn.conversation.language = language
        elif turn.slots.get("language") in ("sv", "en"):
            turn.conversation.language = turn.slots["language"]
        requested = turn.slots.get("requested_slot") if turn.conversation.active_loop else None
        entities = {str(e.get("entity")) for e in parse.get("entities") or []}
        for name, spec in self.domain.fillable_slots(entities):
            if name == requested:
                continue
            found, value = self._mapped_value(turn, spec, requested_slot=requested,
                                              text_allowed=False)
            if found and turn.slots.get(name) != value:
                turn.set_slot(name, value)

    def _mapped_value(self, turn: Turn, spec: dict[str, Any], *, requested_slot: str | None,
                      text_allowed: bool) -> tuple[bool, Any]:
        intent = turn.intent
        for mapping in spec.get("mappings") or []:
            if not self._mapping_conditions_hold(turn, mapping, requested_slot):
                continue
            if mapping.get("intent") and intent not in _as_list(mapping["intent"]):
                continue
            if intent in _as_list(mapping.get("not_intent")):
                continue
            kind = mapping.get("type")
            if kind == "from_entity":
                for entity in turn.parse.get("entities") or []:
                    if entity.get("entity") == mapping.get("entity") and (
                            mapping.get("role") in (None, entity.get("role"))):
                        return True, entity.get("value")
            elif kind == "from_intent" and mapping.get("intent"):
                return True, mapping.get("value")
            elif kind == "from_text" and text_allowed:
                return True, turn.parse.get("text")
        return False, None

    @staticmethod
    def _mapping_conditions_hold(turn: Turn, mapping: dict[str, Any],
                                 requested_slot: str | None) -> bool:
        conditions = mapping.get("conditions")
        if not conditions:
            return True
        return any(c.get("active_loop") == turn.conversation.active_loop
                   and c.get("requested_slot", requested_slot) == requested_slot
                   for c in conditions)

    # ------------------------------------------------------------ confirmation

    async def _confirmation(self, turn: Turn) -> bool:
        pending = turn.slots.get("requested_action")
        if not pending:
            return False
        turn.set_slot("requested_action", None)
        if turn.intent == "affirm":
            await self.run_actions(turn, [pending], confirmed=pending)
            return True
        if turn.intent == "deny":
            self.utter(turn, "utter_action_cancelled")
            return True
        return False  # the driver moved on: the request lapses, the message is handled anew

    async def _ask_confirmation(self, turn: Turn, name: str, registry_module: Any) -> None:
        from rasa_sdk import Tracker

        turn.set_slot("requested_action", name)
        try:
            summary = registry_module.summary(
                name, Tracker.from_dict(self.tracker(turn)), turn.conversation.language)
        except Exception:
            log.exception("confirmation summary failed", action=name)
            summary = name
        self.utter(turn, "utter_confirm_action", summary=summary)

    # ------------------------------------------------------------ forms

    async def activate_form(self, turn: Turn, form: str) -> None:
        conversation = turn.conversation
        if conversation.active_loop != form:
            conversation.active_loop = form
            conversation.record({"event": "active_loop", "name": form})
            turn.state["form_origin"] = {
                "intent": turn.intent if turn.intent != "affirm" else turn.state.get("topic"),
                "entities": turn.parse.get("entities") or []}
            turn.state.pop("form_attempts", None)
            builtin = builtin_forms.FORMS.get(form)
            if builtin is not None:
                builtin.activate(turn)
        await self._form_next(turn, form)

    async def _form_next(self, turn: Turn, form: str) -> None:
        for slot in self.domain.required_slots(form):
            if turn.slots.get(slot) is None:
                if turn.slots.get("requested_slot") != slot:
                    turn.set_slot("requested_slot", slot)
                self._ask_for(turn, form, slot)
                return
        await self._form_complete(turn, form)

    def _ask_for(self, turn: Turn, form: str, slot: str) -> None:
        for name in (f"utter_ask_{form}_{slot}", f"utter_ask_{slot}"):
            if self.domain.has_response(name):
                self.utter(turn, name)
                return
        log.warning("no question for a form slot", form=form, slot=slot)

    def _deactivate(self, turn: Turn) -> None:
        turn.conversation.active_loop = None
        turn.conversation.record({"event": "active_loop", "name": None})
        if turn.slots.get("requested_slot") is not None:
            turn.set_slot("requested_slot", None)
        turn.state.pop("form_attempts", None)

    async def _form_complete(self, turn: Turn, form: str) -> None:
        self._deactivate(turn)
        origin = turn.state.pop("form_origin", None) or {}
        submit = self.policy.submits.get(form)
        if submit is not None:
            await self.run_actions(turn, list(submit))
        elif origin.get("intent"):
            # No submit rule: the request the form interrupted (verification) resumes.
            await self.predict_and_run(turn, intent=origin["intent"],
                                       entities=origin.get("entities"))

    def cancel_form(self, turn: Turn, response: str = "utter_form_cancelled") -> None:
        self._deactivate(turn)
        turn.state.pop("form_origin", None)
        self.utter(turn, response)

    async def _form_turn(self, turn: Turn) -> bool:
        """The active form handles this message; False hands it to the other policies."""
        form = str(turn.conversation.active_loop)
        requested = turn.slots.get("requested_slot")
        if requested is None:
            await self._form_next(turn, form)
            return True
        spec = self.domain.slots.get(requested, {})
        found, value = self._mapped_value(turn, spec, requested_slot=requested,
                                          text_allowed=True)
        if not found:
            if turn.intent == "deny":
                self.cancel_form(turn)
                return True
            if turn.intent not in SMALL_TALK and self.policy.knows(turn.intent):
                self._deactivate(turn)  # the driver asked something else: follow them
                turn.state.pop("form_origin", None)
                return False
            self._ask_for(turn, form, requested)
            return True
        updates = await self._validate(turn, form, requested, value)
        if turn.conversation.active_loop != form:
            return True  # validation ended the form itself
        if updates is None:
            attempts = turn.state.get("form_attempts", 0) + 1
            turn.state["form_attempts"] = attempts
            if attempts >= builtin_forms.MAX_ATTEMPTS:
                self.cancel_form(turn, "utter_form_gave_up")
                return True
            self._ask_for(turn, form, requested)
            return True
        turn.state.pop("form_attempts", None)
        for name, new in updates.items():
            turn.set_slot(name, new)
        await self._form_next(turn, form)
        return True

    async def _validate(self, turn: Turn, form: str, slot: str, value: Any
                        ) -> dict[str, Any] | None:
        """Slot updates for an accepted value, None for a rejected one (already explained)."""
        builtin = builtin_forms.FORMS.get(form)
        if builtin is not None:
            return await builtin.validate(self, turn, slot, value)
        module = registry()
        validator = f"validate_{form}"
        if module is not None and validator in getattr(module, "ACTIONS", {}):
            turn.conversation.record({"event": "slot", "name": slot, "value": value})
            turn.slots[slot] = value
            events = await self.execute(turn, validator, module)
            if events is None:
                return None
            accepted = turn.slots.get(slot)
            if accepted is None:
                return None
            return {slot: accepted}
        checked = builtin_forms.type_check(self.domain.slots.get(slot, {}), value)
        if checked is None:
            self.utter_if_exists(turn, f"utter_invalid_{slot}")
            return None
        return {slot: checked}

    # ------------------------------------------------------------ carryover

    def _carry_over(self, turn: Turn) -> str:
        """'And the one before that?' after an account question: the same question, with
        the carryover slot (``offset``) one further back. A new such question resets it."""
        config = self.domain.carryover
        intent = turn.intent
        intents = set(config.get("intents") or [])
        slot = config.get("slot", "offset")
        if not intents:
            return intent
        text = str(turn.parse.get("text") or "").lower()
        previous = turn.state.get("account_intent")
        refers_back = any(re.search(pattern, text) for pattern in config.get("previous") or [])
        confidence = float(turn.parse.get("intent", {}).get("confidence") or 0)
        if refers_back and previous in intents and (
                intent in intents or intent in set(config.get("overrides") or [])
                or confidence < float(config.get("override_below", 0))):
            turn.set_slot(slot, int(turn.slots.get(slot) or 0) + 1)
            return str(previous)
        if intent in intents:
            turn.state["account_intent"] = intent
            if turn.slots.get(slot):
                turn.set_slot(slot, 0)
        return intent

    # ------------------------------------------------------------ actions

    async def run_actions(self, turn: Turn, names: list[str], *,
                          confirmed: str | None = None) -> None:
        queue = deque(names)
        while queue and len(turn.actions_run) < MAX_ACTIONS_PER_TURN:
            name = queue.popleft()
            followup = await self.run_action(turn, name, confirmed=name == confirmed)
            if followup:
                queue.appendleft(followup)
            if (turn.conversation.paused or turn.slots.get("requested_action")
                    or turn.conversation.active_loop):
                break  # waiting for an agent, a yes/no, or a form's answer

    async def run_action(self, turn: Turn, name: str, *, confirmed: bool = False
                         ) -> str | None:
        """Run one action; the follow-up action it asks for, if any."""
        conversation = turn.conversation
        if name == LISTEN:
            return None
        turn.actions_run.append(name)
        if name in self.domain.forms:
            conversation.record({"event": "action", "name": name})
            conversation.latest_action = name
            await self.activate_form(turn, name)
            return None
        if name.startswith("utter_") and self.domain.has_response(name):
            self.utter(turn, name)
            return None
        if name == FALLBACK_ACTION:
            self._two_stage_fallback(turn)
            return None
        module = registry()
        if module is not None and name in getattr(module, "CONFIRM", ()) and not confirmed:
            await self._ask_confirmation(turn, name, module)
            return None
        conversation.record({"event": "action", "name": name})
        conversation.latest_action = name
        if module is None or name not in getattr(module, "ACTIONS", {}):
            return self._missing_action(turn, name)
        events = await self.execute(turn, name, module)
        if name == HANDOFF_ACTION:
            self._pause(turn)  # handing off always pauses the bot, whatever the action said
        if events is None:
            if name == HANDOFF_ACTION:
                self.utter(turn, "utter_handoff")
            else:
                self._action_failed(turn)
            return None
        return self._followup(events)

    def _missing_action(self, turn: Turn, name: str) -> None:
        if name == HANDOFF_ACTION:
            self.utter(turn, "utter_handoff")
            self._pause(turn)
            return None
        log.error("action not available", action=name)
        self._action_failed(turn)
        return None

    def _action_failed(self, turn: Turn) -> None:
        turn.set_slot("handoff_reason", "action_failed")
        self.utter(turn, "utter_action_failed")

    @staticmethod
    def _followup(events: list[dict[str, Any]]) -> str | None:
        for event in events:
            if event.get("event") == "followup" and event.get("name"):
                return str(event["name"])
        return None

    async def execute(self, turn: Turn, name: str, module: Any) -> list[dict[str, Any]] | None:
        """Call an action through the action-server protocol; its events, applied, or None
        when it failed."""
        payload = {"next_action": name, "sender_id": turn.conversation.sender,
                   "tracker": self.tracker(turn), "domain": self.domain.as_dict(),
                   "version": "3.21.0"}
        try:
            result = await module.execute(payload)
        except Exception:
            log.exception("action failed", action=name)
            return None
        if not isinstance(result, dict) or "error" in result:
            log.warning("action rejected", action=name, result=result)
            return None
        events = list(result.get("events") or [])
        for event in events:
            self.apply(turn, event)
        for response in result.get("responses") or []:
            self.respond(turn, response)
        return events

    def apply(self, turn: Turn, event: dict[str, Any]) -> None:
        """Apply one event an action returned to the conversation."""
        conversation = turn.conversation
        kind = event.get("event")
        if kind == "slot":
            turn.set_slot(str(event["name"]), event.get("value"))
            if event["name"] == "language" and event.get("value") in ("sv", "en"):
                conversation.language = str(event["value"])
            return
        if kind in ("reminder", "cancel_reminder", "followup"):
            return  # reminders are not supported; follow-ups run after the action
        if kind == "pause":
            self._pause(turn)
            return
        if kind == "resume":
            conversation.paused = False
        elif kind == "active_loop":
            conversation.active_loop = event.get("name")
        elif kind in ("reset_slots", "restart"):
            initial = self.domain.initial_slots()
            kept = {k: turn.slots.get(k) for k in IDENTITY_SLOTS if k in turn.slots}
            turn.slots.clear()
            turn.slots.update({**initial, **kept})
            if kind == "restart":
                conversation.active_loop = None
                turn.state.clear()
        elif kind == "bot":
            self.send(turn, {"text": event.get("text"), **(event.get("data") or {})},
                      record=False)
        conversation.record({k: v for k, v in event.items() if k != "timestamp"})

    def _pause(self, turn: Turn) -> None:
        conversation = turn.conversation
        if conversation.paused:
            return
        conversation.paused = True
        conversation.record({"event": "pause"})
        turn.escalate = turn.escalate or turn.slots.get("handoff_reason") or "asked"

    # ------------------------------------------------------------ fallback

    def _two_stage_fallback(self, turn: Turn) -> None:
        """First time: ask to rephrase, suggesting the likeliest intents as buttons. Second
        time in a row: offer a human (accepting hands off)."""
        fallbacks = int(turn.state.get("fallbacks", 0)) + 1
        turn.conversation.record({"event": "action", "name": FALLBACK_ACTION})
        if fallbacks >= 2:
            turn.state.pop("fallbacks", None)
            turn.set_slot("handoff_reason", "fallback")
            self.utter(turn, "utter_offer_human")
            turn.conversation.latest_action = "utter_offer_human"
            return
        turn.state["fallbacks"] = fallbacks
        buttons = []
        for candidate in turn.parse.get("intent_ranking") or []:
            name = candidate.get("name")
            if name in SMALL_TALK or not candidate.get("confidence"):
                continue
            title = self._render(turn, f"utter_intent_{name}")
            if title and title.get("text"):
                buttons.append({"title": title["text"], "payload": f"/{name}"})
            if len(buttons) == SUGGESTIONS:
                break
        message = self._render(turn, "utter_ask_rephrase") or {}
        if buttons:
            message["buttons"] = buttons
        self.send(turn, message, name="utter_ask_rephrase")
        turn.conversation.latest_action = "utter_ask_rephrase"

    # ------------------------------------------------------------ replies

    def _render(self, turn: Turn, name: str, **kwargs: Any) -> dict[str, Any] | None:
        slots = {k: v for k, v in turn.slots.items() if k not in kwargs}
        return self.domain.render(name, language=turn.conversation.language, slots=slots,
                                  rng=turn.rng, **kwargs)

    def utter(self, turn: Turn, name: str, **kwargs: Any) -> None:
        message = self._render(turn, name, **kwargs)
        if message is None:
            log.error("no such response", response=name)
            return
        self.send(turn, message, name=name)
        turn.conversation.latest_action = name

    def utter_if_exists(self, turn: Turn, name: str, **kwargs: Any) -> None:
        if self.domain.has_response(name):
            self.utter(turn, name, **kwargs)

    def respond(self, turn: Turn, response: dict[str, Any]) -> None:
        """A response an action dispatched: a template by name, or literal text."""
        name = response.get("response") or response.get("template")
        extra = {k: v for k, v in response.items() if k not in _RESPONSE_KEYS}
        if name:
            message = self._render(turn, str(name), **extra)
            if message is None:
                log.error("action asked for an unknown response", response=name)
                return
            if response.get("buttons"):
                message["buttons"] = response["buttons"]
        else:
            message = {k: response[k] for k in _MESSAGE_KEYS if response.get(k)}
            if not message:
                return
        self.send(turn, message, name=str(name) if name else None)

    def send(self, turn: Turn, message: dict[str, Any], *, name: str | None = None,
             record: bool = True) -> None:
        outgoing = {"recipient_id": turn.conversation.sender, **message}
        turn.messages.append(outgoing)
        data = {k: v for k, v in message.items() if k != "text"}
        event: dict[str, Any] = {"event": "bot", "text": message.get("text"), "data": data,
                                 "metadata": {"utter_action": name} if name else {}}
        turn.conversation.record(event)

    # ------------------------------------------------------------ tracker

    def tracker(self, turn: Turn) -> dict[str, Any]:
        """Rasa's tracker JSON as the action server receives it."""
        conversation = turn.conversation
        parse = turn.parse
        loop = conversation.active_loop
        return {
            "sender_id": conversation.sender,
            "slots": dict(turn.slots),
            "latest_message": {
                "intent": parse.get("intent") or {}, "entities": parse.get("entities") or [],
                "text": parse.get("text"), "intent_ranking": parse.get("intent_ranking") or [],
                "language": parse.get("language"),
            },
            "latest_event_time": conversation.events[-1]["timestamp"]
            if conversation.events else None,
            "followup_action": None,
            "paused": conversation.paused,
            "events": list(conversation.events),
            "latest_input_channel": conversation.channel,
            "active_loop": {"name": loop} if loop else {},
            "latest_action": {"action_name": conversation.latest_action},
            "latest_action_name": conversation.latest_action,
        }


_MESSAGE_KEYS = ("text", "buttons", "image", "custom", "attachment", "elements",
                 "quick_replies")
_RESPONSE_KEYS = {*_MESSAGE_KEYS, "response", "template", "json_message"}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
