"""API-key authentication for ``/api/v1``: bearer keys with roles, stored hashed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, select

from chargedesk.models import ApiKey, Role
from chargedesk.security import hash_api_key, new_api_key
from chargedesk.types import utcnow

_bearer = HTTPBearer(auto_error=False, description="An API key from `chargedesk apikey create`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: recorded in audit logs as ``role:name``."""

    role: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.role}:{self.name}"


def create_api_key(session: Session, *, name: str, role: Role) -> tuple[ApiKey, str]:
    """Create a key; the plain key is returned once and never stored."""
    key = new_api_key()
    row = ApiKey(name=name, role=role, prefix=key[:10], key_hash=hash_api_key(key))
    session.add(row)
    session.flush()
    return row, key


def authenticate_api_key(session: Session, *, key: str) -> ApiKey | None:
    """The live key matching ``key``, touching its last use at most once a minute."""
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).first()
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now
        session.add(row)
        session.commit()
    return row


def revoke_api_key(session: Session, *, key_id: int) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.add(row)
    return True


def get_db(request: Request):  # type: ignore[no-untyped-def]
    from chargedesk.db import session_scope

    with session_scope(request.app.state.runtime.engine) as session:
        yield session


# scope="function": the transaction commits before the response is sent, so a client that
# acts on a 201 (or a failed commit's 500) always sees what really happened.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


def require_role(*roles: Role) -> Callable[..., Principal]:
    """A dependency admitting only keys with one of ``roles`` (401 without a key, 403 else)."""

    def dependency(
        session: SessionDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        row = authenticate_api_key(session, key=credentials.credentials)
        if row is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or revoked API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if row.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs the role {' or '.join(roles)}; the key has {row.role}",
            )
        return Principal(role=row.role, name=row.name)

    return dependency


OperatorUser = Annotated[Principal, Depends(require_role(Role.operator))]
StaffUser = Annotated[Principal, Depends(require_role(Role.operator, Role.agent))]
