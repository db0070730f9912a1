"""Domain events published by billing; the assistant and operators' tools subscribe."""

from __future__ import annotations

from chargedesk.events import Event


class LowBalance(Event):
    """A prepaid wallet fell below the low-balance threshold."""

    topic = "billing.low_balance"
    driver_id: int
    balance_ore: int
    threshold_ore: int
    currency: str
    # The ledger entry that crossed the threshold: one notice per fall, not per publication.
    entry_id: int | None = None


class SessionRated(Event):
    topic = "billing.session_rated"
    session_id: int
    transaction_id: int
    driver_id: int | None
    total_incl_vat_ore: int
    currency: str
    # True when late meter data or a correction rated the session again.
    rerated: bool = False


class InvoiceIssued(Event):
    topic = "billing.invoice_issued"
    invoice_id: int
    driver_id: int
    kind: str
    total_ore: int
    currency: str


class PaymentFailed(Event):
    topic = "billing.payment_failed"
    invoice_id: int
    driver_id: int
    failures: int
    blocked: bool
