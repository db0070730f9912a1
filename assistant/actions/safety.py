"""What a driver may make a station do through the assistant, in one place.

- Unlock only the connector where the driver's session is, or ended at most
  :data:`UNLOCK_WINDOW` ago.
- Stop only the driver's own session.
- A soft reset only when no other driver's session runs on the station; a hard reset never.
- Remote commands are rate-limited per driver and per station (:data:`LIMITS`).
- Every command goes through ``CentralSystem.send_command`` (and so its audit log) as
  ``driver:<id>`` with a reason.

"The driver's" means started with one of their id tags or with a child tag of one. The rate
limits are in-process token buckets: with several processes serving one network each has its
own, so the effective limit multiplies by the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from chargedesk.types import utcnow
from station_api import service as stations
from station_api.central import CentralSystem, CommandResult
from station_api.models import IdTag, Transaction

UNLOCK_WINDOW = timedelta(minutes=15)
# Commands that move something at a station; the rate limits count these.
REMOTE_COMMANDS = frozenset({"UnlockConnector", "RemoteStopTransaction",
                             "RemoteStartTransaction", "Reset"})


class Refused(Exception):
    """The assistant will not do this for this driver. ``code`` names the rule:
    ``no_session``, ``not_yours``, ``other_session``, ``hard_reset``, ``rate_limited``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def requested_by(driver_id: int) -> str:
    """Who the command log records for a driver's request."""
    return f"driver:{driver_id}"


def owns(session: Session, *, transaction: Transaction, id_tags: Collection[str]) -> bool:
    """Whether ``transaction`` was started with one of ``id_tags`` or a child of one."""
    if transaction.id_tag in id_tags:
        return True
    tag = session.get(IdTag, transaction.id_tag)
    return bool(tag and tag.parent_id_tag and tag.parent_id_tag in id_tags)


def check_unlock(
    session: Session, *, station_id: str, connector_id: int, id_tags: Collection[str],
    now: datetime | None = None,
) -> Transaction:
    """The driver's session at the connector (running, or ended within the window)."""
    now = now or utcnow()
    latest = next((tx for tx in stations.list_transactions(session, station_id=station_id,
                                                           limit=50)
                   if tx.connector_id == connector_id), None)
    recent = latest is not None and (
        latest.stop_timestamp is None or now - latest.stop_timestamp <= UNLOCK_WINDOW)
    if latest is None or not recent:
        raise Refused("no_session", f"no session at {station_id} connector {connector_id} "
                                    f"in the last {UNLOCK_WINDOW.seconds // 60} minutes")
    if not owns(session, transaction=latest, id_tags=id_tags):
        raise Refused("not_yours", f"the session at {station_id} connector {connector_id} "
                                   "is not the driver's")
    return latest


def check_stop(session: Session, *, transaction_id: int, id_tags: Collection[str]
               ) -> Transaction:
    """The driver's own running session."""
    tx = session.get(Transaction, transaction_id)
    if tx is None or not owns(session, transaction=tx, id_tags=id_tags):
        raise Refused("not_yours", f"transaction {transaction_id} is not the driver's")
    if tx.stop_timestamp is not None:
        raise Refused("no_session", f"transaction {transaction_id} has already stopped")
    return tx


def check_reset(
    session: Session, *, station_id: str, reset_type: str, id_tags: Collection[str],
) -> None:
    """A soft reset of a station where no other driver's session runs."""
    if reset_type != "Soft":
        raise Refused("hard_reset", "a driver may never hard-reset a station")
    for tx in stations.list_transactions(session, station_id=station_id, active=True):
        if not owns(session, transaction=tx, id_tags=id_tags):
            raise Refused("other_session",
                          f"another driver's session runs on {station_id}")


@dataclass
class TokenBucket:
    """``capacity`` commands, refilled evenly over ``period`` seconds, per key."""

    capacity: int
    period: float
    clock: Callable[[], float] = time.monotonic
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)

    def available(self, key: str) -> float:
        now = self.clock()
        tokens, at = self._tokens.get(key, (float(self.capacity), now))
        return min(float(self.capacity), tokens + (now - at) * self.capacity / self.period)

    def take(self, key: str) -> None:
        self._tokens[key] = (self.available(key) - 1, self.clock())


@dataclass
class Limits:
    per_driver: TokenBucket
    per_station: TokenBucket

    def admit(self, *, driver_id: int, station_id: str) -> None:
        """Count one remote command, or raise :class:`Refused` when either limit is spent
        (then neither is charged)."""
        driver, station = f"driver:{driver_id}", f"station:{station_id}"
        if self.per_driver.available(driver) < 1:
            raise Refused("rate_limited", f"driver {driver_id} sent too many commands")
        if self.per_station.available(station) < 1:
            raise Refused("rate_limited", f"station {station_id} had too many commands")
        self.per_driver.take(driver)
        self.per_station.take(station)

    def reset(self) -> None:
        self.per_driver._tokens.clear()
        self.per_station._tokens.clear()


# 3 remote commands per driver and 6 per station in any 10 minutes.
LIMITS = Limits(per_driver=TokenBucket(3, 600.0), per_station=TokenBucket(6, 600.0))


async def command(
    central: CentralSystem, *, driver_id: int, station_id: str, action: str,
    payload: dict[str, Any], reason: str, limits: Limits | None = None,
) -> CommandResult:
    """Send a command for a driver: rate-limited if it moves something, never a hard reset,
    always audited as ``driver:<id>`` with ``reason``."""
    if action == "Reset" and payload.get("type") != "Soft":
        raise Refused("hard_reset", "a driver may never hard-reset a station")
    if action in REMOTE_COMMANDS:
        (limits or LIMITS).admit(driver_id=driver_id, station_id=station_id)
    return await central.send_command(station_id, action, payload,
                                      requested_by=requested_by(driver_id), reason=reason)
