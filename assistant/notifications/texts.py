"""What a notification says, in Swedish and English.

Money is exact: amounts are kept in öre and shown with two decimals, Swedish "1 234,50 kr",
English "SEK 1,234.50" (the assistant's own forms). Plain spaces, no non-breaking ones: an
SMS with a character outside GSM-7 is sent as UCS-2, at less than half the length per part.
Times are local to Europe/Stockholm.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from assistant.notifications.models import NotificationKind as K

ZONE = ZoneInfo("Europe/Stockholm")
LANGUAGES = ("sv", "en")
_MONTHS = {
    "sv": ("januari", "februari", "mars", "april", "maj", "juni", "juli", "augusti",
           "september", "oktober", "november", "december"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
}


def _grouped(amount: Decimal, places: int, language: str) -> str:
    text = f"{amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):,.{places}f}"
    if language == "sv":  # 1,234.50 -> 1 234,50
        return text.replace(",", " ").replace(".", ",")
    return text


def money(amount: Decimal, currency: str, language: str) -> str:
    """``Decimal("12.5")`` → "12,50 kr" / "SEK 12.50" (ROUND_HALF_UP to the öre)."""
    number = _grouped(amount, 2, language)
    if language == "sv":
        return f"{number} kr" if currency == "SEK" else f"{number} {currency}"
    return f"{currency} {number}"


def money_ore(ore: int, currency: str, language: str) -> str:
    return money(Decimal(ore).scaleb(-2), currency, language)


def kwh(energy_wh: int, language: str) -> str:
    """Wh as kWh with two decimals: 12345 → "12,35 kWh" / "12.35 kWh"."""
    return f"{_grouped(Decimal(energy_wh).scaleb(-3), 2, language)} kWh"


def clock(at: datetime) -> str:
    return at.astimezone(ZONE).strftime("%H:%M")


def day(value: date, language: str) -> str:
    """ "3 december 2026" / "3 December 2026"."""
    return f"{value.day} {_MONTHS[language][value.month - 1]} {value.year}"


def moment(at: datetime, language: str) -> str:
    """A departure: "3 december kl. 07:00" / "07:00 on 3 December"."""
    local = at.astimezone(ZONE)
    month = _MONTHS[language][local.month - 1]
    if language == "sv":
        return f"{local.day} {month} kl. {local:%H:%M}"
    return f"{local:%H:%M} on {local.day} {month}"


def place(data: dict[str, Any], language: str) -> str:
    """ "SE-01 uttag 2 (Hamnen)" / "SE-01 connector 2 (Hamnen)"."""
    p = data["place"]
    word = "uttag" if language == "sv" else "connector"
    text = f"{p['station']} {word} {p['connector']}"
    return f"{text} ({p['site']})" if p.get("site") else text


def _idle_fee(data: dict[str, Any], language: str) -> str:
    fee = data.get("idle_fee")
    if not fee:
        return ""
    price = money(Decimal(fee["per_minute"]), fee["currency"], language)
    after = fee.get("after_minutes")
    if language == "sv":
        text = f" Tid ansluten utan laddning kostar {price} per minut"
        return text + (f" från {after} minuter efter start." if after else ".")
    text = f" Time connected without charging costs {price} per minute"
    return text + (f" from {after} minutes after the start." if after else ".")


def _plan(data: dict[str, Any], language: str) -> str:
    sv = language == "sv"
    text = (f"{kwh(data['energy_wh'], language)} till {moment(_dt(data['departure_at']), language)}"
            if sv else
            f"{kwh(data['energy_wh'], language)} by {moment(_dt(data['departure_at']), language)}")
    text += f" vid {place(data, language)}." if sv else f" at {place(data, language)}."
    expected = data.get("expected_energy_wh")
    if expected is not None and expected < data["energy_wh"]:
        text += (f" Vi räknar med att hinna ladda {kwh(expected, language)}." if sv else
                 f" We expect to reach {kwh(expected, language)} in time.")
    cost = data.get("expected_cost")
    if cost is not None:
        text += (f" Beräknad kostnad {money(Decimal(cost), 'SEK', language)}." if sv else
                 f" Expected cost {money(Decimal(cost), 'SEK', language)}.")
    return text


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def render(kind: K, data: dict[str, Any], language: str) -> tuple[str, str]:
    """(subject line, text) of a notification in ``language`` ("sv" or "en")."""
    sv = language == "sv"
    if kind is K.session_started:
        at = clock(_dt(data["at"]))
        return (("Laddningen har startat", f"Laddningen har startat vid {place(data, language)} "
                 f"kl. {at}. Vi hör av oss när den är klar.") if sv else
                ("Charging started", f"Charging started at {place(data, language)} at {at}. "
                 "We will let you know when it has finished."))
    if kind is K.session_finished:
        energy = kwh(data["energy_wh"], language)
        cost = money_ore(data["total_ore"], data["currency"], language)
        return (("Laddningen är klar", f"Laddningen vid {place(data, language)} är klar: "
                 f"{energy} för {cost}.") if sv else
                ("Charging finished", f"Charging at {place(data, language)} has finished: "
                 f"{energy} for {cost}."))
    if kind is K.session_suspended:
        return (("Bilen har pausat laddningen", f"Bilen har pausat laddningen vid "
                 f"{place(data, language)}: batteriet kan vara fullt, eller så har laddningen "
                 f"stoppats i bilen.{_idle_fee(data, language)}") if sv else
                ("Your car paused charging", f"Your car has paused charging at "
                 f"{place(data, language)}: the battery may be full, or charging was stopped "
                 f"in the car.{_idle_fee(data, language)}"))
    if kind is K.station_faulted:
        error = data.get("error_code") or "Faulted"
        return (("Fel på laddaren", f"Laddaren {place(data, language)} har rapporterat ett fel "
                 f"({error}) och laddar inte din bil. Svara på det här meddelandet eller "
                 "kontakta oss om du behöver hjälp.") if sv else
                ("Charger fault", f"The charger {place(data, language)} has reported a fault "
                 f"({error}) and is not charging your car. Reply to this message or contact "
                 "us if you need help."))
    if kind is K.idle_warning:
        return (("Kabeln sitter kvar", f"Laddningen vid {place(data, language)} är avslutad "
                 "men bilen står kvar ansluten. Flytta gärna bilen så att nästa förare kan "
                 f"ladda.{_idle_fee(data, language)}") if sv else
                ("Your cable is still connected", f"Charging at {place(data, language)} has "
                 "ended but your car is still connected. Please move it so that the next "
                 f"driver can charge.{_idle_fee(data, language)}"))
    if kind is K.low_balance:
        balance = money_ore(data["balance_ore"], data["currency"], language)
        threshold = money_ore(data["threshold_ore"], data["currency"], language)
        return (("Lågt saldo", f"Ditt förbetalda saldo är {balance}, under {threshold}. "
                 "Fyll på för att kunna fortsätta ladda.") if sv else
                ("Low balance", f"Your prepaid balance is {balance}, below {threshold}. "
                 "Top up to keep charging."))
    if kind is K.invoice_issued:
        total = money_ore(data["total_ore"], data["currency"], language)
        due = day(date.fromisoformat(data["due_date"]), language)
        method = data.get("payment_method")
        if sv:
            text = f"Faktura {data['number']} på {total} är utfärdad."
            if method == "prepaid":
                text += " Den är redan betald från ditt förbetalda saldo."
            elif method in ("autogiro", "sepa"):
                text += f" Beloppet dras från ditt konto den {due}."
            else:
                text += f" Betala senast {due} med OCR-nummer {data['ocr']}."
            return f"Faktura {data['number']}", text
        text = f"Invoice {data['number']} for {total} has been issued."
        if method == "prepaid":
            text += " It is already paid from your prepaid balance."
        elif method in ("autogiro", "sepa"):
            text += f" The amount will be debited from your account on {due}."
        else:
            text += f" Please pay by {due} with OCR reference {data['ocr']}."
        return f"Invoice {data['number']}", text
    if kind is K.debit_failed:
        total = money_ore(data["total_ore"], data["currency"], language)
        where = (f"bankgiro {data['bankgiro']}" if data["currency"] == "SEK"
                 else f"IBAN {data['iban']}")
        if sv:
            text = (f"Vi kunde inte dra {total} för faktura {data['number']} från ditt konto. "
                    f"Betala gärna själv till {where} med referens {data['ocr']}.")
            if data.get("blocked"):
                text += " Dina laddbrickor är spärrade tills fakturan är betald."
            return "Betalningen misslyckades", text
        text = (f"We could not debit {total} for invoice {data['number']} from your account. "
                f"Please pay it yourself to {where} with reference {data['ocr']}.")
        if data.get("blocked"):
            text += " Your charging tags are blocked until the invoice is paid."
        return "Direct debit failed", text
    if kind is K.plan_confirmed:
        return (("Laddplanen är bekräftad", f"Laddplanen är bekräftad: {_plan(data, language)}")
                if sv else
                ("Charging plan confirmed",
                 f"Your charging plan is confirmed: {_plan(data, language)}"))
    if kind is K.plan_changed:
        return (("Laddplanen är ändrad", f"Laddplanen är ändrad: {_plan(data, language)}")
                if sv else
                ("Charging plan changed", f"Your charging plan has changed: "
                 f"{_plan(data, language)}"))
    if kind is K.plan_cancelled:
        return (("Laddplanen är avbruten", f"Laddplanen vid {place(data, language)} är "
                 "avbruten. Bilen laddar nu utan plan.") if sv else
                ("Charging plan cancelled", f"Your charging plan at {place(data, language)} "
                 "has been cancelled. The car now charges without a plan."))
    raise ValueError(f"no text for {kind!r}")
