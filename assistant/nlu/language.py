"""Swedish or English: word cues first, because the messages that matter most are short
("ja", "hi", "nä"), then a character n-gram naive Bayes trained on our own training data.

Naive Bayes in plain Python rather than a scikit-learn pipeline: it needs a few dictionary
look-ups per message, where a vectoriser's per-call overhead would cost a millisecond.
"""

from __future__ import annotations

import math
import re
from collections import Counter

# Words that settle the question alone: frequent, short and belonging to one language only.
# ("ok", "no" and names are deliberately missing: they occur in both.)
SWEDISH_CUES = frozenset("""
hej hejsan tjena tja tjenare hallå hejdå tack tackar ja japp jo nej nä nää nix inte och att
det är jag du vi ni min mitt mina kan vill ska har hur vad va varför var när laddaren laddningen
ladda laddar kabeln sitter fast funkar fungerar kostar kostnad faktura kvitto saldo fyll på
spärra kortet bricka tappat imorgon igår idag förra månaden veckan året
""".split())
ENGLISH_CUES = frozenset("""
hi hello hey yes yeah yep nope thanks thank you the is are my me i can want how what why where
when charging charger cable stuck works work cost price invoice receipt balance top card lost
block tomorrow yesterday today last month week year please bye goodbye
""".split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_ORDERS = (1, 2, 3, 4)


def _ngrams(text: str) -> list[str]:
    grams: list[str] = []
    for word in _WORD.findall(text.lower()):
        padded = f" {word} "
        for n in _ORDERS:
            grams += [padded[i:i + n] for i in range(len(padded) - n + 1)]
    return grams


class LanguageDetector:
    """``detect(text) -> "sv" | "en"``; ``default`` when nothing tells them apart."""

    def __init__(self, default: str = "sv") -> None:
        self.default = default
        # log P(gram | sv) - log P(gram | en), Laplace-smoothed
        self._ratio: dict[str, float] = {}
        self._unseen = 0.0

    def fit(self, texts: list[str], languages: list[str]) -> LanguageDetector:
        counts = {"sv": Counter[str](), "en": Counter[str]()}
        for text, language in zip(texts, languages, strict=True):
            counts[language].update(_ngrams(text))
        vocabulary = set(counts["sv"]) | set(counts["en"])
        total_sv = sum(counts["sv"].values()) + len(vocabulary)
        total_en = sum(counts["en"].values()) + len(vocabulary)
        self._ratio = {
            g: math.log((counts["sv"][g] + 1) / total_sv)
            - math.log((counts["en"][g] + 1) / total_en)
            for g in vocabulary
        }
        self._unseen = math.log(1 / total_sv) - math.log(1 / total_en)
        return self

    def scores(self, text: str) -> dict[str, float]:
        """Probability of each language."""
        words = [w.lower() for w in _WORD.findall(text)]
        sv = sum(w in SWEDISH_CUES for w in words) + 2 * bool(re.search(r"[åäöÅÄÖ]", text))
        en = sum(w in ENGLISH_CUES for w in words)
        # Each cue word is worth a strong vote, so "hej" or "thx bye" need nothing more.
        cue = 4.0 * (sv - en)
        grams = _ngrams(text)
        evidence = sum(self._ratio.get(g, 0.0) for g in grams)
        # Average per word, so a long message does not drown the cues.
        log_odds = cue + (evidence / max(1, len(words)) if self._ratio else 0.0)
        log_odds = max(-30.0, min(30.0, log_odds))
        p_sv = 1 / (1 + math.exp(-log_odds))
        return {"sv": p_sv, "en": 1 - p_sv}

    def detect(self, text: str) -> str:
        scores = self.scores(text)
        if abs(scores["sv"] - 0.5) < 0.05:
            return self.default
        return "sv" if scores["sv"] > 0.5 else "en"
