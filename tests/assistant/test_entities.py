"""Entities with exact values, in Swedish and English, relative to a fixed day."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from assistant.nlu import data as nlu_data
from assistant.nlu.dates import find_dates
from assistant.nlu.entities import EntityExtractor, normalise_phone

TODAY = date(2025, 11, 19)  # a Wednesday


@pytest.fixture(scope="module")
def extractor() -> EntityExtractor:
    training = nlu_data.load()
    return EntityExtractor(training.regexes, training.lookups, training.synonyms)


def values(extractor: EntityExtractor, text: str) -> list[tuple[str, Any, str]]:
    return [(e["entity"], e["value"], text[e["start"]:e["end"]])
            for e in extractor.extract(text, today=TODAY)]


@pytest.mark.parametrize(("text", "value"), [
    ("förra månaden", {"from": "2025-10-01", "to": "2025-10-31"}),
    ("i oktober", {"from": "2025-10-01", "to": "2025-10-31"}),
    ("i december", {"from": "2024-12-01", "to": "2024-12-31"}),  # the one behind us
    ("last October", {"from": "2025-10-01", "to": "2025-10-31"}),
    ("in November", {"from": "2025-11-01", "to": "2025-11-30"}),
    ("last November", {"from": "2024-11-01", "to": "2024-11-30"}),
    ("October 2024", {"from": "2024-10-01", "to": "2024-10-31"}),
    ("i oktober förra året", {"from": "2024-10-01", "to": "2024-10-31"}),
    ("yesterday", "2025-11-18"),
    ("igår", "2025-11-18"),
    ("i går", "2025-11-18"),
    ("i förrgår", "2025-11-17"),
    ("the day before yesterday", "2025-11-17"),
    ("imorgon", "2025-11-20"),
    ("today", "2025-11-19"),
    ("3 november", "2025-11-03"),
    ("den 3 november", "2025-11-03"),
    ("on 5th November", "2025-11-05"),
    ("November 5", "2025-11-05"),
    ("12/10", "2025-10-12"),
    ("2025-10-03", "2025-10-03"),
    ("i tisdags", "2025-11-18"),
    ("last Tuesday", "2025-11-18"),
    ("last Wednesday", "2025-11-12"),
    ("på fredag", "2025-11-21"),
    ("on Friday", "2025-11-21"),
    ("two weeks ago", "2025-11-05"),
    ("för två veckor sedan", "2025-11-05"),
    ("last week", {"from": "2025-11-10", "to": "2025-11-16"}),
    ("förra veckan", {"from": "2025-11-10", "to": "2025-11-16"}),
    ("this month", {"from": "2025-11-01", "to": "2025-11-30"}),
    ("den här månaden", {"from": "2025-11-01", "to": "2025-11-30"}),
    ("last year", {"from": "2024-01-01", "to": "2024-12-31"}),
    ("i fjol", {"from": "2024-01-01", "to": "2024-12-31"}),
    ("i år", {"from": "2025-01-01", "to": "2025-12-31"}),
    ("for 2024", {"from": "2024-01-01", "to": "2024-12-31"}),
    ("since January", {"from": "2025-01-01", "to": "2025-11-19"}),
    ("sedan januari", {"from": "2025-01-01", "to": "2025-11-19"}),
    ("mellan 1 och 15 mars", {"from": "2025-03-01", "to": "2025-03-15"}),
    ("between 1 and 15 March", {"from": "2025-03-01", "to": "2025-03-15"}),
])
def test_dates_and_periods(text: str, value: Any) -> None:
    found = list(find_dates(f"visa laddningar {text} tack", TODAY))
    assert [f.value for f in found] == [value]
    assert found[0].text == text


@pytest.mark.parametrize("text", ["may I have a receipt", "sat at the charger", "200 kr",
                                  "uttag 2", "call 0701234567"])
def test_ordinary_words_and_numbers_are_not_dates(text: str) -> None:
    assert list(find_dates(text, TODAY)) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("jag vill sätta in 200 kr", [("amount", "200.00", "200 kr")]),
    ("top up 500 SEK please", [("amount", "500.00", "500 SEK")]),
    ("fyll på 300 kronor", [("amount", "300.00", "300 kronor")]),
    ("jag debiterades 612,50 kr", [("amount", "612.50", "612,50 kr")]),
    ("why was it 4.50 SEK", [("amount", "4.50", "4.50 SEK")]),
    ("sätt in 1 000 kr", [("amount", "1000.00", "1 000 kr")]),
    ("SEK 1500 top-up", [("amount", "1500.00", "SEK 1500")]),
    ("jag behöver 40 kWh", [("energy", 40.0, "40 kWh")]),
    ("12,5 kwh so far", [("energy", 12.5, "12,5 kwh")]),
    ("ring mig på 070-123 45 67", [("phone", "+46701234567", "070-123 45 67")]),
    ("call me on +46 70 123 45 67", [("phone", "+46701234567", "+46 70 123 45 67")]),
    ("0046701234567 please", [("phone", "+46701234567", "0046701234567")]),
    ("ring 08-123 456 78", [("phone", "+46812345678", "08-123 456 78")]),
    ("mejla anna.berg@example.se", [("email", "anna.berg@example.se",
                                     "anna.berg@example.se")]),
    ("stoppa SE-STO-CITY-01", [("station_id", "SE-STO-CITY-01", "SE-STO-CITY-01")]),
    ("is se-gbg-hamn-01 free", [("station_id", "SE-GBG-HAMN-01", "se-gbg-hamn-01")]),
    ("lås upp uttag 2", [("connector", 2, "uttag 2")]),
    ("unlock connector #1", [("connector", 1, "connector #1")]),
    ("starta kontakt nr 2", [("connector", 2, "kontakt nr 2")]),
    ("faktura F-2024-0012", [("invoice", "F-2024-0012", "F-2024-0012")]),
    ("ladda kl 7", [("time", "07:00", "kl 7")]),
    ("klar klockan 23", [("time", "23:00", "klockan 23")]),
    ("starta 07:30", [("time", "07:30", "07:30")]),
    ("charge at 6am", [("time", "06:00", "at 6am")]),
    ("ready by 6.30 pm", [("time", "18:30", "6.30 pm")]),
    ("klar till halv åtta", [("time", "07:30", "halv åtta")]),
    ("kvart i sju", [("time", "06:45", "kvart i sju")]),
    ("börja vid midnatt", [("time", "00:00", "midnatt")]),
    ("I'm leaving at 7, charge cheaply", [("time", "07:00", "at 7")]),
])
def test_entity_values(extractor: EntityExtractor, text: str, expected: list[Any]) -> None:
    assert values(extractor, text) == expected


def test_several_entities_in_one_message(extractor: EntityExtractor) -> None:
    text = "kan ni unlocka kabeln på uttag 2 vid SE-STO-ODEN-01, ring 0701234567"
    assert values(extractor, text) == [
        ("connector", 2, "uttag 2"),
        ("station_id", "SE-STO-ODEN-01", "SE-STO-ODEN-01"),
        ("phone", "+46701234567", "0701234567"),
    ]


def test_stop_at_80_percent_is_not_a_time(extractor: EntityExtractor) -> None:
    assert values(extractor, "stoppa vid 80 procent") == []
    assert values(extractor, "stop at 80 percent") == []


def test_site_names_map_to_site_ids_through_synonyms(extractor: EntityExtractor) -> None:
    assert values(extractor, "är laddaren på odenplan ledig") == [("site", "STO-ODEN", "odenplan")]
    # Written without å/ä/ö, as on many phones.
    assert values(extractor, "laddare vid Goteborg hamnen") == [
        ("site", "GBG-HAMN", "Goteborg hamnen")]


def test_lookups_from_a_provider_are_used(extractor: EntityExtractor) -> None:
    with_provider = EntityExtractor(extractor.regexes, extractor.lookups, extractor.synonyms,
                                    lookup_provider=lambda: {
                                        "site": {"Kiruna gruvan": "KIR-GRUV"},
                                        "station_id": {"CP0042": "CP0042"}})
    text = "is CP0042 at kiruna gruvan free"
    assert values(with_provider, text) == [("station_id", "CP0042", "CP0042"),
                                           ("site", "KIR-GRUV", "kiruna gruvan")]
    entity = with_provider.extract(text, today=TODAY)[1]
    assert entity["processors"] == ["EntitySynonymMapper"]


@pytest.mark.parametrize(("raw", "e164"), [
    ("0701234567", "+46701234567"), ("+46 (0)70-123 45 67", "+46701234567"),
    ("031-123 45 67", "+46311234567"), ("012", None), ("+46 70 1", None),
])
def test_phone_numbers_are_normalised(raw: str, e164: str | None) -> None:
    assert normalise_phone(raw) == e164
