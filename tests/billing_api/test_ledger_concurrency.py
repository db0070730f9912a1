"""The ledger stays the truth when many connections move one wallet at once (PostgreSQL).

SQLite has a single writer, so only PostgreSQL can interleave these transactions: each
operation runs in its own session and commits, from several threads started together.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import select

from billing_api import wallets
from billing_api.events import LowBalance
from billing_api.models import LedgerEntry, LedgerKind, PaymentMethod, Wallet
from billing_api.money import cents_to_decimal
from chargedesk.db import session_scope
from chargedesk.errors import Conflict
from chargedesk.settings import Settings
from tests.billing_api.factories import make_driver, make_rated_session

THREADS = 6
KEYS = ("pay-a", "pay-b", "pay-c", "pay-d")
SESSIONS = 3
START = datetime(2026, 10, 3, 8, 0, tzinfo=UTC)
CONFIG = Settings(wallet_low_balance=Decimal("100.00"), wallet_hold_amount=Decimal("200.00"))


@dataclass(frozen=True)
class TopUp:
    key: str
    amount_ore: int


@dataclass(frozen=True)
class Debit:
    nth: int  # which of the example's sessions
    amount_ore: int


@dataclass(frozen=True)
class Adjust:
    amount_ore: int


@dataclass(frozen=True)
class Hold:
    nth: int  # the transaction of the example's nth session


@dataclass(frozen=True)
class Release:
    nth: int


Operation = TopUp | Debit | Adjust | Hold | Release


@st.composite
def operations(draw: st.DrawFn) -> list[Operation]:
    """Top-ups and debits mostly retried with their first amount, now and then with another
    (which must be refused), adjustments both ways, holds placed and released."""
    top_up_amount = {key: draw(st.integers(1, 50_000)) for key in KEYS}
    session_cost = [draw(st.integers(0, 30_000)) for _ in range(SESSIONS)]
    other_amount = st.sampled_from([0, 0, 0, 1])
    op = st.one_of(
        st.builds(lambda key, d: TopUp(key, top_up_amount[key] + d),
                  st.sampled_from(KEYS), other_amount),
        st.builds(lambda nth, d: Debit(nth, session_cost[nth] + d),
                  st.integers(0, SESSIONS - 1), other_amount),
        st.builds(Adjust, st.integers(-20_000, 20_000).filter(bool)),
        st.builds(Hold, st.integers(0, SESSIONS - 1)),
        st.builds(Release, st.integers(0, SESSIONS - 1)),
    )
    return draw(st.lists(op, min_size=2, max_size=24))


@dataclass
class Outcome:
    op: Operation
    entry: LedgerEntry | None = None
    event: LowBalance | None = None
    conflict: bool = False


@dataclass(frozen=True)
class Example:
    driver_id: int
    session_ids: list[int]
    transaction_ids: list[int]


@pytest.fixture
def pg_engine(engine: Engine) -> Engine:
    if engine.dialect.name != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL; SQLite serialises them")
    return engine


def fresh_driver(engine: Engine) -> Example:
    """A prepaid driver with no wallet yet (so the first writers race to create it) and
    three rated sessions to debit."""
    with session_scope(engine) as session:
        driver = make_driver(session, payment_method=PaymentMethod.prepaid)
        rated = [make_rated_session(session, driver=driver, start=START + timedelta(days=n))
                 for n in range(SESSIONS)]
        return Example(driver.id, [r.id for r in rated], [r.transaction_id for r in rated])


def perform(engine: Engine, example: Example, op: Operation) -> Outcome:
    outcome = Outcome(op)
    with session_scope(engine) as session:
        driver_id = example.driver_id
        try:
            match op:
                case TopUp(key, amount_ore):
                    outcome.entry = wallets.top_up(
                        session, driver_id=driver_id, amount=cents_to_decimal(amount_ore),
                        idempotency_key=key, created_by="test")
                case Debit(nth, amount_ore):
                    outcome.entry, outcome.event = wallets.debit_session(
                        session, driver_id=driver_id, session_id=example.session_ids[nth],
                        amount_ore=amount_ore, created_by="test", settings=CONFIG)
                case Adjust(amount_ore):
                    outcome.entry, outcome.event = wallets.adjust(
                        session, driver_id=driver_id, amount_ore=amount_ore,
                        reason="property test", created_by="test", settings=CONFIG)
                case Hold(nth):
                    wallets.place_hold(session, driver_id=driver_id,
                                       transaction_id=example.transaction_ids[nth],
                                       settings=CONFIG)
                case Release(nth):
                    wallets.close_hold(session, transaction_id=example.transaction_ids[nth],
                                       settled=False)
        except Conflict:
            outcome.conflict = True
    return outcome


def run_concurrently(engine: Engine, example: Example, ops: list[Operation]) -> list[Outcome]:
    """Deal the operations to threads that start together; each commits one at a time."""
    start = threading.Barrier(THREADS)
    outcomes: list[Outcome] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(mine: list[Operation]) -> None:
        start.wait()
        for op in mine:
            try:
                outcome = perform(engine, example, op)
            except BaseException as exc:  # reported below, in the test's own thread
                with lock:
                    failures.append(exc)
                return
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(ops[i::THREADS],))
               for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return outcomes


def key_of(op: Operation, example: Example) -> str | None:
    match op:
        case TopUp(key, _):
            return key
        case Debit(nth, _):
            return f"session:{example.session_ids[nth]}"
    return None


def requested_ore(op: Operation) -> int:
    """The signed amount an operation asks the ledger for."""
    match op:
        case TopUp(_, amount_ore) | Adjust(amount_ore):
            return amount_ore
        case Debit(_, amount_ore):
            return -amount_ore
    raise AssertionError(f"{op} writes no entry")


def assert_ledger_is_the_truth(
    engine: Engine, example: Example, ops: list[Operation], outcomes: list[Outcome]
) -> list[LedgerEntry]:
    """What must hold however the operations interleaved; returns the entries in id order."""
    with session_scope(engine) as session:
        entries = list(session.exec(
            select(LedgerEntry).where(LedgerEntry.driver_id == example.driver_id)
            .order_by(LedgerEntry.id)).all())
        wallet = session.get(Wallet, example.driver_id)
        # Only closing holds that were never placed leaves the driver without a wallet.
        cached = wallet.balance_ore if wallet is not None else 0
        assert cached == sum(e.amount_ore for e in entries)
        assert wallets.verify(session, driver_id=example.driver_id)  # held == open holds too

    # Ids are drawn under the wallet lock, so in id order each entry starts from the
    # balance the previous one left: no two writers ever read the same balance.
    running = 0
    for entry in entries:
        running += entry.amount_ore
        assert entry.balance_after_ore == running, entries

    by_key: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if (key := key_of(outcome.op, example)) is not None:
            by_key.setdefault(key, []).append(outcome)
    keyed = {e.idempotency_key: e for e in entries if e.idempotency_key is not None}
    assert len(keyed) == sum(e.idempotency_key is not None for e in entries)
    assert set(keyed) == {k for k, tries in by_key.items() if any(t.entry for t in tries)}
    for key, tries in by_key.items():
        recorded = keyed[key]
        for attempt in tries:
            if attempt.conflict:  # a retry asking for another amount than the first
                assert requested_ore(attempt.op) != recorded.amount_ore
            else:
                assert attempt.entry is not None and attempt.entry.id == recorded.id
                assert requested_ore(attempt.op) == recorded.amount_ore

    adjustments = [e for e in entries if e.kind == LedgerKind.adjustment]
    assert len(adjustments) == sum(isinstance(op, Adjust) for op in ops)

    # One LowBalance per fall below the threshold, from the debit or adjustment that fell.
    threshold = 10_000
    falls = {later.id for earlier, later in zip([None, *entries], entries, strict=False)
             if (earlier.balance_after_ore if earlier else 0) >= threshold
             > later.balance_after_ore}
    events: dict[int, Any] = {o.entry.id: o.event for o in outcomes
                              if o.event is not None and o.entry is not None}
    assert set(events) == falls
    for entry_id, event in events.items():
        assert event.balance_ore == next(e.balance_after_ore for e in entries
                                         if e.id == entry_id)
    return entries


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations())
def test_concurrent_wallet_operations_keep_the_ledger_and_balance_in_step(
    pg_engine: Engine, ops: list[Operation]
) -> None:
    example = fresh_driver(pg_engine)

    outcomes = run_concurrently(pg_engine, example, ops)

    assert_ledger_is_the_truth(pg_engine, example, ops, outcomes)


def test_concurrent_writers_on_sqlite_wait_for_each_other(engine: Engine) -> None:
    """SQLite has no row locks: get_wallet(lock=True) must take its writer lock before it
    reads, or two threads read one balance and the second write loses the first."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL is covered by the property test")
    example = fresh_driver(engine)
    top_ups = [TopUp(KEYS[n % 3], 1_000) for n in range(12)]  # three keys, each sent 4 times
    adjustments = [Adjust(-700)] * 12
    debits = [Debit(n, 2_500) for n in range(SESSIONS)] * 3  # each session settled 3 times
    ops = top_ups + adjustments + debits
    random.Random(7).shuffle(ops)

    outcomes = run_concurrently(engine, example, ops)

    entries = assert_ledger_is_the_truth(engine, example, ops, outcomes)
    assert len(entries) == 3 + len(adjustments) + SESSIONS
    assert entries[-1].balance_after_ore == 3 * 1_000 - 12 * 700 - SESSIONS * 2_500
