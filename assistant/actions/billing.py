"""What a driver pays: prices, history, a session's cost line by line, disputes, invoices,
balance and top-ups, and paying by Autogiro."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from sqlmodel import Session

from assistant.actions import context, prices, queries, reference
from assistant.actions.common import (
    Driver,
    handoff,
    int_slot,
    language,
    money,
    month_back,
    number,
    offset,
    period,
    station_slot,
    text_slot,
    verified_driver,
    when,
)
from assistant.actions.words import DIMENSION, UNIT, VAT
from billing_api import payments, support
from billing_api import service as tariffs
from billing_api.models import PaymentMethod
from billing_api.pricing import price_sheet
from billing_api.service import BillingError
from billing_api.wallets import to_ore
from chargedesk.errors import DomainError
from chargedesk.types import utcnow
from station_api import service as stations

Events = list[dict[str, Any]]


def _today(zone: str) -> date:
    return utcnow().astimezone(ZoneInfo(zone)).date()


def _vat(rate: Decimal | None, lang: str) -> str:
    return VAT[lang] if rate is None else f"{VAT[lang]} {number(rate, lang, 2)}\xa0%"


# ---------------------------------------------------------------- prices


def _price(session: Session, *, station_id: str | None, site_id: str | None,
           connector: int | None, driver_id: int | None, settings: Any) -> dict[str, Any]:
    if station_id is None and site_id is not None:
        station_id = next((s.id for s in stations.list_stations(session)
                           if s.site_id == site_id), None)
    if station_id is None:
        raise stations.NotFound("no station")
    stations.get_station(session, station_id=station_id)
    return support.price_now(session, station_id=station_id, settings=settings,
                             connector_id=connector, driver_id=driver_id)


class ActionPriceInfo(Action):
    """Every fee at ``station_id`` (or the ``site``'s first station) if charging starts now,
    incl. VAT, for the driver's group when they are verified."""

    def name(self) -> str:
        return "action_price_info"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        lang, runtime = language(tracker), context.current()
        station_id, site_id = station_slot(tracker), text_slot(tracker, "site")
        if station_id is None and site_id is None:
            dispatcher.utter_message(response="utter_ask_station_id")
            return []
        driver_id = int_slot(tracker, "driver_id") if tracker.get_slot("verified") else None
        connector = int_slot(tracker, "connector")
        minute = int(time.time() // 60)  # which of the tariff's time windows applies
        try:
            sheet = await reference.of(runtime).prices.get_or_load(
                (station_id, site_id, connector, driver_id, minute),
                lambda: context.db(_price, station_id=station_id, site_id=site_id,
                                   connector=connector, driver_id=driver_id,
                                   settings=runtime.settings))
        except DomainError:
            dispatcher.utter_message(response="utter_no_price",
                                     station_id=station_id or site_id)
            return []
        dispatcher.utter_message(response="utter_price_now", station_id=sheet["station_id"],
                                 prices="\n".join(price_lines(sheet, lang)) or "-")
        return []


def price_lines(sheet: dict[str, Any], lang: str) -> list[str]:
    """Every price of the tariff with when it applies ("Energi 22-06: 1,95 kr/kWh"), the
    one that applies now marked where a dimension has several."""
    elements = sheet["elements"]
    day = datetime.fromisoformat(sheet["at"]).date()
    labelled = prices.labels(elements, language=lang, day=day)
    now = prices.applies_now(elements, labelled)
    lines = []
    for index, element in enumerate(elements):
        for c in element["components"]:
            key = (index, c["type"])
            if key not in labelled:
                continue  # never applies (shadowed, or not in force today)
            price = c["price_incl_vat"] if c["price_incl_vat"] is not None \
                else c["price_excl_vat"]
            unit = UNIT[lang].get(c["unit"], c["unit"])
            name = DIMENSION[lang].get(c["type"], c["type"])
            when_ = labelled[key]
            line = (f"{name}{' ' + when_ if when_ else ''}: "
                    f"{money(Decimal(price), lang, sheet['currency'])}/{unit}")
            if key in now:
                line += f" ({prices.WORDS[lang]['now']})"
            lines.append(line)
    return lines


# ---------------------------------------------------------------- history and costs


class ActionBillingHistory(Action):
    """The driver's sessions and invoices in the ``date`` period, else in the calendar
    month ``offset`` months back (0: this month)."""

    def name(self) -> str:
        return "action_billing_history"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        settings = context.current().settings
        today = _today(settings.time_zone)
        since, until = period(tracker, today) or month_back(today, offset(tracker))
        history = await context.db(support.billing_history, driver_id=driver.id, since=since,
                                   until=until, settings=settings)
        lang = driver.language
        label = f"{since.isoformat()} \u2013 {until.fromordinal(until.toordinal() - 1).isoformat()}"
        if not history.sessions:
            dispatcher.utter_message(response="utter_history_empty", period=label)
            return []
        energy = sum((s.energy_kwh or Decimal(0) for s in history.sessions), Decimal(0))
        lines = "\n".join(
            f"{when(s.start_at, lang, settings.time_zone)}, {s.station_id}: "
            f"{number(s.energy_kwh or 0, lang)} kWh, "
            + (money(s.total_incl_vat, lang, s.currency) if s.total_incl_vat is not None
               else "-")
            for s in history.sessions[-10:])
        dispatcher.utter_message(response="utter_history", period=label,
                                 count=len(history.sessions), energy=number(energy, lang),
                                 total=money(history.total_incl_vat, lang), sessions=lines)
        return []


def _nth_session(session: Session, *, driver_id: int, back: int) -> Any:
    rows = queries.rated_sessions(session, driver_id=driver_id, limit=back + 1)
    if len(rows) <= back:
        raise support.NotFound("no such session")
    return rows[back]


@dataclass(frozen=True)
class _Explained:
    cost: Any  # billing_api.sessions.CostExplanation
    # The tariff's elements as at the session's start (price_sheet's), and the element each
    # cost line was priced by: to say which window a line's price belongs to.
    elements: list[dict[str, Any]]
    line_elements: list[int | None]
    day: date


def _explain(session: Session, *, driver_id: int, back: int, settings: Any) -> _Explained:
    row = _nth_session(session, driver_id=driver_id, back=back)
    cost = support.explain_cost(session, driver_id=driver_id, session_id=row.id)
    zone = ZoneInfo(stations.station_time_zone(session, station_id=row.station_id,
                                               default=settings.time_zone))
    elements: list[dict[str, Any]] = []
    line_elements: list[int | None] = [None] * len(cost.lines)
    try:
        version = tariffs.tariff_version(session, tariff_id=row.tariff_id or "",
                                         version=row.tariff_version)
        elements = price_sheet(tariffs.load(version), at=row.start_at,
                               time_zone=zone)["elements"]
        breakdown = json.loads(row.cdr or "{}").get("cost_breakdown") or []
        if len(breakdown) == len(cost.lines):
            line_elements = [line.get("tariff_element") for line in breakdown]
    except (DomainError, ValueError):
        pass  # the lines are still right; only their time windows go unsaid
    return _Explained(cost, elements, line_elements, row.start_at.astimezone(zone).date())


class ActionExplainCost(Action):
    """The cost of the driver's latest rated session (``offset`` sessions back), line by
    line from its rating: quantity times unit price = amount excl. VAT, VAT per rate, total."""

    def name(self) -> str:
        return "action_explain_cost"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        settings = context.current().settings
        try:
            found = await context.db(_explain, driver_id=driver.id, back=offset(tracker),
                                     settings=settings)
        except support.NotFound:
            dispatcher.utter_message(response="utter_no_session")
            return []
        cost, lang = found.cost, driver.language
        cur = cost.currency
        windows = prices.labels(found.elements, language=lang, day=found.day)
        lines = []
        for line, element in zip(cost.lines, found.line_elements, strict=True):
            name = DIMENSION[lang].get(line.dimension, line.dimension)
            window = windows.get((element, line.dimension)) if element is not None else None
            lines.append(
                f"{name}{' ' + window if window else ''}: "
                f"{number(line.quantity, lang, 3)} {UNIT[lang].get(line.unit, line.unit)} "
                f"\u00d7 {money(line.unit_price, lang, cur)} = "
                f"{money(line.amount_excl_vat, lang, cur)}")
        if cost.price_limit_adjustment is not None:
            lines.append(f"{DIMENSION[lang]['ADJUSTMENT']}: "
                         f"{money(cost.price_limit_adjustment[0], lang, cur)}")
        vat = "\n".join(f"{_vat(v.rate, lang)}: {money(v.amount, lang, cur)}" for v in cost.vat)
        dispatcher.utter_message(
            response="utter_cost_explained", station_id=cost.station_id,
            start=when(cost.start_at, lang, settings.time_zone),
            lines="\n".join(lines), vat=vat, total_excl_vat=money(cost.total_excl_vat, lang, cur),
            total=money(cost.total_incl_vat, lang, cur))
        return []


def _dispute(session: Session, *, driver: Driver, back: int, reason: str) -> tuple[Any, Any]:
    row = _nth_session(session, driver_id=driver.id, back=back)
    dispute = support.open_dispute(session, driver_id=driver.id, session_id=row.id,
                                   reason=reason, opened_by=driver.label)
    return row, dispute


class ActionDisputeCharge(Action):
    """Open a dispute on the driver's latest rated session (``offset`` back) with their own
    words as the reason; an agent decides, so the conversation goes to a person."""

    def name(self) -> str:
        return "action_dispute_charge"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        reason = str(tracker.latest_message.get("text") or "").strip()
        if not reason or reason.startswith("/"):
            reason = "disputed through the assistant"
        try:
            row, dispute = await context.db(_dispute, driver=driver, back=offset(tracker),
                                            reason=reason)
        except support.NotFound:
            dispatcher.utter_message(response="utter_no_session")
            return []
        lang = driver.language
        dispatcher.utter_message(
            response="utter_dispute_opened", dispute=dispute.id, station_id=row.station_id,
            start=when(row.start_at, lang, context.current().settings.time_zone),
            proposed=money(Decimal(dispute.proposed_credit_ore) / 100, lang, row.currency))
        return handoff("dispute")


# ---------------------------------------------------------------- invoices


_INVOICE = re.compile(r"^\s*([A-Za-z]+)\W*(?:\d+\W+)?0*(\d+)\s*$")


def _send(session: Session, *, driver_id: int, number_text: str | None,
          when_: tuple[date, date] | None, back: int, settings: Any) -> list[Any]:
    if number_text is not None:
        match = _INVOICE.match(number_text)
        wanted = (match[1].upper(), int(match[2])) if match else None
        found = next((i for i in queries.invoices_of(session, driver_id=driver_id, limit=1000)
                      if (i.series.upper(), i.number) == wanted), None)
        if found is None:
            raise support.NotFound("no such invoice")
        return support.send_invoices(session, driver_id=driver_id, settings=settings,
                                     invoice_id=found.id)
    if when_ is not None:
        return support.send_invoices(session, driver_id=driver_id, settings=settings,
                                     since=when_[0], until=when_[1])
    invoices = queries.invoices_of(session, driver_id=driver_id, limit=back + 1)
    if len(invoices) <= back:
        raise support.NotFound("no invoices")
    return support.send_invoices(session, driver_id=driver_id, settings=settings,
                                 invoice_id=invoices[back].id)


class ActionRequestInvoice(Action):
    """E-mail the ``invoice`` named, or the invoices of the ``date`` period, or the latest
    invoice (``offset`` back), to the driver's address."""

    def name(self) -> str:
        return "action_request_invoice"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        settings = context.current().settings
        try:
            mails = await context.db(
                _send, driver_id=driver.id, number_text=text_slot(tracker, "invoice"),
                when_=period(tracker, _today(settings.time_zone)), back=offset(tracker),
                settings=settings)
        except support.NotFound:
            dispatcher.utter_message(response="utter_no_invoice")
            return []
        except BillingError:
            dispatcher.utter_message(response="utter_no_email_address")
            return handoff("action_failed")
        dispatcher.utter_message(response="utter_invoice_sent", count=len(mails),
                                 email=mails[0].to_address)
        return []


# ---------------------------------------------------------------- wallet


def _balance(session: Session, *, driver_id: int, settings: Any) -> tuple[str, Any]:
    driver = support.get_driver(session, driver_id=driver_id)
    if driver.payment_method != PaymentMethod.prepaid:
        return driver.payment_method.value, None
    return driver.payment_method.value, support.balance(session, driver_id=driver_id,
                                                        settings=settings)


class ActionCheckBalance(Action):
    """A prepaid driver's balance, what running sessions hold and what is available; a
    driver paying otherwise is told how they pay."""

    def name(self) -> str:
        return "action_check_balance"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        method, balance = await context.db(_balance, driver_id=driver.id,
                                           settings=context.current().settings)
        if balance is None:
            dispatcher.utter_message(response=f"utter_pays_by_{method}")
            return []
        lang = driver.language
        dispatcher.utter_message(
            response="utter_balance_low" if balance.low else "utter_balance",
            balance=money(balance.balance, lang, balance.currency),
            held=money(balance.held, lang, balance.currency),
            available=money(balance.available, lang, balance.currency))
        return []


class ActionTopUp(Action):
    """A top-up of ``amount`` needs the payment taken first (card, Swish); the payment
    provider's confirmation credits the wallet (billing_api.support.top_up with its own
    idempotency key). No provider is connected yet, so after checking the request the
    driver is handed to a person who takes the payment."""

    def name(self) -> str:
        return "action_top_up"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        try:
            amount = Decimal(str(tracker.get_slot("amount")))
            to_ore(amount)
            if amount <= 0:
                raise ValueError(amount)
        except (ArithmeticError, ValueError, DomainError):
            dispatcher.utter_message(response="utter_ask_amount")
            return [SlotSet("amount", None)]
        method, _ = await context.db(_balance, driver_id=driver.id,
                                     settings=context.current().settings)
        if method != PaymentMethod.prepaid:
            dispatcher.utter_message(response=f"utter_pays_by_{method}")
            return [SlotSet("amount", None)]
        dispatcher.utter_message(response="utter_top_up_needs_payment",
                                 amount=money(amount, driver.language))
        return [SlotSet("amount", None), *handoff("action_failed")]


# ---------------------------------------------------------------- Autogiro


class ActionChangePaymentMethod(Action):
    """Start an Autogiro mandate (pending until Bankgirot confirms it) from the slots
    ``clearing_number``, ``account_number`` and ``personal_number``; the account holder is
    the driver. Without them, asks for them."""

    def name(self) -> str:
        return "action_change_payment_method"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        details = {k: text_slot(tracker, k)
                   for k in ("clearing_number", "account_number", "personal_number")}
        if None in details.values():
            dispatcher.utter_message(response="utter_ask_autogiro_details")
            return []

        def create(session: Session) -> Any:
            holder = support.get_driver(session, driver_id=driver.id).name
            return payments.create_mandate(session, driver_id=driver.id, scheme="autogiro",
                                           holder_name=holder, created_by=driver.label,
                                           **details)

        forget = [SlotSet(k, None) for k in details]
        try:
            mandate = await context.db(create)
        except DomainError as exc:
            dispatcher.utter_message(response="utter_mandate_refused", reason=str(exc))
            return forget
        dispatcher.utter_message(response="utter_mandate_created", mandate=mandate.id,
                                 account=f"{mandate.clearing_number}-****"
                                         f"{(mandate.account_number or '')[-4:]}")
        return forget


ACTIONS = [ActionPriceInfo, ActionBillingHistory, ActionExplainCost, ActionDisputeCharge,
           ActionRequestInvoice, ActionCheckBalance, ActionTopUp, ActionChangePaymentMethod]
