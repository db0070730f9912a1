"""The training data: every intent of DESIGN.md, in both languages, varied and unambiguous."""

from __future__ import annotations

from collections import Counter, defaultdict

from assistant.nlu import data as nlu_data


def test_every_design_intent_has_forty_examples_per_language(
        training: nlu_data.TrainingData) -> None:
    counts = Counter((e.language, e.intent) for e in training.examples)
    for language in nlu_data.LANGUAGES:
        for intent in nlu_data.DESIGN_INTENTS:
            assert counts[(language, intent)] >= 40, (language, intent, counts[(language, intent)])
    assert set(training.intents) == set(nlu_data.DESIGN_INTENTS)


def test_no_example_is_given_two_intents(training: nlu_data.TrainingData) -> None:
    intents_of: dict[str, set[str]] = defaultdict(set)
    for example in training.examples:
        intents_of[example.text.lower().strip()].add(example.intent)
    assert {t: i for t, i in intents_of.items() if len(i) > 1} == {}


def test_no_example_is_repeated(training: nlu_data.TrainingData) -> None:
    repeated = [t for t, n in Counter(e.text.lower() for e in training.examples).items() if n > 1]
    assert repeated == []


def test_test_data_is_held_out_and_covers_every_intent(training: nlu_data.TrainingData) -> None:
    tests = nlu_data.load_tests()
    seen = {e.text.lower() for e in training.examples}
    assert [e.text for e in tests.examples if e.text.lower() in seen] == []
    for language in nlu_data.LANGUAGES:
        assert {e.intent for e in tests.examples if e.language == language} == set(
            nlu_data.DESIGN_INTENTS)


def test_annotations_become_plain_text_with_entity_spans() -> None:
    text, entities = nlu_data.parse_annotated(
        'starta [uttag 2](connector) på [SE-STO-ODEN-01](station_id) '
        '[Oden]{"entity": "site", "value": "STO-ODEN"}')
    assert text == "starta uttag 2 på SE-STO-ODEN-01 Oden"
    assert [(e.entity, text[e.start:e.end], e.value) for e in entities] == [
        ("connector", "uttag 2", "uttag 2"),
        ("station_id", "SE-STO-ODEN-01", "SE-STO-ODEN-01"),
        ("site", "Oden", "STO-ODEN"),
    ]


def test_regexes_lookups_and_synonyms_are_read(training: nlu_data.TrainingData) -> None:
    assert {"station_id", "email", "invoice"} <= set(training.regexes)
    assert "Odenplan" in training.lookups["site"]
    assert training.synonyms["odenplan"] == "STO-ODEN"


def test_domain_lists_every_intent_and_entity() -> None:
    import yaml

    domain = yaml.safe_load((nlu_data.INTENTS_DIR / "domain.yml").read_text(encoding="utf-8"))
    assert set(domain["intents"]) >= set(nlu_data.DESIGN_INTENTS)
    assert {"station_id", "connector", "amount", "date", "time", "energy", "email", "phone",
            "site", "invoice"} <= set(domain["entities"])
