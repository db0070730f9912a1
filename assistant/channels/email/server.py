"""The e-mail channel at work: an aiosmtpd server on the service's event loop, the tasks
that answer what it stored, and the outbox deliverer.

The order is what makes it safe: a message is parsed, written to disk (raw and attachments)
and to the database before the SMTP answer is 250; answering comes after, from the stored
row; an answer is an outbox row before it is sent. A crash at any point leaves a row that
the sweep (every :data:`SWEEP_INTERVAL_S` and at start) or the deliverer picks up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosmtplib
import structlog
from aiosmtpd.smtp import SMTP, Envelope

from assistant import contacts
from assistant.channels.email import outbound, parsing, service
from assistant.channels.email_models import InboundStatus
from chargedesk.db import run_in_session
from chargedesk.types import utcnow

log = structlog.get_logger(__name__)

MAX_RECIPIENTS = 10
MAX_ATTACHMENTS = 20
SMTP_TIMEOUT_S = 60.0
SESSION_TIMEOUT_S = 120.0  # an idle SMTP client is dropped after this
SWEEP_INTERVAL_S = 30.0  # stored messages left unanswered (a crash) are picked up
STOP_GRACE_S = 10.0  # answers in flight get this long at shutdown


class Files:
    """Raw messages and attachments under ``<data_dir>/email``, content-addressed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def write(self, kind: str, data: bytes, *, suffix: str = "") -> tuple[str, str]:
        """Store ``data`` durably (written, fsynced, renamed into place); its path relative
        to the data directory and its SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        relative = f"email/{kind}/{digest[:2]}/{digest}{suffix}"
        path = self.data_dir / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        return relative, digest


class EmailChannel:
    """The inbound server's handler (aiosmtpd hooks) and the work behind it."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.support = service.Support.of(self.settings)
        self.files = Files(Path(self.settings.data_dir))
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.wake = asyncio.Event()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self._warned_no_smtp = False

    # ------------------------------------------------------------ server

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # a line per SMTP command

        def protocol() -> SMTP:
            return SMTP(self, data_size_limit=self.settings.smtp_inbound_max_bytes,
                        enable_SMTPUTF8=True, hostname=self.support.domain,
                        ident="ChargeDesk ESMTP", timeout=SESSION_TIMEOUT_S, loop=loop)

        self.server = await loop.create_server(
            protocol, host=self.settings.smtp_inbound_host, port=self.settings.smtp_inbound_port)
        log.info("inbound SMTP listening", host=self.settings.smtp_inbound_host,
                 port=self.settings.smtp_inbound_port, address=self.support.address)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        pending = [task for task in self.tasks if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STOP_GRACE_S)
            for task in still:  # stored and claimed: the next start's sweep answers them
                task.cancel()
            for task in still:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if self.support.is_support(address):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        token = self.support.token_of(address)
        if token is not None and await run_in_session(
                self.runtime.engine, service.token_exists, token=token):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        return f"550 5.1.1 <{address}>: no such mailbox here"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw).encode("utf-8", "surrogateescape")
        sender = envelope.mail_from or ""
        sender = "" if sender in ("<>",) else sender
        try:
            mail, raw_path, digest, files = await asyncio.to_thread(self._receive, raw, sender)
            stored = await run_in_session(
                self.runtime.engine, service.store_inbound, mail=mail, envelope_from=sender,
                recipients=list(envelope.rcpt_tos), raw_path=raw_path, raw_sha256=digest,
                raw_size=len(raw), files=files, settings=self.settings)
        except Exception:
            log.exception("inbound e-mail not stored")
            return "451 4.3.0 Could not store the message; try again later"
        log.info("e-mail received", inbound_id=stored.inbound_id, thread_id=stored.thread_id,
                 answer=stored.answer, reason=stored.reason, attachments=len(files))
        if stored.answer:
            self._spawn(self.answer(inbound_id=stored.inbound_id, address=mail.from_address))
        return f"250 2.0.0 OK queued as {stored.inbound_id}"

    def _receive(self, raw: bytes, sender: str
                 ) -> tuple[parsing.ParsedMail, str, str, list[service.SavedFile]]:
        """Parse and write to disk (in a worker thread: both take CPU and I/O)."""
        mail = parsing.parse(raw, envelope_from=sender)
        raw_path, digest = self.files.write("raw", raw, suffix=".eml")
        files = self._keep(mail.attachments)
        mail.attachments = []
        return mail, raw_path, digest, files

    def _keep(self, attachments: list[parsing.Attachment]) -> list[service.SavedFile]:
        """Write the images and PDFs within the limits; list the rest as refused."""
        per_file = self.settings.email_attachment_max_bytes
        total_limit = self.settings.email_attachments_max_bytes
        total = 0
        saved = []
        for index, item in enumerate(attachments):
            size = len(item.data)
            refused = None
            if index >= MAX_ATTACHMENTS:
                refused = f"more than {MAX_ATTACHMENTS} attachments"
            elif item.content_type is None:
                refused = "not an image or a PDF"
            elif size > per_file:
                refused = f"larger than {per_file} bytes"
            elif total + size > total_limit:
                refused = f"over {total_limit} bytes in all"
            path = None
            if refused is None:
                path, _ = self.files.write("attachments", item.data)
                total += size
            saved.append(service.SavedFile(
                filename=item.filename, content_type=item.content_type or item.declared_type,
                declared_type=item.declared_type, size=size, sha256=item.sha256, path=path,
                refused=refused))
        return saved

    # ------------------------------------------------------------ answering

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _lock(self, address: str) -> asyncio.Lock:
        lock = self._locks.get(address)
        if lock is None:
            lock = self._locks[address] = asyncio.Lock()
        return lock

    async def answer(self, *, inbound_id: int | None = None, address: str = "") -> None:
        """Answer one stored message (from ``address``), or (without an id) those left
        over. Messages from one address are answered one at a time, so the rate limit
        counts every earlier reply."""
        engine = self.runtime.engine
        if inbound_id is not None:
            async with self._lock(address):
                for job in await run_in_session(engine, service.claim_inbound,
                                                inbound_id=inbound_id):
                    await self._answer(job)
            return
        for job in await run_in_session(engine, service.claim_inbound):
            async with self._lock(job.from_address):
                replies = await run_in_session(
                    engine, service.replies_since, address=job.from_address,
                    since=utcnow() - service.RATE_WINDOW)
                await self._answer(replace(job, recent_replies=replies))

    async def _answer(self, job: service.AnswerJob) -> None:
        """Under the sender's lock: the assistant's answer into the outbox."""
        import assistant.service as assistant

        engine = self.runtime.engine
        replies = job.recent_replies
        if replies >= self.settings.email_replies_per_hour:
            await run_in_session(engine, service.finish_inbound, inbound_id=job.inbound_id,
                                 status=InboundStatus.rate_limited,
                                 reason=f"{replies} replies in the last hour")
            log.warning("e-mail not answered: rate limit", inbound_id=job.inbound_id,
                        replies=replies)
            return
        text = outbound.choose(job.text, job.options) or job.text[:service.MAX_TEXT]
        who = (assistant.Identity(driver_id=job.driver_id, verified=True, via="email")
               if job.driver_id is not None and job.verified else None)
        metadata = {"email": {"inbound_id": job.inbound_id, "subject": job.subject,
                              "attachments": job.attachments}}
        # A From header proves nothing by itself: only the trusted mail server's DMARC
        # verdict makes the address (and the driver it names) count for the contact.
        # Joined before the assistant answers: a driver people already have is told so.
        joined = await contacts.join(
            self.runtime, channel=service.CHANNEL, sender=job.token, address=job.from_address,
            driver_id=job.driver_id,
            proven=bool(job.verified and self.settings.email_trusted_authserv_id))
        try:
            messages = await assistant.handle_message(
                self.runtime, channel=service.CHANNEL, sender=job.token, text=text,
                identity=who, metadata=metadata)
            # A code in this mail proved the driver: the thread is theirs at once (their
            # contact, their open ticket from another channel, the driver told so in this
            # reply). Or people already had it and the assistant said nothing.
            messages = messages + await contacts.after_turn(
                self.runtime, channel=service.CHANNEL, sender=job.token, joined=joined,
                messages=messages)
            outbound_id = await run_in_session(engine, service.record_answer, job=job,
                                               messages=messages, settings=self.settings)
        except Exception as exc:
            log.exception("e-mail not answered", inbound_id=job.inbound_id)
            await run_in_session(engine, service.release_inbound,
                                 inbound_id=job.inbound_id,
                                 error=f"{type(exc).__name__}: {exc}")
            return
        if outbound_id is not None:
            self.wake.set()

    # ------------------------------------------------------------ delivering

    async def work(self) -> None:
        """Deliver the outbox as replies are queued and when retries fall due; sweep stored
        messages nobody answered. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while True:
            self.wake.clear()
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + SWEEP_INTERVAL_S
                self._spawn(self.answer())
            try:
                await self.deliver_due()
            except Exception:
                log.exception("e-mail delivery round failed")
            if self.wake.is_set():
                continue  # more replies came in meanwhile
            timeout = next_sweep - loop.time()
            due = await run_in_session(self.runtime.engine, service.next_due)
            if due is not None and self.settings.smtp_host:
                timeout = min(timeout, (due - utcnow()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.05, timeout))

    async def deliver_due(self) -> int:
        """Send every reply that is due, over one SMTP connection; the number sent."""
        settings = self.settings
        if not settings.smtp_host:
            if not self._warned_no_smtp:
                self._warned_no_smtp = True
                log.warning("e-mail replies stay queued: CHARGEDESK_SMTP_HOST is empty")
            return 0
        sent = 0
        while batch := await run_in_session(self.runtime.engine, service.claim_outbound,
                                            settings=settings):
            smtp = aiosmtplib.SMTP(
                hostname=settings.smtp_host, port=settings.smtp_port,
                username=settings.smtp_username or None,
                password=settings.smtp_password or None,
                start_tls=settings.smtp_starttls, timeout=SMTP_TIMEOUT_S)
            results: list[service.Delivery] = []
            try:
                for message in batch:
                    error, permanent = await self._send(smtp, message)
                    results.append(service.Delivery(message.id, error, permanent))
            finally:
                if smtp.is_connected:
                    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                        await smtp.quit()
                # Recorded once per batch: a crash before this sends the batch again after
                # the claim times out (at least once, never lost).
                statuses = await run_in_session(self.runtime.engine,
                                                service.record_deliveries, results=results)
            for result, status in zip(results, statuses, strict=True):
                if result.error is None:
                    sent += 1
                else:
                    log.warning("e-mail reply not sent", outbound_id=result.outbound_id,
                                error=result.error, status=str(status))
        return sent

    async def _send(self, smtp: aiosmtplib.SMTP, message: outbound.Outgoing
                    ) -> tuple[str | None, bool]:
        """Send one reply: the error and whether it is permanent, or (None, False)."""
        try:
            if not smtp.is_connected:
                await smtp.connect()
            await smtp.send_message(outbound.mime(message, from_header=self.support.header),
                                    sender=self.support.address)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [getattr(e, "code", 0) for e in exc.recipients]
            return f"SMTPRecipientsRefused: {exc}", all(500 <= c < 600 for c in codes)
        except aiosmtplib.SMTPResponseException as exc:
            return f"{type(exc).__name__}: {exc}", 500 <= exc.code < 600
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}", False
        return None, False


async def run(runtime: Any) -> None:
    """The channel for the service's lifetime (a background job of ``chargedesk serve``):
    the inbound server on ``CHARGEDESK_SMTP_INBOUND_PORT``, answers and deliveries."""
    channel = EmailChannel(runtime)
    try:
        await channel.start()
    except OSError as exc:  # the port is taken: the rest of the service still runs
        log.error("inbound SMTP server not started", port=runtime.settings.smtp_inbound_port,
                  error=str(exc))
        return
    runtime.email_channel = channel
    try:
        await channel.work()
    finally:
        runtime.email_channel = None
        await channel.stop()


async def run_outbox(runtime: Any) -> None:
    """Without an inbound server, the outbox still has a deliverer (messages of our own
    with their retries): a background job while ``CHARGEDESK_SMTP_HOST`` is set."""
    channel = EmailChannel(runtime)
    runtime.email_channel = channel
    try:
        await channel.work()
    finally:
        runtime.email_channel = None
        await channel.stop()


async def deliver(runtime: Any, sender: str, messages: list[dict[str, Any]],
                  conversation_id: int | None) -> None:
    """:func:`assistant.channels.outbound.send` for ``email``: the message goes in the
    outbox (:func:`service.queue_message`: ``sender`` is a thread's token, or an address
    for a new thread) and the deliverer is woken; it sends with the channel's threading
    headers and retries as it does replies. Raises ChannelUnavailable for an unknown
    thread."""
    from assistant.channels.outbound import ChannelUnavailable

    try:
        await run_in_session(runtime.engine, service.queue_message, sender=sender,
                             messages=messages, settings=runtime.settings)
    except LookupError as exc:
        raise ChannelUnavailable(str(exc)) from None
    channel: EmailChannel | None = getattr(runtime, "email_channel", None)
    if channel is not None:
        channel.wake.set()
    else:  # the service's jobs are not running (a script, a test's unserved app)
        await EmailChannel(runtime).deliver_due()
