"""The e-mail channel: drivers write to the support address, the assistant answers in the
same thread.

- ``parsing``: MIME in (plain text preferred, HTML reduced, quotes and signatures removed,
  Re:/SV:/VB:/Fwd: prefixes, threading headers, attachments, auto-reply detection);
- ``service``: the database work (threads, inbound log, outbox) in plain functions;
- ``outbound``: a reply's plain and HTML body and its threading headers;
- ``server``: the aiosmtpd server, the answering tasks and the outbox deliverer, run for
  the service's lifetime by :func:`assistant.channels.email.server.run` when
  ``CHARGEDESK_SMTP_INBOUND_PORT`` is set.

Tables are in :mod:`assistant.channels.email_models`. :func:`install` registers e-mail as
an outbound channel (:mod:`assistant.channels.outbound`) when ``CHARGEDESK_SMTP_HOST`` is set:
agents' replies and notifications go into the outbox, threaded into the driver's thread.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)


def install(app: Any) -> None:
    """Register e-mail delivery; without an inbound server, run the outbox on its own."""
    from assistant.channels import outbound
    from assistant.channels.email import server, service

    runtime = app.state.runtime
    settings = runtime.settings
    if not settings.smtp_host:
        return
    try:
        service.Support.of(settings)
    except ValueError as exc:
        log.warning("e-mail cannot be sent", error=str(exc))
        return
    outbound.register(runtime, "email", server.deliver)
    if not settings.smtp_inbound_port:
        runtime.jobs.append(server.run_outbox)
