"""Who is calling the support desk: an agent signed in to the console, or an API key.

Agents sign in at ``/agent/login`` with a username and password (scrypt-hashed, see
:mod:`chargedesk.security`). The session is a random token kept only as a hash in
``support_agent_session``; the cookie carries the token signed with
``CHARGEDESK_SUPPORT_SECRET`` (HMAC-SHA256), HttpOnly, SameSite=Lax, Secure over https, so
a forged or altered cookie is refused before the database is asked. Every request that
changes something with the cookie must carry the session's CSRF token (derived from the
token with the same secret) in ``X-CSRF-Token`` or a ``csrf_token`` form field, and an
``Origin`` of our own host when it has one; SameSite=Lax already keeps the cookie off
cross-site POSTs, the token covers older browsers and same-site attackers.

``/api/v1/support`` takes either that cookie (the console is built on it) or a bearer API
key (``chargedesk apikey create``): operators' keys may do everything, agents' keys what
an agent may. Actions are recorded as ``agent:<id>`` for console agents and as the key's
``role:name`` for keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from sqlmodel import Session, col, select

from chargedesk.auth import SessionDep, authenticate_api_key
from chargedesk.models import Role
from chargedesk.security import hash_password, verify_password
from chargedesk.settings import Settings
from support.models import AgentRole, SupportAgent, SupportAgentSession

COOKIE = "chargedesk_agent"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# last_seen_at is written at most this often per agent (presence, not an audit trail).
SEEN_EVERY = timedelta(seconds=15)
MIN_PASSWORD = 10

_process_secret = secrets.token_bytes(32)

# What each kind of caller may do.
AGENT, SUPERVISOR, OPERATOR = "agent", "supervisor", "operator"
STAFF = (AGENT, SUPERVISOR, OPERATOR)
LEADS = (SUPERVISOR, OPERATOR)


@dataclass(frozen=True)
class Actor:
    """The caller: ``role`` is agent, supervisor or operator; ``agent_id`` only for a
    console agent; ``label`` is what audit logs record."""

    role: str
    name: str
    label: str
    agent_id: int | None = None

    def credit_limit_ore(self, settings: Settings) -> int | None:
        """The most (incl. VAT, öre) this caller may credit or refund without approval;
        None: no limit (operators, who may also credit through the billing API)."""
        if self.role == OPERATOR:
            return None
        limit = (settings.support_supervisor_credit_limit if self.role == SUPERVISOR
                 else settings.support_agent_credit_limit)
        return int((Decimal(limit) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# ---------------------------------------------------------------- accounts


class InvalidPassword(ValueError):
    pass


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidPassword(f"a password needs at least {MIN_PASSWORD} characters")


def create_agent(session: Session, *, username: str, name: str, password: str,
                 role: AgentRole = AgentRole.agent, email: str | None = None) -> SupportAgent:
    """A console account; the password is stored as an scrypt hash only."""
    check_password_rules(password)
    agent = SupportAgent(username=username.strip().lower(), name=name, email=email, role=role,
                         password_hash=hash_password(password))
    session.add(agent)
    session.flush()
    return agent


def set_password(session: Session, *, agent: SupportAgent, password: str) -> None:
    check_password_rules(password)
    agent.password_hash = hash_password(password)
    session.add(agent)
    # Every console signed in with the old password is signed out.
    for row in session.exec(select(SupportAgentSession).where(
            SupportAgentSession.agent_id == agent.id,
            col(SupportAgentSession.revoked_at).is_(None))):
        row.revoked_at = _now()
        session.add(row)


# A hash to check against when the username is unknown, so both answers take as long.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def check_credentials(session: Session, *, username: str, password: str
                      ) -> SupportAgent | None:
    agent = session.exec(select(SupportAgent).where(
        SupportAgent.username == username.strip().lower())).first()
    if agent is None or not agent.active:
        verify_password(password, _DUMMY_HASH)
        return None
    return agent if verify_password(password, agent.password_hash) else None


# ---------------------------------------------------------------- sessions and cookies


def _secret(settings: Settings) -> bytes:
    return settings.support_secret.encode() if settings.support_secret else _process_secret


def _mac(settings: Settings, purpose: str, token: str) -> str:
    digest = hmac.new(_secret(settings), f"{purpose}|{token}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    from chargedesk.types import utcnow

    return utcnow()


def start_session(session: Session, *, agent: SupportAgent, settings: Settings,
                  now: datetime) -> str:
    """A new console session: the cookie value (token and its signature)."""
    token = secrets.token_urlsafe(32)
    session.add(SupportAgentSession(
        agent_id=agent.id or 0, token_hash=_hash(token), created_at=now,
        expires_at=now + timedelta(hours=settings.support_session_hours)))
    agent.online = True
    agent.last_seen_at = now
    session.add(agent)
    return f"{token}.{_mac(settings, 'session', token)}"


def _token(settings: Settings, cookie: str | None) -> str | None:
    """The token of a cookie we signed, else None."""
    if not cookie:
        return None
    token, _, mac = cookie.rpartition(".")
    if not token or not hmac.compare_digest(mac.encode(), _mac(settings, "session",
                                                                 token).encode()):
        return None
    return token


def csrf_token(settings: Settings, cookie: str | None) -> str:
    token = _token(settings, cookie)
    return _mac(settings, "csrf", token) if token else ""


def session_agent(session: Session, *, settings: Settings, cookie: str | None,
                  now: datetime) -> SupportAgent | None:
    """The active agent of a live console session, else None."""
    token = _token(settings, cookie)
    if token is None:
        return None
    row = session.exec(select(SupportAgentSession).where(
        SupportAgentSession.token_hash == _hash(token))).first()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    agent = session.get(SupportAgent, row.agent_id)
    if agent is None or not agent.active:
        return None
    return agent


def end_session(session: Session, *, settings: Settings, cookie: str | None,
                now: datetime) -> None:
    token = _token(settings, cookie)
    if token is None:
        return
    row = session.exec(select(SupportAgentSession).where(
        SupportAgentSession.token_hash == _hash(token))).first()
    if row is not None and row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        agent = session.get(SupportAgent, row.agent_id)
        if agent is not None:
            agent.online = False
            session.add(agent)


def touch(session: Session, *, agent: SupportAgent, now: datetime) -> None:
    """Presence: the console was seen now."""
    if agent.last_seen_at is None or now - agent.last_seen_at >= SEEN_EVERY:
        agent.last_seen_at = now
        session.add(agent)


def actor_of(agent: SupportAgent) -> Actor:
    return Actor(role=str(agent.role), name=agent.name, label=f"agent:{agent.id}",
                 agent_id=agent.id)


# ---------------------------------------------------------------- FastAPI dependencies


def same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")


def desk_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.runtime.settings
    return settings


def clock_now(request: Request) -> datetime:
    return request.app.state.support.clock()  # type: ignore[no-any-return]


async def _form_csrf(request: Request) -> str | None:
    if request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        from urllib.parse import parse_qs

        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        return (form.get("csrf_token") or [None])[0]
    return None


async def current_actor(request: Request, session: SessionDep) -> Actor:
    """The caller, by bearer API key or by console cookie (with its CSRF token on
    anything but a read); 401 for neither."""
    settings = desk_settings(request)
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        key = authenticate_api_key(session, key=credential.strip())
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})
        role = OPERATOR if key.role == Role.operator else AGENT
        return Actor(role=role, name=key.name, label=f"{key.role}:{key.name}")
    cookie = request.cookies.get(COOKIE)
    now = clock_now(request)
    agent = session_agent(session, settings=settings, cookie=cookie, now=now)
    if agent is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "sign in at /agent/login or give an API key",
                            headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS:
        same_origin(request)
        sent = request.headers.get(CSRF_HEADER) or await _form_csrf(request)
        expected = csrf_token(settings, cookie)
        if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    touch(session, agent=agent, now=now)
    return actor_of(agent)


def require(*roles: str):  # type: ignore[no-untyped-def]
    """A dependency admitting callers whose role is one of ``roles`` (403 otherwise)."""

    async def dependency(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
        if actor.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this needs the role {' or '.join(roles)}; you are"
                                f" {actor.role}")
        return actor

    return dependency


Staff = Annotated[Actor, Depends(require(*STAFF))]
Lead = Annotated[Actor, Depends(require(*LEADS))]
Operator = Annotated[Actor, Depends(require(OPERATOR))]
