"""The evaluation report's shape, on a slice of CLINC150 and on our own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assistant.nlu import evaluate

CLINC = evaluate.SHARED_NLU / "clinc150" / "data_full.json"


@pytest.mark.skipif(not CLINC.exists(), reason="../shared/data/nlu is not beside the checkout")
def test_clinc150_slice_report(tmp_path: Path) -> None:
    report = evaluate.evaluate_clinc150(intents=8, report_dir=tmp_path, latency_calls=1000)
    assert report["intents"] == 9  # eight intents and the out-of-scope class
    assert 0 <= report["in_scope_accuracy"] <= 1 and 0 <= report["oos_recall"] <= 1
    # The threshold is chosen on val to reach the target recall there.
    assert report["val"]["oos_recall"] >= report["target_oos_recall_on_val"]
    assert report["in_scope_accuracy"] > 0.8
    assert set(report["per_intent"]["oos"]) == {"precision", "recall", "f1", "support"}
    assert report["classify_latency"]["n"] >= 1000
    assert report["classify_latency"]["p50_ms"] <= report["classify_latency"]["p99_ms"]
    assert Path(report["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_is_the_lowest_reaching_the_target_recall() -> None:
    classes = ["a", "b"]
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.8, 0.2]])
    gold = np.array(["a", "oos", "oos", "b"], dtype=object)
    assert evaluate.choose_threshold(probabilities, classes, gold, 0.5) == pytest.approx(0.6)
    # Rejecting both needs a threshold above 0.6; the next observed confidence is 0.8.
    assert evaluate.choose_threshold(probabilities, classes, gold, 1.0) == pytest.approx(0.8)
    assert evaluate.choose_threshold(probabilities, classes, gold, 0.0) == pytest.approx(0.55)


def test_percentiles() -> None:
    figures = evaluate.percentiles_ms([0.001] * 99 + [0.010])
    assert figures == {"p50_ms": 1.0, "p99_ms": 10.0, "max_ms": 10.0, "n": 100}
