"""The evaluation report's shape on a slice of CLINC150, and the out-of-scope decision rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from assistant.nlu import evaluate
from assistant.nlu.classifier import OutOfScopeRule

CLINC = evaluate.SHARED_NLU / "clinc150" / "data_full.json"


@pytest.mark.skipif(not CLINC.exists(), reason="../shared/data/nlu is not beside the checkout")
def test_clinc150_slice_report(tmp_path: Path) -> None:
    report = evaluate.evaluate_clinc150(intents=8, report_dir=tmp_path, latency_calls=1000)
    assert report["intents"] == 9  # eight intents and the out-of-scope class
    assert 0 <= report["in_scope_accuracy"] <= 1 and 0 <= report["oos_recall"] <= 1
    assert report["oos_method"].startswith("log-odds")
    # The threshold is chosen on val: it costs at most the budget of in-scope accuracy there,
    # and rejects at least what the out-of-scope class alone rejects.
    plain = report["without_threshold"]
    budget = report["max_in_scope_loss_on_val"]
    assert report["val"]["in_scope_accuracy"] >= plain["val"]["in_scope_accuracy"] - budget - 1e-4
    assert report["val"]["oos_recall"] >= plain["val"]["oos_recall"]
    assert report["oos_recall"] >= plain["test"]["oos_recall"]
    baseline = report["max_probability_rule"]
    assert baseline["val"]["in_scope_accuracy"] >= (
        plain["val"]["in_scope_accuracy"] - budget - 1e-4)
    assert 0 <= baseline["threshold"] <= 1
    assert report["in_scope_accuracy"] > 0.8
    assert set(report["per_intent"]["oos"]) == {"precision", "recall", "f1", "support"}
    assert report["classify_latency"]["n"] >= 1000
    assert 0 < report["training_cpu_seconds"] and 0 < report["training_seconds"]
    assert report["classify_latency"]["p50_ms"] <= report["classify_latency"]["p99_ms"]
    assert 0 < report["classify_latency"]["cpu_p50_ms"] <= report["classify_latency"]["cpu_p99_ms"]
    assert Path(report["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_rule_weighs_the_best_intent_against_the_oos_class() -> None:
    rule = OutOfScopeRule(oos_index=2, min_log_odds=math.log(2.0))
    probabilities = np.array([
        [0.70, 0.10, 0.20],  # 0.7 against 0.2: in scope
        [0.45, 0.20, 0.35],  # the best intent leads, but by less than 2:1 against oos
        [0.25, 0.25, 0.50],  # the oos class wins
        [0.50, 0.49, 0.01],  # two intents close to each other, oos far: in scope
    ])
    assert rule.log_odds(probabilities) == pytest.approx(
        np.log([0.70 / 0.20, 0.45 / 0.35, 0.25 / 0.50, 0.50 / 0.01]), rel=1e-6)
    assert rule.out_of_scope(probabilities).tolist() == [False, True, True, False]
    # One message at a time (the engine): only a rejection against a winning intent counts.
    assert [rule.rejects_one(p) for p in probabilities] == [False, True, False, False]
    # Without an oos class nothing is rejected by the rule.
    assert not OutOfScopeRule().out_of_scope(probabilities).any()
    assert not OutOfScopeRule().rejects_one(probabilities[1])


def test_the_rules_threshold_costs_at_most_the_in_scope_budget() -> None:
    # Ten in-scope rows of class 0 (nine right, one wrong) and two oos rows (class 2).
    odds = [8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.2]
    rows = [[o / (o + 1.05), 0.05 / (o + 1.05), 1 / (o + 1.05)] for o in odds]
    rows += [[0.3, 0.6, 0.1], [0.5, 0.1, 0.4], [0.2, 0.1, 0.7]]
    probabilities = np.array(rows)
    targets = np.array([0] * 10 + [2, 2])
    assert OutOfScopeRule.fit(probabilities, targets, 2, 0.0).min_log_odds == pytest.approx(
        math.log(1.2))  # nothing right may be lost: the lowest right row's log-odds
    rule = OutOfScopeRule.fit(probabilities, targets, 2, 0.2)  # two of ten may be lost
    assert rule.min_log_odds == pytest.approx(math.log(2.0))
    rejected = rule.out_of_scope(probabilities)
    assert rejected[:9].sum() == 2 and rejected[10:].all()
    # The oos row at 0.5 against 0.4 is rejected only with the threshold above log(1.25).
    assert rule.out_of_scope(probabilities[10:11]).all()
    assert evaluate.budget_threshold(np.array([]), 10, 0.2) == -math.inf


def test_the_baseline_threshold_on_the_maximum_probability() -> None:
    classes = ["a", "b"]
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.8, 0.2], [0.7, 0.3]])
    gold = np.array(["a", "oos", "oos", "b", "a"], dtype=object)
    # In-scope rows: 0.9 (right), 0.8 (wrong), 0.7 (right); a third may be lost: one row.
    assert evaluate.choose_threshold(probabilities, classes, gold, 1 / 3) == pytest.approx(0.9)
    assert evaluate.choose_threshold(probabilities, classes, gold, 0.0) == pytest.approx(0.7)
    predicted = evaluate._with_oos_decision(probabilities, classes, 0.7)
    assert predicted.tolist() == ["a", "oos", "oos", "a", "a"]


def test_percentiles() -> None:
    figures = evaluate.percentiles_ms([0.001] * 99 + [0.010])
    assert figures == {"p50_ms": 1.0, "p99_ms": 10.0, "max_ms": 10.0, "n": 100}
