"""Invoice documents: what Swedish VAT law asks of a full invoice, in HTML and PDF, sv and en.

Expected figures are worked out by hand from the test tariff (5,00 kr per session plus
3,20 kr per kWh, 25 % VAT): a 100 kWh session costs 325,00 kr, 406,25 kr with VAT; three of
them 975,00 kr, VAT 243,75 kr, 1 218,75 kr in all.
"""

from __future__ import annotations

import html as htmllib
import io
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlmodel import Session
from stdnum import luhn

from billing_api import documents
from billing_api.documents import Formatter, invoice_document, render_html, render_pdf
from billing_api.models import ChargingSession, Invoice, Language
from billing_api.service import NotFound
from station_api import service as stations
from tests.billing_api.factories import (
    SELLER,
    make_credit_note,
    make_driver,
    make_invoice_with_lines,
    make_rated_session,
)

# What each language must print; {ocr} is the invoice's own reference.
EXPECTED = {
    Language.sv: {
        "dates": ["Fakturadatum 2026-11-01", "Förfallodatum 2026-11-15",
                  "Period 2026-10-01 \u2013 2026-10-31"],
        "lines": ["Startavgift 3 st 5,00 kr 25 % 15,00 kr",
                  "Energi 300 kWh 3,20 kr 25 % 960,00 kr"],
        "vat": ["25 % 975,00 kr 243,75 kr", "Summa exkl. moms 975,00 kr",
                "Moms totalt 243,75 kr", "Totalt inkl. moms 1 218,75 kr"],
        "payment": ["Betala till bankgiro 5050-1055 med OCR-nummer {ocr}", "Att betala",
                    "1 218,75 kr"],
        "history": [
            "2026-10-03 10:00 11:35 Kungsgatan garage · SE-STO-01 2 100 1:35 0:00 "
            "325,00 kr 406,25 kr",
            "Startavgift 1 st \u00d7 5,00 kr = 5,00 kr; Energi 100 kWh \u00d7 3,20 kr = 320,00 kr",
            "2026-10-04 10:00 11:00 SE-TEST-01 1 100 1:00 0:00 325,00 kr 406,25 kr",
            "2026-10-05 10:00 11:00 SE-TEST-01 1 100 1:00 0:00 325,00 kr 406,25 kr",
        ],
        "title": "FAKTURA",
    },
    Language.en: {
        "dates": ["Issue date 1 Nov 2026", "Due date 15 Nov 2026",
                  "Period 1 Oct 2026 \u2013 31 Oct 2026"],
        "lines": ["Session fee 3 session SEK5.00 25% SEK15.00",
                  "Energy 300 kWh SEK3.20 25% SEK960.00"],
        "vat": ["25% SEK975.00 SEK243.75", "Total excl. VAT SEK975.00",
                "Total VAT SEK243.75", "Total incl. VAT SEK1,218.75"],
        "payment": ["Pay to bankgiro 5050-1055 quoting OCR reference {ocr}", "Amount to pay",
                    "SEK1,218.75"],
        "history": [
            "03/10/2026, 10:00 11:35 Kungsgatan garage · SE-STO-01 2 100 1:35 0:00 "
            "SEK325.00 SEK406.25",
            "Session fee 1 session \u00d7 SEK5.00 = SEK5.00; "
            "Energy 100 kWh \u00d7 SEK3.20 = SEK320.00",
            "04/10/2026, 10:00 11:00 SE-TEST-01 1 100 1:00 0:00 SEK325.00 SEK406.25",
            "05/10/2026, 10:00 11:00 SE-TEST-01 1 100 1:00 0:00 SEK325.00 SEK406.25",
        ],
        "title": "INVOICE",
    },
}


def normalise(text: str) -> str:
    """Collapse babel's no-break spaces and minus signs, and all runs of white space."""
    text = text.replace("\u00a0", " ").replace("\u202f", " ").replace("\u2212", "-")
    return re.sub(r"\s+", " ", text).strip()


def html_text(page: str) -> str:
    return normalise(htmllib.unescape(re.sub(r"<[^>]+>", " ", page)))


def pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return normalise(" ".join(page.extract_text() for page in reader.pages))


def october(session: Session, language: Language) -> tuple[Invoice, list[ChargingSession]]:
    """Three 100 kWh sessions in October 2026 (10:00 local), one at a named site, invoiced."""
    driver = make_driver(session, name="Björk & Söner AB", language=language,
                         address="Industrivägen 4\n831 40 Östersund",
                         vat_number="SE559900112201", email="ekonomi@bjork.example")
    stations.create_site(session, site_id="KUNGSGATAN", name="Kungsgatan garage")
    stations.register_station(session, station_id="SE-STO-01", password=None,
                              site_id="KUNGSGATAN")
    rows = [
        make_rated_session(session, driver=driver, energy_wh=100_000, minutes=95,
                           station_id="SE-STO-01", connector_id=2,
                           start=datetime(2026, 10, 3, 8, 0, tzinfo=UTC)),
        *(make_rated_session(session, driver=driver, energy_wh=100_000,
                             start=datetime(2026, 10, day, 8, 0, tzinfo=UTC))
          for day in (4, 5)),
    ]
    return make_invoice_with_lines(session, driver=driver, sessions=rows), rows


@pytest.mark.parametrize("language", [Language.sv, Language.en])
def test_invoice_shows_what_the_vat_act_requires_and_the_charging_history(
    session: Session, language: Language
) -> None:
    invoice, _ = october(session, language)
    doc = invoice_document(session, invoice_id=invoice.id)
    page = render_html(doc)
    expected = EXPECTED[language]
    assert luhn.is_valid(doc.ocr)

    for text in (html_text(page), pdf_text(render_pdf(doc))):
        for required in (SELLER["name"], "Storgatan 12", "903 26 Umeå", SELLER["vat_number"],
                         SELLER["org_number"], "Björk & Söner AB", "Industrivägen 4",
                         "831 40 Östersund", "SE559900112201", "F0000001", doc.ocr):
            assert required in text
        for group in ("dates", "lines", "vat", "payment", "history"):
            for required in expected[group]:
                assert required.format(ocr=doc.ocr) in text, (group, required)
    assert f'<html lang="{language.value}">' in page
    assert expected["title"] in pdf_text(render_pdf(doc))


def test_credit_note_names_the_invoice_it_corrects_and_shows_negative_amounts(
    session: Session,
) -> None:
    invoice, rows = october(session, Language.sv)
    note = make_credit_note(session, invoice=invoice, sessions=rows[1:2],
                            reason="Sena mätvärden")
    doc = invoice_document(session, invoice_id=note.id)
    assert doc.credits_number == "F0000001"
    assert doc.total_ore == -40625

    for text in (html_text(render_html(doc)), pdf_text(render_pdf(doc))):
        assert "Kreditfaktura för faktura F0000001" in text
        assert "K0000001" in text
        assert "Orsak: Sena mätvärden" in text
        assert "-1 st 5,00 kr 25 % -5,00 kr" in text
        assert "-100 kWh 3,20 kr 25 % -320,00 kr" in text
        assert "25 % -325,00 kr -81,25 kr" in text
        assert "Totalt inkl. moms -406,25 kr" in text
        assert "Att kreditera -406,25 kr" in text
        # Its history is the session it reverses, and only that one.
        assert "2026-10-04 10:00 11:00 SE-TEST-01 1 100 1:00 0:00 -325,00 kr -406,25 kr" in text
        assert "2026-10-05" not in text
        assert "Förfallodatum" not in text  # nothing falls due on a credit note


def test_credit_note_in_english(session: Session) -> None:
    invoice, rows = october(session, Language.en)
    note = make_credit_note(session, invoice=invoice, sessions=rows[:1])
    doc = invoice_document(session, invoice_id=note.id)
    for text in (html_text(render_html(doc)), pdf_text(render_pdf(doc))):
        assert "Credit note for invoice F0000001" in text
        assert "Total incl. VAT -SEK406.25" in text
        assert "Amount credited" in text


def test_invoice_still_shows_a_session_a_credit_note_reversed(session: Session) -> None:
    invoice, rows = october(session, Language.sv)
    make_credit_note(session, invoice=invoice, sessions=rows[2:])
    assert rows[2].invoice_id is None  # freed for the next invoice

    doc = invoice_document(session, invoice_id=invoice.id)
    assert [entry.session_id for entry in doc.sessions] == [row.id for row in rows]
    assert [entry.incl_vat_ore for entry in doc.sessions] == [40625, 40625, 40625]
    assert sum(entry.excl_vat_ore for entry in doc.sessions) == doc.net_ore


def test_html_escapes_what_drivers_typed(session: Session) -> None:
    driver = make_driver(session, name='<script>alert("x")</script>', language=Language.en)
    row = make_rated_session(session, driver=driver)
    invoice = make_invoice_with_lines(session, driver=driver, sessions=[row])
    page = render_html(invoice_document(session, invoice_id=invoice.id))
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    # Self-contained: styles inline, nothing fetched from elsewhere.
    assert "<style>" in page
    assert not re.search(r"<(link|script|img)\b", page)


def test_pdf_falls_back_to_core_fonts_without_dejavu(
    session: Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    invoice, _ = october(session, Language.sv)
    doc = invoice_document(session, invoice_id=invoice.id)
    monkeypatch.setattr(documents, "FONT_DIR", tmp_path)  # an empty folder: no DejaVu
    pdf = render_pdf(doc)

    fonts = {str(font["/BaseFont"]) for page in PdfReader(io.BytesIO(pdf)).pages
             for font in page["/Resources"]["/Font"].values()}
    assert fonts and all("Helvetica" in name for name in fonts)
    text = pdf_text(pdf)
    assert "Totalt inkl. moms 1 218,75 kr" in text
    assert "903 26 Umeå" in text


def test_pdf_embeds_dejavu_when_present(session: Session) -> None:
    if not (documents.FONT_DIR / "DejaVuSans.ttf").is_file():
        pytest.skip("DejaVu fonts not installed (Debian package fonts-dejavu-core)")
    invoice, _ = october(session, Language.en)
    pdf = render_pdf(invoice_document(session, invoice_id=invoice.id))
    fonts = {str(font["/BaseFont"]) for page in PdfReader(io.BytesIO(pdf)).pages
             for font in page["/Resources"]["/Font"].values()}
    assert any("DejaVu" in name for name in fonts)


def test_unknown_invoice_is_not_found(session: Session) -> None:
    with pytest.raises(NotFound, match="no invoice 4711"):
        invoice_document(session, invoice_id=4711)


@pytest.mark.parametrize(("language", "amounts"), [
    (Language.sv, ("1 234,50 kr", "-1 234,50 kr", "0,0533 kr", "3,20 kr")),
    (Language.en, ("SEK1,234.50", "-SEK1,234.50", "SEK0.0533", "SEK3.20")),
])
def test_money_is_formatted_by_babel_without_losing_price_decimals(
    language: Language, amounts: tuple[str, ...]
) -> None:
    f = Formatter(language, "SEK")
    printed = (f.money(123450), f.money(-123450), f.price(Decimal("0.053300")),
               f.price(Decimal("3.200000")))
    assert tuple(normalise(text) for text in printed) == amounts


def test_durations_round_to_the_nearest_minute() -> None:
    f = Formatter(Language.sv, "SEK")
    assert f.duration(Decimal("1.5")) == "1:30"
    assert f.duration(Decimal("0.008333")) == "0:00"  # 29.99 s
    assert f.duration(Decimal("0.008334")) == "0:01"  # 30.0024 s
    assert f.duration(Decimal("26.25")) == "26:15"
