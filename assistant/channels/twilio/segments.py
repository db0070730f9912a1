"""SMS lengths as a phone counts them, and long replies split where a reader expects.

A text message is GSM-7 when every character is in the GSM 03.38 default alphabet or its
extension table (the extension characters ``^{}\\[~]|€`` and form feed take two septets), else
UCS-2. Swedish å, ä, ö, Å, Ä, Ö (and é, ü) are in the default alphabet, so Swedish stays
GSM-7, 160 characters in one segment, 153 per segment of a concatenated message; one
character outside it (an emoji, a curly quote) makes the whole message UCS-2: 70, then 67
UTF-16 units per segment. Typographic characters with a GSM twin are replaced first (what
Twilio's "smart encoding" does), so babel's non-breaking space in "12,50 kr" or an en dash does
not cost a message twice the segments.

A reply longer than :data:`MAX_SEGMENTS` segments is sent as several messages, split at the
coarsest boundary that fits (paragraph, line, sentence, word) and numbered "(1/2)".
"""

from __future__ import annotations

import re
from collections.abc import Callable

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67
# Most a single outbound message may take; longer replies become several messages.
MAX_SEGMENTS = 3

_SMART = str.maketrans({
    "\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u2007": " ",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u00b4": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
    "\u2026": "...", "\u2022": "-", "\u00d7": "x", "\t": " ",
})


def smart_encode(text: str) -> str:
    """``text`` with typographic characters replaced by their GSM-7 look-alikes."""
    return text.translate(_SMART)


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _units(text: str, gsm: bool) -> list[int]:
    """The size of each character: septets (GSM-7) or UTF-16 code units (UCS-2)."""
    if gsm:
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def segments(text: str) -> tuple[str, int]:
    """The encoding (``"GSM-7"`` or ``"UCS-2"``) and the number of segments of ``text``.

    Characters are never split between segments (an escaped GSM character or a surrogate
    pair moves whole to the next segment), as handsets and Twilio do.
    """
    gsm = is_gsm7(text)
    sizes = _units(text, gsm)
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if gsm else (UCS2_SINGLE, UCS2_MULTI)
    encoding = "GSM-7" if gsm else "UCS-2"
    if sum(sizes) <= single:
        return encoding, 1
    count, used = 1, 0
    for size in sizes:
        if used + size > multi:
            count, used = count + 1, 0
        used += size
    return encoding, count


# Boundaries, coarsest first: each splits a text into units and joins them back.
_LEVELS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\n\s*\n"), "\n\n"),
    (re.compile(r"\n"), "\n"),
    (re.compile(r"(?<=[.!?:;])\s+"), " "),
    (re.compile(r"\s+"), " "),
)
_SUFFIX_RESERVE = " (99/99)"


def split_message(text: str, *, max_segments: int = MAX_SEGMENTS) -> list[str]:
    """``text`` (smart-encoded) as one message, or as numbered parts of at most
    ``max_segments`` segments each, split at paragraph, line, sentence or word boundaries."""
    text = smart_encode(text).strip()
    if not text:
        return []
    if segments(text)[1] <= max_segments:
        return [text]

    def fits(chunk: str) -> bool:
        return segments(chunk + _SUFFIX_RESERVE)[1] <= max_segments

    chunks = [c for c in _pack(text, fits, 0) if c]
    if len(chunks) == 1:
        return chunks
    return [f"{chunk} ({i}/{len(chunks)})" for i, chunk in enumerate(chunks, 1)]


def _pack(text: str, fits: Callable[[str], bool], level: int) -> list[str]:
    text = text.strip()
    if fits(text):
        return [text]
    if level >= len(_LEVELS):
        return _hard_split(text, fits)
    pattern, joiner = _LEVELS[level]
    units = [u.strip() for u in pattern.split(text) if u.strip()]
    if len(units) <= 1:
        return _pack(text, fits, level + 1)
    chunks: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current}{joiner}{unit}" if current else unit
        if fits(candidate):
            current = candidate
            continue
        if current:
            chunks.append(current)
        if fits(unit):
            current = unit
        else:
            pieces = _pack(unit, fits, level + 1)
            chunks.extend(pieces[:-1])
            current = pieces[-1]
    if current:
        chunks.append(current)
    return chunks


def _hard_split(text: str, fits: Callable[[str], bool]) -> list[str]:
    """A word longer than a message (a long link): cut it where it stops fitting."""
    chunks: list[str] = []
    while text:
        cut = len(text)
        while cut > 1 and not fits(text[:cut]):
            cut -= 1
        chunks.append(text[:cut])
        text = text[cut:]
    return chunks
