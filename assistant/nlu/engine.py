"""The NLU engine: language, intent and entities of one message, as Rasa's parse result.

A trained engine is cached on disk under ``<data_dir>/models/nlu-<key>.joblib``, the key
hashing the training data and :data:`ENGINE_VERSION`, so editing an example or the engine
retrains once and every later start loads in milliseconds. One engine per process is loaded
lazily by :func:`get_engine`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import joblib

from assistant.nlu import data as nlu_data
from assistant.nlu.classifier import IntentClassifier
from assistant.nlu.entities import EntityExtractor, LookupProvider
from assistant.nlu.language import LanguageDetector

# Bump when featurisation, models or the pickled layout change: it is part of the cache key.
ENGINE_VERSION = "4"
FALLBACK_INTENT = "nlu_fallback"
OUT_OF_SCOPE_INTENT = "out_of_scope"
# Rasa's FallbackClassifier default; our probabilities are calibrated, so it means what it says.
DEFAULT_THRESHOLD = 0.3
RANKING_LENGTH = 10


@dataclass
class NluEngine:
    classifier: IntentClassifier
    detector: LanguageDetector
    extractor: EntityExtractor
    threshold: float = DEFAULT_THRESHOLD
    fingerprint: str = ""
    trained_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def parse(self, text: str, *, today: date | None = None,
              message_id: str | None = None) -> dict[str, Any]:
        """Rasa's ``/model/parse`` result for ``text``, plus ``language``."""
        probabilities = self.classifier.predict_proba_one(text) if text.strip() else None
        ranking: list[dict[str, Any]] = []
        if probabilities is not None:
            order = probabilities.argsort()[::-1][:RANKING_LENGTH]
            ranking = [{"name": self.classifier.classes_[i],
                        "confidence": round(float(probabilities[i]), 6)} for i in order]
        # Out of scope as on CLINC150 (see OutOfScopeRule): the out_of_scope intent when it
        # wins, the fallback when the best intent is too close to it (or below the threshold).
        if ranking and ranking[0]["confidence"] >= self.threshold and not (
                probabilities is not None
                and self.classifier.oos_rule.rejects_one(probabilities)):
            intent = dict(ranking[0])
        else:
            # As Rasa's FallbackClassifier: the fallback leads, the real candidates follow.
            confidence = 1.0 - ranking[0]["confidence"] if ranking else 1.0
            intent = {"name": FALLBACK_INTENT, "confidence": round(confidence, 6)}
            ranking = [intent, *ranking][:RANKING_LENGTH]
        result: dict[str, Any] = {
            "text": text,
            "intent": intent,
            "entities": self.extractor.extract(text, today=today or date.today()),
            "intent_ranking": ranking,
            "language": self.detector.detect(text),
        }
        if message_id is not None:
            result["message_id"] = message_id
        return result

    def set_lookup_provider(self, provider: LookupProvider | None) -> None:
        self.extractor.lookup_provider = provider


def train(training: nlu_data.TrainingData, *, threshold: float = DEFAULT_THRESHOLD,
          seed: int = 0) -> NluEngine:
    started = time.perf_counter()
    classifier = IntentClassifier(seed=seed).fit(training.texts(), training.labels(),
                                                 out_of_scope=OUT_OF_SCOPE_INTENT)
    detector = LanguageDetector().fit(training.texts(), [e.language for e in training.examples])
    extractor = EntityExtractor(training.regexes, training.lookups, training.synonyms)
    return NluEngine(classifier, detector, extractor, threshold=threshold,
                     fingerprint=training.fingerprint(),
                     trained_seconds=time.perf_counter() - started,
                     info={"examples": len(training.examples), "intents": training.intents,
                           "temperatures": classifier.temperatures,
                           "min_log_odds_vs_out_of_scope": classifier.oos_rule.min_log_odds})


def cache_key(training: nlu_data.TrainingData, threshold: float) -> str:
    blob = f"{ENGINE_VERSION}:{threshold}:{training.fingerprint()}".encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def model_path(models_dir: Path, training: nlu_data.TrainingData,
               threshold: float = DEFAULT_THRESHOLD) -> Path:
    return models_dir / f"nlu-{cache_key(training, threshold)}.joblib"


def load_or_train(models_dir: Path, training: nlu_data.TrainingData | None = None, *,
                  threshold: float = DEFAULT_THRESHOLD, force: bool = False) -> NluEngine:
    """The cached engine for this training data, training and saving it when missing."""
    training = training or nlu_data.load()
    path = model_path(models_dir, training, threshold)
    if path.exists() and not force:
        try:
            engine: NluEngine = joblib.load(path)
            return engine
        except Exception:  # a truncated or incompatible file: train anew below
            pass
    engine = train(training, threshold=threshold)
    models_dir.mkdir(parents=True, exist_ok=True)
    # Write beside and rename, so a concurrent reader never sees half a file.
    handle, temporary = tempfile.mkstemp(dir=models_dir, prefix=".nlu-", suffix=".tmp")
    os.close(handle)
    try:
        joblib.dump(engine, temporary, compress=3)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return engine


_engine: NluEngine | None = None
_lock = threading.Lock()


def models_dir_from_settings() -> Path:
    from chargedesk.settings import get_settings

    return get_settings().data_dir / "models"


def get_engine(models_dir: Path | None = None) -> NluEngine:
    """The process-wide engine, loaded (or trained) on first use."""
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = load_or_train(models_dir or models_dir_from_settings())
    return _engine


def set_engine(engine: NluEngine | None) -> None:
    """Replace the process-wide engine (after ``chargedesk nlu train``, or in tests)."""
    global _engine
    with _lock:
        _engine = engine
