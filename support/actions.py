"""One-click actions on a ticket, through the same domain services and audit logs an
operator's requests go through, recorded as the agent (``agent:<id>``):

- ``unlock_connector``, ``soft_reset``, ``remote_stop``: remote commands through
  ``CentralSystem.send_command`` (the station's command log says who and why);
- ``credit_note``: a credit note on one of the driver's issued invoices
  (:func:`billing_api.invoicing.credit_amount` / ``credit_in_full``; the invoice itself is
  never edited);
- ``refund``: money back to a prepaid driver's wallet (:func:`billing_api.wallets.refund`);
- ``block_card``: one of the driver's id tags blocked in the registry and owed to every
  station's local list, delivered to the connected ones now
  (:mod:`assistant.actions.cards`, the same path as the assistant's lost card).

Money has an approval limit per role (``CHARGEDESK_SUPPORT_AGENT_CREDIT_LIMIT``,
``…_SUPERVISOR_CREDIT_LIMIT``), measured on the amount including VAT: a request above the
caller's limit becomes an :class:`~support.models.Approval` for someone whose limit covers
it, and is carried out (as the approver) only when they approve.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import structlog
from sqlmodel import Session, col, select

from chargedesk.db import run_in_session
from chargedesk.settings import Settings
from support import service
from support.auth import Actor
from support.models import Approval, ApprovalStatus, Ticket

log = structlog.get_logger(__name__)

COMMANDS = ("unlock_connector", "soft_reset", "remote_stop")
MONEY = ("credit_note", "refund")
ACTIONS = (*COMMANDS, *MONEY, "block_card")


class ActionError(service.SupportError):
    pass


@dataclass(frozen=True)
class Command:
    station_id: str
    action: str
    payload: dict[str, Any]


def _int(params: dict[str, Any], name: str) -> int:
    try:
        return int(params[name])
    except (KeyError, TypeError, ValueError):
        raise ActionError(f"{name} is required (a whole number)") from None


def _text(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = str(params.get(name) or "").strip()
    if not value and required:
        raise ActionError(f"{name} is required")
    return value or None


def _amount_ore(params: dict[str, Any], name: str = "amount") -> int:
    try:
        amount = Decimal(str(params[name]))
    except (KeyError, InvalidOperation):
        raise ActionError(f"{name} is required (e.g. \"125.00\")") from None
    if amount <= 0 or amount != amount.quantize(Decimal("0.01")):
        raise ActionError(f"{name} must be positive, with at most two decimals")
    return int(amount * 100)


def _ticket(session: Session, ticket_id: int) -> Ticket:
    ticket = service.get_ticket(session, ticket_id=ticket_id)
    if ticket.merged_into_id is not None:
        raise service.Conflict(f"ticket {ticket_id} was merged into {ticket.merged_into_id}")
    return ticket


def _driver(ticket: Ticket) -> int:
    if ticket.driver_id is None:
        raise ActionError("the driver of this ticket is not identified")
    return ticket.driver_id


# ---------------------------------------------------------------- checking a request


def command_for(session: Session, *, ticket_id: int, action: str, params: dict[str, Any]
                ) -> Command:
    """The remote command an action sends (checked against the registry)."""
    from station_api import service as stations

    _ticket(session, ticket_id)
    if action == "remote_stop":
        tx = stations.get_transaction(session, transaction_id=_int(params, "transaction_id"))
        if tx.stop_timestamp is not None:
            raise ActionError(f"transaction {tx.id} has already stopped")
        return Command(tx.station_id, "RemoteStopTransaction", {"transactionId": tx.id})
    station_id = (_text(params, "station_id") or "").upper()
    stations.get_station(session, station_id=station_id)
    if action == "unlock_connector":
        return Command(station_id, "UnlockConnector",
                       {"connectorId": _int(params, "connector_id")})
    return Command(station_id, "Reset", {"type": "Soft"})


def gross_ore(net_ore: int, vat_rate: Decimal | None) -> int:
    """Net plus VAT, rounded half up to whole öre."""
    vat = Decimal(net_ore) * (vat_rate or Decimal(0)) / 100
    return net_ore + int(vat.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money_amount(session: Session, *, ticket: Ticket, action: str, params: dict[str, Any]
                 ) -> int:
    """What a money action is worth incl. VAT (öre), after checking it can be done."""
    from billing_api import invoicing
    from billing_api.models import Driver, InvoiceKind, PaymentMethod

    driver_id = _driver(ticket)
    _text(params, "reason")
    if action == "refund":
        driver = session.get(Driver, driver_id)
        if driver is None or driver.payment_method != PaymentMethod.prepaid:
            raise ActionError("refunds go to a prepaid wallet; this driver is invoiced: "
                              "give a credit note")
        return _amount_ore(params)
    invoice = invoicing.get_invoice(session, invoice_id=_int(params, "invoice_id"))
    if invoice.driver_id != driver_id or invoice.kind != InvoiceKind.invoice:
        raise ActionError(f"invoice {invoice.id} is not an invoice of this ticket's driver")
    if params.get("amount") in (None, ""):
        credited = -sum(line.net_ore for line in invoicing.credited_lines(
            session, invoice_id=invoice.id or 0))
        if credited:
            raise ActionError("the invoice is already partly credited: give an amount")
        return invoice.total_ore
    rate = _vat_rate(params)
    return gross_ore(_amount_ore(params), rate)


def _vat_rate(params: dict[str, Any]) -> Decimal:
    try:
        rate = Decimal(str(params.get("vat_rate", "25")))
    except InvalidOperation:
        raise ActionError("vat_rate must be a number") from None
    if not 0 <= rate <= 100:
        raise ActionError("vat_rate must be between 0 and 100")
    return rate


# ---------------------------------------------------------------- carrying out money


def _credit_or_refund(session: Session, *, ticket_id: int, action: str,
                      params: dict[str, Any], by: str, note: str, settings: Settings
                      ) -> dict[str, Any]:
    from billing_api import invoicing, wallets
    from billing_api.money import cents_to_decimal

    ticket = _ticket(session, ticket_id)
    money_amount(session, ticket=ticket, action=action, params=params)
    reason = f"{_text(params, 'reason')} (support ticket {ticket_id}{note})"[:200]
    if action == "refund":
        entry = wallets.refund(session, driver_id=_driver(ticket),
                               amount_ore=_amount_ore(params), reason=reason, created_by=by,
                               idempotency_key=params.get("idempotency_key")
                               or f"support-{ticket_id}-{uuid.uuid4().hex[:16]}")
        return {"ledger_entry_id": entry.id, "amount": str(cents_to_decimal(entry.amount_ore))}
    invoice = invoicing.get_invoice(session, invoice_id=_int(params, "invoice_id"))
    if params.get("amount") in (None, ""):
        credit = invoicing.credit_in_full(session, invoice=invoice, reason=reason,
                                          settings=settings, created_by=by)
    else:
        credit = invoicing.credit_amount(session, invoice=invoice,
                                         net_ore=_amount_ore(params),
                                         vat_rate=_vat_rate(params), reason=reason,
                                         settings=settings, created_by=by)
    return {"credit_note_id": credit.id, "credit_note": credit.display_number,
            "invoice": invoice.display_number,
            "total": str(cents_to_decimal(credit.total_ore))}


def _request_approval(session: Session, *, ticket_id: int, action: str,
                      params: dict[str, Any], actor: Actor, amount_ore: int,
                      now: datetime) -> Approval:
    ticket = _ticket(session, ticket_id)
    row = Approval(ticket_id=ticket_id, action=action, params=params, amount_ore=amount_ore,
                   requested_by=actor.label, created_at=now)
    session.add(row)
    session.flush()
    service.add_event(session, ticket=ticket, kind="approval_requested", actor=actor.label,
                      now=now, text=f"{action} of {Decimal(amount_ore) / 100:.2f} incl. VAT "
                                    "waits for approval",
                      data={"approval_id": row.id, "action": action, "params": params})
    return row


def _plan_money(session: Session, *, ticket_id: int, action: str, params: dict[str, Any],
                actor: Actor, settings: Settings, now: datetime) -> dict[str, Any] | None:
    """None when the caller may do it now; else the approval request made."""
    ticket = _ticket(session, ticket_id)
    amount = money_amount(session, ticket=ticket, action=action, params=params)
    limit = actor.credit_limit_ore(settings)
    if limit is None or amount <= limit:
        return None
    approval = _request_approval(session, ticket_id=ticket_id, action=action, params=params,
                                 actor=actor, amount_ore=amount, now=now)
    return {"status": "pending_approval", "approval_id": approval.id,
            "amount_incl_vat": f"{Decimal(amount) / 100:.2f}",
            "limit": f"{Decimal(limit) / 100:.2f}"}


# ---------------------------------------------------------------- cards


def _block(session: Session, *, ticket_id: int, id_tag: str, by: str) -> list[str]:
    from assistant.actions import cards
    from billing_api.models import DriverIdTag

    ticket = _ticket(session, ticket_id)
    link = session.get(DriverIdTag, id_tag)
    if link is None or link.driver_id != _driver(ticket):
        raise ActionError(f"{id_tag} is not a card of this ticket's driver")
    blocked = cards.block_cards(session, id_tags=(id_tag,))
    if blocked:
        cards.owe_blocks(session, tags=blocked, requested_by=by)
    return blocked


async def _deliver_blocks(runtime: Any, *, ticket_id: int) -> tuple[int, int]:
    import asyncio

    from assistant.actions import cards

    central = runtime.central
    reason = f"card blocked by support (ticket {ticket_id})"
    connected = sorted(central.connections)

    async def one(station_id: str) -> bool:
        try:
            return bool(await cards.deliver(central, runtime.engine, station_id=station_id,
                                            reason=reason))
        except Exception:
            log.exception("local list update failed", station_id=station_id)
            return False

    results = await asyncio.gather(*(one(s) for s in connected))
    return sum(results), len(connected)


# ---------------------------------------------------------------- running an action


def _record(session: Session, *, ticket_id: int, action: str, params: dict[str, Any],
            actor: str, result: dict[str, Any], now: datetime) -> None:
    ticket = service.get_ticket(session, ticket_id=ticket_id)
    outcome = result.get("outcome") or result.get("status")
    service.add_event(session, ticket=ticket, kind="action", actor=actor, now=now,
                      text=f"{action}: {outcome}",
                      data={"action": action, "params": params, "result": result})


async def execute(runtime: Any, *, ticket_id: int, action: str, params: dict[str, Any],
                  by: str, now: datetime, note: str = "") -> dict[str, Any]:
    """Carry out an action as ``by`` (no limit checks: see :func:`run`)."""
    engine, settings = runtime.engine, runtime.settings
    if action in COMMANDS:
        command = await run_in_session(engine, command_for, ticket_id=ticket_id,
                                       action=action, params=params)
        result = await runtime.central.send_command(
            command.station_id, command.action, command.payload, requested_by=by,
            reason=f"support ticket {ticket_id}{note}")
        outcome = str(result.outcome)
        return {"status": "done" if outcome == "accepted" else "failed", "outcome": outcome,
                "station_id": command.station_id, "command": command.action,
                "response": result.response, "error": result.error,
                "command_id": result.command_id}
    if action in MONEY:
        done = await run_in_session(engine, _credit_or_refund, ticket_id=ticket_id,
                                    action=action, params=params, by=by, note=note,
                                    settings=settings)
        return {"status": "done", "outcome": "done", **done}
    if action == "block_card":
        id_tag = _text(params, "id_tag") or ""
        blocked = await run_in_session(engine, _block, ticket_id=ticket_id, id_tag=id_tag,
                                       by=by)
        if not blocked:
            return {"status": "failed", "outcome": "not_blocked", "id_tag": id_tag,
                    "error": "the card is not active (already blocked?) or is a fleet's "
                             "parent tag"}
        updated, connected = await _deliver_blocks(runtime, ticket_id=ticket_id)
        return {"status": "done", "outcome": "blocked", "id_tag": id_tag,
                "stations_updated": updated, "stations_connected": connected}
    raise ActionError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")


async def run(runtime: Any, *, ticket_id: int, action: str, params: dict[str, Any],
              actor: Actor, now: datetime) -> dict[str, Any]:
    """An agent's one click: checked, carried out (or sent for approval), recorded on the
    ticket's timeline."""
    if action not in ACTIONS:
        raise ActionError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    engine, settings = runtime.engine, runtime.settings
    if action in MONEY:
        pending = await run_in_session(engine, _plan_money, ticket_id=ticket_id, action=action,
                                       params=params, actor=actor, settings=settings, now=now)
        if pending is not None:
            return pending
    await run_in_session(engine, _ticket, ticket_id=ticket_id)
    result = await execute(runtime, ticket_id=ticket_id, action=action, params=params,
                           by=actor.label, now=now)
    await run_in_session(engine, _record, ticket_id=ticket_id, action=action, params=params,
                         actor=actor.label, result=result, now=now)
    return result


# ---------------------------------------------------------------- approvals


def list_approvals(session: Session, *, status: ApprovalStatus | None = ApprovalStatus.pending
                   ) -> list[Approval]:
    query = select(Approval)
    if status is not None:
        query = query.where(Approval.status == status)
    return list(session.exec(query.order_by(col(Approval.id).desc())).all())


def _claim_approval(session: Session, *, approval_id: int, approve: bool, actor: Actor,
                    settings: Settings, now: datetime) -> Approval:
    row = session.exec(select(Approval).where(Approval.id == approval_id)
                       .with_for_update()).first()
    if row is None:
        raise service.NotFound(f"no approval {approval_id}")
    if row.status != ApprovalStatus.pending:
        raise service.Conflict(f"approval {approval_id} was already {row.status}")
    if row.requested_by == actor.label:
        raise service.Forbidden("nobody approves their own request")
    limit = actor.credit_limit_ore(settings)
    if approve and limit is not None and row.amount_ore > limit:
        raise service.Forbidden("this is above your own limit too")
    row.status = ApprovalStatus.approved if approve else ApprovalStatus.rejected
    row.decided_by = actor.label
    row.decided_at = now
    session.add(row)
    ticket = service.get_ticket(session, ticket_id=row.ticket_id)
    service.add_event(session, ticket=ticket, kind="approval", actor=actor.label, now=now,
                      text=f"{row.action} {'approved' if approve else 'rejected'}",
                      data={"approval_id": row.id})
    return row


def _settle_approval(session: Session, *, approval_id: int, result: dict[str, Any]) -> None:
    row = session.get(Approval, approval_id)
    if row is not None:
        row.result = result
        if result.get("status") != "done":
            row.status = ApprovalStatus.failed
        session.add(row)


async def decide(runtime: Any, *, approval_id: int, approve: bool, actor: Actor,
                 now: datetime) -> dict[str, Any]:
    """Approve (and carry out, as the approver) or reject a request above a limit."""
    engine = runtime.engine
    row = await run_in_session(engine, _claim_approval, approval_id=approval_id,
                               approve=approve, actor=actor, settings=runtime.settings,
                               now=now)
    if not approve:
        return {"status": "rejected", "approval_id": approval_id}
    try:
        result = await execute(runtime, ticket_id=row.ticket_id, action=row.action,
                               params=row.params, by=actor.label, now=now,
                               note=f", asked by {row.requested_by}")
    except Exception as exc:
        result = {"status": "failed", "outcome": "error", "error": str(exc)}
        await run_in_session(engine, _settle_approval, approval_id=approval_id, result=result)
        raise
    await run_in_session(engine, _settle_approval, approval_id=approval_id, result=result)
    await run_in_session(engine, _record, ticket_id=row.ticket_id, action=row.action,
                         params=row.params, actor=actor.label, result=result, now=now)
    return {**result, "approval_id": approval_id}
