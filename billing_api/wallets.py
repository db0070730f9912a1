"""Prepaid wallets: an append-only ledger per driver, the cached balance, and session holds.

Every change of a balance takes the wallet's row lock first, then appends a ledger entry
carrying the balance after it and updates the cached ``Wallet.balance_ore``, all in the
caller's transaction. Holding the lock across the idempotency-key lookup is what makes a
retried request safe under concurrency: the retry waits, then finds the first entry.

The lock relies on PostgreSQL's default READ COMMITTED isolation (each statement after
``FOR UPDATE`` sees what the previous lock holder committed). On SQLite the lock is SQLite's
single writer lock, taken by the first statement of :func:`get_wallet` with ``lock=True``.

Services here never publish events: they run synchronously in a worker thread, so a
:class:`~billing_api.events.LowBalance` is returned for the async caller to publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import func, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from billing_api.events import LowBalance
from billing_api.models import (
    ChargingSession,
    Driver,
    DriverIdTag,
    HoldStatus,
    LedgerEntry,
    LedgerKind,
    PaymentMethod,
    Wallet,
    WalletHold,
)
from billing_api.money import CENT_PLACES, cents_to_decimal
from billing_api.service import BillingError, NotFound
from chargedesk.errors import Conflict
from chargedesk.settings import Settings
from chargedesk.types import UTCDateTime, utcnow
from station_api.models import IdTag, IdTagStatus, Transaction
from station_api.service import AuthorizationHook

# The öre columns are 32-bit integers on PostgreSQL; refuse rather than overflow.
MAX_ORE = 2**31 - 1
MAX_LEDGER_PAGE = 1000


@dataclass(frozen=True)
class Balance:
    """A wallet as a driver sees it, in currency units with two decimals."""

    balance: Decimal
    held: Decimal
    # What the driver can still spend: the balance less what running sessions set aside.
    available: Decimal
    currency: str
    # The balance is below ``wallet_low_balance``.
    low: bool


# ---------------------------------------------------------------- amounts


def to_ore(amount: Decimal | int, *, what: str = "amount") -> int:
    """A currency amount as whole öre, exactly; more than two decimals is an error."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        # A float has already lost the amount the sender meant.
        raise BillingError(f"{what} must be a decimal number, got {type(amount).__name__}")
    value = Decimal(amount)
    if not value.is_finite():
        raise BillingError(f"{what} must be a finite number, got {value}")
    try:
        ore = value.scaleb(CENT_PLACES)
        whole = ore.to_integral_value()
    except InvalidOperation:
        raise BillingError(f"{what} {value} is out of range") from None
    if ore != whole:
        raise BillingError(f"{what} {value} has more than two decimals")
    return int(whole)


def _positive_ore(amount_ore: int, *, what: str) -> int:
    if isinstance(amount_ore, bool) or not isinstance(amount_ore, int):
        raise BillingError(f"{what} must be whole öre (an int), got {type(amount_ore).__name__}")
    if amount_ore <= 0:
        raise BillingError(f"{what} must be positive, got {amount_ore} öre")
    if amount_ore > MAX_ORE:
        raise BillingError(f"{what} of {amount_ore} öre is too large")
    return amount_ore


def _text(value: str | None, *, what: str, max_length: int) -> str | None:
    """Optional free text: blank is None; too long for its column is the caller's error."""
    if value is None or not value.strip():
        return None
    if len(value) > max_length:
        raise BillingError(f"{what} is longer than {max_length} characters")
    return value


def _required_text(value: str | None, *, what: str, max_length: int) -> str:
    text = _text(value, what=what, max_length=max_length)
    if text is None:
        raise BillingError(f"{what} must not be empty")
    return text


# ---------------------------------------------------------------- the wallet row


def get_wallet(session: Session, *, driver_id: int, lock: bool = False) -> Wallet:
    """The driver's wallet, created empty in the driver's currency on first use.

    With ``lock=True`` the row is locked until the transaction ends (``FOR UPDATE`` on
    PostgreSQL, SQLite's writer lock). Two transactions creating the same wallet at once
    both succeed and see one row: the create is an insert that ignores a conflict.
    Raises :class:`NotFound` for an unknown driver.
    """
    if lock:
        # Always attempt the create first: on SQLite this write takes the database's writer
        # lock before anything is read, so nobody can commit between our read and our
        # update. On PostgreSQL it waits for a concurrent creator to commit, then does
        # nothing, and FOR UPDATE below waits for that creator's lock.
        _create_if_missing(session, driver_id)
        wallet = _select_wallet(session, driver_id, lock=True)
    else:
        wallet = _select_wallet(session, driver_id, lock=False)
        if wallet is None:
            _create_if_missing(session, driver_id)
            wallet = _select_wallet(session, driver_id, lock=False)
    if wallet is None:
        raise NotFound(f"no driver {driver_id}")
    return wallet


def _select_wallet(session: Session, driver_id: int, *, lock: bool) -> Wallet | None:
    query = select(Wallet).where(Wallet.driver_id == driver_id)
    if lock:
        # populate_existing: a Wallet already in this session may be stale; the locked
        # read must be the row as it is now.
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.exec(query).first()


def _create_if_missing(session: Session, driver_id: int) -> None:
    dialect = session.get_bind().dialect.name
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[dialect]
    # INSERT ... SELECT from the driver: one statement both reads the currency and creates
    # the row, and inserts nothing for an unknown driver.
    from_driver = select(
        col(Driver.id), col(Driver.currency), literal(0), literal(0),
        literal(utcnow(), UTCDateTime()),
    ).where(Driver.id == driver_id)
    stmt = insert(Wallet.__table__).from_select(  # type: ignore[attr-defined]
        ["driver_id", "currency", "balance_ore", "held_ore", "updated_at"], from_driver
    ).on_conflict_do_nothing()
    session.execute(stmt)


# ---------------------------------------------------------------- the ledger


def _entry_by_key(session: Session, *, driver_id: int, key: str) -> LedgerEntry | None:
    return session.exec(
        select(LedgerEntry).where(
            LedgerEntry.driver_id == driver_id, LedgerEntry.idempotency_key == key
        )
    ).first()


def _replay(entry: LedgerEntry, *, kind: LedgerKind, amount_ore: int) -> LedgerEntry:
    """The first entry for a retried key, or a Conflict when the retry asks for another."""
    if entry.kind != kind or entry.amount_ore != amount_ore:
        raise Conflict(
            f"idempotency key {entry.idempotency_key!r} was already used for a {entry.kind} "
            f"of {cents_to_decimal(entry.amount_ore)} {entry.currency}"
        )
    return entry


def _append(
    session: Session,
    wallet: Wallet,
    *,
    kind: LedgerKind,
    amount_ore: int,
    created_by: str,
    idempotency_key: str | None = None,
    session_id: int | None = None,
    note: str | None = None,
) -> LedgerEntry:
    """Append an entry to a locked wallet and move its cached balance with it."""
    created_by = _required_text(created_by, what="created_by", max_length=120)
    after = wallet.balance_ore + amount_ore
    if not -MAX_ORE <= after <= MAX_ORE:
        raise BillingError(f"the balance would leave the supported range ({after} öre)")
    now = utcnow()
    entry = LedgerEntry(
        driver_id=wallet.driver_id, kind=kind, amount_ore=amount_ore, balance_after_ore=after,
        currency=wallet.currency, idempotency_key=idempotency_key, session_id=session_id,
        note=note, created_by=created_by, created_at=now,
    )
    wallet.balance_ore = after
    wallet.updated_at = now
    session.add(entry)
    session.add(wallet)
    session.flush()
    return entry


def _crossing(before_ore: int, entry: LedgerEntry, settings: Settings) -> LowBalance | None:
    """A LowBalance when this entry took the balance from at or above the threshold to below
    it: drivers hear once per fall, not on every session while they stay low."""
    threshold = to_ore(settings.wallet_low_balance, what="wallet_low_balance")
    if before_ore >= threshold > entry.balance_after_ore:
        return LowBalance(driver_id=entry.driver_id, balance_ore=entry.balance_after_ore,
                          threshold_ore=threshold, currency=entry.currency, entry_id=entry.id)
    return None


def _check_session(session: Session, *, session_id: int, driver_id: int, currency: str) -> None:
    row = session.get(ChargingSession, session_id)
    if row is None:
        raise NotFound(f"no charging session {session_id}")
    if row.driver_id is not None and row.driver_id != driver_id:
        raise BillingError(f"charging session {session_id} belongs to another driver")
    if row.currency != currency:
        raise BillingError(
            f"charging session {session_id} is in {row.currency}, the wallet in {currency}"
        )


def top_up(
    session: Session,
    *,
    driver_id: int,
    amount: Decimal,
    idempotency_key: str,
    created_by: str,
    note: str | None = None,
) -> LedgerEntry:
    """Credit the wallet with ``amount`` (currency units, > 0, at most two decimals).

    A retry with the same key returns the first entry and changes nothing; the same key
    with another amount is a :class:`Conflict`.
    """
    amount_ore = _positive_ore(to_ore(amount), what="a top-up")
    key = _required_text(idempotency_key, what="idempotency_key", max_length=100)
    note = _text(note, what="note", max_length=300)
    wallet = get_wallet(session, driver_id=driver_id, lock=True)
    existing = _entry_by_key(session, driver_id=driver_id, key=key)
    if existing is not None:
        return _replay(existing, kind=LedgerKind.topup, amount_ore=amount_ore)
    return _append(session, wallet, kind=LedgerKind.topup, amount_ore=amount_ore,
                   idempotency_key=key, note=note, created_by=created_by)


def debit_session(
    session: Session,
    *,
    driver_id: int,
    session_id: int,
    amount_ore: int,
    created_by: str,
    settings: Settings,
    note: str | None = None,
) -> tuple[LedgerEntry, LowBalance | None]:
    """Pay a rated charging session (``amount_ore`` incl. VAT, >= 0) from the wallet.

    The balance may go negative: the energy has been delivered. Once per session: a
    repeat returns the first entry (and no event); another amount for the same session is
    a :class:`Conflict` (a re-rated session is corrected with :func:`adjust`). Returns the
    entry and a LowBalance when this debit took the balance below the threshold.
    """
    if isinstance(amount_ore, bool) or not isinstance(amount_ore, int) or amount_ore < 0:
        raise BillingError(f"a session's cost must be whole öre >= 0, got {amount_ore!r}")
    if amount_ore > MAX_ORE:
        raise BillingError(f"a session's cost of {amount_ore} öre is too large")
    note = _text(note, what="note", max_length=300)
    key = f"session:{session_id}"
    wallet = get_wallet(session, driver_id=driver_id, lock=True)
    existing = _entry_by_key(session, driver_id=driver_id, key=key)
    if existing is not None:
        return _replay(existing, kind=LedgerKind.debit, amount_ore=-amount_ore), None
    _check_session(session, session_id=session_id, driver_id=driver_id,
                   currency=wallet.currency)
    before = wallet.balance_ore
    entry = _append(session, wallet, kind=LedgerKind.debit, amount_ore=-amount_ore,
                    idempotency_key=key, session_id=session_id, note=note,
                    created_by=created_by)
    return entry, _crossing(before, entry, settings)


def adjust(
    session: Session,
    *,
    driver_id: int,
    amount_ore: int,
    reason: str,
    created_by: str,
    settings: Settings,
    idempotency_key: str | None = None,
    session_id: int | None = None,
) -> tuple[LedgerEntry, LowBalance | None]:
    """Correct the balance by a signed ``amount_ore`` (a re-rated session, a fix), with
    the reason on the entry. With a key, a retry returns the first entry (and no event)."""
    if isinstance(amount_ore, bool) or not isinstance(amount_ore, int) or amount_ore == 0:
        raise BillingError(f"an adjustment must be whole öre other than 0, got {amount_ore!r}")
    _positive_ore(abs(amount_ore), what="an adjustment")
    reason = _required_text(reason, what="reason", max_length=300)
    key = _text(idempotency_key, what="idempotency_key", max_length=100)
    wallet = get_wallet(session, driver_id=driver_id, lock=True)
    if key is not None:
        existing = _entry_by_key(session, driver_id=driver_id, key=key)
        if existing is not None:
            return _replay(existing, kind=LedgerKind.adjustment, amount_ore=amount_ore), None
    if session_id is not None:
        _check_session(session, session_id=session_id, driver_id=driver_id,
                       currency=wallet.currency)
    before = wallet.balance_ore
    entry = _append(session, wallet, kind=LedgerKind.adjustment, amount_ore=amount_ore,
                    idempotency_key=key, session_id=session_id, note=reason,
                    created_by=created_by)
    return entry, _crossing(before, entry, settings)


def refund(
    session: Session,
    *,
    driver_id: int,
    amount_ore: int,
    reason: str,
    created_by: str,
    idempotency_key: str | None = None,
    session_id: int | None = None,
) -> LedgerEntry:
    """Give money back to the wallet (``amount_ore`` > 0), e.g. for an approved dispute.
    With a key, a retry returns the first entry; another amount is a Conflict."""
    amount_ore = _positive_ore(amount_ore, what="a refund")
    reason = _required_text(reason, what="reason", max_length=300)
    key = _text(idempotency_key, what="idempotency_key", max_length=100)
    wallet = get_wallet(session, driver_id=driver_id, lock=True)
    if key is not None:
        existing = _entry_by_key(session, driver_id=driver_id, key=key)
        if existing is not None:
            return _replay(existing, kind=LedgerKind.refund, amount_ore=amount_ore)
    if session_id is not None:
        _check_session(session, session_id=session_id, driver_id=driver_id,
                       currency=wallet.currency)
    return _append(session, wallet, kind=LedgerKind.refund, amount_ore=amount_ore,
                   idempotency_key=key, session_id=session_id, note=reason,
                   created_by=created_by)


# ---------------------------------------------------------------- holds


def place_hold(
    session: Session,
    *,
    driver_id: int,
    transaction_id: int,
    settings: Settings,
    amount_ore: int | None = None,
) -> WalletHold:
    """Set money aside for a session that starts (default ``settings.wallet_hold_amount``).

    Once per transaction: a repeat returns the existing hold, whatever its status.
    """
    if amount_ore is None:
        amount_ore = to_ore(settings.wallet_hold_amount, what="wallet_hold_amount")
    amount_ore = _positive_ore(amount_ore, what="a hold")
    wallet = get_wallet(session, driver_id=driver_id, lock=True)
    existing = session.exec(
        select(WalletHold).where(WalletHold.transaction_id == transaction_id)
    ).first()
    if existing is not None:
        if existing.driver_id != driver_id:
            raise Conflict(f"transaction {transaction_id} already holds another driver's money")
        return existing
    if session.get(Transaction, transaction_id) is None:
        raise NotFound(f"no transaction {transaction_id}")
    if wallet.held_ore + amount_ore > MAX_ORE:
        raise BillingError(f"holds would exceed the supported range ({amount_ore} öre more)")
    hold = WalletHold(driver_id=driver_id, transaction_id=transaction_id, amount_ore=amount_ore)
    wallet.held_ore += amount_ore
    wallet.updated_at = utcnow()
    session.add(hold)
    session.add(wallet)
    session.flush()
    return hold


def close_hold(session: Session, *, transaction_id: int, settled: bool) -> WalletHold | None:
    """Close a transaction's hold: settled (the session was debited) or released.

    The money stops being held either way; the debit itself is :func:`debit_session`.
    No hold gives None; a hold already closed is returned unchanged.
    """
    hold = session.exec(
        select(WalletHold).where(WalletHold.transaction_id == transaction_id)
    ).first()
    if hold is None:
        return None
    if hold.status != HoldStatus.open:
        return hold
    wallet = get_wallet(session, driver_id=hold.driver_id, lock=True)
    # Another transaction may have closed it while we waited for the lock.
    session.refresh(hold)
    if hold.status != HoldStatus.open:
        return hold
    now = utcnow()
    hold.status = HoldStatus.settled if settled else HoldStatus.released
    hold.closed_at = now
    wallet.held_ore -= hold.amount_ore
    wallet.updated_at = now
    session.add(hold)
    session.add(wallet)
    session.flush()
    return hold


# ---------------------------------------------------------------- reading


def balance(session: Session, *, driver_id: int, settings: Settings) -> Balance:
    """The driver's balance, held and available amounts; a driver without a wallet has
    an empty one (nothing is written)."""
    wallet = session.exec(select(Wallet).where(Wallet.driver_id == driver_id)).first()
    if wallet is None:
        driver = session.get(Driver, driver_id)
        if driver is None:
            raise NotFound(f"no driver {driver_id}")
        balance_ore, held_ore, currency = 0, 0, driver.currency
    else:
        balance_ore, held_ore, currency = wallet.balance_ore, wallet.held_ore, wallet.currency
    low = balance_ore < to_ore(settings.wallet_low_balance, what="wallet_low_balance")
    return Balance(
        balance=cents_to_decimal(balance_ore), held=cents_to_decimal(held_ore),
        available=cents_to_decimal(balance_ore - held_ore), currency=currency, low=low,
    )


def ledger(
    session: Session,
    *,
    driver_id: int,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[LedgerEntry]:
    """The driver's entries, newest first; ``since`` inclusive, ``until`` exclusive."""
    if not 1 <= limit <= MAX_LEDGER_PAGE:
        raise BillingError(f"limit must be between 1 and {MAX_LEDGER_PAGE}")
    query = select(LedgerEntry).where(LedgerEntry.driver_id == driver_id)
    if since is not None:
        query = query.where(LedgerEntry.created_at >= since)
    if until is not None:
        query = query.where(LedgerEntry.created_at < until)
    # Ids are drawn under the wallet lock, so their order is the order the balance moved in.
    return list(session.exec(query.order_by(col(LedgerEntry.id).desc()).limit(limit)).all())


def verify(session: Session, *, driver_id: int) -> bool:
    """Whether the cached balance equals the sum of the ledger and the held amount the sum
    of open holds. For operators and tests: the ledger is the truth."""
    entries = session.exec(
        select(func.coalesce(func.sum(LedgerEntry.amount_ore), 0))
        .where(LedgerEntry.driver_id == driver_id)
    ).one()
    held = session.exec(
        select(func.coalesce(func.sum(WalletHold.amount_ore), 0))
        .where(WalletHold.driver_id == driver_id, WalletHold.status == HoldStatus.open)
    ).one()
    wallet = session.exec(
        select(Wallet).where(Wallet.driver_id == driver_id)
        .execution_options(populate_existing=True)
    ).first()
    if wallet is None:
        return entries == 0 and held == 0
    return wallet.balance_ore == entries and wallet.held_ore == held


# ---------------------------------------------------------------- Authorize


def authorization_hook(settings: Settings) -> AuthorizationHook:
    """A station_api Authorize hook refusing prepaid drivers whose available balance is
    below ``settings.wallet_minimum_balance`` ("Blocked"); every other tag passes.

    A tag's own driver link wins over its parent tag's. One indexed query per Authorize,
    besides the id tag itself, which :func:`station_api.service.authorize` has just loaded.
    """
    minimum_ore = to_ore(settings.wallet_minimum_balance, what="wallet_minimum_balance")

    def refuse_low_prepaid(session: Session, station_id: str, id_tag: str) -> str | None:
        tag = session.get(IdTag, id_tag)
        parent = tag.parent_id_tag if tag is not None else None
        tags = [id_tag] if parent is None else [id_tag, parent]
        rows = session.exec(
            select(DriverIdTag.id_tag, Driver.payment_method, Wallet.balance_ore,
                   Wallet.held_ore)
            .join(Driver, col(Driver.id) == col(DriverIdTag.driver_id))
            .outerjoin(Wallet, col(Wallet.driver_id) == col(Driver.id))
            .where(col(DriverIdTag.id_tag).in_(tags))
        ).all()
        linked = {row[0]: row for row in rows}
        row = linked.get(id_tag) or (linked.get(parent) if parent is not None else None)
        if row is None or row[1] != PaymentMethod.prepaid:
            return None
        available = (row[2] or 0) - (row[3] or 0)
        return IdTagStatus.blocked.value if available < minimum_ore else None

    return refuse_low_prepaid
