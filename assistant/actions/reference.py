"""What anonymous questions read over and over, kept for a few seconds.

Price, status and "where can I charge" questions are most of what drivers ask, and each
read the same few rows: the network's sites and stations, a station's connectors, the
tariff in force. Each answer here is kept for :data:`TTL_S` seconds, so a busy chat reads
the database for them a few times a minute instead of on every turn:

- a connector's status is dropped the moment this process records a new one (the central
  system publishes :class:`~station_api.events.StatusChanged` after the write commits), so
  a status answer is as fresh as the database's; the TTL only bounds what another process
  wrote (an operator's CLI, say);
- a price sheet is kept per (station or site, connector, driver group) and per minute of the
  clock, so "which price applies now" turns with the tariff's time windows; a new tariff
  applies to answers within :data:`TTL_S` seconds (sessions are always rated from the
  database, never from here);
- sites, stations and free-connector counts follow the same rules as statuses.

Answers to a driver about their own account (sessions, invoices, balance, cards) are never
cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from station_api.events import StatusChanged

T = TypeVar("T")

TTL_S = 5.0
MAX_ENTRIES = 4096


class TtlCache(Generic[T]):
    """A small LRU map whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, ttl: float = TTL_S, *, maxsize: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.maxsize, self.clock = ttl, maxsize, clock
        self._entries: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()

    def get(self, key: Hashable) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if self.clock() - stored_at >= self.ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: T) -> None:
        self._entries[key] = (self.clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """The kept value, else ``load()``'s (kept; an exception is not)."""
        value = self.get(key)
        if value is None:
            value = await load()
            self.put(key, value)
        return value

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Reference:
    """The caches of one running service (see :func:`install`)."""

    def __init__(self, ttl: float = TTL_S, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        # station -> [(connector, status, error code)]
        self.connectors: TtlCache[list[tuple[int, str, str]]] = TtlCache(ttl, clock=clock)
        # the network's sites with free/total connectors; site -> its station ids
        self.sites: TtlCache[Any] = TtlCache(ttl, clock=clock)
        # (station, site, connector, driver group, minute) -> price sheet
        self.prices: TtlCache[dict[str, Any]] = TtlCache(ttl, clock=clock)

    def on_status(self, event: StatusChanged) -> None:
        """A connector's new status: what was kept of its station and of the sites' free
        counts is stale now."""
        self.connectors.drop(event.station_id)
        self.sites.clear()


def install(runtime: Any) -> Reference:
    """Attach a :class:`Reference` to ``runtime`` and keep it fresh from its bus."""
    from station_api.events import StatusChanged

    reference = Reference()
    runtime.bus.subscribe(StatusChanged, reference.on_status)
    runtime.reference = reference
    return reference


def of(runtime: Any) -> Reference:
    reference: Reference | None = getattr(runtime, "reference", None)
    if reference is None:
        reference = install(runtime)
    return reference
