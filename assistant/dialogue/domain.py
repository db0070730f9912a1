"""The assistant's domain: every ``*.yml`` domain file under ``assistant/intents`` merged,
and response templates rendered in the conversation's language.

Rasa allows a domain directory; ours holds the NLU's ``domain.yml`` (intents, entities, slots,
the dialogue's responses, forms and actions) and the actions' ``responses_actions.yml``.
Training data (``nlu*``, ``rules``, ``stories``, ``tests``) is not domain.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

INTENTS_DIR = Path(__file__).resolve().parent.parent / "intents"
NOT_DOMAIN = ("nlu", "rules", "stories", "tests", "test_")
LANGUAGES = ("sv", "en")


def domain_files(directory: Path = INTENTS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.yml") if not p.name.startswith(NOT_DOMAIN))


@dataclass
class Domain:
    intents: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    carryover: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    _fillable: list[tuple[str, dict[str, Any], frozenset[str], bool]] | None = field(
        default=None, init=False, repr=False, compare=False)
    _as_dict: dict[str, Any] | None = field(default=None, init=False, repr=False,
                                            compare=False)

    def merge(self, data: dict[str, Any]) -> None:
        self._fillable = self._as_dict = None
        for name in data.get("intents") or []:
            key = next(iter(name)) if isinstance(name, dict) else name
            if key not in self.intents:
                self.intents.append(key)
        for name in data.get("entities") or []:
            key = next(iter(name)) if isinstance(name, dict) else name
            if key not in self.entities:
                self.entities.append(key)
        self.slots.update(data.get("slots") or {})
        for name, variations in (data.get("responses") or {}).items():
            self.responses.setdefault(name, []).extend(variations)
        self.forms.update(data.get("forms") or {})
        for name in data.get("actions") or []:
            if name not in self.actions:
                self.actions.append(name)
        self.carryover.update(data.get("carryover") or {})

    def as_dict(self) -> dict[str, Any]:
        """Rasa's domain JSON, as the action server protocol sends it (built once: treat it
        as read-only)."""
        if self._as_dict is None:
            self._as_dict = self._build_dict()
        return self._as_dict

    def _build_dict(self) -> dict[str, Any]:
        return {
            "version": "3.1",
            "intents": list(self.intents),
            "entities": list(self.entities),
            "slots": self.slots,
            "responses": self.responses,
            "forms": self.forms,
            "actions": list(self.actions),
            "session_config": {"session_expiration_time": 60,
                               "carry_over_slots_to_new_session": True},
        }

    def fillable_slots(self, entities: set[str]
                       ) -> list[tuple[str, dict[str, Any]]]:
        """The slots, in domain order, that a message with these entities may fill through
        their mappings: a ``from_entity`` mapping of one of them, or a ``from_intent`` one.
        Other slots can only be filled by a form asking for them (``from_text``, custom)."""
        if self._fillable is None:
            self._fillable = []
            for name, spec in self.slots.items():
                mappings = spec.get("mappings") or []
                by_entity = frozenset(str(m.get("entity")) for m in mappings
                                      if m.get("type") == "from_entity")
                by_intent = any(m.get("type") == "from_intent" and m.get("intent")
                                for m in mappings)
                if by_entity or by_intent:
                    self._fillable.append((name, spec, by_entity, by_intent))
        return [(name, spec) for name, spec, by_entity, by_intent in self._fillable
                if by_intent or not by_entity.isdisjoint(entities)]

    def initial_slots(self) -> dict[str, Any]:
        return {name: spec.get("initial_value") for name, spec in self.slots.items()}

    def required_slots(self, form: str) -> list[str]:
        spec = self.forms.get(form) or {}
        return list(spec.get("required_slots") or [])

    # ------------------------------------------------------------ rendering

    def has_response(self, name: str) -> bool:
        return name in self.responses

    def render(self, name: str, *, language: str, slots: dict[str, Any],
               rng: random.Random, **kwargs: Any) -> dict[str, Any] | None:
        """One variation of response ``name`` for ``language``, placeholders filled.

        As Rasa: variations whose conditions hold win over unconditioned ones; among those
        one is picked at random (``rng`` is seeded per conversation, so tests can repeat it).
        """
        variations = self.responses.get(name)
        if not variations:
            return None
        values = {**slots, "language": language}
        matching = [v for v in variations if v.get("condition")
                    and _conditions_hold(v["condition"], values)]
        if not matching:
            matching = [v for v in variations if not v.get("condition")] or variations
        variation = rng.choice(matching)
        fill = {**{k: _shown(v) for k, v in slots.items()}, **kwargs}
        message: dict[str, Any] = {}
        if "text" in variation:
            message["text"] = _fill(str(variation["text"]), fill)
        if variation.get("buttons"):
            message["buttons"] = [{"title": _fill(str(b["title"]), fill),
                                   "payload": _fill(str(b["payload"]), fill)}
                                  for b in variation["buttons"]]
        for key in ("image", "custom", "attachment", "quick_replies"):
            if key in variation:
                message[key] = variation[key]
        return message


def _conditions_hold(conditions: list[dict[str, Any]], values: dict[str, Any]) -> bool:
    return all(c.get("type", "slot") == "slot" and values.get(c["name"]) == c["value"]
               for c in conditions)


def _shown(value: Any) -> Any:
    # Floats from slot types print as "2", not "2.0", when whole.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(template: str, values: dict[str, Any]) -> str:
    """Rasa's ``{slot}`` placeholders; unknown names stay as written, other braces too."""
    known = _Missing({k: "" if v is None else v for k, v in values.items()})
    return _FIELD.sub(lambda m: str(string.Formatter().vformat(m.group(0), (), known)),
                      template)


def load(directory: Path = INTENTS_DIR) -> Domain:
    domain = Domain()
    for path in domain_files(directory):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        domain.raw[path.name] = data
        domain.merge(data)
    return domain


@lru_cache(maxsize=4)
def get_domain(directory: Path = INTENTS_DIR) -> Domain:
    return load(directory)
