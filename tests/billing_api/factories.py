"""Small builders for billing tests: drivers with id tags, and rated sessions."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session, select

from billing_api.invoicing import record_cost_lines
from billing_api.models import (
    ChargingSession,
    Driver,
    DriverIdTag,
    Language,
    PaymentMethod,
    SessionStatus,
)
from billing_api.money import dumps
from billing_api.rating import rate
from station_api import service as stations
from station_api.models import Station, Transaction

_serial = itertools.count(1)

TARIFF: dict[str, Any] = {
    "id": "TEST-STD", "currency": "SEK", "last_updated": "2026-01-01T00:00:00Z",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": Decimal("5.00"), "vat": 25,
                               "step_size": 1}]},
        {"price_components": [{"type": "ENERGY", "price": Decimal("3.20"), "vat": 25,
                               "step_size": 1}]},
    ],
}


def make_driver(
    session: Session,
    *,
    name: str = "Anna Andersson",
    email: str | None = "anna@example.se",
    phone: str | None = None,
    language: Language = Language.sv,
    payment_method: PaymentMethod = PaymentMethod.invoice,
    id_tags: tuple[str, ...] | None = None,
    **fields: Any,
) -> Driver:
    """A driver with one id tag of their own unless ``id_tags`` says otherwise."""
    driver = Driver(name=name, email=email, phone=phone, language=language,
                    payment_method=payment_method, **fields)
    session.add(driver)
    session.flush()
    for tag in id_tags if id_tags is not None else (f"TAG-{next(_serial):06d}",):
        stations.create_id_tag(session, id_tag=tag)
        session.add(DriverIdTag(id_tag=tag, driver_id=driver.id))
    session.flush()
    return driver


def ensure_station(session: Session, station_id: str = "SE-TEST-01") -> Station:
    station = session.get(Station, station_id)
    if station is None:
        station = stations.register_station(session, station_id=station_id,
                                            password="correct-horse-battery")
    return station


def make_rated_session(
    session: Session,
    *,
    driver: Driver,
    start: datetime = datetime(2026, 10, 3, 8, 0, tzinfo=UTC),
    minutes: int = 60,
    energy_wh: int = 20_000,
    station_id: str = "SE-TEST-01",
    connector_id: int = 1,
) -> ChargingSession:
    """A stopped transaction and its session, rated with :data:`TARIFF` for real."""
    ensure_station(session, station_id)
    tag = session.exec(select(DriverIdTag.id_tag).where(DriverIdTag.driver_id == driver.id)).first()
    end = start + timedelta(minutes=minutes)
    tx = Transaction(station_id=station_id, connector_id=connector_id, id_tag=tag,
                     id_tag_status="Accepted", meter_start_wh=1000, start_timestamp=start,
                     meter_stop_wh=1000 + energy_wh, stop_timestamp=end)
    session.add(tx)
    session.flush()
    cdr = rate(TARIFF, {"time_zone": "Europe/Stockholm", "samples": [
        {"timestamp": start.isoformat(), "energy_wh": 1000},
        {"timestamp": end.isoformat(), "energy_wh": 1000 + energy_wh},
    ]})
    row = ChargingSession(
        transaction_id=tx.id, station_id=station_id, connector_id=connector_id, id_tag=tag,
        driver_id=driver.id, start_at=start, end_at=end, energy_wh=energy_wh,
        tariff_id=TARIFF["id"], tariff_version=1, currency="SEK",
        status=SessionStatus.rated,
        total_excl_vat_ore=int(cdr.total_cost.excl_vat * 100),
        total_incl_vat_ore=int(cdr.total_cost.incl_vat * 100),
        cdr=dumps(cdr.to_ocpi()), rated_at=end,
    )
    session.add(row)
    session.flush()
    record_cost_lines(session, row=row, cdr=json.loads(row.cdr or "{}"))
    return row


# ---------------------------------------------------------------- invoices, from the models

SELLER: dict[str, str] = {
    "name": "Laddnät Norr AB", "address": "Storgatan 12\n903 26 Umeå\nSverige",
    "org_number": "556123-4567", "vat_number": "SE556123456701",
    "bankgiro": "5050-1055", "email": "faktura@laddnat.example",
}


def _next_number(session: Session, series: str) -> int:
    from billing_api.models import InvoiceSeries

    row = session.get(InvoiceSeries, series)
    if row is None:
        row = InvoiceSeries(series=series, next_number=1)
    number = row.next_number
    row.next_number += 1
    session.add(row)
    session.flush()
    return number


def _vat_breakdown(lines: list[tuple[Decimal | None, int]]) -> list[dict[str, Any]]:
    from fractions import Fraction

    from billing_api.money import round_half_up

    bases: dict[Decimal | None, int] = {}
    for vat_rate, net in lines:
        key = None if vat_rate is None else Decimal(vat_rate).normalize()
        bases[key] = bases.get(key, 0) + net
    return [
        {"rate": None if pct is None else format(pct, "f"), "base_ore": base,
         "vat_ore": 0 if pct is None else int(round_half_up(Fraction(pct) * base / 100, 0))}
        for pct, base in bases.items()
    ]


def _issue(session: Session, *, kind: Any, series: str, driver: Driver,
           lines: list[dict[str, Any]], issue_date: Any, due_date: Any,
           **fields: Any) -> Any:
    from stdnum import luhn

    from billing_api.models import Invoice, InvoiceKind, InvoiceLine

    number = _next_number(session, series)
    base = ("2" if kind == InvoiceKind.credit_note else "1") + f"{number:07d}"
    vat = _vat_breakdown([(line["vat_rate"], line["net_ore"]) for line in lines])
    net = sum(line["net_ore"] for line in lines)
    vat_total = sum(item["vat_ore"] for item in vat)
    invoice = Invoice(
        kind=kind, series=series, number=number, driver_id=driver.id, issue_date=issue_date,
        due_date=due_date, currency=driver.currency, net_ore=net, vat_ore=vat_total,
        total_ore=net + vat_total, vat_breakdown=json.dumps(vat),
        ocr=base + luhn.calc_check_digit(base), language=driver.language,
        payment_method=driver.payment_method, buyer_name=driver.name,
        buyer_address=driver.address, buyer_email=driver.email,
        buyer_vat_number=driver.vat_number, seller=json.dumps(SELLER, ensure_ascii=False),
        **fields,
    )
    session.add(invoice)
    session.flush()
    for position, line in enumerate(lines, start=1):
        session.add(InvoiceLine(invoice_id=invoice.id, position=position, **line))
    session.flush()
    return invoice


def make_invoice_with_lines(
    session: Session,
    *,
    driver: Driver,
    sessions: list[ChargingSession],
    series: str = "F",
    issue_date: Any = None,
    period: tuple[Any, Any] | None = None,
    due_days: int = 14,
) -> Any:
    """An issued invoice billing ``sessions``, written straight into the tables: one line per
    (dimension, unit, unit price, VAT rate) summing the sessions' cost lines, VAT per rate on
    the summed net amounts. Defaults: issued 2026-11-01 for October 2026."""
    from datetime import date

    from billing_api.models import InvoiceKind, InvoiceStatus, SessionCostLine

    issue_date = issue_date or date(2026, 11, 1)
    period_start, period_end = period or (date(2026, 10, 1), date(2026, 11, 1))
    names = {"sv": {"FLAT": "Startavgift", "ENERGY": "Energi", "TIME": "Laddtid",
                    "PARKING_TIME": "Parkering"},
             "en": {"FLAT": "Session fee", "ENERGY": "Energy", "TIME": "Charging time",
                    "PARKING_TIME": "Parking"}}[driver.language.value]
    summed: dict[tuple[Any, ...], list[Any]] = {}
    ids = [row.id for row in sessions]
    for cost in session.exec(select(SessionCostLine)
                             .where(SessionCostLine.session_id.in_(ids))  # type: ignore[union-attr]
                             .order_by(SessionCostLine.id)):
        pct = None if cost.vat_rate is None else Decimal(cost.vat_rate).normalize()
        key = (cost.dimension, cost.unit, Decimal(cost.unit_price).normalize(), pct)
        total = summed.setdefault(key, [Decimal(0), 0])
        total[0] += Decimal(cost.quantity)
        total[1] += cost.net_ore
    lines = [
        {"dimension": dim, "description": names.get(dim, dim), "quantity": qty.normalize(),
         "unit": unit, "unit_price": price, "net_ore": net, "vat_rate": pct}
        for (dim, unit, price, pct), (qty, net) in summed.items()
    ]
    invoice = _issue(
        session, kind=InvoiceKind.invoice, series=series, driver=driver, lines=lines,
        issue_date=issue_date, due_date=issue_date + timedelta(days=due_days),
        period_start=period_start, period_end=period_end, status=InvoiceStatus.open,
    )
    for row in sessions:
        row.invoice_id = invoice.id
        session.add(row)
    session.flush()
    return invoice


def make_credit_note(
    session: Session,
    *,
    invoice: Any,
    sessions: list[ChargingSession],
    reason: str = "Sena mätvärden",
    series: str = "K",
    issue_date: Any = None,
) -> Any:
    """A credit note reversing what ``invoice`` billed for ``sessions``: their cost lines
    negated, each line naming its session, and the sessions freed to be billed again."""
    from datetime import date

    from billing_api.models import InvoiceKind, InvoiceStatus, SessionCostLine

    driver = session.get(Driver, invoice.driver_id)
    assert driver is not None
    lines = []
    for row in sessions:
        for cost in session.exec(select(SessionCostLine)
                                 .where(SessionCostLine.session_id == row.id)
                                 .order_by(SessionCostLine.id)):
            lines.append({
                "dimension": cost.dimension, "session_id": row.id,
                "description": f"Kreditering {cost.dimension} {row.station_id}",
                "quantity": -Decimal(cost.quantity).normalize(), "unit": cost.unit,
                "unit_price": Decimal(cost.unit_price).normalize(), "net_ore": -cost.net_ore,
                "vat_rate": cost.vat_rate,
            })
    issue_date = issue_date or date(2026, 11, 20)
    note = _issue(
        session, kind=InvoiceKind.credit_note, series=series, driver=driver, lines=lines,
        issue_date=issue_date, due_date=issue_date, status=InvoiceStatus.settled,
        credits_invoice_id=invoice.id, reason=reason,
    )
    for row in sessions:
        row.invoice_id = None
        session.add(row)
    session.flush()
    return note


# ---------------------------------------------------------------- direct debit


def make_invoice(
    session: Session,
    *,
    driver: Driver,
    total_ore: int,
    series: str = "F",
    issue_date: Any = None,
    due_days: int = 14,
) -> Any:
    """An open invoice of ``total_ore`` (VAT 25 % included) for ``driver``, with one line,
    the driver's currency, language and payment method copied in as at issue."""
    from datetime import date

    from billing_api.models import InvoiceKind, InvoiceStatus

    if total_ore % 5:
        raise ValueError("total_ore must split exactly into net and 25 % VAT: a multiple of 5")
    issue_date = issue_date or date(2026, 11, 1)
    net = total_ore * 4 // 5
    line = {"dimension": "ENERGY", "description": "Energi", "quantity": Decimal(1),
            "unit": "kWh", "unit_price": Decimal(net).scaleb(-2), "net_ore": net,
            "vat_rate": Decimal(25)}
    return _issue(session, kind=InvoiceKind.invoice, series=series, driver=driver,
                  lines=[line], issue_date=issue_date,
                  due_date=issue_date + timedelta(days=due_days), status=InvoiceStatus.open)


def bankgirot_mandate_advice(
    advices: list[tuple[str, str, str]],
    *,
    bankgiro: str = "50501055",
    customer_number: str = "123456",
    written_on: Any = None,
) -> bytes:
    """A mandate advice file as Bankgirot sends it (new layout, Technical Manual 8.3):
    TK01, one TK73 per ``(payer number, information code, comment code)``, TK09."""
    from datetime import date

    day = f"{written_on or date(2026, 11, 3):%Y%m%d}"
    records = [f"01AUTOGIRO{'':14}{day}{'':12}{'AG-MEDAVI':<20}{customer_number}{bankgiro:0>10}"]
    for payer, info, comment in advices:
        records.append(f"73{bankgiro:0>10}{payer:0>16}{'':33}{info}{comment}{day}{'':7}")
    records.append(f"09{day}9900{len(advices):07d}{'':59}")
    return ("\r\n".join(records) + "\r\n").encode("iso-8859-1")


def bankgirot_payment_specification(
    debits: list[tuple[str, int, str, str]],
    *,
    bankgiro: str = "50501055",
    customer_number: str = "123456",
    payment_date: Any = None,
) -> bytes:
    """A payment specification as Bankgirot sends it (new layout, Technical Manual 8.2):
    TK01, one TK15 section of TK82 records ``(payer number, amount in öre, reference, status
    code)``, TK09. The section and closing totals count the approved (status 0) debits."""
    from datetime import date

    day = f"{payment_date or date(2026, 11, 16):%Y%m%d}"
    approved = [amount for _, amount, _, status in debits if status == "0"]
    records = [
        f"01AUTOGIRO{'':14}{day}063012000000BET. SPEC & STOPP TK{customer_number}"
        f"{bankgiro:0>10}",
        f"15{'53680012345':0>35}{day}00001{sum(approved):018d}{'':3}{len(approved):08d} ",
    ]
    for payer, amount, reference, status in debits:
        records.append(f"82{day}0{'':4}{payer:0>16}{amount:012d}{bankgiro:0>10}"
                       f"{reference:<16}{'':10}{status}")
    records.append(f"09{day}9900{1:06d}{len(approved):012d}{0:06d}{0:012d}{0:06d}{0:012d}"
                   f"{'':12}")
    return ("\r\n".join(records) + "\r\n").encode("iso-8859-1")
