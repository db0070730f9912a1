"""What the SMS and voice webhooks share: configuration, signature checks, the API client.

Every Twilio webhook is checked with the ``twilio`` library's :class:`RequestValidator`:
HMAC-SHA1 with the account's auth token over the URL Twilio called and the sorted form
fields. Behind a proxy the URL the app sees is not the one Twilio called, so the URL is
always ``CHARGEDESK_PUBLIC_BASE_URL`` + the route's path (+ its query string): the address
configured at Twilio. Without an auth token (or a public base URL) the webhooks answer 503:
an unsigned request is never accepted.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import HTTPException, Request, status
from sqlmodel import Session, col, select
from twilio.request_validator import SIGNATURE_HEADER, RequestValidator
from twilio.rest import Client

from billing_api.models import Driver
from chargedesk.settings import Settings

log = structlog.get_logger(__name__)

TWILIO_API_BASE_URL = "https://api.twilio.com"
# Twilio's webhook bodies are small; anything bigger is not from Twilio.
MAX_BODY_BYTES = 64 * 1024
TWIML_TYPE = "application/xml"


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str
    from_number: str
    api_base_url: str
    public_base_url: str
    support_phone_number: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioConfig:
        return cls(
            account_sid=settings.twilio_account_sid.strip(),
            auth_token=settings.twilio_auth_token.strip(),
            from_number=settings.twilio_from_number.strip(),
            api_base_url=(settings.twilio_api_base_url.strip() or TWILIO_API_BASE_URL
                          ).rstrip("/"),
            public_base_url=settings.public_base_url.strip().rstrip("/"),
            support_phone_number=settings.support_phone_number.strip(),
        )

    def missing(self, *, sending: bool) -> list[str]:
        """The settings a webhook needs that are unset (``sending``: it also replies)."""
        needed = {"CHARGEDESK_TWILIO_AUTH_TOKEN": self.auth_token,
                  "CHARGEDESK_PUBLIC_BASE_URL": self.public_base_url}
        if sending:
            needed |= {"CHARGEDESK_TWILIO_ACCOUNT_SID": self.account_sid,
                       "CHARGEDESK_TWILIO_FROM_NUMBER": self.from_number}
        return [name for name, value in needed.items() if not value]

    def url(self, path: str) -> str:
        """The public address of one of our routes (status callbacks, TwiML actions)."""
        return f"{self.public_base_url}{path}"


def config(request: Request) -> TwilioConfig:
    cached: TwilioConfig | None = getattr(request.app.state, "twilio_config", None)
    if cached is None:
        cached = TwilioConfig.from_settings(request.app.state.runtime.settings)
        request.app.state.twilio_config = cached
    return cached


@lru_cache(maxsize=4)
def _validator(token: str) -> RequestValidator:
    return RequestValidator(token)


def public_url(request: Request, cfg: TwilioConfig) -> str:
    """The URL Twilio signed: the public base, the path within this app, the query."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{cfg.public_base_url}{path}" + (f"?{query}" if query else "")


async def signed_form(request: Request, *, sending: bool) -> tuple[TwilioConfig, dict[str, str]]:
    """The webhook's form fields once its signature is good; else 503 (not configured) or
    403 (no or a wrong signature), before anything is read into the database."""
    cfg = config(request)
    missing = cfg.missing(sending=sending)
    if missing:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"Twilio channel not configured: set {', '.join(missing)}")
    signature = request.headers.get(SIGNATURE_HEADER, "")
    body = await request.body()
    if not signature or len(body) > MAX_BODY_BYTES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid Twilio signature")
    try:
        form = Form.parse(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid Twilio signature") from None
    if not valid_signature(cfg.auth_token, public_url(request, cfg), form, signature):
        log.warning("twilio webhook with a bad signature", path=request.url.path)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid Twilio signature")
    return cfg, form.first()


class Form(dict[str, list[str]]):
    """Form fields with every value of a repeated name, in the ``getall`` shape
    :class:`RequestValidator` reads (a plain dict costs it two exceptions per field)."""

    @classmethod
    def parse(cls, body: str) -> Form:
        form = cls()
        for name, value in parse_qsl(body, keep_blank_values=True):
            form.setdefault(name, []).append(value)
        return form

    def getall(self, name: str) -> list[str]:
        return self[name]

    def first(self) -> dict[str, str]:
        return {name: values[0] for name, values in self.items()}


def valid_signature(token: str, url: str, form: Form, signature: str) -> bool:
    """Whether ``signature`` is Twilio's for this URL and form.

    The URL as configured is checked first; only when that fails, the same URL with the
    default port added or removed, which :meth:`RequestValidator.validate` accepts as well
    (Twilio's signing has not always agreed with itself on ports)."""
    validator = _validator(token)
    if hmac.compare_digest(validator.compute_signature(url, form).encode(),
                           signature.encode()):
        return True
    return bool(validator.validate(url, form, signature))


def sign(auth_token: str, url: str, fields: dict[str, str]) -> str:
    """The ``X-Twilio-Signature`` Twilio would send (benchmarks sign with it)."""
    return _validator(auth_token).compute_signature(url, fields)


def make_client(cfg: TwilioConfig, http_client: Any) -> Client:
    """The official REST client, its API domain at ``CHARGEDESK_TWILIO_API_BASE_URL``.

    The ``api`` domain (api.twilio.com, where Messages live) keeps its base URL in
    ``Domain.base_url``; pointing it elsewhere sends the same requests to a stand-in.
    Edge and region routing only apply to Twilio's own host names.
    """
    client = Client(cfg.account_sid, cfg.auth_token, http_client=http_client)
    if cfg.api_base_url != TWILIO_API_BASE_URL:
        client.api.base_url = cfg.api_base_url
        client.edge = client.region = None
    return client


def find_driver(session: Session, *, phone: str) -> Driver | None:
    """The driver whose account has this number, when exactly one has it (a number two
    accounts share identifies neither)."""
    rows = session.exec(select(Driver).where(col(Driver.phone) == phone)
                        .order_by(col(Driver.id)).limit(2)).all()
    return rows[0] if len(rows) == 1 else None
