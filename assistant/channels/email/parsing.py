"""Reading a driver's e-mail: the new text without quotes and signatures, the subject
without reply prefixes, the threading headers, attachments, and whether it was written by
a machine (an auto-reply, a bounce, a list) that must never be answered.

Pure functions over the stdlib ``email`` package (``policy=default``); nothing here touches
the database or the network.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

MAX_MESSAGE_ID = 250
MAX_REFERENCES = 20  # the thread is found by the last few; a huge header is not followed

# ---------------------------------------------------------------- subjects

# Reply and forward prefixes in the languages drivers write: Re/SV/VS/AW/Antw (reply), Fwd/
# Fw/VB/WG/TR/RV/Enc (forward), with counters ("Re[2]:") and list or gateway tags ("[Ext]").
_PREFIX = re.compile(
    r"^\s*(?:(?P<word>re|sv|vs|aw|antw|odp|fwd?|vb|wg|tr|rv|enc|doorst)"
    r"(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*|\[[^\]]{0,40}\]\s*)",
    re.IGNORECASE,
)
_FORWARD_WORDS = {"fw", "fwd", "vb", "wg", "tr", "rv", "enc", "doorst"}


def base_subject(subject: str) -> tuple[str, bool]:
    """The subject without leading reply/forward prefixes, and whether it was a forward.

    >>> base_subject("SV: Re: Fwd: Laddaren startar inte")
    ('Laddaren startar inte', False)
    """
    text = " ".join(subject.split())
    forward: bool | None = None
    while True:
        match = _PREFIX.match(text)
        if match is None or match.end() == 0:
            break
        word = (match.group("word") or "").lower()
        if word and forward is None:
            forward = word in _FORWARD_WORDS
        text = text[match.end():]
    return text.strip(), bool(forward)


def reply_subject(subject: str) -> str:
    """``Re: <subject>``, however many prefixes the subject had."""
    base, _ = base_subject(subject)
    return f"Re: {base}" if base else "Re:"


# ---------------------------------------------------------------- message ids

_ID = re.compile(rf"<([^<>\s]{{1,{MAX_MESSAGE_ID}}})>")


def message_ids(value: str | None) -> list[str]:
    """The Message-IDs in a header (``<a@b> <c@d>``), without angle brackets, in order."""
    if not value:
        return []
    return _ID.findall(str(value))


# ---------------------------------------------------------------- HTML to text

_BLOCK = {"p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol",
          "h1", "h2", "h3", "h4", "h5", "h6", "pre", "address", "center", "dl", "dt", "dd",
          "form", "fieldset", "main", "nav", "aside", "figure", "figcaption", "tbody",
          "thead", "tfoot"}
_SKIP = {"script", "style", "head", "title", "template", "noscript", "svg"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
# Where mail programs put the quoted earlier message: everything from here on is quote.
_CUT_IDS = {"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container"}
_CUT_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote",
                "zmail_extra")


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0  # inside <script>, <style>, <blockquote>, ...
        self.pre = 0
        self.done = False  # reached the quoted earlier message

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        values = dict(attrs)
        classes = (values.get("class") or "").lower()
        if ((values.get("id") or "").lower() in _CUT_IDS
                or any(name in classes for name in _CUT_CLASSES)):
            self.done = True
            return
        if tag in _VOID:
            if tag in ("br", "hr") and not self.skip_depth:
                self.parts.append("\n")
            return
        if tag in _SKIP or tag == "blockquote" or self.skip_depth:
            self.skip_depth += 1
            return
        if tag == "pre":
            self.pre += 1
        if tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.done or tag in _VOID:
            return
        if self.skip_depth:
            self.skip_depth -= 1
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self.done or self.skip_depth:
            return
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Readable text of an HTML mail body, without scripts, styles and quoted messages."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).replace("\xa0", " ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ---------------------------------------------------------------- quotes and signatures

# "On Tue, 4 Mar 2025 at 10:12, Anna <anna@example.se> wrote:" and the like.
_WROTE = re.compile(
    r"^(?:on|le|am|el|il|op|em)\b.{0,300}\b(?:wrote|a écrit|schrieb|escribió|ha scritto|"
    r"schreef|escreveu)\s*:\s*$", re.IGNORECASE)
# Swedish (Gmail, Apple Mail, Outlook mobile), Danish, Norwegian, Finnish:
# "Den tis 4 mars 2025 kl 10:12 skrev Anna Lindqvist <anna@example.se>:",
# "4 mars 2025 kl. 10:12 skrev Anna <anna@example.se>:".
_SKREV = re.compile(
    r"^(?:den\s|d\.\s|\d{1,4}[\s./-]|(?:mån|tis|ons|tor|fre|lör|sön|man|tir|lør|søn)"
    r"\w*\.?\s).{0,200}\b(?:skrev|kirjoitti)\b.{0,200}:\s*$", re.IGNORECASE)
_ATTRIBUTION_START = re.compile(r"^(?:on|den|le|am|el|d\.|\d{1,4}[\s./-])", re.IGNORECASE)
_ORIGINAL = re.compile(
    r"^-{2,}\s*(?:original message|ursprungligt meddelande|originalmeddelande|"
    r"oprindelig meddelelse|opprinnelig melding|ursprüngliche nachricht|alkuperäinen viesti)"
    r"\s*-{2,}$", re.IGNORECASE)
_FORWARDED = re.compile(
    r"^(?:-{2,}\s*(?:forwarded message|vidarebefordrat meddelande|videresendt (?:meddelelse|"
    r"melding)|weitergeleitete nachricht)\s*-{2,}|begin forwarded message:|"
    r"början på vidarebefordrat meddelande:)$", re.IGNORECASE)
_HEADER_FROM = re.compile(r"^\*?(?:from|från|fra|von|de|lähettäjä)\s*:\*?\s", re.IGNORECASE)
_HEADER_OTHER = re.compile(
    r"^\*?(?:sent|skickat|sendt|gesendet|envoyé|date|datum|dato|to|till|til|an|à|subject|"
    r"ämne|emne|betreff|objet|cc|kopia)\s*:", re.IGNORECASE)
_SIGNATURE = re.compile(r"^--\s?$")
_MOBILE = re.compile(
    r"^(?:(?:sent|skickat|sendt|gesendet|envoyé)\s+(?:from|via|från|fra|von|de)\s+"
    r"(?:my|min|mitt|mi|mon|meinem|outlook|mail|yahoo|gmail|samsung|aol|ios|android)"
    r"\b.{0,50}|(?:get|hämta|skaffa|få)\s+outlook\s+(?:for|för|til|für)\s+\w+)\s*$",
    re.IGNORECASE)


@dataclass(frozen=True)
class CleanText:
    text: str
    forwarded: str = ""  # the body of a forwarded message, when the mail forwards one


def _is_attribution(line: str) -> bool:
    return bool(_WROTE.match(line) or _SKREV.match(line))


def strip_quotes(text: str) -> CleanText:
    """The new text of a message: up to the quoted earlier message (an "On … wrote:" /
    "Den … skrev:" line, an Outlook header block, "-----Original Message-----") or the
    signature ("-- ", "Skickat från min iPhone"), without "> " lines."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    forwarded = ""
    for index, raw in enumerate(lines):
        line = raw.strip()
        if _FORWARDED.match(line):
            forwarded = "\n".join(lines[index + 1:])
            break
        if _ORIGINAL.match(line) or _is_attribution(line):
            break
        if _ATTRIBUTION_START.match(line) and any(
                _is_attribution(" ".join(part.strip() for part in lines[index:index + n]))
                for n in (2, 3)):
            break  # an attribution wrapped: "On Tue, … Anna <" / "anna@example.se> wrote:"
        if _HEADER_FROM.match(line) or re.fullmatch(r"_{8,}", line):
            following = [ln.strip() for ln in lines[index + 1:index + 7] if ln.strip()]
            if re.fullmatch(r"_{8,}", line):
                following = following[:1]
                if following and _HEADER_FROM.match(following[0]):
                    break
            elif sum(bool(_HEADER_OTHER.match(ln)) for ln in following[:5]) >= 2:
                break
        if _SIGNATURE.match(raw.rstrip("\n")) or _MOBILE.match(line):
            break
        if line.startswith(">"):
            continue
        kept.append(raw.rstrip())
    return CleanText(text=_tidy("\n".join(kept)), forwarded=forwarded)


def _forwarded_body(text: str) -> str:
    """A forwarded message's own text, after its header lines (From:, Date:, Subject:)."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and (not lines[start].strip() or _HEADER_FROM.match(
            lines[start].strip()) or _HEADER_OTHER.match(lines[start].strip())):
        start += 1
    return strip_quotes("\n".join(lines[start:])).text


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: join soft line breaks (a line ending in a space)."""
    out: list[str] = []
    current = ""
    for line in text.split("\n"):
        if line.startswith(" "):
            line = line[1:]  # space-stuffing
        if line.endswith(" ") and line != "-- ":
            current += line[:-1] if delsp else line
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return "\n".join(out)


# ---------------------------------------------------------------- attachments

# What drivers send (a photo of a broken station, a receipt); checked by the bytes, not by
# what the sender's program claims.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"%PDF-", 0, "application/pdf"),
)


def sniff(data: bytes) -> str | None:
    """The type of an image or PDF from its first bytes; None for anything else."""
    for magic, offset, kind in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heif"):
        return "image/heic"
    return None


@dataclass
class Attachment:
    filename: str
    declared_type: str
    data: bytes
    content_type: str | None = None  # sniffed; None when not an image or a PDF
    sha256: str = ""

    def __post_init__(self) -> None:
        self.content_type = sniff(self.data)
        self.sha256 = hashlib.sha256(self.data).hexdigest()


# ---------------------------------------------------------------- the whole message

_NO_REPLY_LOCAL = re.compile(
    r"^(?:mailer-daemon|postmaster|no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?|"
    r"auto-?reply|autoresponder)(?:[-+_.].*)?$", re.IGNORECASE)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto-?reply|automatiskt svar|autosvar|out of (?:the )?office|"
    r"frånvaro(?:meddelande)?|abwesenheitsnotiz|automatische antwort|"
    r"undeliver(?:ed|able)|delivery status notification|returned mail|"
    r"olevererbart|kunde inte levereras)\b", re.IGNORECASE)


@dataclass
class ParsedMail:
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    from_address: str  # lower case, "" when unreadable
    from_name: str
    subject: str
    base_subject: str
    forward: bool
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    # Why this must not be answered (an auto-reply, a bounce, a list), or None.
    machine: str | None = None
    authentication_results: list[str] = field(default_factory=list)
    content_language: str | None = None


def parse(raw: bytes, *, envelope_from: str = "") -> ParsedMail:
    """Everything the channel needs from one received message."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    name, address = _from(message)
    subject = _header(message, "Subject")
    base, forward = base_subject(subject)
    in_reply_to = message_ids(_header(message, "In-Reply-To"))
    references = message_ids(_header(message, "References"))[-MAX_REFERENCES:]
    own = message_ids(_header(message, "Message-ID"))
    body = body_text(message)
    clean = strip_quotes(body)
    text = clean.text
    if not text and clean.forwarded:
        text = _forwarded_body(clean.forwarded)
    return ParsedMail(
        message_id=own[0] if own else None,
        in_reply_to=in_reply_to[:1], references=references,
        from_address=address, from_name=name, subject=subject, base_subject=base,
        forward=forward, text=text, attachments=attachments(message),
        machine=machine_reason(message, address=address, envelope_from=envelope_from),
        authentication_results=[str(v) for v in message.get_all("Authentication-Results", [])],
    )


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a malformed header the parser could not fold
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _from(message: Message) -> tuple[str, str]:
    raw = _header(message, "From")
    pairs = [(n, a) for n, a in getaddresses([raw]) if "@" in a] if raw else []
    name, address = pairs[0] if pairs else parseaddr(raw)
    address = address.strip().lower() if "@" in address else ""
    return name.strip()[:200], address[:254]


def body_text(message: Message) -> str:
    """The text body: text/plain when there is one with words in it, else the HTML reduced to
    text."""
    if not isinstance(message, EmailMessage):
        return ""
    plain = message.get_body(preferencelist=("plain",))
    if plain is not None:
        text = _content(plain)
        params = {k.lower(): v.lower() for k, v in plain.get_params() or []}
        if params.get("format") == "flowed":
            text = _unflow(text, params.get("delsp") == "yes")
        if text.strip():
            return text
    html = message.get_body(preferencelist=("html",))
    if html is not None:
        return html_to_text(_content(html))
    return ""


def _content(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, UnicodeError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return str(content)


def attachments(message: Message) -> list[Attachment]:
    """Every attached or inline file that is not the body (images, PDFs and anything else;
    the caller decides what to keep)."""
    if not isinstance(message, EmailMessage):
        return []
    found: list[Attachment] = []
    body_parts = {id(p) for p in (message.get_body(preferencelist=("plain",)),
                                  message.get_body(preferencelist=("html",))) if p is not None}
    for part in message.walk():
        if part.is_multipart() or id(part) in body_parts:
            continue
        if part.get_content_maintype() == "text" and part.get_filename() is None:
            continue  # an alternative body part
        if part.get_content_type() in ("message/delivery-status", "message/rfc822"):
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        filename = (part.get_filename() or "").strip()
        found.append(Attachment(filename=_safe_name(filename), data=data,
                                declared_type=part.get_content_type()[:100]))
    return found


def _safe_name(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip(". ")
    return name[:200]


def machine_reason(message: Message, *, address: str, envelope_from: str) -> str | None:
    """Why a message was written by a machine and must not be answered (RFC 3834 and the
    conventions mail programs follow), or None for a person's mail."""
    auto = _header(message, "Auto-Submitted").lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"auto-submitted: {auto[:60]}"
    precedence = _header(message, "Precedence").lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if message.get(name) is not None:
            return f"{name.lower()} header"
    suppress = _header(message, "X-Auto-Response-Suppress").lower()
    if any(word in suppress for word in ("all", "oof", "autoreply")):
        return f"x-auto-response-suppress: {suppress[:40]}"
    if message.get("List-Id") is not None or message.get("List-Unsubscribe") is not None:
        return "mailing list"
    if message.get_content_type() == "multipart/report":
        return "delivery report"
    if not envelope_from:
        return "bounce (empty envelope sender)"
    for who in (address, envelope_from.lower()):
        local = who.rpartition("@")[0]
        if local and _NO_REPLY_LOCAL.match(local):
            return f"machine sender: {local}"
    if not address:
        return "no readable From address"
    if _AUTO_SUBJECT.match(_header(message, "Subject")):
        return "auto-reply subject"
    return None


def authenticated(results: list[str], *, authserv_id: str, address: str) -> bool:
    """Whether the receiving mail server ``authserv_id`` vouched for the From domain in an
    Authentication-Results header (RFC 8601): DMARC passed, or DKIM passed for that domain."""
    domain = address.rpartition("@")[2].lower()
    if not domain:
        return False
    for header in results:
        server, _, rest = header.partition(";")
        if server.strip().lower().split()[:1] != [authserv_id.lower()]:
            continue  # another server's verdict (or one forged by the sender)
        for clause in rest.split(";"):
            words = clause.strip().lower().split()
            if not words:
                continue
            method = words[0]
            if method == "dmarc=pass":
                return True
            if method == "dkim=pass":
                signer = next((w.split("=", 1)[1] for w in words[1:]
                               if w.startswith("header.d=")), "")
                if signer and (domain == signer or domain.endswith("." + signer)):
                    return True
    return False
