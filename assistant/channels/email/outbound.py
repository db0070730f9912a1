"""Writing a reply: the assistant's messages as plain text and HTML, quick-reply buttons as
numbered options the driver can answer with, and the headers that thread it."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from chargedesk.types import utcnow

# The line before the options, in the conversation's language.
_OPTIONS_INTRO = {
    "sv": "Svara på det här mejlet med ett av alternativen (siffran räcker) "
          "eller skriv med egna ord:",
    "en": "Reply to this e-mail with one of the options (the number is enough) "
          "or write in your own words:",
}
_EMPTY_SUBJECT = {"sv": "Din fråga till ChargeDesk", "en": "Your question to ChargeDesk"}


@dataclass(frozen=True)
class Body:
    text: str
    html: str
    buttons: list[dict[str, Any]]


def compose(messages: list[dict[str, Any]], *, language: str, reply_address: str,
            subject: str) -> Body:
    """One e-mail from the assistant's messages (Rasa REST-channel dicts).

    Buttons of every message become one numbered list; in HTML each option is also a
    ``mailto:`` link that writes the answer to the thread's reply+ address."""
    lang = language if language in _OPTIONS_INTRO else "sv"
    texts: list[str] = []
    buttons: list[dict[str, Any]] = []
    images: list[str] = []
    for message in messages:
        text = str(message.get("text") or "").strip()
        if text:
            texts.append(text)
        for button in message.get("buttons") or []:
            title = str(button.get("title") or "").strip()
            if title:
                buttons.append({"title": title, "payload": str(button.get("payload") or title)})
        image = message.get("image")
        if isinstance(image, str) and re.match(r"^https?://", image):
            images.append(image)

    plain = ["\n\n".join(texts)] if texts else []
    plain += images
    if buttons:
        options = "\n".join(f"{n}. {b['title']}" for n, b in enumerate(buttons, 1))
        plain.append(f"{_OPTIONS_INTRO[lang]}\n{options}")
    text_body = "\n\n".join(plain).strip() + "\n"

    parts = [f"<p>{_html_text(t)}</p>" for t in texts]
    parts += [f'<p><a href="{html.escape(url)}">{html.escape(url)}</a></p>' for url in images]
    if buttons:
        items = "".join(
            f'<li><a href="{html.escape(_mailto(reply_address, subject, b["title"]))}">'
            f"{html.escape(b['title'])}</a></li>" for b in buttons)
        parts.append(f"<p>{html.escape(_OPTIONS_INTRO[lang])}</p><ol>{items}</ol>")
    html_body = (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
                 f"</head><body>\n{''.join(parts)}\n</body></html>\n")
    return Body(text=text_body, html=html_body, buttons=buttons)


def _html_text(text: str) -> str:
    return "<br>\n".join(html.escape(line) for line in text.split("\n"))


def _mailto(address: str, subject: str, body: str) -> str:
    return f"mailto:{address}?subject={quote(subject)}&body={quote(body)}"


def subject_for(base: str, *, language: str) -> str:
    """``Re: <base>`` (never stacked); a neutral subject when the driver gave none."""
    base = base.strip() or _EMPTY_SUBJECT.get(language, _EMPTY_SUBJECT["sv"])
    return f"Re: {base}"


def choose(text: str, options: list[dict[str, Any]]) -> str | None:
    """The payload of the option a reply picks ("2", "2.", "Ja", "ja!"), else None."""
    answer = re.sub(r"[\s.!)]+$", "", text.strip()).strip().casefold()
    if not answer or not options:
        return None
    if answer.isdigit():
        index = int(answer)
        return str(options[index - 1]["payload"]) if 1 <= index <= len(options) else None
    for option in options:
        if str(option.get("title", "")).strip().casefold() == answer:
            return str(option["payload"])
    return None


@dataclass(frozen=True)
class Outgoing:
    """A claimed reply, detached from its session."""

    id: int
    message_id: str
    in_reply_to: str | None
    references: str
    to_header: str
    subject: str
    language: str
    text: str
    html: str
    reply_to: str
    attempt: int


def mime(message: Outgoing, *, from_header: str) -> EmailMessage:
    """The reply as MIME: multipart/alternative (plain, then HTML), threaded under the
    driver's message, marked as automatic (RFC 3834) so other robots don't answer it."""
    mail = EmailMessage()
    mail["From"] = from_header
    mail["To"] = message.to_header
    mail["Reply-To"] = message.reply_to
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = f"<{message.message_id}>"
    if message.in_reply_to:
        mail["In-Reply-To"] = f"<{message.in_reply_to}>"
    if message.references:
        mail["References"] = " ".join(f"<{r}>" for r in message.references.split())
    mail["Auto-Submitted"] = "auto-replied"
    mail["X-Auto-Response-Suppress"] = "All"
    mail.set_content(message.text, cte="quoted-printable")
    mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
    mail["Content-Language"] = message.language  # after the content, which clears Content-*
    return mail
