"""What the assistant can ask of billing for a driver, and only for that driver."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlmodel import select

from billing_api import invoicing, support, wallets
from billing_api.models import (
    DisputeStatus,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    PaymentMethod,
    SessionCostLine,
)
from billing_api.service import BillingError, NotFound
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver, make_rated_session

SETTINGS = Settings()


def test_a_driver_is_found_by_tag_parent_tag_phone_or_email(session) -> None:
    from station_api import service as stations

    driver = make_driver(session, phone="+46701234567", email="Anna@Example.se",
                         id_tags=("FLEET-1",))
    stations.create_id_tag(session, id_tag="VAN-7", parent_id_tag="FLEET-1")
    assert support.find_driver(session, id_tag="FLEET-1").id == driver.id
    assert support.find_driver(session, id_tag="VAN-7").id == driver.id
    assert support.find_driver(session, phone="+46701234567").id == driver.id
    assert support.find_driver(session, email="anna@example.se").id == driver.id
    with pytest.raises(NotFound):
        support.find_driver(session, phone="+46700000000")


def test_history_lists_the_period_and_its_total(session) -> None:
    driver = make_driver(session)
    make_rated_session(session, driver=driver, start=datetime(2026, 10, 3, 8, tzinfo=UTC))
    make_rated_session(session, driver=driver, start=datetime(2026, 10, 9, 8, tzinfo=UTC),
                       energy_wh=10_000)
    make_rated_session(session, driver=driver, start=datetime(2026, 11, 2, 8, tzinfo=UTC))
    history = support.billing_history(session, driver_id=driver.id, since=date(2026, 10, 1),
                                      until=date(2026, 11, 1), settings=SETTINGS)
    assert [s.energy_kwh for s in history.sessions] == [Decimal(20), Decimal(10)]
    # 86.25 + (5 + 32) x 1.25 = 86.25 + 46.25
    assert history.total_incl_vat == Decimal("132.50")


def test_another_drivers_session_is_not_found(session) -> None:
    anna = make_driver(session)
    erik = make_driver(session, name="Erik")
    row = make_rated_session(session, driver=anna)
    with pytest.raises(NotFound):
        support.explain_cost(session, driver_id=erik.id, session_id=row.id)
    with pytest.raises(NotFound):
        support.open_dispute(session, driver_id=erik.id, session_id=row.id, reason="not me",
                             opened_by="assistant")


def test_a_failed_charge_is_proposed_back_in_full(session) -> None:
    driver = make_driver(session)
    row = make_rated_session(session, driver=driver, energy_wh=50)
    dispute = support.open_dispute(session, driver_id=driver.id, session_id=row.id,
                                   reason="the car never charged", opened_by="assistant")
    assert dispute.proposed_credit_ore == row.total_excl_vat_ore
    again = support.open_dispute(session, driver_id=driver.id, session_id=row.id,
                                 reason="hello?", opened_by="assistant")
    assert again.id == dispute.id


def test_an_approved_dispute_on_an_invoiced_session_gives_a_credit_note(session) -> None:
    driver = make_driver(session)
    row = make_rated_session(session, driver=driver, energy_wh=50)
    invoice = invoicing.invoice_driver_now(session, driver_id=driver.id, settings=SETTINGS,
                                           created_by="test")
    dispute = support.open_dispute(session, driver_id=driver.id, session_id=row.id,
                                   reason="no charge", opened_by="assistant")
    decided = support.decide_dispute(session, dispute_id=dispute.id, approve=True,
                                     decided_by="agent:lisa", settings=SETTINGS)
    note = session.get(Invoice, decided.credit_invoice_id)
    assert decided.status == DisputeStatus.approved
    assert note.kind == InvoiceKind.credit_note and note.credits_invoice_id == invoice.id
    assert note.total_ore == -invoice.total_ore
    assert invoice.status == InvoiceStatus.credited
    with pytest.raises(BillingError, match="already approved"):
        support.decide_dispute(session, dispute_id=dispute.id, approve=False,
                               decided_by="agent:lisa", settings=SETTINGS)


def test_an_approved_dispute_before_invoicing_refunds_a_prepaid_wallet(session) -> None:
    driver = make_driver(session, payment_method=PaymentMethod.prepaid)
    row = make_rated_session(session, driver=driver)
    dispute = support.open_dispute(session, driver_id=driver.id, session_id=row.id,
                                   reason="the idle fee", opened_by="assistant")
    assert dispute.proposed_credit_ore == 0  # no parking in this session: the agent decides
    with pytest.raises(BillingError, match="above zero"):
        support.decide_dispute(session, dispute_id=dispute.id, approve=True,
                               decided_by="agent:lisa", settings=SETTINGS)
    support.decide_dispute(session, dispute_id=dispute.id, approve=True, credit_ore=1000,
                           decided_by="agent:lisa", settings=SETTINGS)
    assert wallets.balance(session, driver_id=driver.id, settings=SETTINGS).balance == \
        Decimal("12.50")
    credit = session.exec(select(SessionCostLine).where(
        SessionCostLine.session_id == row.id, SessionCostLine.dimension == "CREDIT")).one()
    assert credit.net_ore == -1000
    receipt = invoicing.invoice_driver_now(session, driver_id=driver.id, settings=SETTINGS,
                                           created_by="test")
    assert receipt.net_ore == row.total_excl_vat_ore - 1000


def test_top_up_is_for_prepaid_drivers_only(session) -> None:
    driver = make_driver(session)
    with pytest.raises(BillingError, match="pays by invoice"):
        support.top_up(session, driver_id=driver.id, amount=Decimal("100"),
                       idempotency_key="k-1", created_by="assistant")
