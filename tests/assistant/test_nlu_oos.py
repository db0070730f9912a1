"""The live engine's out-of-scope decision is the one evaluated on CLINC150: the out_of_scope
intent when it wins, ``nlu_fallback`` when the best intent's log-odds against it are below the
threshold chosen on held-out data (or below the confidence threshold)."""

from __future__ import annotations

import copy
import math

import numpy as np

from assistant.nlu import data as nlu_data
from assistant.nlu.classifier import OutOfScopeRule
from assistant.nlu.engine import FALLBACK_INTENT, OUT_OF_SCOPE_INTENT, NluEngine


def _with_rule(nlu: NluEngine, rule: OutOfScopeRule) -> NluEngine:
    classifier = copy.copy(nlu.classifier)
    classifier.oos_rule = rule
    return NluEngine(classifier, nlu.detector, nlu.extractor, threshold=nlu.threshold)


def test_the_engine_has_a_rule_against_its_out_of_scope_intent(nlu: NluEngine) -> None:
    rule = nlu.classifier.oos_rule
    assert rule.oos_index is not None
    assert nlu.classifier.classes_[rule.oos_index] == OUT_OF_SCOPE_INTENT
    # Chosen on the held-out split among rows the argmax gets right, whose best intent
    # outweighs out_of_scope: a finite threshold of at least even odds.
    assert 0.0 <= rule.min_log_odds < math.inf
    assert nlu.info["min_log_odds_vs_out_of_scope"] == rule.min_log_odds


def test_too_close_to_out_of_scope_is_a_fallback_with_the_candidates(nlu: NluEngine) -> None:
    text = "the cable is stuck and I need to leave"
    plain = _with_rule(nlu, OutOfScopeRule(nlu.classifier.oos_rule.oos_index))
    ranking = plain.parse(text)["intent_ranking"]
    assert ranking[0]["name"] == "cable_stuck"
    odds = float(nlu.classifier.oos_rule.log_odds(nlu.classifier.predict_proba_one(text))[0])
    strict = _with_rule(nlu, OutOfScopeRule(nlu.classifier.oos_rule.oos_index, odds + 0.01))
    result = strict.parse(text)
    assert result["intent"]["name"] == FALLBACK_INTENT
    assert result["intent"]["confidence"] == round(1 - ranking[0]["confidence"], 6)
    assert result["intent_ranking"][1:] == ranking[:9]
    lenient = _with_rule(nlu, OutOfScopeRule(nlu.classifier.oos_rule.oos_index, odds - 0.01))
    assert lenient.parse(text)["intent"] == ranking[0]
    # When out_of_scope itself wins, the intent is out_of_scope whatever the threshold.
    weather = "will it snow in Stockholm tomorrow"
    assert strict.parse(weather)["intent"]["name"] == OUT_OF_SCOPE_INTENT


def test_the_engine_decides_as_the_evaluation_does(nlu: NluEngine) -> None:
    texts = [e.text for e in nlu_data.load_tests().examples] + [
        "will it snow in Stockholm tomorrow", "vad är meningen med livet", "qxzj vbbt",
        "laddaren", "hur mycket", "can you book me a table for two", "kabeln"]
    probabilities = nlu.classifier.predict_proba(texts)
    rule = nlu.classifier.oos_rule
    out = rule.out_of_scope(probabilities)
    low = probabilities.max(axis=1) < nlu.threshold
    classes = np.array(nlu.classifier.classes_, dtype=object)
    expected = np.where(out | low, "", classes[probabilities.argmax(axis=1)])
    # The batch and single-message paths agree to 1e-5: leave out exact ties with a threshold.
    near = (np.abs(rule.log_odds(probabilities) - rule.min_log_odds) < 1e-3) | (
        np.abs(probabilities.max(axis=1) - nlu.threshold) < 1e-4)
    assert near.sum() <= 2
    for text, p, exp, is_out, is_low, skip in zip(texts, probabilities, expected, out, low, near,
                                                  strict=True):
        if skip:
            continue
        name = nlu.parse(text)["intent"]["name"]
        if exp:
            assert name == exp, text
        elif p.argmax() == rule.oos_index and not is_low:
            assert name == OUT_OF_SCOPE_INTENT, text
        else:
            assert is_out or is_low
            assert name == FALLBACK_INTENT, text
    # Out-of-scope questions and gibberish end as out_of_scope or the fallback.
    for text in texts[-7:-4]:
        assert nlu.parse(text)["intent"]["name"] in {OUT_OF_SCOPE_INTENT, FALLBACK_INTENT}
