"""Whole billing journeys: a station's OCPP traffic becomes a rated, paid, invoiced session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from ocpp.v16 import call

from billing_api import service as billing
from billing_api.events import LowBalance, SessionRated
from billing_api.tariffs import parse_tariff
from chargedesk.db import session_scope
from tests.billing_api.factories import TARIFF
from tests.station_api.ocpp_client import station
from tests.station_api.test_central_system import capture, eventually, register

START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@pytest.fixture
def network(engine: Any) -> None:
    register(engine, "CP-1")
    with session_scope(engine) as session:
        billing.import_tariff(session, tariff=parse_tariff(TARIFF), created_by="test",
                              valid_from=datetime(2026, 1, 1, tzinfo=UTC))
        billing.assign_tariff(session, tariff_id=TARIFF["id"], created_by="test",
                              valid_from=datetime(2026, 1, 1, tzinfo=UTC))


def make_driver(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": "Erik Johansson", "email": "erik@example.se", "language": "sv", **fields}
    response = api.post("/api/v1/billing/drivers", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def charge(server: Any, tag: str, kwh: int, *, start: datetime = START) -> int:
    """One session: authorize, start, a meter value, stop after an hour."""
    async with station(server.ws_url, "CP-1") as cp:
        await cp.boot()
        auth = await cp.call(call.Authorize(id_tag=tag))
        assert auth.id_tag_info["status"] == "Accepted", auth.id_tag_info
        started = await cp.call(call.StartTransaction(
            connector_id=1, id_tag=tag, meter_start=1000, timestamp=iso(start)))
        tx = started.transaction_id
        middle = start + timedelta(minutes=30)
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
            "timestamp": iso(middle), "sampledValue": [
                {"value": str(1000 + kwh * 500), "measurand": "Energy.Active.Import.Register",
                 "unit": "Wh"}]}]))
        await cp.call(call.StopTransaction(meter_stop=1000 + kwh * 1000,
                                           timestamp=iso(start + timedelta(hours=1)),
                                           transaction_id=tx, reason="EVDisconnected"))
    return tx


async def test_a_prepaid_session_is_rated_paid_from_the_wallet_and_invoiced(
    server, network, api
) -> None:
    rated = capture(server, SessionRated, LowBalance)
    driver = make_driver(api, payment_method="prepaid", id_tags=["RFID-ERIK"])
    top_up = api.post(f"/api/v1/billing/drivers/{driver['id']}/top-ups",
                      json={"amount": "150.00"}, headers={"Idempotency-Key": "swish-0001"})
    assert top_up.status_code == 201, top_up.text
    again = api.post(f"/api/v1/billing/drivers/{driver['id']}/top-ups",
                     json={"amount": "150.00"}, headers={"Idempotency-Key": "swish-0001"})
    assert again.json()["id"] == top_up.json()["id"]

    await charge(server, "RFID-ERIK", kwh=20)
    await eventually(lambda: any(isinstance(e, SessionRated) for e in rated))
    # 5.00 fee + 20 kWh x 3.20 = 69.00 net, 86.25 with 25 % VAT.
    sessions = api.get("/api/v1/billing/sessions",
                       params={"driver_id": driver["id"]}).json()
    assert [(s["status"], s["total_incl_vat_ore"]) for s in sessions] == [("rated", 8625)]
    balance = api.get(f"/api/v1/billing/drivers/{driver['id']}/balance").json()
    assert balance["balance"] == "63.75"
    # 63.75 left, above the 50.00 minimum but below the 100.00 low-balance mark.
    assert any(isinstance(e, LowBalance) for e in rated)

    explanation = api.get(f"/api/v1/billing/sessions/{sessions[0]['id']}/explanation")
    assert explanation.status_code == 200, explanation.text
    cdr = api.get(f"/api/v1/billing/sessions/{sessions[0]['id']}/cdr").json()
    assert cdr["total_energy"] == 20 and cdr["total_cost"]["incl_vat"] == 86.25

    invoice = api.post(f"/api/v1/billing/drivers/{driver['id']}/invoices")
    assert invoice.status_code == 201, invoice.text
    body = invoice.json()
    assert (body["total_ore"], body["status"]) == (8625, "paid")
    pdf = api.get(f"/api/v1/billing/invoices/{body['id']}/pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content[:5] == b"%PDF-"


async def test_a_prepaid_driver_below_the_minimum_is_refused_at_the_station(
    server, network, api
) -> None:
    make_driver(api, payment_method="prepaid", id_tags=["RFID-POOR"])
    async with station(server.ws_url, "CP-1") as cp:
        await cp.boot()
        auth = await cp.call(call.Authorize(id_tag="RFID-POOR"))
    assert auth.id_tag_info["status"] == "Blocked"


async def test_late_meter_values_credit_the_invoice_and_bill_the_session_again(
    server, network, api
) -> None:
    rated = capture(server, SessionRated)
    driver = make_driver(api, id_tags=["RFID-ANNA"], name="Anna")
    tx = await charge(server, "RFID-ANNA", kwh=10)
    await eventually(lambda: len(rated) == 1)
    first = api.post(f"/api/v1/billing/drivers/{driver['id']}/invoices").json()
    assert first["total_ore"] == (500 + 3200) * 125 // 100

    # The station's register at the stop was wrong; a late reading says 12 kWh were used.
    async with station(server.ws_url, "CP-1") as cp:
        await cp.boot()
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
            "timestamp": iso(START + timedelta(hours=1)), "sampledValue": [
                {"value": str(1000 + 12_000), "measurand": "Energy.Active.Import.Register",
                 "unit": "Wh", "context": "Transaction.End"}]}]))
    await eventually(lambda: len(rated) == 2)
    invoices = api.get("/api/v1/billing/invoices", params={"driver_id": driver["id"]}).json()
    note = next(i for i in invoices if i["kind"] == "credit_note")
    assert note["total"] == "-46.25"
    original = api.get(f"/api/v1/billing/invoices/{first['id']}").json()
    assert original["total_ore"] == first["total_ore"]  # never edited
    second = api.post(f"/api/v1/billing/drivers/{driver['id']}/invoices").json()
    assert second["total_ore"] == (500 + 12 * 320) * 125 // 100
