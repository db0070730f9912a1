"""Reading training data in Rasa 3 NLU YAML: intents with annotated examples, regexes, lookups
and synonyms, one file per language.

Only what the engine needs is kept; the files stay loadable by Rasa itself, so a team that
later moves to a full Rasa deployment takes them along unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INTENTS_DIR = Path(__file__).resolve().parent.parent / "intents"

# The intents every part of ChargeDesk may rely on (DESIGN.md, "Intents").
DESIGN_INTENTS: tuple[str, ...] = (
    "greet", "goodbye", "thanks", "affirm", "deny", "start_charging", "charging_wont_start",
    "cable_stuck", "stop_charging", "charging_status", "station_status", "find_charger",
    "report_station_problem", "price_info", "billing_history", "explain_cost", "dispute_charge",
    "request_invoice", "check_balance", "top_up", "change_payment_method", "lost_card",
    "schedule_charging", "human_handoff", "out_of_scope",
)
LANGUAGES: tuple[str, ...] = ("sv", "en")

# [text](entity), [text](entity:value) (Rasa 1 style) or [text]{"entity": …, "value": …}.
_ANNOTATION = re.compile(r"\[(?P<text>[^\]]+)\](?:\((?P<short>[^)]+)\)|(?P<json>\{[^}]*\}))")


@dataclass(frozen=True)
class Entity:
    entity: str
    start: int
    end: int
    text: str
    value: Any = None


@dataclass(frozen=True)
class Example:
    text: str
    intent: str
    language: str
    entities: tuple[Entity, ...] = ()


@dataclass
class TrainingData:
    examples: list[Example] = field(default_factory=list)
    regexes: dict[str, list[str]] = field(default_factory=dict)
    lookups: dict[str, list[str]] = field(default_factory=dict)
    # surface text (lower case) -> the value it stands for
    synonyms: dict[str, str] = field(default_factory=dict)

    @property
    def intents(self) -> list[str]:
        return sorted({e.intent for e in self.examples})

    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    def labels(self) -> list[str]:
        return [e.intent for e in self.examples]

    def merge(self, other: TrainingData) -> TrainingData:
        merged = TrainingData(self.examples + other.examples, dict(self.regexes),
                              {k: list(v) for k, v in self.lookups.items()},
                              {**self.synonyms, **other.synonyms})
        for name, patterns in other.regexes.items():
            merged.regexes.setdefault(name, [])
            merged.regexes[name] += [p for p in patterns if p not in merged.regexes[name]]
        for name, items in other.lookups.items():
            merged.lookups.setdefault(name, [])
            merged.lookups[name] += [i for i in items if i not in merged.lookups[name]]
        return merged

    def fingerprint(self) -> str:
        """A hash of everything training depends on, for the model cache's key."""
        payload = {
            "examples": [[e.language, e.intent, e.text] for e in self.examples],
            "regexes": self.regexes, "lookups": self.lookups, "synonyms": self.synonyms,
        }
        blob = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def parse_annotated(text: str) -> tuple[str, tuple[Entity, ...]]:
    """Strip Rasa entity annotations, returning the plain text and the entities' positions."""
    plain: list[str] = []
    entities: list[Entity] = []
    cursor = 0
    length = 0
    for match in _ANNOTATION.finditer(text):
        before = text[cursor:match.start()]
        plain.append(before)
        length += len(before)
        surface = match.group("text")
        if match.group("json"):
            spec = json.loads(match.group("json"))
            name, value = spec["entity"], spec.get("value", surface)
        else:
            name, _, value = match.group("short").partition(":")
            value = value or surface
        entities.append(Entity(name, length, length + len(surface), surface, value))
        plain.append(surface)
        length += len(surface)
        cursor = match.end()
    plain.append(text[cursor:])
    return "".join(plain), tuple(entities)


def _items(block: str) -> list[str]:
    """The ``- item`` lines of an ``examples: |`` block."""
    items = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("- "):
            items.append(line[2:].strip())
    return [i for i in items if i]


def load_file(path: Path, language: str) -> TrainingData:
    """One Rasa NLU YAML file; ``language`` labels its examples."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data = TrainingData()
    for block in document.get("nlu") or []:
        if "intent" in block:
            for raw in _items(block.get("examples", "")):
                text, entities = parse_annotated(raw)
                data.examples.append(Example(text, block["intent"], language, entities))
        elif "regex" in block:
            data.regexes.setdefault(block["regex"], []).extend(_items(block["examples"]))
        elif "lookup" in block:
            data.lookups.setdefault(block["lookup"], []).extend(_items(block["examples"]))
        elif "synonym" in block:
            for surface in _items(block["examples"]):
                data.synonyms[surface.lower()] = str(block["synonym"])
    for example in data.examples:
        for entity in example.entities:
            # An annotation with an explicit value is a synonym too, as in Rasa.
            if entity.value != entity.text and isinstance(entity.value, str):
                data.synonyms[entity.text.lower()] = entity.value
    return data


def load(directory: Path = INTENTS_DIR, *, prefix: str = "nlu",
         languages: Iterable[str] = LANGUAGES) -> TrainingData:
    """``{prefix}.{language}.yml`` for each language, merged."""
    data = TrainingData()
    for language in languages:
        data = data.merge(load_file(directory / f"{prefix}.{language}.yml", language))
    return data


def load_tests(directory: Path = INTENTS_DIR / "tests") -> TrainingData:
    """The held-out test examples (``tests/test_nlu.{language}.yml``)."""
    return load(directory, prefix="test_nlu")
