"""REST under ``/api/v1/billing`` for drivers' accounts: drivers and id tags, sessions
(CDRs), wallets, invoices and runs, mandates and bank files, disputes.

Agents (support staff) read, send invoices and handle disputes; operators also create,
credit, top up, run and export. Services do the work; these handlers only translate.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from billing_api import documents, invoicing, payments, sessions, support, wallets
from billing_api.models import (
    BankFile,
    ChargingSession,
    Dispute,
    DisputeStatus,
    Driver,
    DriverIdTag,
    Invoice,
    InvoiceRun,
    Language,
    LedgerEntry,
    Mandate,
    MandateScheme,
    PaymentMethod,
    SessionStatus,
)
from billing_api.service import BillingError, NotFound
from billing_api.subscribers import correct_session
from chargedesk.auth import OperatorUser, SessionDep, StaffUser
from chargedesk.settings import Settings
from station_api import service as stations

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])


def _settings(request: Request) -> Settings:
    return request.app.state.runtime.settings


# ---------------------------------------------------------------- drivers


class DriverIn(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    email: str | None = Field(default=None, max_length=254,
                              pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$",
                              description="E.164, e.g. +46701234567")
    language: Language = Language.sv
    driver_group: str | None = Field(default=None, max_length=40)
    address: str | None = Field(default=None, max_length=300)
    vat_number: str | None = Field(default=None, max_length=20)
    currency: str = Field(default="SEK", pattern=r"^[A-Z]{3}$")
    payment_method: PaymentMethod = PaymentMethod.invoice
    id_tags: list[str] = Field(default_factory=list)


class IdTagLink(BaseModel):
    id_tag: str = Field(min_length=1, max_length=20)
    create: bool = Field(False, description="Create the id tag if it does not exist yet")


def _link_tag(session: Session, driver_id: int, id_tag: str, create: bool) -> None:
    link = session.get(DriverIdTag, id_tag)
    if link is not None and link.driver_id != driver_id:
        raise BillingError(f"id tag {id_tag} belongs to another driver")
    if link is None:
        if create:
            stations.create_id_tag(session, id_tag=id_tag)
        else:
            stations.update_id_tag(session, id_tag=id_tag)  # raises NotFound
        session.add(DriverIdTag(id_tag=id_tag, driver_id=driver_id))
        session.flush()


@router.post("/drivers", response_model=Driver, status_code=status.HTTP_201_CREATED)
def create_driver(body: DriverIn, session: SessionDep, _: OperatorUser) -> Any:
    """A new customer; id tags listed are created and linked to them."""
    if body.payment_method in (PaymentMethod.autogiro, PaymentMethod.sepa):
        raise BillingError("direct debit starts when a mandate is activated: create the "
                           "driver with another payment method, then add a mandate")
    driver = Driver(**body.model_dump(exclude={"id_tags"}))
    session.add(driver)
    session.flush()
    for tag in body.id_tags:
        _link_tag(session, driver.id or 0, tag, create=True)
    return driver


@router.get("/drivers", response_model=list[Driver])
def list_drivers(
    session: SessionDep, _: StaffUser,
    phone: str | None = None, email: str | None = None, id_tag: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """Drivers, or the one matching a phone number, e-mail address or id tag."""
    if phone or email or id_tag:
        try:
            return [support.find_driver(session, phone=phone, email=email, id_tag=id_tag)]
        except NotFound:
            return []
    return session.exec(select(Driver).order_by(col(Driver.id)).offset(offset).limit(limit)
                        ).all()


@router.get("/drivers/{driver_id}")
def get_driver(driver_id: int, session: SessionDep, request: Request, _: StaffUser
               ) -> dict[str, Any]:
    driver = support.get_driver(session, driver_id=driver_id)
    tags = session.exec(select(DriverIdTag.id_tag).where(DriverIdTag.driver_id == driver_id)
                        ).all()
    out: dict[str, Any] = {**driver.model_dump(), "id_tags": list(tags)}
    if driver.payment_method == PaymentMethod.prepaid:
        out["balance"] = wallets.balance(session, driver_id=driver_id,
                                         settings=_settings(request))
    return out


@router.post("/drivers/{driver_id}/id-tags", status_code=status.HTTP_201_CREATED)
def link_id_tag(driver_id: int, body: IdTagLink, session: SessionDep, _: OperatorUser
                ) -> dict[str, Any]:
    support.get_driver(session, driver_id=driver_id)
    _link_tag(session, driver_id, body.id_tag, body.create)
    return {"driver_id": driver_id, "id_tag": body.id_tag}


# ---------------------------------------------------------------- sessions (CDRs)


class SessionOut(BaseModel):
    id: int
    transaction_id: int
    station_id: str
    connector_id: int
    id_tag: str
    driver_id: int | None
    start_at: datetime
    end_at: datetime | None
    energy_wh: int | None
    tariff_id: str | None
    tariff_version: int | None
    currency: str
    status: SessionStatus
    total_excl_vat_ore: int | None
    total_incl_vat_ore: int | None
    error: str | None
    invoice_id: int | None


@router.get("/sessions", response_model=list[SessionOut])
def list_sessions(
    session: SessionDep, _: StaffUser, driver_id: int | None = None,
    station_id: str | None = None, status_: Annotated[SessionStatus | None,
                                                      Query(alias="status")] = None,
    since: datetime | None = None, until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    query = select(ChargingSession)
    if driver_id is not None:
        query = query.where(ChargingSession.driver_id == driver_id)
    if station_id is not None:
        query = query.where(ChargingSession.station_id == station_id)
    if status_ is not None:
        query = query.where(ChargingSession.status == status_)
    if since is not None:
        query = query.where(col(ChargingSession.start_at) >= since)
    if until is not None:
        query = query.where(col(ChargingSession.start_at) < until)
    return session.exec(query.order_by(col(ChargingSession.id).desc()).offset(offset)
                        .limit(limit)).all()


def _session(session: Session, session_id: int) -> ChargingSession:
    row = session.get(ChargingSession, session_id)
    if row is None:
        raise NotFound(f"no charging session {session_id}")
    return row


@router.get("/sessions/{session_id}/cdr", response_class=Response,
            responses={200: {"content": {"application/json": {}}}})
def session_cdr(session_id: int, session: SessionDep, _: StaffUser) -> Response:
    """The session's CDR in OCPI terms, with its cost breakdown."""
    row = _session(session, session_id)
    if row.cdr is None:
        raise BillingError(f"session {session_id} has no CDR yet ({row.status.value})")
    return Response(row.cdr, media_type="application/json")


@router.get("/sessions/{session_id}/explanation")
def session_explanation(session_id: int, session: SessionDep, _: StaffUser) -> Any:
    row = _session(session, session_id)
    return sessions.cost_explanation(row)


@router.post("/sessions/{session_id}/rate", response_model=SessionOut)
def rate_again(session_id: int, session: SessionDep, request: Request, _: OperatorUser) -> Any:
    """Rate a stopped session again from its stored meter values (after a tariff fix, say).
    What was invoiced is credited and billed again; a prepaid wallet is adjusted."""
    row = _session(session, session_id)
    if row.status == SessionStatus.failed:
        sessions.rate_session(session, transaction_id=row.transaction_id,
                                      settings=_settings(request))
    else:
        correct_session(session, transaction_id=row.transaction_id,
                        settings=_settings(request))
    session.refresh(row)
    return row


# ---------------------------------------------------------------- wallets


class TopUpIn(BaseModel):
    amount: Decimal = Field(gt=0, decimal_places=2)
    note: str | None = Field(default=None, max_length=300)


class AdjustmentIn(BaseModel):
    amount: Decimal = Field(decimal_places=2, description="Signed: positive credits")
    reason: str = Field(min_length=1, max_length=300)


@router.get("/drivers/{driver_id}/balance")
def driver_balance(driver_id: int, session: SessionDep, request: Request, _: StaffUser) -> Any:
    return support.balance(session, driver_id=driver_id, settings=_settings(request))


@router.get("/drivers/{driver_id}/ledger", response_model=list[LedgerEntry])
def driver_ledger(driver_id: int, session: SessionDep, _: StaffUser,
                  since: datetime | None = None, until: datetime | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    support.get_driver(session, driver_id=driver_id)
    return wallets.ledger(session, driver_id=driver_id, since=since, until=until, limit=limit)


@router.post("/drivers/{driver_id}/top-ups", response_model=LedgerEntry,
             status_code=status.HTTP_201_CREATED)
def top_up(driver_id: int, body: TopUpIn, session: SessionDep, principal: OperatorUser,
           idempotency_key: Annotated[str, Header(min_length=8, max_length=100)]) -> Any:
    """Credit a wallet. ``Idempotency-Key`` is required: a retried request returns the
    first entry instead of crediting twice."""
    return support.top_up(session, driver_id=driver_id, amount=body.amount,
                          idempotency_key=idempotency_key, created_by=principal.label)


@router.post("/drivers/{driver_id}/adjustments", response_model=LedgerEntry,
             status_code=status.HTTP_201_CREATED)
def adjust(driver_id: int, body: AdjustmentIn, session: SessionDep, request: Request,
           principal: OperatorUser,
           idempotency_key: Annotated[str | None, Header(max_length=100)] = None) -> Any:
    support.get_driver(session, driver_id=driver_id)
    entry, _ = wallets.adjust(session, driver_id=driver_id,
                              amount_ore=wallets.to_ore(body.amount, what="adjustment"),
                              reason=body.reason, created_by=principal.label,
                              settings=_settings(request), idempotency_key=idempotency_key)
    return entry


# ---------------------------------------------------------------- invoices and runs


class CreditIn(BaseModel):
    reason: str = Field(min_length=1, max_length=200)
    amount: Decimal | None = Field(default=None, gt=0, decimal_places=2,
                                   description="Net amount excl. VAT; omit to credit in full")
    vat_rate: Decimal | None = Field(default=Decimal(25), ge=0, le=100)


class RunIn(BaseModel):
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")


def _invoice_out(session: Session, invoice: Invoice) -> dict[str, Any]:
    return {
        **invoice.model_dump(exclude={"vat_breakdown", "seller"}),
        "display_number": invoice.display_number,
        "vat_breakdown": json.loads(invoice.vat_breakdown),
        "seller": json.loads(invoice.seller),
        "lines": [line.model_dump(exclude={"invoice_id"})
                  for line in invoicing.invoice_lines(session, invoice_id=invoice.id or 0)],
    }


@router.get("/invoices")
def list_invoices(
    session: SessionDep, _: StaffUser, driver_id: int | None = None,
    since: date | None = None, until: date | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    rows = invoicing.list_invoices(session, driver_id=driver_id, since=since, until=until,
                                   limit=limit, offset=offset)
    return [support.invoice_summary(row) | {"driver_id": row.driver_id} for row in rows]


@router.get("/invoices/{invoice_id}")
def get_invoice(invoice_id: int, session: SessionDep, _: StaffUser) -> dict[str, Any]:
    return _invoice_out(session, invoicing.get_invoice(session, invoice_id=invoice_id))


@router.get("/invoices/{invoice_id}/pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {}}}})
def invoice_pdf(invoice_id: int, session: SessionDep, _: StaffUser) -> Response:
    invoice = invoicing.get_invoice(session, invoice_id=invoice_id)
    pdf = documents.render_pdf(documents.invoice_document(session, invoice_id=invoice_id))
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{invoice.display_number}.pdf"'})


@router.get("/invoices/{invoice_id}/html", response_class=Response,
            responses={200: {"content": {"text/html": {}}}})
def invoice_html(invoice_id: int, session: SessionDep, _: StaffUser) -> Response:
    doc = documents.invoice_document(session, invoice_id=invoice_id)
    return Response(documents.render_html(doc), media_type="text/html")


@router.post("/invoices/{invoice_id}/send", status_code=status.HTTP_202_ACCEPTED)
def send_invoice(invoice_id: int, session: SessionDep, request: Request, _: StaffUser
                 ) -> dict[str, Any]:
    """Queue the invoice for e-mail to its buyer (with the PDF attached)."""
    invoice = invoicing.get_invoice(session, invoice_id=invoice_id)
    message = support.send_invoices(session, driver_id=invoice.driver_id,
                                    invoice_id=invoice_id, settings=_settings(request))[0]
    return {"email_id": message.id, "to": message.to_address, "status": message.status}


@router.post("/invoices/{invoice_id}/credit-notes", status_code=status.HTTP_201_CREATED)
def credit_invoice(invoice_id: int, body: CreditIn, session: SessionDep, request: Request,
                   principal: OperatorUser) -> dict[str, Any]:
    """A credit note for part of an invoice (``amount``) or all that is left of it."""
    invoice = invoicing.get_invoice(session, invoice_id=invoice_id)
    settings = _settings(request)
    if body.amount is not None:
        note = invoicing.credit_amount(
            session, invoice=invoice, net_ore=wallets.to_ore(body.amount),
            vat_rate=body.vat_rate, reason=body.reason, settings=settings,
            created_by=principal.label)
    else:
        note = invoicing.credit_in_full(session, invoice=invoice, reason=body.reason,
                                        settings=settings, created_by=principal.label)
    return _invoice_out(session, note)


@router.post("/drivers/{driver_id}/invoices", status_code=status.HTTP_201_CREATED)
def invoice_driver_now(driver_id: int, session: SessionDep, request: Request,
                       principal: OperatorUser) -> dict[str, Any]:
    """Invoice a driver's ended, unbilled sessions now, outside the monthly run."""
    invoice = invoicing.invoice_driver_now(session, driver_id=driver_id,
                                           settings=_settings(request),
                                           created_by=principal.label)
    if invoice is None:
        raise BillingError("the driver has no ended, unbilled sessions")
    return _invoice_out(session, invoice)


@router.get("/runs", response_model=list[InvoiceRun])
def list_runs(session: SessionDep, _: StaffUser) -> Any:
    return invoicing.list_runs(session)


@router.post("/runs", status_code=status.HTTP_201_CREATED)
async def start_run(body: RunIn, request: Request, principal: OperatorUser) -> Any:
    """Run the invoicing of a month now (the scheduler does it monthly). Running a period
    again invoices only drivers still without an invoice for it."""
    from billing_api.scheduled import after_invoices

    runtime = request.app.state.runtime
    year, month = map(int, body.period.split("-"))
    report = await asyncio.to_thread(
        invoicing.run_invoices, runtime.engine, period_start=date(year, month, 1),
        settings=runtime.settings, started_by=principal.label,
        after_batch=after_invoices(runtime.settings),
    )
    return report


# ---------------------------------------------------------------- mandates and bank files


class MandateIn(BaseModel):
    driver_id: int
    scheme: MandateScheme
    holder_name: str = Field(min_length=1, max_length=120)
    clearing_number: str | None = None
    account_number: str | None = None
    personal_number: str | None = None
    iban: str | None = None
    bic: str | None = None
    signed_on: date | None = None


class BankFileOut(BaseModel):
    id: int
    kind: str
    filename: str
    sha256: str
    records: int
    created_by: str
    created_at: datetime


@router.post("/mandates", response_model=Mandate, status_code=status.HTTP_201_CREATED)
def create_mandate(body: MandateIn, session: SessionDep, principal: OperatorUser) -> Any:
    return payments.create_mandate(session, created_by=principal.label, **body.model_dump())


@router.get("/mandates", response_model=list[Mandate])
def list_mandates(session: SessionDep, _: StaffUser, driver_id: int | None = None) -> Any:
    query = select(Mandate)
    if driver_id is not None:
        query = query.where(Mandate.driver_id == driver_id)
    return session.exec(query.order_by(col(Mandate.id).desc())).all()


@router.post("/mandates/{mandate_id}/cancel", response_model=Mandate)
def cancel_mandate(mandate_id: int, session: SessionDep, principal: OperatorUser) -> Any:
    return payments.cancel_mandate(session, mandate_id=mandate_id, created_by=principal.label)


_EXPORTS = {
    "autogiro-mandates": "export_autogiro_mandates",
    "autogiro-payments": "export_autogiro_payments",
    "sepa-payments": "export_sepa_payments",
}
_IMPORTS = {
    "autogiro-mandate-result": "import_autogiro_mandate_result",
    "autogiro-payment-result": "import_autogiro_payment_result",
}


@router.post("/exports/{kind}", responses={201: {"model": BankFileOut}, 204: {}})
def export_bank_file(kind: str, session: SessionDep, request: Request,
                     principal: OperatorUser) -> Any:
    """Write the next file for the bank (``autogiro-mandates``, ``autogiro-payments``,
    ``sepa-payments``); 204 when there is nothing to send."""
    if kind not in _EXPORTS:
        raise NotFound(f"no export {kind}; choose one of {', '.join(_EXPORTS)}")
    settings = _settings(request)
    today = datetime.now(invoicing.ZoneInfo(settings.time_zone)).date()
    made = getattr(payments, _EXPORTS[kind])(session, settings=settings,
                                             created_by=principal.label, today=today)
    if made is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Response(BankFileOut.model_validate(made, from_attributes=True).model_dump_json(),
                    status_code=status.HTTP_201_CREATED, media_type="application/json")


@router.post("/imports/{kind}")
def import_bank_file(
    kind: str, session: SessionDep, request: Request, principal: OperatorUser,
    body: Annotated[bytes, Body(media_type="text/plain")],
    filename: Annotated[str, Query(min_length=1, max_length=120)],
) -> Any:
    """Read a result file from Bankgirot (``autogiro-mandate-result``,
    ``autogiro-payment-result``); the same file twice changes nothing the second time."""
    if kind not in _IMPORTS:
        raise NotFound(f"no import {kind}; choose one of {', '.join(_IMPORTS)}")
    kwargs: dict[str, Any] = {"content": body, "filename": filename,
                              "created_by": principal.label}
    if kind == "autogiro-payment-result":
        kwargs["settings"] = _settings(request)
    return getattr(payments, _IMPORTS[kind])(session, **kwargs)


@router.get("/bank-files", response_model=list[BankFileOut])
def list_bank_files(session: SessionDep, _: OperatorUser) -> Any:
    return session.exec(select(BankFile).order_by(col(BankFile.id).desc()).limit(200)).all()


@router.get("/bank-files/{file_id}", response_class=Response)
def download_bank_file(file_id: int, session: SessionDep, _: OperatorUser) -> Response:
    row = session.get(BankFile, file_id)
    if row is None:
        raise NotFound(f"no bank file {file_id}")
    media = "application/xml" if row.filename.endswith(".xml") else "text/plain"
    return Response(row.content, media_type=f"{media}; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{row.filename}"'})


# ---------------------------------------------------------------- disputes


class DisputeIn(BaseModel):
    driver_id: int
    session_id: int
    reason: str = Field(min_length=1, max_length=1000)


class DecisionIn(BaseModel):
    approve: bool
    credit: Decimal | None = Field(default=None, gt=0, decimal_places=2,
                                   description="Net amount; omit to grant the proposal")
    note: str | None = Field(default=None, max_length=500)


@router.get("/disputes", response_model=list[Dispute])
def list_disputes(session: SessionDep, _: StaffUser,
                  status_: Annotated[DisputeStatus | None, Query(alias="status")] = None
                  ) -> Any:
    return support.list_disputes(session, status=status_)


@router.post("/disputes", response_model=Dispute, status_code=status.HTTP_201_CREATED)
def open_dispute(body: DisputeIn, session: SessionDep, principal: StaffUser) -> Any:
    return support.open_dispute(session, driver_id=body.driver_id, session_id=body.session_id,
                                reason=body.reason, opened_by=principal.label)


@router.post("/disputes/{dispute_id}/decision", response_model=Dispute)
def decide_dispute(dispute_id: int, body: DecisionIn, session: SessionDep, request: Request,
                   principal: StaffUser) -> Any:
    return support.decide_dispute(
        session, dispute_id=dispute_id, approve=body.approve, decided_by=principal.label,
        settings=_settings(request), note=body.note,
        credit_ore=None if body.credit is None else wallets.to_ore(body.credit))

