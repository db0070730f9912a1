"""A lost card: blocked at once in the registry and on the stations' local lists.

A station may accept a card from its local authorization list while it is offline (OCPP
1.6 LocalAuthorizeOffline), so a block must reach every station's list, not only the
registry. Each blocked card is owed to every registered station as a
:class:`~assistant.actions.models.LocalListPush`: connected stations get a differential
SendLocalList at once; a station offline at the time gets it when it next connects
(:func:`install` subscribes to ``StationOnline``). A station without a local list has its
authorization cache cleared instead, so no cached "Accepted" outlives the block.

station_api keeps no copy of each station's local list (only the command log), so the
update is differential, one version above what the station reports.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

import structlog
from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher
from sqlmodel import Session, col, select

from assistant.actions import context, safety
from assistant.actions.common import handoff, verified_driver
from assistant.actions.models import LocalListPush
from chargedesk.db import run_in_session
from chargedesk.types import utcnow
from station_api import service as stations
from station_api.events import StationOnline
from station_api.models import IdTag, IdTagStatus, Registration

if TYPE_CHECKING:
    from chargedesk.app import Runtime
    from station_api.central import CentralSystem

log = structlog.get_logger(__name__)

Events = list[dict[str, Any]]

REASON = "driver reported their card lost to the assistant"
REASON_LATER = "a card blocked while the station was offline (lost card, via the assistant)"
# Stations updated at once, at the same time.
CONCURRENT_PUSHES = 16


def block_cards(session: Session, *, id_tags: tuple[str, ...]) -> list[str]:
    """Block the driver's cards that still work; a fleet's parent tag (one with children)
    is left to the fleet's administrator. Returns the tags blocked."""
    parents = set(session.exec(select(IdTag.parent_id_tag).where(
        col(IdTag.parent_id_tag).in_(list(id_tags)))).all())
    blocked = []
    for tag in id_tags:
        row = session.get(IdTag, tag)
        if row is None or tag in parents or row.status != IdTagStatus.accepted:
            continue
        stations.update_id_tag(session, id_tag=tag, status=IdTagStatus.blocked)
        blocked.append(tag)
    return blocked


def owe_blocks(session: Session, *, tags: list[str], requested_by: str) -> int:
    """Record ``tags`` as owed to every station that is not decommissioned (one pending
    push per station and tag); returns how many stations."""
    owed = 0
    pending = {(row.station_id, row.id_tag) for row in session.exec(
        select(LocalListPush).where(col(LocalListPush.delivered_at).is_(None),
                                    col(LocalListPush.id_tag).in_(tags))).all()}
    for station in stations.list_stations(session):
        if station.registration == Registration.decommissioned:
            continue
        owed += 1
        for tag in tags:
            if (station.id, tag) not in pending:
                session.add(LocalListPush(station_id=station.id, id_tag=tag,
                                          requested_by=requested_by, reason=REASON))
    session.flush()
    return owed


def _owed(session: Session, *, station_id: str) -> list[tuple[int, str, dict[str, Any], str]]:
    """The station's undelivered pushes: (id, tag, local list entry, requested_by), the
    entry as the registry has the tag now (a tag accepted again leaves the list)."""
    rows = session.exec(select(LocalListPush).where(
        LocalListPush.station_id == station_id, col(LocalListPush.delivered_at).is_(None))
        .order_by(col(LocalListPush.id))).all()
    owed = []
    for row in rows:
        tag = session.get(IdTag, row.id_tag)
        entry: dict[str, Any] = {"idTag": row.id_tag}
        if tag is None or tag.status != IdTagStatus.accepted:
            info: dict[str, Any] = {"status": str(tag.status) if tag else "Invalid"}
            if tag is not None and tag.parent_id_tag:
                info["parentIdTag"] = tag.parent_id_tag
            entry["idTagInfo"] = info
        owed.append((row.id or 0, row.id_tag, entry, row.requested_by))
    return owed


def _settle(session: Session, *, ids: list[int], error: str | None) -> None:
    """Mark pushes delivered (``error`` None) or count a failed attempt."""
    now = utcnow()
    for row in session.exec(select(LocalListPush).where(col(LocalListPush.id).in_(ids))):
        row.attempts += 1
        if error is None:
            row.delivered_at = now
        else:
            row.last_error = error[:300]
        session.add(row)


# Deliveries to one station run one at a time: two differential updates computed from the
# same reported version would collide.
_station_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _station_lock(station_id: str) -> asyncio.Lock:
    lock = _station_locks.get(station_id)
    if lock is None:
        lock = asyncio.Lock()
        _station_locks[station_id] = lock
    return lock


async def deliver(central: CentralSystem, engine: Any, *, station_id: str,
                  reason: str = REASON) -> bool | None:
    """Send the station what it is owed: True when it took it (or has no list and its
    cache was cleared), False when it did not answer or refused, None when nothing was
    owed. Every command is audited as the driver who blocked the card."""
    async with _station_lock(station_id):
        owed = await run_in_session(engine, _owed, station_id=station_id)
        if not owed:
            return None
        ids = [row_id for row_id, _, _, _ in owed]
        entries = list({tag: entry for _, tag, entry, _ in owed}.values())
        by = owed[-1][3]
        error = await _send_list(central, station_id=station_id, entries=entries, by=by,
                                 reason=reason)
        await run_in_session(engine, _settle, ids=ids, error=error)
        if error is not None:
            log.info("local list update not delivered", station_id=station_id, error=error)
        return error is None


async def _send_list(central: CentralSystem, *, station_id: str,
                     entries: list[dict[str, Any]], by: str, reason: str) -> str | None:
    """One differential update above the station's version; None when done, else why not."""
    for _ in range(2):  # once more if another update got in between (VersionMismatch)
        version = await central.send_command(station_id, "GetLocalListVersion", {},
                                             requested_by=by, reason=reason)
        if str(version.outcome) != "accepted":
            return f"GetLocalListVersion: {version.outcome} {version.error or ''}".strip()
        current = (version.response or {}).get("listVersion")
        if not isinstance(current, int) or current < 0:
            return await _clear_cache(central, station_id=station_id, by=by, reason=reason)
        result = await central.send_command(
            station_id, "SendLocalList",
            {"listVersion": current + 1, "updateType": "Differential",
             "localAuthorizationList": entries}, requested_by=by, reason=reason)
        if str(result.outcome) == "accepted":
            return None
        status = (result.response or {}).get("status")
        if status == "NotSupported":
            return await _clear_cache(central, station_id=station_id, by=by, reason=reason)
        if status != "VersionMismatch":
            return f"SendLocalList: {result.outcome} {result.error or ''}".strip()
    return "SendLocalList: VersionMismatch twice"


async def _clear_cache(central: CentralSystem, *, station_id: str, by: str,
                       reason: str) -> str | None:
    """No local list: clear the authorization cache, where the card may still be Accepted."""
    result = await central.send_command(station_id, "ClearCache", {}, requested_by=by,
                                        reason=reason)
    if str(result.outcome) == "accepted":
        return None
    return f"ClearCache: {result.outcome} {result.error or ''}".strip()


async def push_blocked(*, driver_id: int, tags: list[str]) -> tuple[int, int, int]:
    """Owe the blocked tags to every station and deliver them to the connected ones now.
    Returns (connected stations updated, connected stations, stations that get it when
    they reconnect)."""
    runtime = context.current()
    central, engine = runtime.central, runtime.engine
    owed = await run_in_session(engine, owe_blocks, tags=tags,
                                requested_by=safety.requested_by(driver_id))
    connected = sorted(central.connections)
    gate = asyncio.Semaphore(CONCURRENT_PUSHES)

    async def one(station_id: str) -> bool | None:
        async with gate:
            try:
                return await deliver(central, engine, station_id=station_id)
            except Exception:  # the card is blocked; this station gets it on reconnect
                log.exception("local list update failed", station_id=station_id)
                return False

    results = await asyncio.gather(*(one(s) for s in connected))
    updated = sum(result is True for result in results)
    return updated, len(connected), max(0, owed - updated)


class ActionLostCard(Action):
    """Block the driver's cards at once (registry, then the stations' local lists: the
    connected ones now, the others when they reconnect) and offer a replacement through a
    person."""

    def name(self) -> str:
        return "action_lost_card"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: dict[str, Any]) -> Events:
        driver = await verified_driver(dispatcher, tracker)
        if driver is None:
            return []
        blocked = await context.db(block_cards, id_tags=driver.id_tags)
        if not blocked:
            dispatcher.utter_message(response="utter_no_card_to_block")
            return handoff("action_failed")
        updated, tried, later = await push_blocked(driver_id=driver.id, tags=blocked)
        dispatcher.utter_message(response="utter_card_now_blocked", cards=", ".join(blocked),
                                 stations=updated, tried=tried, later=later)
        return []


# Buses already delivering StationOnline to us (configure may be called more than once).
_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def install(runtime: Runtime) -> None:
    """Deliver owed card blocks to each station as it connects."""
    bus = runtime.bus
    if bus in _installed:
        return
    _installed.add(bus)
    central, engine = runtime.central, runtime.engine

    async def on_online(event: StationOnline) -> None:
        await deliver(central, engine, station_id=event.station_id, reason=REASON_LATER)

    bus.subscribe(StationOnline, on_online)


ACTIONS = [ActionLostCard]
