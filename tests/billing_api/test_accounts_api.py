"""Operators' and agents' billing REST: who may do what, and the bank-file round trip."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from chargedesk.db import session_scope
from tests.billing_api.factories import bankgirot_mandate_advice, make_rated_session


def test_agents_read_but_only_operators_move_money(server, api, agent_key) -> None:
    driver = api.post("/api/v1/billing/drivers", json={
        "name": "Erik", "payment_method": "prepaid", "id_tags": ["RFID-E1"]}).json()
    with httpx.Client(base_url=server.base_url,
                      headers={"Authorization": f"Bearer {agent_key}"}) as agent:
        assert agent.get(f"/api/v1/billing/drivers/{driver['id']}").status_code == 200
        refused = agent.post(f"/api/v1/billing/drivers/{driver['id']}/top-ups",
                             json={"amount": "100.00"}, headers={"Idempotency-Key": "k-123456"})
        assert refused.status_code == 403
        assert agent.post("/api/v1/billing/runs", json={"period": "2026-10"}).status_code == 403
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert anonymous.get("/api/v1/billing/invoices").status_code == 401


def test_a_top_up_needs_an_idempotency_key_and_a_sane_amount(api) -> None:
    driver = api.post("/api/v1/billing/drivers", json={
        "name": "Erik", "payment_method": "prepaid"}).json()
    url = f"/api/v1/billing/drivers/{driver['id']}/top-ups"
    assert api.post(url, json={"amount": "100.00"}).status_code == 422
    assert api.post(url, json={"amount": "10.001"},
                    headers={"Idempotency-Key": "key-000001"}).status_code == 422
    assert api.post(url, json={"amount": "-5"},
                    headers={"Idempotency-Key": "key-000002"}).status_code == 422


def test_a_driver_cannot_be_created_on_direct_debit_without_a_mandate(api) -> None:
    response = api.post("/api/v1/billing/drivers",
                        json={"name": "Acme", "payment_method": "autogiro"})
    assert response.status_code == 422
    assert "mandate" in response.json()["detail"]


def test_an_autogiro_mandate_goes_out_in_a_file_and_comes_back_active(server, api) -> None:
    driver = api.post("/api/v1/billing/drivers", json={"name": "Acme AB"}).json()
    mandate = api.post("/api/v1/billing/mandates", json={
        "driver_id": driver["id"], "scheme": "autogiro", "holder_name": "Acme AB",
        "clearing_number": "8327-9", "account_number": "123 456 789-7",
        "personal_number": "800928-6249"})
    assert mandate.status_code == 201, mandate.text
    payer = mandate.json()["payer_number"]
    other = api.post("/api/v1/billing/drivers", json={"name": "Bo"}).json()
    bad = api.post("/api/v1/billing/mandates", json={
        "driver_id": other["id"], "scheme": "autogiro", "holder_name": "Acme AB",
        "clearing_number": "8327-9", "account_number": "123 456 789-8",
        "personal_number": "800928-6249"})
    assert bad.status_code == 422 and "check digit" in bad.json()["detail"], (other, bad.text)

    exported = api.post("/api/v1/billing/exports/autogiro-mandates")
    assert exported.status_code == 201, exported.text
    content = api.get(f"/api/v1/billing/bank-files/{exported.json()['id']}")
    assert content.text.splitlines()[1].startswith("04")
    assert api.post("/api/v1/billing/exports/autogiro-mandates").status_code == 204

    advice = bankgirot_mandate_advice([(payer, "04", "32")])
    imported = api.post("/api/v1/billing/imports/autogiro-mandate-result",
                        params={"filename": "medavi.txt"}, content=advice,
                        headers={"Content-Type": "text/plain"})
    assert imported.status_code == 200, imported.text
    assert imported.json()["activated"] == 1
    again = api.post("/api/v1/billing/imports/autogiro-mandate-result",
                     params={"filename": "medavi.txt"}, content=advice,
                     headers={"Content-Type": "text/plain"})
    assert again.json()["already_imported"] is True
    assert api.get(f"/api/v1/billing/drivers/{driver['id']}").json()["payment_method"] == \
        "autogiro"


def test_runs_invoices_and_credit_notes_over_rest(server, api, engine) -> None:
    driver = api.post("/api/v1/billing/drivers", json={
        "name": "Anna", "email": "anna@example.se", "id_tags": ["RFID-A1"]}).json()
    from billing_api.models import Driver

    with session_scope(engine) as session:
        make_rated_session(session, driver=session.get(Driver, driver["id"]),
                           start=datetime(2026, 10, 5, 7, tzinfo=UTC))
    run = api.post("/api/v1/billing/runs", json={"period": "2026-10"})
    assert run.status_code == 201, run.text
    assert run.json()["invoices"] == 1
    assert api.post("/api/v1/billing/runs", json={"period": "2026-13"}).status_code == 422
    invoice = api.get("/api/v1/billing/invoices", params={"driver_id": driver["id"]}).json()[0]
    detail = api.get(f"/api/v1/billing/invoices/{invoice['invoice_id']}").json()
    assert detail["display_number"] == "F0000001" and detail["total_ore"] == 8625
    assert [line["dimension"] for line in detail["lines"]] == ["FLAT", "ENERGY"]
    html = api.get(f"/api/v1/billing/invoices/{invoice['invoice_id']}/html")
    assert "F0000001" in html.text and "86,25" in html.text

    note = api.post(f"/api/v1/billing/invoices/{invoice['invoice_id']}/credit-notes",
                    json={"reason": "wrong station", "amount": "10.00"})
    assert note.status_code == 201, note.text
    assert (note.json()["kind"], note.json()["total_ore"]) == ("credit_note", -1250)
    full = api.post(f"/api/v1/billing/invoices/{invoice['invoice_id']}/credit-notes",
                    json={"reason": "all of it"})
    assert full.status_code == 422  # partly credited already: credit the rest by amount

    sent = api.post(f"/api/v1/billing/invoices/{invoice['invoice_id']}/send")
    assert sent.status_code == 202 and sent.json()["to"] == "anna@example.se"


def test_a_dispute_is_opened_and_decided_by_staff(server, api, engine) -> None:
    driver = api.post("/api/v1/billing/drivers", json={"name": "Bo", "id_tags": ["RFID-B"]}
                      ).json()
    from billing_api.models import Driver

    with session_scope(engine) as session:
        row = make_rated_session(session, driver=session.get(Driver, driver["id"]),
                                 energy_wh=20)
        session_id = row.id
    opened = api.post("/api/v1/billing/disputes", json={
        "driver_id": driver["id"], "session_id": session_id, "reason": "nothing charged"})
    assert opened.status_code == 201, opened.text
    assert opened.json()["proposed_credit_ore"] == 506  # 5.00 fee + 0.02 kWh x 3.20
    decided = api.post(f"/api/v1/billing/disputes/{opened.json()['id']}/decision",
                       json={"approve": True})
    assert decided.json()["status"] == "approved"
    assert api.get("/api/v1/billing/disputes", params={"status": "open"}).json() == []
