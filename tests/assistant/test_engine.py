"""The engine: Rasa's parse result, the fallback threshold, language and the model cache."""

from __future__ import annotations

import os
import pickle
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from assistant.nlu import data as nlu_data
from assistant.nlu.classifier import IntentClassifier, SparseMLP
from assistant.nlu.engine import FALLBACK_INTENT, NluEngine, load_or_train, model_path
from assistant.nlu.language import LanguageDetector


def test_parse_result_has_rasas_shape_and_language(nlu: NluEngine) -> None:
    result = nlu.parse("kan ni unlocka kabeln på uttag 2 vid SE-STO-CITY-01?",
                       today=date(2025, 11, 19), message_id="m-1")
    assert set(result) == {"text", "intent", "entities", "intent_ranking", "language",
                           "message_id"}
    assert result["intent"]["name"] == "cable_stuck"
    assert result["intent"]["confidence"] > 0.5
    assert result["language"] == "sv"
    assert [(e["entity"], e["value"]) for e in result["entities"]] == [
        ("connector", 2), ("station_id", "SE-STO-CITY-01")]
    assert all({"entity", "value", "start", "end", "extractor"} <= set(e)
               for e in result["entities"])
    ranking = result["intent_ranking"]
    assert len(ranking) == 10
    assert ranking[0] == result["intent"]
    confidences = [r["confidence"] for r in ranking]
    assert confidences == sorted(confidences, reverse=True)


@pytest.mark.parametrize(("text", "intent"), [
    ("laddaren funkar inte på odenplan", "charging_wont_start"),
    ("the cable is stuck and I need to leave", "cable_stuck"),
    ("va kostar det att ladda på natten", "price_info"),
    ("ja tack", "affirm"),
    ("nä", "deny"),
    ("hej", "greet"),
    ("hi", "greet"),
    ("I lost my charging tag", "lost_card"),
    ("vad hade jag för laddningar förra månaden", "billing_history"),
    ("can I talk to a human please", "human_handoff"),
    ("will it snow in Stockholm tomorrow", "out_of_scope"),
])
def test_typical_messages(nlu: NluEngine, text: str, intent: str) -> None:
    assert nlu.parse(text)["intent"]["name"] == intent


def test_below_the_threshold_the_intent_is_fallback_and_candidates_remain(
        nlu: NluEngine) -> None:
    text = "laddaren"
    ranking = nlu.parse(text)["intent_ranking"]
    best = ranking[0]["confidence"]
    strict = NluEngine(nlu.classifier, nlu.detector, nlu.extractor, threshold=best + 0.01)
    result = strict.parse(text)
    assert result["intent"]["name"] == FALLBACK_INTENT
    assert result["intent"]["confidence"] == pytest.approx(1 - best, abs=1e-5)
    assert result["intent_ranking"][0]["name"] == FALLBACK_INTENT
    assert result["intent_ranking"][1:] == ranking[:9]
    lenient = NluEngine(nlu.classifier, nlu.detector, nlu.extractor, threshold=best - 0.01)
    assert lenient.parse(text)["intent"] == ranking[0]


def test_gibberish_falls_back(nlu: NluEngine) -> None:
    assert nlu.parse("qxzj vbbt")["intent"]["name"] == FALLBACK_INTENT
    assert nlu.parse("   ")["intent"]["name"] == FALLBACK_INTENT


def test_probabilities_are_calibrated_distributions(nlu: NluEngine) -> None:
    probabilities = nlu.classifier.predict_proba(["hej", "stop charging", "xyz"])
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert all(t > 0 for t in nlu.classifier.temperatures)


def test_single_message_path_equals_the_batch_path(nlu: NluEngine,
                                                    training: nlu_data.TrainingData) -> None:
    texts = [*training.texts()[::37], "kabeln sitter fäst!!", "ÅÄÖ åäö", "x"]
    batch = nlu.classifier.predict_proba(texts)
    single = np.array([nlu.classifier.predict_proba_one(t) for t in texts])
    assert np.allclose(batch, single, atol=1e-5)


def test_the_single_message_path_survives_a_save_and_load(nlu: NluEngine) -> None:
    # The fast path is derived on first use and never saved: a loaded model rebuilds it.
    before = nlu.classifier.predict_proba_one("laddaren är trasig")
    loaded = pickle.loads(pickle.dumps(nlu.classifier))
    assert "_fast" not in loaded.__dict__ or loaded.__dict__["_fast"] is None
    assert np.array_equal(loaded.predict_proba_one("laddaren är trasig"), before)
    assert np.allclose(loaded.predict_proba(["laddaren är trasig"])[0], before, atol=1e-5)


def test_the_network_learns_combinations_a_linear_model_cannot() -> None:
    # XOR of two features: class 1 has exactly one of them. No hyperplane separates it.
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    noise = rng.random((400, 20)) < 0.1
    x = csr_matrix(np.column_stack([a, b, noise]).astype(np.float32))
    y = a ^ b
    net = SparseMLP(hidden=32, epochs=60, seed=0).fit(x, y, 2)
    assert np.mean(net.decision_function(x).argmax(axis=1) == y) == 1.0
    again = SparseMLP(hidden=32, epochs=60, seed=0).fit(x, y, 2)
    assert np.array_equal(net.w1, again.w1)  # the seed fixes the whole run


def test_two_intents_give_a_distribution_over_both() -> None:
    texts = [f"yes {w}" for w in ("please", "sure", "ok", "right", "do it")] * 4 + [
        f"no {w}" for w in ("thanks", "way", "never", "stop", "don't")] * 4
    labels = ["affirm"] * 20 + ["deny"] * 20
    model = IntentClassifier().fit(texts, labels)
    assert model.classes_ == ["affirm", "deny"]
    batch = model.predict_proba(["yes sure", "no way"])
    assert batch.argmax(axis=1).tolist() == [0, 1]
    assert np.allclose(batch[1], model.predict_proba_one("no way"), atol=1e-5)


@pytest.mark.parametrize(("text", "language"), [
    ("hej", "sv"), ("hi", "en"), ("ja", "sv"), ("yes", "en"), ("nä", "sv"), ("nope", "en"),
    ("tack", "sv"), ("thx", "en"), ("kan ni unlocka kabeln", "sv"),
    ("the cable is stuck", "en"), ("va kostar det", "sv"), ("laddaren funkar inte", "sv"),
    ("my card was declined at Odenplan", "en"), ("jag har tappat min bricka", "sv"),
    ("refund please", "en"), ("återbetalning", "sv"), ("kan jag fa en faktura", "sv"),
])
def test_language_detection(nlu: NluEngine, text: str, language: str) -> None:
    assert nlu.detector.detect(text) == language


def test_language_detection_on_held_out_data(nlu: NluEngine) -> None:
    tests = nlu_data.load_tests().examples
    accuracy = np.mean([nlu.detector.detect(e.text) == e.language for e in tests])
    assert accuracy >= 0.97


def test_untrained_detector_still_uses_word_cues() -> None:
    assert LanguageDetector().detect("hej") == "sv"
    assert LanguageDetector().detect("hello") == "en"


def _small(training: nlu_data.TrainingData, per_intent: int) -> nlu_data.TrainingData:
    kept, counts = [], dict[tuple[str, str], int]()
    for example in training.examples:
        key = (example.language, example.intent)
        if counts.get(key, 0) < per_intent:
            kept.append(example)
            counts[key] = counts.get(key, 0) + 1
    return nlu_data.TrainingData(kept, training.regexes, training.lookups, training.synonyms)


def test_the_model_is_cached_by_the_data_hash(tmp_path: Path,
                                              training: nlu_data.TrainingData) -> None:
    small = _small(training, 12)
    first = load_or_train(tmp_path, small)
    path = model_path(tmp_path, small)
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))  # any rewrite would move it forward
    second = load_or_train(tmp_path, small)
    assert path.stat().st_mtime_ns == stamp - 10**9
    assert second is not first and second.fingerprint == first.fingerprint
    assert second.trained_seconds == first.trained_seconds  # loaded, not trained again
    changed = _small(training, 13)
    load_or_train(tmp_path, changed)
    assert model_path(tmp_path, changed) != path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, model_path(tmp_path, changed).name])


def test_a_damaged_cache_file_is_replaced(tmp_path: Path,
                                          training: nlu_data.TrainingData) -> None:
    small = _small(training, 10)
    path = model_path(tmp_path, small)
    path.write_bytes(b"not a model")
    engine = load_or_train(tmp_path, small)
    assert engine.parse("hej")["intent"]["name"] == "greet"
    assert path.stat().st_size > 1000
