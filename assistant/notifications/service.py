"""Notifications: preferences, the outbox, and what turns a due row into a message.

Plain keyword-only functions taking a session; callers own the transaction.

When a row is due (:func:`take`), in this order:

1. the driver turned notifications off, or this kind: ``suppressed``;
2. it is no longer true (:func:`_still_true`: the session it announces has ended, the car
   has left): ``obsolete``;
3. quiet hours: held until they end, except :data:`URGENT` kinds. A fault during a session
   is urgent: the car is not charging, and a driver who counts on it in the morning needs to
   know while there is time to act. Everything else waits; what is about the moment (a car
   that paused, a cable still connected) is checked again when the hours end and dropped if
   no longer true;
4. the channel needs an address (a phone for SMS, an e-mail address, a signed-in web chat):
   without one it is ``failed`` at once; an SMS to a number that sent STOP is ``suppressed``;
5. otherwise it is taken for an attempt (``sending``, with a lease) and handed to
   :func:`assistant.channels.outbound.send`. A failed attempt is retried after
   :data:`RETRY_DELAYS`; after :data:`MAX_ATTEMPTS` the row is ``failed``. A crash between
   sending and recording leaves the row ``sending``; it is sent again when the lease ends
   (a duplicate message rather than a lost one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from assistant.channels.models import SmsOptOut
from assistant.models import Conversation
from assistant.notifications import texts
from assistant.notifications.models import (
    NotificationChannel,
    NotificationCursor,
    NotificationKind,
    NotificationOutbox,
    NotificationPreference,
    OutboxStatus,
)
from billing_api.models import (
    ChargingSession,
    Driver,
    DriverIdTag,
    DunningNotice,
    Invoice,
    InvoiceKind,
    TariffVersion,
)
from billing_api.tariffs import TariffDimensionType, parse_tariff
from chargedesk.errors import Conflict, DomainError, NotFound
from chargedesk.settings import Settings
from chargedesk.types import utcnow
from load_manager.models import ChargePlan, PlanStatus
from station_api.models import Connector, IdTag, Site, Station, Transaction

Kind = NotificationKind

# Sent through quiet hours (see the module docstring).
URGENT = frozenset({Kind.station_faulted})
DEFAULT_QUIET = (time(22, 0), time(7, 0))
MAX_ATTEMPTS = 5
RETRY_DELAYS = (timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10),
                timedelta(minutes=30))
# How long an attempt may take before the row is due again (a crashed sender).
LEASE = timedelta(minutes=2)
# A car reporting SuspendedEV this long is told; many pause for a moment at the start.
SUSPENDED_AFTER = timedelta(minutes=5)
# A cable still connected this long after the session ended is told.
IDLE_AFTER = timedelta(minutes=15)
# A fault this soon after a session stopped is the fault that stopped it (stations send
# StopTransaction and the Faulted status in either order).
FAULT_WINDOW = timedelta(minutes=2)
# Invoices and dunning notices re-read behind the cursor: ids taken by a transaction that
# commits after a later one are still seen (the outbox's key makes a re-read harmless).
SCAN_OVERLAP = 200
SCAN_BATCH = 1000


class InvalidPreference(DomainError):
    """A preference the driver cannot have (an SMS channel without a phone number, say)."""


# ---------------------------------------------------------------- preferences


@dataclass(frozen=True)
class Preferences:
    driver_id: int
    channel: NotificationChannel
    language: str
    quiet_start: time | None
    quiet_end: time | None
    enabled: bool
    muted: tuple[str, ...]
    # False: the defaults, the driver never chose.
    chosen: bool = False

    def wants(self, kind: NotificationKind) -> bool:
        return self.enabled and kind.value not in self.muted

    def quiet_until(self, now: datetime) -> datetime | None:
        """The end of the quiet hours ``now`` falls in (UTC), or None outside them."""
        if self.quiet_start is None or self.quiet_end is None:
            return None
        local = now.astimezone(texts.ZONE)
        start, end, clock = self.quiet_start, self.quiet_end, local.time()
        inside = (start <= clock < end) if start < end else (clock >= start or clock < end)
        if not inside:
            return None
        end_day = local.date() if clock < end else local.date() + timedelta(days=1)
        return datetime.combine(end_day, end, texts.ZONE).astimezone(UTC)


def _driver(session: Session, driver_id: int) -> Driver:
    driver = session.get(Driver, driver_id)
    if driver is None:
        raise NotFound(f"no driver {driver_id}")
    return driver


def default_channel(driver: Driver) -> NotificationChannel:
    if driver.phone:
        return NotificationChannel.sms
    if driver.email:
        return NotificationChannel.email
    return NotificationChannel.web


def preferences(session: Session, *, driver_id: int) -> Preferences:
    """The driver's preferences, or the defaults: SMS when there is a phone number (else
    e-mail, else web chat), the account's language, quiet 22:00-07:00, everything on."""
    row = session.get(NotificationPreference, driver_id)
    if row is not None:
        return Preferences(driver_id, NotificationChannel(row.channel), row.language,
                           row.quiet_start, row.quiet_end, row.enabled, tuple(row.muted), True)
    driver = _driver(session, driver_id)
    return Preferences(driver_id, default_channel(driver), str(driver.language),
                       *DEFAULT_QUIET, True, ())


_UNSET: Any = object()


def set_preferences(session: Session, *, driver_id: int, channel: Any = _UNSET,
                    language: Any = _UNSET, quiet_hours: Any = _UNSET, enabled: Any = _UNSET,
                    muted: Any = _UNSET) -> Preferences:
    """Change what is given, keep the rest. ``quiet_hours`` is ``(start, end)`` local times
    or None for none; ``muted`` the kinds not wanted."""
    driver = _driver(session, driver_id)
    current = preferences(session, driver_id=driver_id)
    row = session.get(NotificationPreference, driver_id) or NotificationPreference(
        driver_id=driver_id, channel=current.channel, language=current.language,
        quiet_start=current.quiet_start, quiet_end=current.quiet_end)
    if channel is not _UNSET:
        channel = NotificationChannel(channel)
        if channel is NotificationChannel.sms and not driver.phone:
            raise InvalidPreference("SMS needs a phone number on the account")
        if channel is NotificationChannel.email and not driver.email:
            raise InvalidPreference("e-mail needs an e-mail address on the account")
        row.channel = channel
    if language is not _UNSET:
        if language not in texts.LANGUAGES:
            raise InvalidPreference("language is sv or en")
        row.language = language
    if quiet_hours is not _UNSET:
        if quiet_hours is None:
            row.quiet_start = row.quiet_end = None
        else:
            start, end = quiet_hours
            if start == end:
                raise InvalidPreference("quiet hours must start and end at different times")
            row.quiet_start, row.quiet_end = start, end
    if enabled is not _UNSET:
        row.enabled = bool(enabled)
    if muted is not _UNSET:
        kinds = {NotificationKind(k).value for k in muted}  # ValueError for an unknown kind
        row.muted = sorted(kinds)
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return preferences(session, driver_id=driver_id)


# ---------------------------------------------------------------- writing the outbox


_outbox = NotificationOutbox.__table__  # type: ignore[attr-defined]


def enqueue(session: Session, *, driver_id: int, kind: NotificationKind, subject: str | int,
            data: dict[str, Any], due: datetime | None = None,
            now: datetime | None = None) -> int | None:
    """Write a notification; its id, or None when (driver, kind, subject) already has one."""
    now = now or utcnow()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (dialect.insert(_outbox)
                 .values(driver_id=driver_id, kind=kind, subject=str(subject), data=data,
                         status=OutboxStatus.pending, next_attempt_at=due or now, attempts=0,
                         created_at=now, updated_at=now)
                 .on_conflict_do_nothing(index_elements=["driver_id", "kind", "subject"])
                 .returning(_outbox.c.id))
    return session.execute(statement).scalar()


def driver_of_tag(session: Session, *, id_tag: str) -> int | None:
    """The driver an id tag belongs to, directly or through its parent tag."""
    link = session.get(DriverIdTag, id_tag)
    if link is None:
        tag = session.get(IdTag, id_tag)
        if tag is not None and tag.parent_id_tag:
            link = session.get(DriverIdTag, tag.parent_id_tag)
    return link.driver_id if link is not None else None


def place_of(session: Session, *, station_id: str, connector_id: int) -> dict[str, Any]:
    station = session.get(Station, station_id)
    site = session.get(Site, station.site_id) if station and station.site_id else None
    return {"station": station_id, "connector": connector_id,
            "site": site.name if site is not None else None}


def transaction_driver(session: Session, *, transaction_id: int) -> tuple[Transaction, int] | None:
    tx = session.get(Transaction, transaction_id)
    if tx is None:
        return None
    driver_id = driver_of_tag(session, id_tag=tx.id_tag)
    return None if driver_id is None else (tx, driver_id)


def session_started(session: Session, *, transaction_id: int, at: datetime) -> int | None:
    found = transaction_driver(session, transaction_id=transaction_id)
    if found is None:
        return None
    tx, driver_id = found
    return enqueue(session, driver_id=driver_id, kind=Kind.session_started,
                   subject=transaction_id, data={
                       "place": place_of(session, station_id=tx.station_id,
                                         connector_id=tx.connector_id),
                       "at": at.isoformat(), "transaction_id": transaction_id})


def session_finished(session: Session, *, session_id: int) -> int | None:
    row = session.get(ChargingSession, session_id)
    if row is None or row.driver_id is None or row.total_incl_vat_ore is None:
        return None
    return enqueue(session, driver_id=row.driver_id, kind=Kind.session_finished,
                   subject=row.transaction_id, data={
                       "place": place_of(session, station_id=row.station_id,
                                         connector_id=row.connector_id),
                       "energy_wh": row.energy_wh or 0, "total_ore": row.total_incl_vat_ore,
                       "currency": row.currency, "transaction_id": row.transaction_id})


def _running(session: Session, *, station_id: str, connector_id: int) -> Transaction | None:
    return session.exec(
        select(Transaction).where(Transaction.station_id == station_id,
                                  Transaction.connector_id == connector_id,
                                  col(Transaction.stop_timestamp).is_(None))
        .order_by(col(Transaction.id).desc())).first()


def status_changed(session: Session, *, station_id: str, connector_id: int, status: str,
                   error_code: str, timestamp: datetime, now: datetime | None = None
                   ) -> list[int]:
    """A connector's status: SuspendedEV during a session (told after
    :data:`SUSPENDED_AFTER` if still so), Faulted during or just at the end of one."""
    now = now or utcnow()
    made: list[int | None] = []
    if status == "SuspendedEV" and connector_id:
        tx = _running(session, station_id=station_id, connector_id=connector_id)
        driver_id = tx and driver_of_tag(session, id_tag=tx.id_tag)
        if tx is not None and driver_id is not None:
            made.append(enqueue(
                session, driver_id=driver_id, kind=Kind.session_suspended, subject=tx.id or 0,
                due=now + SUSPENDED_AFTER, now=now, data={
                    "place": place_of(session, station_id=station_id,
                                      connector_id=connector_id),
                    "transaction_id": tx.id}))
    elif status == "Faulted":
        query = select(Transaction).where(
            Transaction.station_id == station_id,
            col(Transaction.stop_timestamp).is_(None)
            | (col(Transaction.stop_timestamp) >= timestamp - FAULT_WINDOW))
        if connector_id:  # 0: the whole station
            query = query.where(Transaction.connector_id == connector_id)
        for tx in session.exec(query):
            driver_id = driver_of_tag(session, id_tag=tx.id_tag)
            if driver_id is None:
                continue
            made.append(enqueue(
                session, driver_id=driver_id, kind=Kind.station_faulted, subject=tx.id or 0,
                now=now, data={
                    "place": place_of(session, station_id=station_id,
                                      connector_id=tx.connector_id),
                    "error_code": error_code if error_code != "NoError" else None,
                    "transaction_id": tx.id}))
    return [i for i in made if i is not None]


def transaction_stopped(session: Session, *, transaction_id: int, reason: str | None,
                        now: datetime | None = None) -> int | None:
    """An idle warning, due :data:`IDLE_AFTER` from now, for a session that did not end by
    the car leaving (then the cable is gone already)."""
    if reason == "EVDisconnected":
        return None
    found = transaction_driver(session, transaction_id=transaction_id)
    if found is None:
        return None
    tx, driver_id = found
    now = now or utcnow()
    return enqueue(session, driver_id=driver_id, kind=Kind.idle_warning, subject=transaction_id,
                   due=now + IDLE_AFTER, now=now, data={
                       "place": place_of(session, station_id=tx.station_id,
                                         connector_id=tx.connector_id),
                       "transaction_id": transaction_id})


def low_balance(session: Session, *, driver_id: int, balance_ore: int, threshold_ore: int,
                currency: str, subject: str) -> int | None:
    return enqueue(session, driver_id=driver_id, kind=Kind.low_balance, subject=subject,
                   data={"balance_ore": balance_ore, "threshold_ore": threshold_ore,
                         "currency": currency})


def invoice_issued(session: Session, *, invoice_id: int) -> int | None:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or invoice.kind is not InvoiceKind.invoice:
        return None  # credit notes are explained where they are made
    return enqueue(session, driver_id=invoice.driver_id, kind=Kind.invoice_issued,
                   subject=invoice_id, data={
                       "number": invoice.display_number, "total_ore": invoice.total_ore,
                       "currency": invoice.currency, "due_date": invoice.due_date.isoformat(),
                       "ocr": invoice.ocr, "payment_method": str(invoice.payment_method)})


def debit_failed(session: Session, *, invoice_id: int, failures: int, blocked: bool,
                 settings: Settings) -> int | None:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None:
        return None
    return enqueue(session, driver_id=invoice.driver_id, kind=Kind.debit_failed,
                   subject=f"{invoice_id}:{failures}", data={
                       "number": invoice.display_number, "total_ore": invoice.total_ore,
                       "currency": invoice.currency, "ocr": invoice.ocr,
                       "failures": failures, "blocked": blocked,
                       "bankgiro": settings.seller_bankgiro, "iban": settings.sepa_iban})


def plan_changed(session: Session, *, plan_id: int, status: str) -> int | None:
    """A plan made (confirmed, or changed when it replaced an earlier one) or cancelled;
    ``status`` is the plan's as the change left it (it may have been replaced since)."""
    plan = session.get(ChargePlan, plan_id)
    if plan is None:
        return None
    found = transaction_driver(session, transaction_id=plan.transaction_id)
    if found is None:
        return None
    _, driver_id = found
    if status == PlanStatus.cancelled:
        kind = Kind.plan_cancelled
    else:
        earlier = session.exec(select(func.count()).select_from(ChargePlan).where(
            ChargePlan.transaction_id == plan.transaction_id,
            col(ChargePlan.id) < plan_id)).one()
        kind = Kind.plan_changed if earlier else Kind.plan_confirmed
    return enqueue(session, driver_id=driver_id, kind=kind, subject=plan_id, data={
        "place": place_of(session, station_id=plan.station_id, connector_id=plan.connector_id),
        "departure_at": plan.departure_at.isoformat(), "energy_wh": plan.energy_wh,
        "expected_energy_wh": plan.expected_energy_wh,
        "expected_cost": (None if plan.expected_cost_sek is None
                          else str(plan.expected_cost_sek)),
        "transaction_id": plan.transaction_id, "plan_id": plan_id})


# ---------------------------------------------------------------- billing tables


def _cursor(session: Session, source: str, table: Any) -> NotificationCursor:
    cursor = session.get(NotificationCursor, source)
    if cursor is None:
        # First run: what was there before notifications existed is history, not news.
        latest = session.exec(select(func.max(table.id))).one()
        cursor = NotificationCursor(source=source, last_id=latest or 0)
        session.add(cursor)
        session.flush()
    return cursor


def start_cursors(session: Session) -> None:
    """Begin reading invoices and dunning notices from here on."""
    _cursor(session, "invoice", Invoice)
    _cursor(session, "dunning_notice", DunningNotice)


def scan_billing(session: Session, *, settings: Settings) -> list[int]:
    """Invoices issued and direct debits failed since the last scan, as notifications.

    Invoice runs and bank-file imports run in the scheduler, the API and the CLI (another
    process), so they are read from their tables rather than heard on this process's bus."""
    made: list[int | None] = []
    cursor = _cursor(session, "invoice", Invoice)
    invoices = session.exec(
        select(Invoice.id).where(col(Invoice.id) > cursor.last_id - SCAN_OVERLAP)
        .order_by(col(Invoice.id)).limit(SCAN_BATCH)).all()
    for invoice_id in invoices:
        made.append(invoice_issued(session, invoice_id=invoice_id or 0))
    if invoices:
        cursor.last_id = max(cursor.last_id, invoices[-1] or 0)
        cursor.updated_at = utcnow()
        session.add(cursor)
    cursor = _cursor(session, "dunning_notice", DunningNotice)
    notices = session.exec(
        select(DunningNotice).where(col(DunningNotice.id) > cursor.last_id - SCAN_OVERLAP)
        .order_by(col(DunningNotice.id)).limit(SCAN_BATCH)).all()
    for notice in notices:
        made.append(debit_failed(session, invoice_id=notice.invoice_id, failures=notice.level,
                                 blocked=notice.action == "blocked", settings=settings))
    if notices:
        cursor.last_id = max(cursor.last_id, notices[-1].id or 0)
        cursor.updated_at = utcnow()
        session.add(cursor)
    return [i for i in made if i is not None]


# ---------------------------------------------------------------- sending


@dataclass(frozen=True)
class Delivery:
    """A row taken for one attempt: what to send where."""

    outbox_id: int
    channel: str
    address: str
    messages: list[dict[str, Any]]
    conversation_id: int | None
    attempts: int


def due(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[int]:
    """Rows due now: pending, retrying, or taken by an attempt whose lease ran out."""
    now = now or utcnow()
    return [int(i or 0) for i in session.exec(
        select(NotificationOutbox.id).where(
            col(NotificationOutbox.status).in_(
                [OutboxStatus.pending, OutboxStatus.retrying, OutboxStatus.sending]),
            col(NotificationOutbox.next_attempt_at) <= now)
        .order_by(col(NotificationOutbox.next_attempt_at), col(NotificationOutbox.id))
        .limit(limit)).all()]


def _finish(row: NotificationOutbox, status: OutboxStatus, note: str | None,
            now: datetime) -> None:
    row.status, row.note, row.updated_at = status, note, now


def take(session: Session, *, outbox_id: int, now: datetime | None = None
         ) -> Delivery | None:
    """Decide a due row (see the module docstring): a Delivery to attempt now, or None when
    it was settled (suppressed, obsolete, failed) or held, or another sender has it."""
    now = now or utcnow()
    row = session.exec(select(NotificationOutbox).where(
        col(NotificationOutbox.id) == outbox_id,
        col(NotificationOutbox.status).in_(
            [OutboxStatus.pending, OutboxStatus.retrying, OutboxStatus.sending]),
        col(NotificationOutbox.next_attempt_at) <= now).with_for_update()).first()
    if row is None:
        return None
    # Taken: the lease keeps other senders off it (compare and set on the due time).
    claimed = session.execute(
        update(NotificationOutbox)
        .where(col(NotificationOutbox.id) == outbox_id,
               col(NotificationOutbox.next_attempt_at) == row.next_attempt_at,
               col(NotificationOutbox.status) == row.status)
        .values(status=OutboxStatus.sending, next_attempt_at=now + LEASE, updated_at=now)
        .execution_options(synchronize_session=False)).rowcount
    if claimed != 1:
        return None
    session.refresh(row)
    kind = NotificationKind(row.kind)
    prefs = preferences(session, driver_id=row.driver_id)
    if not prefs.wants(kind):
        _finish(row, OutboxStatus.suppressed,
                "notifications off" if not prefs.enabled else "kind muted", now)
        session.add(row)
        return None
    data = dict(row.data)
    reason = _still_true(session, kind=kind, data=data)
    if reason is not None:
        _finish(row, OutboxStatus.obsolete, reason, now)
        session.add(row)
        return None
    if kind not in URGENT and (until := prefs.quiet_until(now)) is not None:
        row.status, row.next_attempt_at = OutboxStatus.pending, until
        row.note, row.updated_at = "quiet hours", now
        session.add(row)
        return None
    if kind in (Kind.session_suspended, Kind.idle_warning):
        data["idle_fee"] = idle_fee(session, transaction_id=data["transaction_id"])
    subject, text = texts.render(kind, data, prefs.language)
    row.data, row.text, row.language, row.channel = data, text, prefs.language, prefs.channel
    address, conversation_id, problem = _address(session, driver_id=row.driver_id,
                                                 channel=prefs.channel)
    row.address = address
    if address is None:
        _finish(row, OutboxStatus.failed, problem, now)
        session.add(row)
        return None
    if problem is not None:  # opted out of SMS
        _finish(row, OutboxStatus.suppressed, problem, now)
        session.add(row)
        return None
    row.attempts += 1
    row.note = None
    session.add(row)
    message: dict[str, Any] = {"text": text,
                               "custom": {"notification": kind.value, "subject": subject}}
    return Delivery(outbox_id, prefs.channel.value, address, [message], conversation_id,
                    row.attempts)


def record_attempt(session: Session, *, outbox_id: int, error: str | None,
                   now: datetime | None = None) -> OutboxStatus:
    """The outcome of an attempt: sent, retried after a delay, or failed for good."""
    now = now or utcnow()
    row = session.get(NotificationOutbox, outbox_id)
    if row is None:
        raise NotFound(f"no notification {outbox_id}")
    if error is None:
        row.status, row.sent_at, row.note = OutboxStatus.sent, now, None
    elif row.attempts >= MAX_ATTEMPTS:
        row.status, row.note = OutboxStatus.failed, error[:300]
    else:
        delay = RETRY_DELAYS[min(row.attempts, len(RETRY_DELAYS)) - 1]
        row.status, row.next_attempt_at, row.note = OutboxStatus.retrying, now + delay, error[:300]
    row.updated_at = now
    session.add(row)
    return row.status


def give_up(session: Session, *, outbox_id: int, note: str) -> None:
    """A row that could not be prepared (its data no longer renders, say): failed."""
    row = session.get(NotificationOutbox, outbox_id)
    if row is not None:
        _finish(row, OutboxStatus.failed, note[:300], utcnow())
        session.add(row)


def _still_true(session: Session, *, kind: NotificationKind, data: dict[str, Any]) -> str | None:
    """Why a notification about the moment no longer holds, or None when it does."""
    if kind in (Kind.plan_confirmed, Kind.plan_changed):
        plan = session.get(ChargePlan, data["plan_id"])
        return None if plan is not None and plan.status is PlanStatus.active else (
            "the plan has been replaced or has ended")
    if kind not in (Kind.session_started, Kind.session_suspended, Kind.idle_warning):
        return None
    tx = session.get(Transaction, data["transaction_id"])
    if tx is None:
        return "no such session"
    if kind is Kind.session_started:
        return None if tx.stop_timestamp is None else "the session has ended"
    connector = session.get(Connector, (tx.station_id, tx.connector_id))
    status = connector.status if connector is not None else None
    if kind is Kind.session_suspended:
        if tx.stop_timestamp is not None:
            return "the session has ended"
        return None if status == "SuspendedEV" else f"the connector is {status} now"
    later = session.exec(select(Transaction.id).where(
        Transaction.station_id == tx.station_id, Transaction.connector_id == tx.connector_id,
        col(Transaction.id) > tx.id)).first()
    if later is not None:
        return "a new session has started on the connector"
    return None if status == "Finishing" else f"the connector is {status} now"


def idle_fee(session: Session, *, transaction_id: int) -> dict[str, Any] | None:
    """The session's tariff's price for time connected without charging (OCPI
    PARKING_TIME, per hour excl. VAT) as a price per minute incl. VAT, ROUND_HALF_UP to the
    öre, and the minutes after the start from which it applies; None when it has none."""
    row = session.exec(select(ChargingSession).where(
        ChargingSession.transaction_id == transaction_id)).first()
    if row is None or row.tariff_id is None:
        return None
    version = session.exec(select(TariffVersion).where(
        TariffVersion.tariff_id == row.tariff_id,
        TariffVersion.version == row.tariff_version)).first()
    if version is None:
        return None
    for element in parse_tariff(version.body).elements:
        for component in element.price_components:
            if component.type is TariffDimensionType.PARKING_TIME:
                per_hour = Decimal(component.price) * (100 + Decimal(component.vat or 0)) / 100
                per_minute = (per_hour / 60).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
                after = (element.restrictions.min_duration
                         if element.restrictions is not None else None)
                return {"per_minute": str(per_minute), "currency": version.currency,
                        "after_minutes": after // 60 if after else None}
    return None


def _address(session: Session, *, driver_id: int, channel: NotificationChannel
             ) -> tuple[str | None, int | None, str | None]:
    """(address, conversation id, problem): no address means it cannot be sent."""
    driver = _driver(session, driver_id)
    if channel is NotificationChannel.web:
        conversation = session.exec(
            select(Conversation).where(Conversation.channel == "web",
                                       Conversation.driver_id == driver_id,
                                       col(Conversation.verified).is_(True))
            .order_by(col(Conversation.updated_at).desc())).first()
        if conversation is None:
            return None, None, "no signed-in web chat"
        return conversation.sender, conversation.id, None
    address = driver.phone if channel is NotificationChannel.sms else driver.email
    if not address:
        return None, None, f"no {'phone number' if channel == 'sms' else 'e-mail address'}"
    conversation_id = session.exec(select(Conversation.id).where(
        Conversation.channel == channel.value, Conversation.sender == address)).first()
    if channel is NotificationChannel.sms:
        opt_out = session.get(SmsOptOut, address)
        if opt_out is not None and opt_out.opted_out:
            return address, conversation_id, "SMS opt-out (STOP)"
    return address, conversation_id, None


# ---------------------------------------------------------------- the operator's view


def list_outbox(session: Session, *, status: OutboxStatus | None = None,
                driver_id: int | None = None, kind: NotificationKind | None = None,
                limit: int = 100, before_id: int | None = None
                ) -> Sequence[NotificationOutbox]:
    """Newest first."""
    query = select(NotificationOutbox)
    if status is not None:
        query = query.where(NotificationOutbox.status == status)
    if driver_id is not None:
        query = query.where(NotificationOutbox.driver_id == driver_id)
    if kind is not None:
        query = query.where(NotificationOutbox.kind == kind)
    if before_id is not None:
        query = query.where(col(NotificationOutbox.id) < before_id)
    return session.exec(query.order_by(col(NotificationOutbox.id).desc()).limit(limit)).all()


def outbox_counts(session: Session) -> dict[str, int]:
    rows = session.exec(select(NotificationOutbox.status, func.count())
                        .group_by(NotificationOutbox.status)).all()
    return {str(status): int(count) for status, count in rows}


def retry(session: Session, *, outbox_id: int, now: datetime | None = None
          ) -> NotificationOutbox:
    """An operator sends a failed notification again (a fresh set of attempts)."""
    now = now or utcnow()
    row = session.get(NotificationOutbox, outbox_id)
    if row is None:
        raise NotFound(f"no notification {outbox_id}")
    if row.status is not OutboxStatus.failed:
        raise Conflict(f"notification {outbox_id} is {row.status}; only failed ones are "
                          "sent again")
    row.status, row.attempts, row.next_attempt_at = OutboxStatus.pending, 0, now
    row.note, row.updated_at = "sent again by an operator", now
    session.add(row)
    return row
