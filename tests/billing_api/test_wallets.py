"""Prepaid wallets: top-ups, session debits, holds and Authorize, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from billing_api import wallets
from billing_api.models import (
    ChargingSession,
    Driver,
    DriverIdTag,
    HoldStatus,
    LedgerEntry,
    LedgerKind,
    PaymentMethod,
    Wallet,
)
from billing_api.service import BillingError, NotFound
from chargedesk.errors import Conflict
from chargedesk.settings import Settings
from station_api import service as stations
from station_api.models import Transaction
from tests.billing_api.factories import ensure_station, make_driver, make_rated_session

START = datetime(2026, 10, 3, 8, 0, tzinfo=UTC)


@pytest.fixture
def config() -> Settings:
    return Settings(wallet_minimum_balance=Decimal("50.00"),
                    wallet_low_balance=Decimal("100.00"),
                    wallet_hold_amount=Decimal("200.00"))


def prepaid(session: Session, **fields: object) -> Driver:
    return make_driver(session, payment_method=PaymentMethod.prepaid, **fields)


def tag_of(session: Session, driver: Driver) -> str:
    return session.exec(select(DriverIdTag.id_tag).where(DriverIdTag.driver_id == driver.id)
                        ).first()


def rated_session(session: Session, driver: Driver, nth: int) -> ChargingSession:
    """The driver's ``nth`` session: each starts a day later, so transactions stay distinct."""
    return make_rated_session(session, driver=driver, start=START + timedelta(days=nth))


def start_charging(session: Session, driver: Driver, nth: int = 0) -> Transaction:
    ensure_station(session)
    tx, _, _ = stations.start_transaction(
        session, station_id="SE-TEST-01", connector_id=1, id_tag=tag_of(session, driver),
        meter_start_wh=0, timestamp=START + timedelta(hours=nth),
    )
    return tx


def entries(session: Session, driver: Driver) -> list[LedgerEntry]:
    return list(session.exec(select(LedgerEntry).where(LedgerEntry.driver_id == driver.id)
                             .order_by(LedgerEntry.id)).all())


# ---------------------------------------------------------------- the wallet


def test_a_wallet_is_created_empty_in_the_drivers_currency(session: Session) -> None:
    driver = prepaid(session, currency="EUR")

    wallet = wallets.get_wallet(session, driver_id=driver.id, lock=True)

    assert (wallet.currency, wallet.balance_ore, wallet.held_ore) == ("EUR", 0, 0)
    assert wallets.get_wallet(session, driver_id=driver.id) is wallet
    assert session.exec(select(Wallet).where(Wallet.driver_id == driver.id)).all() == [wallet]


def test_an_unknown_driver_has_no_wallet(session: Session, config: Settings) -> None:
    with pytest.raises(NotFound, match="no driver 999"):
        wallets.get_wallet(session, driver_id=999)
    with pytest.raises(NotFound):
        wallets.top_up(session, driver_id=999, amount=Decimal("10"), idempotency_key="k",
                       created_by="test")
    with pytest.raises(NotFound):
        wallets.balance(session, driver_id=999, settings=config)


def test_balance_of_a_driver_without_wallet_is_zero_and_writes_nothing(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)

    seen = wallets.balance(session, driver_id=driver.id, settings=config)

    assert seen == wallets.Balance(balance=Decimal("0.00"), held=Decimal("0.00"),
                                   available=Decimal("0.00"), currency="SEK", low=True)
    assert session.get(Wallet, driver.id) is None


# ---------------------------------------------------------------- top-ups


def test_top_ups_add_up_to_the_balance(session: Session, config: Settings) -> None:
    driver = prepaid(session)

    first = wallets.top_up(session, driver_id=driver.id, amount=Decimal("150.50"),
                           idempotency_key="swish-1", created_by="driver", note="Swish")
    second = wallets.top_up(session, driver_id=driver.id, amount=Decimal("49.5"),
                            idempotency_key="swish-2", created_by="driver")

    assert (first.kind, first.amount_ore, first.balance_after_ore) == (LedgerKind.topup,
                                                                       15050, 15050)
    assert (second.amount_ore, second.balance_after_ore) == (4950, 20000)
    assert first.currency == "SEK" and first.note == "Swish"
    seen = wallets.balance(session, driver_id=driver.id, settings=config)
    assert (seen.balance, seen.available, seen.low) == (Decimal("200.00"), Decimal("200.00"),
                                                        False)
    assert str(seen.balance) == "200.00"
    assert wallets.verify(session, driver_id=driver.id)


def test_a_retried_top_up_returns_the_first_entry_and_changes_nothing(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    first = wallets.top_up(session, driver_id=driver.id, amount=Decimal("100.00"),
                           idempotency_key="pay-42", created_by="driver")

    again = wallets.top_up(session, driver_id=driver.id, amount=Decimal("100"),
                           idempotency_key="pay-42", created_by="driver")

    assert again.id == first.id
    assert len(entries(session, driver)) == 1
    assert wallets.balance(session, driver_id=driver.id, settings=config).balance == 100


def test_a_key_reused_for_another_amount_is_a_conflict(session: Session) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("100.00"),
                   idempotency_key="pay-42", created_by="driver")

    with pytest.raises(Conflict, match=r"pay-42.*topup of 100\.00 SEK"):
        wallets.top_up(session, driver_id=driver.id, amount=Decimal("100.01"),
                       idempotency_key="pay-42", created_by="driver")

    assert [e.amount_ore for e in entries(session, driver)] == [10000]
    assert wallets.get_wallet(session, driver_id=driver.id).balance_ore == 10000


def test_keys_belong_to_one_driver(session: Session) -> None:
    anna = prepaid(session)
    bo = prepaid(session, name="Bo Berg", email="bo@example.se")

    a = wallets.top_up(session, driver_id=anna.id, amount=Decimal("10"),
                       idempotency_key="same", created_by="t")
    b = wallets.top_up(session, driver_id=bo.id, amount=Decimal("20"),
                       idempotency_key="same", created_by="t")

    assert a.id != b.id and (a.balance_after_ore, b.balance_after_ore) == (1000, 2000)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (Decimal("0"), "must be positive"),
        (Decimal("0.00"), "must be positive"),
        (Decimal("-5.00"), "must be positive"),
        (Decimal("10.005"), "more than two decimals"),
        (Decimal("0.001"), "more than two decimals"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (10.5, "decimal number, got float"),
        ("10", "decimal number, got str"),
        (Decimal("30000000.00"), "too large"),
    ],
)
def test_bad_top_up_amounts_are_refused_before_anything_is_written(
    session: Session, amount: object, message: str
) -> None:
    driver = prepaid(session)

    with pytest.raises(BillingError, match=message):
        wallets.top_up(session, driver_id=driver.id, amount=amount,  # type: ignore[arg-type]
                       idempotency_key="k", created_by="driver")

    assert entries(session, driver) == []
    assert session.get(Wallet, driver.id) is None


def test_a_top_up_needs_a_key(session: Session) -> None:
    driver = prepaid(session)
    with pytest.raises(BillingError, match="idempotency_key must not be empty"):
        wallets.top_up(session, driver_id=driver.id, amount=Decimal("10"),
                       idempotency_key=" ", created_by="driver")


# ---------------------------------------------------------------- session debits


def test_a_debit_crossing_the_low_threshold_returns_low_balance_once(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("150.00"),
                   idempotency_key="t1", created_by="driver")

    def debit(nth: int, ore: int) -> tuple[LedgerEntry, object]:
        cs = rated_session(session, driver, nth)
        return wallets.debit_session(session, driver_id=driver.id, session_id=cs.id,
                                     amount_ore=ore, created_by="rating", settings=config)

    still_above, none_yet = debit(1, 4000)  # 150 -> 110
    falling, event = debit(2, 2000)  # 110 -> 90: crosses 100
    _, already_low = debit(3, 1000)  # 90 -> 80: still low, no news

    assert (still_above.balance_after_ore, none_yet) == (11000, None)
    assert falling.kind == LedgerKind.debit and falling.amount_ore == -2000
    assert event is not None
    assert (event.driver_id, event.balance_ore, event.threshold_ore, event.currency) == (
        driver.id, 9000, 10000, "SEK")
    assert already_low is None

    wallets.top_up(session, driver_id=driver.id, amount=Decimal("100.00"),
                   idempotency_key="t2", created_by="driver")  # 80 -> 180
    _, again = debit(4, 10000)  # 180 -> 80: a new fall, a new event
    assert again is not None and again.balance_ore == 8000
    assert wallets.balance(session, driver_id=driver.id, settings=config).low


def test_a_debit_landing_exactly_on_the_threshold_is_not_low(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("150.00"),
                   idempotency_key="t1", created_by="driver")
    cs = rated_session(session, driver, 1)

    entry, event = wallets.debit_session(session, driver_id=driver.id, session_id=cs.id,
                                         amount_ore=5000, created_by="rating", settings=config)

    assert (entry.balance_after_ore, event) == (10000, None)
    assert not wallets.balance(session, driver_id=driver.id, settings=config).low


def test_a_session_is_debited_once_even_into_a_negative_balance(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("20.00"),
                   idempotency_key="t1", created_by="driver")
    cs = rated_session(session, driver, 1)

    entry, _ = wallets.debit_session(session, driver_id=driver.id, session_id=cs.id,
                                     amount_ore=cs.total_incl_vat_ore, created_by="rating",
                                     settings=config)
    repeat, event = wallets.debit_session(session, driver_id=driver.id, session_id=cs.id,
                                          amount_ore=cs.total_incl_vat_ore,
                                          created_by="rating", settings=config)

    assert cs.total_incl_vat_ore > 2000  # the tariff makes this session cost more than 20 kr
    assert entry.balance_after_ore == 2000 - cs.total_incl_vat_ore < 0
    assert (entry.session_id, entry.idempotency_key) == (cs.id, f"session:{cs.id}")
    assert (repeat.id, event) == (entry.id, None)
    assert len(entries(session, driver)) == 2
    with pytest.raises(Conflict):
        wallets.debit_session(session, driver_id=driver.id, session_id=cs.id,
                              amount_ore=cs.total_incl_vat_ore + 1, created_by="rating",
                              settings=config)


def test_a_debit_must_name_a_session_of_this_driver(session: Session, config: Settings) -> None:
    anna = prepaid(session)
    bo = prepaid(session, name="Bo Berg", email="bo@example.se")
    bos_session = rated_session(session, bo, 1)

    with pytest.raises(BillingError, match="belongs to another driver"):
        wallets.debit_session(session, driver_id=anna.id, session_id=bos_session.id,
                              amount_ore=100, created_by="rating", settings=config)
    with pytest.raises(NotFound, match="no charging session 9999"):
        wallets.debit_session(session, driver_id=anna.id, session_id=9999, amount_ore=100,
                              created_by="rating", settings=config)
    with pytest.raises(BillingError, match=">= 0"):
        wallets.debit_session(session, driver_id=bo.id, session_id=bos_session.id,
                              amount_ore=-100, created_by="rating", settings=config)
    assert entries(session, anna) == entries(session, bo) == []


# ---------------------------------------------------------------- adjustments and refunds


def test_adjustments_move_the_balance_both_ways_with_their_reason(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("120.00"),
                   idempotency_key="t1", created_by="driver")

    down, event = wallets.adjust(session, driver_id=driver.id, amount_ore=-3000,
                                 reason="re-rated session", created_by="ops",
                                 settings=config, idempotency_key="fix-1")
    again, no_event = wallets.adjust(session, driver_id=driver.id, amount_ore=-3000,
                                     reason="re-rated session", created_by="ops",
                                     settings=config, idempotency_key="fix-1")
    up, _ = wallets.adjust(session, driver_id=driver.id, amount_ore=500,
                           reason="goodwill", created_by="ops", settings=config)

    assert (down.kind, down.amount_ore, down.balance_after_ore, down.note) == (
        LedgerKind.adjustment, -3000, 9000, "re-rated session")
    assert event is not None and event.balance_ore == 9000
    assert (again.id, no_event) == (down.id, None)
    assert up.balance_after_ore == 9500
    assert wallets.verify(session, driver_id=driver.id)


@pytest.mark.parametrize(("amount_ore", "reason"), [(0, "x"), (100, ""), (1.5, "x")])
def test_an_adjustment_needs_an_amount_and_a_reason(
    session: Session, config: Settings, amount_ore: object, reason: str
) -> None:
    driver = prepaid(session)
    with pytest.raises(BillingError):
        wallets.adjust(session, driver_id=driver.id, amount_ore=amount_ore,  # type: ignore[arg-type]
                       reason=reason, created_by="ops", settings=config)
    assert entries(session, driver) == []


def test_a_refund_credits_the_wallet_for_a_session(session: Session) -> None:
    driver = prepaid(session)
    cs = rated_session(session, driver, 1)

    entry = wallets.refund(session, driver_id=driver.id, amount_ore=2500,
                           reason="dispute approved", created_by="agent",
                           idempotency_key="dispute-7", session_id=cs.id)
    repeat = wallets.refund(session, driver_id=driver.id, amount_ore=2500,
                            reason="dispute approved", created_by="agent",
                            idempotency_key="dispute-7", session_id=cs.id)

    assert (entry.kind, entry.amount_ore, entry.balance_after_ore, entry.session_id) == (
        LedgerKind.refund, 2500, 2500, cs.id)
    assert repeat.id == entry.id
    for bad in (0, -2500):
        with pytest.raises(BillingError, match="must be positive"):
            wallets.refund(session, driver_id=driver.id, amount_ore=bad, reason="x",
                           created_by="agent")
    with pytest.raises(Conflict):
        wallets.refund(session, driver_id=driver.id, amount_ore=2600, reason="x",
                       created_by="agent", idempotency_key="dispute-7")


# ---------------------------------------------------------------- holds


def test_a_hold_reduces_what_is_available_until_it_is_closed(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("500.00"),
                   idempotency_key="t1", created_by="driver")
    tx = start_charging(session, driver)

    hold = wallets.place_hold(session, driver_id=driver.id, transaction_id=tx.id,
                              settings=config)
    repeat = wallets.place_hold(session, driver_id=driver.id, transaction_id=tx.id,
                                settings=config, amount_ore=999)

    assert (hold.amount_ore, hold.status, hold.closed_at) == (20000, HoldStatus.open, None)
    assert repeat.id == hold.id
    seen = wallets.balance(session, driver_id=driver.id, settings=config)
    assert (seen.balance, seen.held, seen.available) == (
        Decimal("500.00"), Decimal("200.00"), Decimal("300.00"))
    assert wallets.verify(session, driver_id=driver.id)

    closed = wallets.close_hold(session, transaction_id=tx.id, settled=True)

    assert closed is not None and closed.id == hold.id
    assert closed.status == HoldStatus.settled and closed.closed_at is not None
    seen = wallets.balance(session, driver_id=driver.id, settings=config)
    assert (seen.held, seen.available) == (Decimal("0.00"), Decimal("500.00"))
    assert wallets.verify(session, driver_id=driver.id)


def test_closing_a_hold_twice_changes_nothing(session: Session, config: Settings) -> None:
    driver = prepaid(session)
    first, second = start_charging(session, driver, 0), start_charging(session, driver, 1)
    wallets.place_hold(session, driver_id=driver.id, transaction_id=first.id, settings=config,
                       amount_ore=7000)
    wallets.place_hold(session, driver_id=driver.id, transaction_id=second.id, settings=config,
                       amount_ore=3000)

    released = wallets.close_hold(session, transaction_id=first.id, settled=False)
    again = wallets.close_hold(session, transaction_id=first.id, settled=True)

    assert released is again and again.status == HoldStatus.released
    assert wallets.get_wallet(session, driver_id=driver.id).held_ore == 3000
    assert wallets.close_hold(session, transaction_id=987654, settled=True) is None
    assert wallets.verify(session, driver_id=driver.id)


def test_a_hold_needs_a_transaction_and_a_positive_amount(
    session: Session, config: Settings
) -> None:
    driver = prepaid(session)
    tx = start_charging(session, driver)

    with pytest.raises(NotFound, match="no transaction 987654"):
        wallets.place_hold(session, driver_id=driver.id, transaction_id=987654,
                           settings=config)
    with pytest.raises(BillingError, match="must be positive"):
        wallets.place_hold(session, driver_id=driver.id, transaction_id=tx.id,
                           settings=config, amount_ore=0)
    other = prepaid(session, name="Bo Berg", email="bo@example.se")
    wallets.place_hold(session, driver_id=driver.id, transaction_id=tx.id, settings=config)
    with pytest.raises(Conflict):
        wallets.place_hold(session, driver_id=other.id, transaction_id=tx.id, settings=config)


# ---------------------------------------------------------------- reading


def test_the_ledger_lists_newest_first_within_a_window(session: Session) -> None:
    driver = prepaid(session)
    made = [wallets.top_up(session, driver_id=driver.id, amount=Decimal(n),
                           idempotency_key=f"k{n}", created_by="driver") for n in (1, 2, 3)]

    assert [e.id for e in wallets.ledger(session, driver_id=driver.id)] == [
        e.id for e in reversed(made)]
    assert [e.amount_ore for e in wallets.ledger(session, driver_id=driver.id, limit=2)] == [
        300, 200]
    later = made[-1].created_at + timedelta(seconds=1)
    assert wallets.ledger(session, driver_id=driver.id, since=later) == []
    assert len(wallets.ledger(session, driver_id=driver.id, until=later)) == 3
    with pytest.raises(BillingError, match="limit"):
        wallets.ledger(session, driver_id=driver.id, limit=0)


def test_verify_notices_a_balance_that_drifted_from_the_ledger(session: Session) -> None:
    driver = prepaid(session)
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("10.00"),
                   idempotency_key="t1", created_by="driver")
    assert wallets.verify(session, driver_id=driver.id)

    session.execute(update(Wallet).where(Wallet.driver_id == driver.id)
                    .values(balance_ore=Wallet.balance_ore + 1))

    assert not wallets.verify(session, driver_id=driver.id)


# ---------------------------------------------------------------- Authorize


def test_the_hook_blocks_a_prepaid_driver_below_the_minimum(
    session: Session, config: Settings
) -> None:
    hook = wallets.authorization_hook(config)
    driver = prepaid(session)
    tag = tag_of(session, driver)

    assert hook(session, "SE-TEST-01", tag) == "Blocked"  # no wallet yet: nothing available

    wallets.top_up(session, driver_id=driver.id, amount=Decimal("49.99"),
                   idempotency_key="t1", created_by="driver")
    assert hook(session, "SE-TEST-01", tag) == "Blocked"

    wallets.top_up(session, driver_id=driver.id, amount=Decimal("0.01"),
                   idempotency_key="t2", created_by="driver")
    assert hook(session, "SE-TEST-01", tag) is None  # exactly the minimum is enough


def test_the_hook_counts_held_money_as_spent(session: Session, config: Settings) -> None:
    hook = wallets.authorization_hook(config)
    driver = prepaid(session, id_tags=("CARD-A", "CARD-B"))
    wallets.top_up(session, driver_id=driver.id, amount=Decimal("240.00"),
                   idempotency_key="t1", created_by="driver")
    assert hook(session, "SE-TEST-01", "CARD-B") is None

    ensure_station(session)
    tx, _, _ = stations.start_transaction(session, station_id="SE-TEST-01", connector_id=1,
                                          id_tag="CARD-A", meter_start_wh=0, timestamp=START)
    wallets.place_hold(session, driver_id=driver.id, transaction_id=tx.id, settings=config)

    assert hook(session, "SE-TEST-01", "CARD-B") == "Blocked"  # 240 - 200 held < 50


def test_the_hook_passes_other_drivers_and_unlinked_tags(
    session: Session, config: Settings
) -> None:
    hook = wallets.authorization_hook(config)
    invoiced = make_driver(session, payment_method=PaymentMethod.invoice)
    stations.create_id_tag(session, id_tag="VISITOR-1")

    assert hook(session, "SE-TEST-01", tag_of(session, invoiced)) is None
    assert hook(session, "SE-TEST-01", "VISITOR-1") is None
    assert hook(session, "SE-TEST-01", "NOT-A-TAG") is None


def test_the_hook_follows_a_child_tag_to_its_prepaid_parent(
    session: Session, config: Settings
) -> None:
    hook = wallets.authorization_hook(config)
    parent = prepaid(session, id_tags=("FLEET-1",))
    stations.create_id_tag(session, id_tag="FLEET-1-CAR-7", parent_id_tag="FLEET-1")
    own = make_driver(session, name="Cecilia", email=None, id_tags=("OWN-1",))
    stations.create_id_tag(session, id_tag="OWN-1-CHILD", parent_id_tag="FLEET-1")
    session.add(DriverIdTag(id_tag="OWN-1-CHILD", driver_id=own.id))
    session.flush()

    assert hook(session, "SE-TEST-01", "FLEET-1-CAR-7") == "Blocked"
    # A tag linked to a driver of its own is judged by that driver, not by its parent.
    assert hook(session, "SE-TEST-01", "OWN-1-CHILD") is None

    wallets.top_up(session, driver_id=parent.id, amount=Decimal("50.00"),
                   idempotency_key="t1", created_by="fleet")
    assert hook(session, "SE-TEST-01", "FLEET-1-CAR-7") is None


def test_authorize_refuses_through_the_hook(session: Session, config: Settings) -> None:
    ensure_station(session)
    hooks = [wallets.authorization_hook(config)]
    poor = prepaid(session, id_tags=("POOR-1",))
    make_driver(session, name="Bo Berg", email="bo@example.se", id_tags=("INVOICED-1",))

    def status(tag: str) -> str:
        return stations.authorize(session, station_id="SE-TEST-01", id_tag=tag,
                                  hooks=hooks).status

    assert status("POOR-1") == "Blocked"
    assert status("INVOICED-1") == "Accepted"
    assert status("UNKNOWN-1") == "Invalid"

    wallets.top_up(session, driver_id=poor.id, amount=Decimal("75.00"),
                   idempotency_key="t1", created_by="driver")
    assert status("POOR-1") == "Accepted"


def test_misconfigured_thresholds_are_refused(config: Settings) -> None:
    with pytest.raises(BillingError, match="wallet_minimum_balance"):
        wallets.authorization_hook(config.model_copy(
            update={"wallet_minimum_balance": Decimal("50.005")}))
