"""Entities by rule: the things a driver names are well-formed (station ids, amounts, phone
numbers, dates), so patterns and look-ups find them more reliably than a learnt tagger could
from a few hundred examples, and need no training.

Each entity is Rasa's dict, ``{entity, value, start, end, extractor}`` (plus
``processors: ["EntitySynonymMapper"]`` when a synonym changed the value). Values:

- ``station_id``: the id in upper case, ``"SE-STO-CITY-01"``
- ``connector``: an int (``"uttag 2"``, ``"connector 2"``, ``"kontakt #1"``)
- ``amount``: a decimal string with two places and ``unit: "SEK"`` (``"200 kr"`` → ``"200.00"``)
- ``energy``: a float in kWh
- ``email``; ``phone``: E.164 (``"070-123 45 67"`` → ``"+46701234567"``)
- ``time``: ``"HH:MM"`` (``"kl 7"``, ``"07:30"``, ``"at 6am"``, ``"halv åtta"``)
- ``date``: an ISO date or ``{"from", "to"}`` (see :mod:`assistant.nlu.dates`)
- ``invoice``: an invoice or credit note number (``"F-2024-0012"``)
- ``site`` (and any other look-up): the canonical value, e.g. a site id from the database
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from assistant.nlu.dates import NUMBER_WORDS, find_dates

Entity = dict[str, Any]
# entity name -> {surface text: value}; station and site names come from the database.
Lookups = Mapping[str, Mapping[str, str]]
LookupProvider = Callable[[], Lookups]

_NUMBER = r"\d{1,3}(?:[ \u00a0]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"

STATION_ID = re.compile(r"\b[A-Za-z]{2}-[A-Za-z]{2,5}-[A-Za-z]{2,6}-\d{2,3}\b")
CONNECTOR = re.compile(
    r"\b(?:uttag|uttaget|kontakt|kontakten|connector|outlet|socket|plug|point|port|"
    r"laddpunkt|punkt|evse)\s*(?:nr\.?|nummer|number|no\.?|#)?\s*(?P<n>\d{1,2}|"
    + "|".join(sorted((w for w in NUMBER_WORDS if len(w) > 2), key=len, reverse=True))
    + r")\b", re.IGNORECASE)
# "release connector 2": the number alone after a connector word was already handled above;
# Rasa-style annotations like "connector [2](connector)" need the bare digit after the noun.
AMOUNT = re.compile(
    r"(?:(?P<pre>\bSEK|\bkr\.?)\s?(?P<n1>" + _NUMBER + r")\b)|(?:\b(?P<n2>" + _NUMBER
    + r")\s?(?P<unit>kronor|kronur|kr\b\.?|sek\b|:-|spänn\b|riksdaler\b))",
    re.IGNORECASE)
ENERGY = re.compile(r"\b(?P<n>\d+(?:[.,]\d+)?)\s?(?:kwh|kilowattimmar|kilowatt-hours?|"
                    r"kilowatt hours?)\b", re.IGNORECASE)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# Swedish numbers: 07x mobiles, area codes (08-…, 031-…), with +46/0046 or a trunk 0.
PHONE = re.compile(r"(?<![\w+])(?:\+46|0046|0)[\s-]?\(?0?\)?\d{1,3}(?:[\s-]?\d){5,8}(?![\d])")
INVOICE = re.compile(r"\b[FK]-\d{4}-\d{3,6}\b")

_HOUR_WORDS = {
    "ett": 1, "en": 1, "två": 2, "tva": 2, "tre": 3, "fyra": 4, "fem": 5, "sex": 6, "sju": 7,
    "åtta": 8, "atta": 8, "nio": 9, "tio": 10, "elva": 11, "tolv": 12,
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}
_HOUR = r"(?:\d{1,2}|" + "|".join(sorted(_HOUR_WORDS, key=len, reverse=True)) + ")"
TIME_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?P<h>[01]?\d|2[0-3])[:.](?P<m>[0-5]\d)\s*(?P<ampm>am|pm|a\.m\.|p\.m\.)?",
                re.IGNORECASE), "clock"),
    (re.compile(r"\b(?:(?:at|by|before|after|around|from|until|till)\s+)?(?P<h>1[0-2]|0?\d)\s*"
                r"(?P<ampm>am|pm|a\.m\.|p\.m\.)(?!\w)", re.IGNORECASE), "ampm"),
    (re.compile(r"\b(?P<q>kvart\s+(?:i|över|over)|halv)\s+(?P<h>" + _HOUR + r")\b",
                re.IGNORECASE), "swedish"),
    (re.compile(r"\b(?:kl\.?|klockan)\s*(?P<h>[01]?\d|2[0-3])\b(?![:.]\d)", re.IGNORECASE),
     "kl"),
    (re.compile(r"\b(?:at|by|before|until)\s+(?P<h>[01]?\d|2[0-3])\b(?![:.]\d|\s*"
                r"(?:kr|sek|kwh|%|percent|procent|am|pm|a\.m|p\.m))", re.IGNORECASE), "at"),
    (re.compile(r"\b(?P<word>midnight|midnatt|noon|lunchtid|middag)\b", re.IGNORECASE), "word"),
]
_TIME_WORDS = {"midnight": "00:00", "midnatt": "00:00", "noon": "12:00", "middag": "12:00",
               "lunchtid": "12:00"}


def _fold(text: str) -> str:
    """Lower case without diacritics: drivers write "Goteborg" as often as "Göteborg"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _decimal(text: str) -> Decimal | None:
    cleaned = text.replace(" ", "").replace("\u00a0", "").replace(",", ".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _hour_value(raw: str) -> int:
    return _HOUR_WORDS.get(raw.lower()) or int(raw)


def _time_value(m: re.Match[str], kind: str) -> str | None:
    if kind == "word":
        return _TIME_WORDS[m["word"].lower()]
    if kind == "swedish":
        hour, q = _hour_value(m["h"]), m["q"].lower().split()[0]
        if q == "halv":  # "halv åtta" is half past seven
            hour, minute = hour - 1, 30
        elif "i" in m["q"].lower().split():
            hour, minute = hour - 1, 45
        else:
            minute = 15
        return f"{hour % 24:02d}:{minute:02d}"
    hour = int(m["h"])
    minute = int(m["m"]) if kind == "clock" else 0
    ampm = (m.groupdict().get("ampm") or "").lower().replace(".", "")
    if ampm == "pm" and hour < 12:
        hour += 12
    elif ampm == "am" and hour == 12:
        hour = 0
    if hour > 23:
        return None
    return f"{hour:02d}:{minute:02d}"


def normalise_phone(raw: str) -> str | None:
    """E.164 for a Swedish number, or None when it cannot be one."""
    digits = re.sub(r"\D", "", raw)
    if raw.strip().startswith("+46"):
        national = digits[2:]
    elif digits.startswith("0046"):
        national = digits[4:]
    elif digits.startswith("0"):
        national = digits[1:]
    else:
        return None
    national = national.removeprefix("0")  # "+46 (0)70 …"
    # National significant numbers are 7 to 9 digits in Sweden.
    if not 7 <= len(national) <= 9:
        return None
    return "+46" + national


@dataclass
class EntityExtractor:
    """Finds entities in a message; ``lookup_provider`` adds names known at run time."""

    regexes: Mapping[str, Iterable[str]] = field(default_factory=dict)
    lookups: Mapping[str, Iterable[str]] = field(default_factory=dict)
    synonyms: Mapping[str, str] = field(default_factory=dict)
    lookup_provider: LookupProvider | None = None
    _compiled: list[tuple[str, re.Pattern[str]]] = field(default_factory=list, init=False)
    _static_lookup: dict[str, dict[str, str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        builtin = {"station_id", "email", "invoice"}  # handled with normalised values below
        for name, patterns in self.regexes.items():
            if name in builtin:
                continue
            for pattern in patterns:
                self._compiled.append((name, re.compile(pattern)))
        for name, items in self.lookups.items():
            table = self._static_lookup.setdefault(name, {})
            for item in items:
                table[_fold(item)] = self.synonyms.get(item.lower(), item)

    # ------------------------------------------------------------------ extraction

    def extract(self, text: str, *, today: date) -> list[Entity]:
        found: list[Entity] = []
        found += self._patterns(text)
        found += self._times(text)
        found += [self._entity("date", d.start, d.end, text, d.value, "DateExtractor")
                  for d in find_dates(text, today)]
        found += self._lookups(text)
        return self._resolve(found)

    def _entity(self, name: str, start: int, end: int, text: str, value: Any,
                extractor: str = "RegexEntityExtractor", **extra: Any) -> Entity:
        return {"entity": name, "start": start, "end": end, "value": value,
                "extractor": extractor, **extra, "_text": text[start:end]}

    def _patterns(self, text: str) -> list[Entity]:
        out: list[Entity] = []
        for m in STATION_ID.finditer(text):
            out.append(self._entity("station_id", m.start(), m.end(), text, m.group(0).upper()))
        for m in INVOICE.finditer(text):
            out.append(self._entity("invoice", m.start(), m.end(), text, m.group(0)))
        for m in EMAIL.finditer(text):
            out.append(self._entity("email", m.start(), m.end(), text, m.group(0)))
        for m in PHONE.finditer(text):
            phone = normalise_phone(m.group(0))
            if phone:
                out.append(self._entity("phone", m.start(), m.end(), text, phone))
        for m in CONNECTOR.finditer(text):
            raw = m["n"]
            number = NUMBER_WORDS.get(raw.lower()) or int(raw)
            out.append(self._entity("connector", m.start(), m.end(), text, number))
        for m in AMOUNT.finditer(text):
            value = _decimal(m["n1"] or m["n2"])
            if value is not None:
                amount = str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
                out.append(self._entity("amount", m.start(), m.end(), text, amount,
                                        "AmountExtractor", unit="SEK"))
        for m in ENERGY.finditer(text):
            value = _decimal(m["n"])
            if value is not None:
                out.append(self._entity("energy", m.start(), m.end(), text, float(value),
                                        "AmountExtractor", unit="kWh"))
        for name, pattern in self._compiled:
            for m in pattern.finditer(text):
                out.append(self._entity(name, m.start(), m.end(), text, m.group(0)))
        return out

    def _times(self, text: str) -> list[Entity]:
        out: list[Entity] = []
        for pattern, kind in TIME_PATTERNS:
            for m in pattern.finditer(text):
                value = _time_value(m, kind)
                if value is not None:
                    out.append(self._entity("time", m.start(), m.end(), text, value,
                                            "TimeExtractor"))
        return out

    def _lookups(self, text: str) -> list[Entity]:
        tables: dict[str, dict[str, str]] = {k: dict(v) for k, v in self._static_lookup.items()}
        if self.lookup_provider is not None:
            for name, items in self.lookup_provider().items():
                tables.setdefault(name, {}).update({_fold(k): v for k, v in items.items()})
        folded = _fold(text)
        # Folding keeps offsets only when no character decomposes into several: true for
        # Swedish and English letters (å, ä, ö, é fold to one letter each).
        if len(folded) != len(text):
            return []
        out: list[Entity] = []
        for name, table in tables.items():
            for surface, value in table.items():
                for m in re.finditer(r"(?<!\w)" + re.escape(surface) + r"(?!\w)", folded):
                    entity = self._entity(name, m.start(), m.end(), text, value)
                    if value != text[m.start():m.end()]:
                        entity["processors"] = ["EntitySynonymMapper"]
                    out.append(entity)
        return out

    @staticmethod
    def _resolve(found: list[Entity]) -> list[Entity]:
        """Keep the longest of overlapping entities (a phone number is not also a date)."""
        found.sort(key=lambda e: (e["start"], -(e["end"] - e["start"])))
        kept: list[Entity] = []
        for entity in sorted(found, key=lambda e: -(e["end"] - e["start"])):
            if any(entity["start"] < k["end"] and k["start"] < entity["end"] for k in kept):
                continue
            kept.append(entity)
        kept.sort(key=lambda e: e["start"])
        for entity in kept:
            del entity["_text"]
        return kept
