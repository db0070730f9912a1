"""Rules and stories (Rasa's YAML formats) turned into triggers the engine matches each turn.

A trigger is "after ``prior_action``, on ``intent`` (with these entities), when these slots
and this active loop hold, run these actions". Rules become triggers with their ``condition``;
each user step of a story becomes one trigger whose prior action is the story's action before
it. A form-submit rule (steps ``action: <form>``, ``active_loop: null``, actions...) gives the
actions to run when that form completes. The most specific matching trigger wins; rules win
ties over stories, earlier over later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from assistant.dialogue.domain import INTENTS_DIR

ANY = object()


@dataclass(frozen=True)
class Trigger:
    name: str
    intent: str
    actions: tuple[str, ...]
    prior_action: str | None = None
    entities: tuple[str, ...] = ()
    slots: tuple[tuple[str, Any], ...] = ()
    # ANY: no condition; None: no loop may be active; a name: that loop is active.
    active_loop: Any = ANY
    from_rule: bool = True

    def matches(self, *, intent: str, entities: set[str], slots: dict[str, Any],
                active_loop: str | None, latest_action: str | None) -> bool:
        if intent != self.intent or not set(self.entities) <= entities:
            return False
        if self.prior_action is not None and self.prior_action != latest_action:
            return False
        if self.active_loop is not ANY and self.active_loop != active_loop:
            return False
        return all(_slot_matches(slots.get(name), value) for name, value in self.slots)

    @property
    def specificity(self) -> int:
        return (len(self.slots) + len(self.entities) + (self.prior_action is not None)
                + (self.active_loop is not ANY))


def _slot_matches(current: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return bool(current) is expected
    return current == expected


@dataclass
class Policy:
    triggers: list[Trigger] = field(default_factory=list)
    # form name -> actions after it completes
    submits: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def predict(self, *, intent: str, entities: set[str], slots: dict[str, Any],
                active_loop: str | None, latest_action: str | None) -> Trigger | None:
        best: Trigger | None = None
        for trigger in self.triggers:
            if not trigger.matches(intent=intent, entities=entities, slots=slots,
                                   active_loop=active_loop, latest_action=latest_action):
                continue
            if best is None or _rank(trigger) > _rank(best):
                best = trigger
        return best

    def knows(self, intent: str) -> bool:
        return any(t.intent == intent for t in self.triggers)

    def add(self, name: str, steps: list[dict[str, Any]], *, condition: list[dict[str, Any]],
            from_rule: bool) -> None:
        slots, loop = _conditions(condition)
        if (steps and "action" in steps[0] and len(steps) > 1
                and "active_loop" in steps[1] and steps[1]["active_loop"] is None):
            self.submits[steps[0]["action"]] = tuple(
                s["action"] for s in steps[2:] if "action" in s)
            return
        prior: str | None = None
        index = 0
        while index < len(steps):
            step = steps[index]
            if "intent" not in step:
                if "action" in step:
                    prior = step["action"]
                index += 1
                continue
            actions: list[str] = []
            index += 1
            while index < len(steps) and "intent" not in steps[index]:
                if "action" in steps[index]:
                    actions.append(steps[index]["action"])
                index += 1
            self.triggers.append(Trigger(
                name=name, intent=step["intent"], actions=tuple(actions), prior_action=prior,
                entities=tuple(_entity_names(step.get("entities"))),
                slots=slots, active_loop=loop, from_rule=from_rule))
            # Only the first user step of a rule carries its condition.
            slots, loop = (), ANY
            prior = actions[-1] if actions else prior


def _rank(trigger: Trigger) -> tuple[int, int]:
    return (trigger.specificity, int(trigger.from_rule))


def _entity_names(entities: Any) -> list[str]:
    names: list[str] = []
    for entity in entities or []:
        names.append(next(iter(entity)) if isinstance(entity, dict) else str(entity))
    return names


def _conditions(condition: list[dict[str, Any]]) -> tuple[tuple[tuple[str, Any], ...], Any]:
    slots: list[tuple[str, Any]] = []
    loop: Any = ANY
    for item in condition or []:
        if "active_loop" in item:
            loop = item["active_loop"]
        for slot in item.get("slot_was_set") or []:
            slots.extend(slot.items())
    return tuple(slots), loop


def load(directory: Path = INTENTS_DIR) -> Policy:
    policy = Policy()
    for filename, key, from_rule in (("rules.yml", "rules", True),
                                     ("stories.yml", "stories", False)):
        path = directory / filename
        if not path.exists():
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for item in data.get(key) or []:
            policy.add(item.get("rule") or item.get("story") or "", item.get("steps") or [],
                       condition=item.get("condition") or [], from_rule=from_rule)
    return policy


@lru_cache(maxsize=4)
def get_policy(directory: Path = INTENTS_DIR) -> Policy:
    return load(directory)
