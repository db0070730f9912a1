"""What meter values say a car draws now, and under which pilot: the real-time controller's
half of the give-back. The rule itself (how much a car drawing less than its pilot is
counted at) is :func:`load_manager.dispatch.counted_limit`, the one the realistic bench runs.

A reading is only worth something beside the pilot the car had when it was taken. The
controller knows that pilot: it is the limit the station last accepted for the transaction
(:meth:`MeterWatch.pilot`). A reading taken sooner than ``PILOT_SETTLE_S`` after the pilot
changed is ignored (the car may still be following the change), and so is one taken after
the pilot's first period ran out (a plan's later periods change it without a command). An
older reading under an earlier pilot is kept meanwhile: what a car drew under one pilot
still tells what it takes.

Kept in memory, and the latest reading of each transaction also in the database
(``meter_reading``, one row per connector, see :meth:`MeterWatch.to_store`), so that after a
restart of the service a car that gave back is still counted at what it draws
(:meth:`MeterWatch.restore`) and not at its whole allocation until its next pilot has
settled. Writes are throttled: a row is written only when the pilot it was taken under
changes or what the car draws moves by ``STORE_DELTA_A`` (a car drawing steadily writes
nothing more), and always in the transaction that already records the meter values (no
commit of its own). When a station reconnects while the service runs (its profiles may be
gone), its pilots and readings are forgotten: nothing is known until the next pilot and meter
value. Readings restored at start belong to no pilot, so the stations reconnecting to the
restarted service keep them until newer ones arrive.

Each transaction also keeps the latest reading under each pilot for ``REOFFER_S``: a car
that drew clearly less under a higher pilot than it has now refused that pilot
(``Observation.refused_a``), and a held car is offered more only above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from load_manager.dispatch import REOFFER_S, Observation, refused_pilot

# IEC 61851-1: a car follows a change of the pilot within 5 s.
PILOT_SETTLE_S = 5.0
_PHASES = ("L1", "L2", "L3")
_OUTLET = ("Outlet", "")
# A stored reading is written again only when what the car draws moves by this much (A).
STORE_DELTA_A = 0.5
# Samples taken when no pilot applied yet, or after the car stopped.
_SKIPPED_CONTEXTS = ("Transaction.Begin", "Transaction.End")


@dataclass(frozen=True, slots=True)
class Reading:
    """What one set of meter values says the car draws: the largest phase current
    (Current.Import per phase, or a phaseless Current.Import), else the power of the busiest
    phase, else the total power."""

    current_a: float | None = None
    power_w: float | None = None
    phase_power_w: float | None = None

    def drawn_a(self, *, phases: int | None, voltage_v: float) -> float | None:
        """Amps on the car's busiest phase. From power alone, over the car's phases where
        known and otherwise as if all on one phase: never less than it really draws."""
        if self.current_a is not None:
            return self.current_a
        if self.phase_power_w is not None:
            return self.phase_power_w / voltage_v
        if self.power_w is not None:
            return self.power_w / (voltage_v * (phases or 1))
        return None


def reading_of(samples: Iterable[Any]) -> Reading | None:
    """The reading of the latest instant among OCPP sampled values (objects with
    ``timestamp``, ``measurand``, ``phase``, ``location``, ``context``, ``unit``, ``value``),
    or None when they say nothing about current or power."""
    usable = [s for s in samples
              if s.value is not None and (s.location or "") in _OUTLET
              and s.context not in _SKIPPED_CONTEXTS
              and s.measurand in ("Current.Import", "Power.Active.Import")]
    if not usable:
        return None
    latest = max(s.timestamp for s in usable)
    per_phase: list[float] = []
    phaseless: list[float] = []
    power: list[float] = []
    phase_power: list[float] = []
    for s in usable:
        if s.timestamp != latest:
            continue
        value = float(s.value)
        phase = (s.phase or "").removesuffix("-N")
        if s.measurand == "Current.Import":
            (per_phase if phase in _PHASES else phaseless).append(value)
        else:
            value *= 1000.0 if (s.unit or "W") == "kW" else 1.0
            (phase_power if phase in _PHASES else power).append(value)
    if per_phase or phaseless:
        return Reading(current_a=max(per_phase or phaseless))
    if phase_power:
        return Reading(phase_power_w=max(phase_power))
    return Reading(power_w=power[0]) if power else None


@dataclass(slots=True)
class _Pilot:
    transaction_id: int
    amps: float
    since: float
    until: float


@dataclass
class MeterWatch:
    """The pilot each connector's station accepted, and the latest reading taken under a
    settled pilot for each transaction."""

    settle_s: float = PILOT_SETTLE_S
    clock: Callable[[], float] = time.monotonic
    _pilots: dict[Hashable, _Pilot] = field(default_factory=dict)
    _seen: dict[int, tuple[float, Reading]] = field(default_factory=dict)
    # Per transaction: the latest reading under each pilot, and when (for refusals).
    _under: dict[int, dict[float, tuple[Reading, float]]] = field(default_factory=dict)
    # Per transaction: the (pilot, A) last written to the database.
    _stored: dict[int, tuple[float, float | None]] = field(default_factory=dict)
    # Transactions whose reading was restored from the database and not yet replaced.
    _restored: set[int] = field(default_factory=set)

    def pilot(self, key: Hashable, *, transaction_id: int, amps: float,
              lasts_s: float | None = None) -> None:
        """The station accepted ``amps`` for the transaction on ``key``, for ``lasts_s``
        (None: until further notice)."""
        now = self.clock()
        old = self._pilots.get(key)
        if old is not None and old.transaction_id == transaction_id and old.amps == amps:
            since = old.since  # a refresh of the same pilot: the car is already settled
        else:
            since = now
        self._pilots[key] = _Pilot(transaction_id, amps, since,
                                   math.inf if lasts_s is None else now + lasts_s)

    def unknown_pilot(self, key: Hashable) -> None:
        """The station's pilot on ``key`` is not known (a profile failed, or it reconnected)."""
        self._pilots.pop(key, None)

    def forget_station(self, station_id: str) -> None:
        for key in [k for k in self._pilots
                    if isinstance(k, tuple) and k and k[0] == station_id]:
            tx = self._pilots.pop(key).transaction_id
            if tx not in self._restored:  # the reconnection that follows our restart
                self._seen.pop(tx, None)
            self._under.pop(tx, None)

    def forget_transaction(self, transaction_id: int) -> None:
        self._seen.pop(transaction_id, None)
        self._under.pop(transaction_id, None)
        self._stored.pop(transaction_id, None)
        self._restored.discard(transaction_id)
        for key in [k for k, p in self._pilots.items() if p.transaction_id == transaction_id]:
            del self._pilots[key]

    def saw(self, key: Hashable, *, transaction_id: int, reading: Reading | None) -> bool:
        """Take a reading of the transaction on ``key``; False when it says nothing usable
        (no settled pilot to compare it with)."""
        pilot = self._pilots.get(key)
        now = self.clock()
        if (reading is None or pilot is None or pilot.transaction_id != transaction_id
                or now - pilot.since < self.settle_s or now >= pilot.until):
            return False
        self._seen[transaction_id] = (pilot.amps, reading)
        self._restored.discard(transaction_id)
        under = self._under.setdefault(transaction_id, {})
        under[pilot.amps] = (reading, now)
        for amps in [a for a, (_, at) in under.items() if now - at >= REOFFER_S]:
            del under[amps]
        return True

    def to_store(self, transaction_id: int) -> tuple[float, Reading] | None:
        """The transaction's latest (pilot, reading) when it should be written to the
        database: its pilot changed, or what it draws moved by ``STORE_DELTA_A``, since the
        last write; None when the stored row still says the same."""
        seen = self._seen.get(transaction_id)
        if seen is None:
            return None
        offered, reading = seen
        amps = reading.drawn_a(phases=1, voltage_v=230.0)  # one scale for every reading
        last = self._stored.get(transaction_id)
        if last is not None and last[0] == offered and (
                (last[1] is None and amps is None)
                or (last[1] is not None and amps is not None
                    and abs(last[1] - amps) < STORE_DELTA_A)):
            return None
        return offered, reading

    def stored(self, transaction_id: int, *, offered_a: float, reading: Reading) -> None:
        """The database now holds this (pilot, reading) for the transaction."""
        self._stored[transaction_id] = (offered_a,
                                        reading.drawn_a(phases=1, voltage_v=230.0))

    def restore(self, transaction_id: int, *, offered_a: float, reading: Reading) -> bool:
        """A reading kept in the database before a restart; ignored when a newer one is
        known. It belongs to no pilot: only the next settled pilot's readings replace it."""
        if transaction_id in self._seen:
            return False
        self._seen[transaction_id] = (offered_a, reading)
        self._restored.add(transaction_id)
        self.stored(transaction_id, offered_a=offered_a, reading=reading)
        return True

    def observation(self, transaction_id: int, *, phases: int | None, voltage_v: float
                    ) -> Observation | None:
        """The pilot and what the car drew under it, for :func:`dispatch.counted_limit`."""
        seen = self._seen.get(transaction_id)
        if seen is None:
            return None
        offered, reading = seen
        drawn = reading.drawn_a(phases=phases, voltage_v=voltage_v)
        if drawn is None:
            return None
        history = []
        for amps, (under, at) in self._under.get(transaction_id, {}).items():
            got = under.drawn_a(phases=phases, voltage_v=voltage_v)
            if got is not None:
                history.append((amps, got, at))
        refused = refused_pilot(history, offered_a=offered, now=self.clock())
        return Observation(offered_a=offered, drawn_a=drawn, refused_a=refused)
