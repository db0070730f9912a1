"""Message texts: exact money (Decimal, ROUND_HALF_UP), Swedish and English forms."""

from __future__ import annotations

from decimal import Decimal

from assistant.notifications import texts
from assistant.notifications.models import NotificationKind

PLACE = {"place": {"station": "SE-01", "connector": 2, "site": "Hamnen"}}


def test_money_is_exact_in_both_languages() -> None:
    assert texts.money(Decimal("12.5"), "SEK", "sv") == "12,50 kr"
    assert texts.money(Decimal("12.5"), "SEK", "en") == "SEK 12.50"
    assert texts.money(Decimal("1234.005"), "SEK", "sv") == "1 234,01 kr"  # half up
    assert texts.money(Decimal("0.004"), "SEK", "sv") == "0,00 kr"
    assert texts.money_ore(125_000, "SEK", "en") == "SEK 1,250.00"
    assert texts.money_ore(-4625, "SEK", "sv") == "-46,25 kr"
    assert texts.money_ore(990, "EUR", "sv") == "9,90 EUR"
    assert texts.kwh(12_345, "sv") == "12,35 kWh" and texts.kwh(500, "en") == "0.50 kWh"


def test_no_character_outside_gsm7_spacing() -> None:
    subject, text = texts.render(NotificationKind.low_balance, {
        "balance_ore": 123_456, "threshold_ore": 10_000, "currency": "SEK"}, "sv")
    assert "\xa0" not in text
    assert text == ("Ditt förbetalda saldo är 1 234,56 kr, under 100,00 kr. Fyll på för att "
                    "kunna fortsätta ladda.")
    assert subject == "Lågt saldo"


def test_a_plan_says_what_it_expects_when_it_falls_short() -> None:
    data = {**PLACE, "departure_at": "2026-12-03T06:00:00+00:00", "energy_wh": 30_000,
            "expected_energy_wh": 24_500, "expected_cost": "41.6", "transaction_id": 7}
    assert texts.render(NotificationKind.plan_changed, data, "sv")[1] == (
        "Laddplanen är ändrad: 30,00 kWh till 3 december kl. 07:00 vid SE-01 uttag 2 "
        "(Hamnen). Vi räknar med att hinna ladda 24,50 kWh. Beräknad kostnad 41,60 kr.")
    assert texts.render(NotificationKind.plan_confirmed, data, "en")[1] == (
        "Your charging plan is confirmed: 30.00 kWh by 07:00 on 3 December at SE-01 "
        "connector 2 (Hamnen). We expect to reach 24.50 kWh in time. Expected cost SEK 41.60.")


def test_a_failed_debit_in_euro_points_to_the_iban() -> None:
    data = {"number": "F0000042", "total_ore": 9_900, "currency": "EUR", "ocr": "4204",
            "failures": 3, "blocked": True, "bankgiro": "5050-1055", "iban": "DE89 3704"}
    assert texts.render(NotificationKind.debit_failed, data, "en")[1] == (
        "We could not debit EUR 99.00 for invoice F0000042 from your account. Please pay it "
        "yourself to IBAN DE89 3704 with reference 4204. Your charging tags are blocked "
        "until the invoice is paid.")
