"""How well the NLU understands: on our own held-out test data (plus 5-fold cross-validation
on the training data) and on two public benchmarks, CLINC150 and BANKING77.

CLINC150 follows Larson et al. (EMNLP 2019): train on ``train`` (with ``oos_train`` as an
extra class when ``oos_class``), choose the out-of-scope threshold on ``val`` and report on
``test``: *in-scope accuracy* is the share of in-scope queries given their exact intent (an
in-scope query rejected as out-of-scope is wrong), *out-of-scope recall* the share of
out-of-scope queries rejected. A query is out of scope by the engine's own
:class:`~assistant.nlu.classifier.OutOfScopeRule` (the out-of-scope class wins, or the best
intent's log-odds against it are below a threshold), whose threshold is the highest costing
at most ``max_in_scope_loss`` of in-scope accuracy on ``val``: a rule fixed before the test
set is read. For comparison the report also gives a threshold on the maximum probability
chosen by the same rule on ``val``, and the argmax alone.

Latency is per single message through :meth:`NluEngine.parse` (the ``/model/parse`` code
path) or, for the benchmarks, the classifier's single-message path, timed with
``perf_counter`` over at least 1,000 messages.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix
from sklearn.model_selection import StratifiedKFold

from assistant.nlu import data as nlu_data
from assistant.nlu import engine as nlu_engine
from assistant.nlu.classifier import (
    DEFAULT_IN_SCOPE_LOSS,
    IntentClassifier,
    OutOfScopeRule,
    budget_threshold,
)

SHARED_NLU = Path(__file__).resolve().parents[3] / "shared" / "data" / "nlu"
OOS = "oos"
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class _Stopwatch:
    """Wall-clock and CPU seconds of a block: on a shared machine the wall clock also counts
    other processes' turns, the CPU time only ours (all threads)."""

    def __enter__(self) -> _Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": round(statistics.median(ordered) * 1000, 4), "p99_ms": round(at(0.99), 4),
            "max_ms": round(ordered[-1] * 1000, 4), "n": len(ordered)}


def time_each(fn: Callable[[str], object], texts: Sequence[str], *, minimum: int = 1000
              ) -> dict[str, float]:
    """Per-call latency of ``fn`` over ``texts`` (cycled to at least ``minimum`` calls): wall
    clock, plus the calling thread's CPU time (``cpu_p50_ms``, ``cpu_p99_ms``), which on a
    shared machine leaves out the time other processes had the core."""
    for text in texts[:50]:  # warm caches and lazy imports first
        fn(text)
    samples, cpu = [], []
    count = max(minimum, len(texts))
    for i in range(count):
        text = texts[i % len(texts)]
        cpu_started = time.thread_time()
        started = time.perf_counter()
        fn(text)
        samples.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
    cpu_figures = percentiles_ms(cpu)
    return {**percentiles_ms(samples), "cpu_p50_ms": cpu_figures["p50_ms"],
            "cpu_p99_ms": cpu_figures["p99_ms"]}


def per_intent(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, float]]:
    labels = sorted(set(gold))
    report = classification_report(gold, predicted, labels=labels, output_dict=True,
                                   zero_division=0)
    return {label: {"precision": round(report[label]["precision"], 4),
                    "recall": round(report[label]["recall"], 4),
                    "f1": round(report[label]["f1-score"], 4),
                    "support": int(report[label]["support"])} for label in labels}


def confusion_png(gold: Sequence[str], predicted: Sequence[str], path: Path, title: str) -> str:
    """Draw the confusion matrix (rows: true intent, columns: predicted), row-normalised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(set(gold) | set(predicted))
    matrix = confusion_matrix(gold, predicted, labels=labels).astype(float)
    sums = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)
    size = max(6.0, min(40.0, 0.28 * len(labels) + 2))
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axes.set_title(title)
    if len(labels) <= 40:
        axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        axes.set_yticks(range(len(labels)), labels, fontsize=7)
        for i, j in zip(*np.nonzero(matrix), strict=True):
            axes.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                      color="white" if normalised[i, j] > 0.5 else "black")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return str(path)


def _entity_scores(examples: Sequence[nlu_data.Example], results: Sequence[dict[str, Any]]
                   ) -> dict[str, float]:
    """Exact (entity, start, end) matches against the test annotations."""
    gold = {(i, e.entity, e.start, e.end) for i, x in enumerate(examples) for e in x.entities}
    found = {(i, e["entity"], e["start"], e["end"]) for i, r in enumerate(results)
             for e in r["entities"]}
    # Only score entity types the test data annotates, so extra finds of other kinds
    # (a date inside a scheduling request that the annotator left bare) are not "wrong".
    kinds = {g[1] for g in gold}
    found = {f for f in found if f[1] in kinds}
    hit = len(gold & found)
    precision = hit / len(found) if found else 0.0
    recall = hit / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "annotated": len(gold)}


# ------------------------------------------------------------------ our data


def evaluate_ours(*, report_dir: Path | None = None, folds: int = 5, today: date | None = None,
                  latency_calls: int = 1000, progress: Progress = _quiet) -> dict[str, Any]:
    training, tests = nlu_data.load(), nlu_data.load_tests()
    progress(f"ours: training on {len(training.examples)} examples")
    with _Stopwatch() as training_time:
        engine = nlu_engine.train(training)
    today = today or date.today()
    results = [engine.parse(x.text, today=today) for x in tests.examples]
    gold = [x.intent for x in tests.examples]
    predicted = [r["intent"]["name"] for r in results]
    # A fallback on an out-of-scope message is the right outcome for the driver.
    lenient = [x.intent == p or (x.intent == "out_of_scope" and p == nlu_engine.FALLBACK_INTENT)
               for x, p in zip(tests.examples, predicted, strict=True)]
    by_language = {}
    for language in nlu_data.LANGUAGES:
        picks = [i for i, x in enumerate(tests.examples) if x.language == language]
        by_language[language] = round(np.mean([gold[i] == predicted[i] for i in picks]), 4)
    language_accuracy = np.mean([r["language"] == x.language
                                 for r, x in zip(results, tests.examples, strict=True)])
    progress(f"ours: {folds}-fold cross-validation")
    cv = cross_validate(training, folds=folds)
    progress("ours: parse latency")
    texts = [x.text for x in tests.examples]
    latency = time_each(lambda t: engine.parse(t, today=today), texts, minimum=latency_calls)
    report: dict[str, Any] = {
        "data": "ours",
        "train_examples": len(training.examples),
        "test_examples": len(tests.examples),
        "training_seconds": round(training_time.wall, 3),
        "training_cpu_seconds": round(training_time.cpu, 3),
        "test_accuracy": round(float(np.mean(np.array(gold) == np.array(predicted))), 4),
        "test_accuracy_fallback_as_oos": round(float(np.mean(lenient)), 4),
        "test_accuracy_by_language": by_language,
        "fallback_rate": round(predicted.count(nlu_engine.FALLBACK_INTENT) / len(predicted), 4),
        "threshold": engine.threshold,
        "language_accuracy": round(float(language_accuracy), 4),
        "entities": _entity_scores(tests.examples, results),
        "cv": cv,
        "parse_latency": latency,
        "per_intent": per_intent(gold, predicted),
        "errors": [{"text": x.text, "gold": x.intent, "predicted": p}
                   for x, p in zip(tests.examples, predicted, strict=True) if x.intent != p],
    }
    if report_dir is not None:
        report["confusion_png"] = confusion_png(gold, predicted, report_dir / "ours_confusion.png",
                                                "ChargeDesk test data")
    return report


def cross_validate(training: nlu_data.TrainingData, *, folds: int = 5, seed: int = 0
                   ) -> dict[str, Any]:
    """Stratified k-fold accuracy of the intent classifier (argmax, no fallback)."""
    texts, labels = np.array(training.texts(), dtype=object), np.array(training.labels())
    scores = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_index, test_index in splitter.split(texts, labels):
        model = IntentClassifier(seed=seed).fit(list(texts[fit_index]), list(labels[fit_index]))
        probabilities = model.predict_proba(list(texts[test_index]))
        predicted = np.array(model.classes_)[probabilities.argmax(axis=1)]
        scores.append(float(np.mean(predicted == labels[test_index])))
    return {"folds": folds, "accuracy_mean": round(float(np.mean(scores)), 4),
            "accuracy_std": round(float(np.std(scores)), 4),
            "fold_accuracies": [round(s, 4) for s in scores]}


# ------------------------------------------------------------------ CLINC150


def _with_oos_decision(probabilities: np.ndarray, classes: Sequence[str], threshold: float
                       ) -> np.ndarray:
    """Argmax, with the maximum probability's threshold (the baseline rule)."""
    predicted = np.array(classes, dtype=object)[probabilities.argmax(axis=1)]
    predicted[probabilities.max(axis=1) < threshold] = OOS
    return predicted


def _with_rule(probabilities: np.ndarray, classes: Sequence[str], rule: OutOfScopeRule
               ) -> np.ndarray:
    predicted = np.array(classes, dtype=object)[probabilities.argmax(axis=1)]
    predicted[rule.out_of_scope(probabilities)] = OOS
    return predicted


def _clinc_scores(gold: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    in_scope = gold != OOS
    accuracy = float(np.mean(predicted[in_scope] == gold[in_scope]))
    recall = float(np.mean(predicted[~in_scope] == OOS)) if (~in_scope).any() else 0.0
    return accuracy, recall


def _figures(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    accuracy, recall = _clinc_scores(gold, predicted)
    return {"in_scope_accuracy": round(accuracy, 4), "oos_recall": round(recall, 4)}


def choose_threshold(probabilities: np.ndarray, classes: Sequence[str], gold: np.ndarray,
                     max_in_scope_loss: float) -> float:
    """The baseline's threshold on the maximum probability: the highest that rejects at most
    ``max_in_scope_loss`` (a share of the in-scope rows) of the in-scope rows the argmax gets
    right on these (validation) data, as :meth:`OutOfScopeRule.fit` does for the log-odds."""
    predicted = np.array(classes, dtype=object)[probabilities.argmax(axis=1)]
    in_scope = gold != OOS
    correct = in_scope & (predicted == gold)
    return max(0.0, budget_threshold(probabilities.max(axis=1)[correct], int(in_scope.sum()),
                                     max_in_scope_loss))


def evaluate_clinc150(*, path: Path = SHARED_NLU / "clinc150" / "data_full.json",
                      report_dir: Path | None = None, oos_class: bool = True,
                      max_in_scope_loss: float = DEFAULT_IN_SCOPE_LOSS,
                      intents: int | None = None, latency_calls: int = 1000,
                      progress: Progress = _quiet) -> dict[str, Any]:
    """``intents`` keeps only the first N intents (sorted), for quick runs and tests. Without
    ``oos_class`` there is no class to weigh against and the maximum probability decides."""
    sets = json.loads(path.read_text(encoding="utf-8"))
    keep: set[str] | None = None
    if intents is not None:
        keep = set(sorted({label for _, label in sets["train"]})[:intents])

    def rows(*names: str) -> list[tuple[str, str]]:
        out = []
        for name in names:
            for text, label in sets[name]:
                label = OOS if name.startswith("oos") else label
                if keep is None or label in keep or label == OOS:
                    out.append((text, label))
        return out

    train = rows("train", "oos_train") if oos_class else rows("train")
    val, test = rows("val", "oos_val"), rows("test", "oos_test")
    progress(f"clinc150: training on {len(train)} queries")
    with _Stopwatch() as training_time:
        model = IntentClassifier().fit([t for t, _ in train], [lab for _, lab in train],
                                       val_texts=[t for t, _ in val],
                                       val_labels=[lab for _, lab in val],
                                       out_of_scope=OOS if oos_class else None,
                                       max_in_scope_loss=max_in_scope_loss)
    val_gold = np.array([lab for _, lab in val], dtype=object)
    val_p = model.predict_proba([t for t, _ in val])
    test_gold = np.array([lab for _, lab in test], dtype=object)
    test_p = model.predict_proba([t for t, _ in test])
    # The baseline: a threshold on the maximum probability, chosen on val by the same budget.
    threshold = choose_threshold(val_p, model.classes_, val_gold, max_in_scope_loss)
    baseline = {"threshold": round(threshold, 6),
                "val": _figures(val_gold, _with_oos_decision(val_p, model.classes_, threshold)),
                "test": _figures(test_gold,
                                 _with_oos_decision(test_p, model.classes_, threshold))}
    if oos_class:
        rule = model.oos_rule
        method = "log-odds of the best intent against the oos class"
        val_predicted = _with_rule(val_p, model.classes_, rule)
        predicted = _with_rule(test_p, model.classes_, rule)
    else:
        method = "maximum probability"
        val_predicted = _with_oos_decision(val_p, model.classes_, threshold)
        predicted = _with_oos_decision(test_p, model.classes_, threshold)
    accuracy, recall = _clinc_scores(test_gold, predicted)
    progress("clinc150: latency")
    latency = time_each(model.predict_proba_one, [t for t, _ in test], minimum=latency_calls)
    report: dict[str, Any] = {
        "data": "clinc150",
        "train_queries": len(train), "test_queries": len(test), "intents": len(model.classes_),
        "oos_class": oos_class, "max_in_scope_loss_on_val": max_in_scope_loss,
        "oos_method": method,
        "threshold": round(model.oos_rule.min_log_odds if oos_class else threshold, 6),
        "val": _figures(val_gold, val_predicted),
        "in_scope_accuracy": round(accuracy, 4), "oos_recall": round(recall, 4),
        "max_probability_rule": baseline,
        "without_threshold": {
            "val": _figures(val_gold, _with_oos_decision(val_p, model.classes_, -1.0)),
            "test": _figures(test_gold, _with_oos_decision(test_p, model.classes_, -1.0))},
        "training_seconds": round(training_time.wall, 2),
        "training_cpu_seconds": round(training_time.cpu, 2),
        "classify_latency": latency,
        "per_intent": per_intent(list(test_gold), list(predicted)),
    }
    if report_dir is not None:
        report["confusion_png"] = confusion_png(list(test_gold), list(predicted),
                                                report_dir / "clinc150_confusion.png",
                                                "CLINC150 test (with oos)")
    return report


# ------------------------------------------------------------------ BANKING77


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def evaluate_banking77(*, directory: Path = SHARED_NLU / "banking77",
                       report_dir: Path | None = None, latency_calls: int = 1000,
                       progress: Progress = _quiet) -> dict[str, Any]:
    train, test = _read_csv(directory / "train.csv"), _read_csv(directory / "test.csv")
    progress(f"banking77: training on {len(train)} queries")
    with _Stopwatch() as training_time:
        model = IntentClassifier().fit([t for t, _ in train], [lab for _, lab in train])
    gold = [lab for _, lab in test]
    probabilities = model.predict_proba([t for t, _ in test])
    predicted = list(np.array(model.classes_)[probabilities.argmax(axis=1)])
    progress("banking77: latency")
    latency = time_each(model.predict_proba_one, [t for t, _ in test], minimum=latency_calls)
    report: dict[str, Any] = {
        "data": "banking77", "train_queries": len(train), "test_queries": len(test),
        "intents": len(model.classes_),
        "accuracy": round(float(np.mean(np.array(gold) == np.array(predicted))), 4),
        "training_seconds": round(training_time.wall, 2),
        "training_cpu_seconds": round(training_time.cpu, 2),
        "classify_latency": latency,
        "per_intent": per_intent(gold, predicted),
    }
    if report_dir is not None:
        report["confusion_png"] = confusion_png(gold, predicted,
                                                report_dir / "banking77_confusion.png",
                                                "BANKING77 test")
    return report


def run(which: str, *, report_dir: Path | None = None, progress: Progress = _quiet
        ) -> dict[str, Any]:
    """``which``: ours, clinc150, banking77 or all."""
    runners = {"ours": evaluate_ours, "clinc150": evaluate_clinc150,
               "banking77": evaluate_banking77}
    names = list(runners) if which == "all" else [which]
    return {name: runners[name](report_dir=report_dir, progress=progress) for name in names}


def summary(reports: dict[str, Any]) -> str:
    lines = []
    if "ours" in reports:
        r = reports["ours"]
        lines.append(
            f"ours: test accuracy {r['test_accuracy']:.1%} "
            f"(sv {r['test_accuracy_by_language']['sv']:.1%}, "
            f"en {r['test_accuracy_by_language']['en']:.1%}; fallback counted as out-of-scope "
            f"{r['test_accuracy_fallback_as_oos']:.1%}), {r['cv']['folds']}-fold CV "
            f"{r['cv']['accuracy_mean']:.1%} ± {r['cv']['accuracy_std']:.1%}, language "
            f"{r['language_accuracy']:.1%}, entities F1 {r['entities']['f1']:.1%}, training "
            f"{r['training_seconds']:.2f} s (CPU {r['training_cpu_seconds']:.2f} s), parse p50 "
            f"{r['parse_latency']['p50_ms']:.3f} ms "
            f"p99 {r['parse_latency']['p99_ms']:.3f} ms (thread CPU "
            f"{r['parse_latency']['cpu_p50_ms']:.3f} / {r['parse_latency']['cpu_p99_ms']:.3f} ms)")
    if "clinc150" in reports:
        r = reports["clinc150"]
        lines.append(
            f"clinc150: in-scope accuracy {r['in_scope_accuracy']:.1%}, out-of-scope recall "
            f"{r['oos_recall']:.1%} ({r['oos_method']}, threshold {r['threshold']:.3f} from "
            f"val, where {r['val']['in_scope_accuracy']:.1%} / {r['val']['oos_recall']:.1%}; "
            f"maximum probability's threshold from val "
            f"{r['max_probability_rule']['test']['in_scope_accuracy']:.1%} / "
            f"{r['max_probability_rule']['test']['oos_recall']:.1%}; without threshold "
            f"{r['without_threshold']['test']['in_scope_accuracy']:.1%} / "
            f"{r['without_threshold']['test']['oos_recall']:.1%}), training "
            f"{r['training_seconds']:.0f} s "
            f"(CPU {r['training_cpu_seconds']:.0f} s),"
            f" classify p50 {r['classify_latency']['p50_ms']:.3f} ms p99 "
            f"{r['classify_latency']['p99_ms']:.3f} ms")
    if "banking77" in reports:
        r = reports["banking77"]
        lines.append(
            f"banking77: accuracy {r['accuracy']:.1%}, training {r['training_seconds']:.0f} s "
            f"(CPU {r['training_cpu_seconds']:.0f} s), "
            f"classify p50 {r['classify_latency']['p50_ms']:.3f} ms p99 "
            f"{r['classify_latency']['p99_ms']:.3f} ms")
    return "\n".join(lines)
