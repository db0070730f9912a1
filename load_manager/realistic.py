"""Scheduling under real-world constraints: a European three-phase site, pilots in whole amperes
with a 6 A minimum, batteries that taper, and drivers who say roughly when they leave.

Recorded sessions (the CSV of :func:`load_manager.simulation.load_sessions`: arrival, departure
and the energy each car really took) are replayed on a model of a European site, and every
scheduler is run on it with what it could know. :func:`simulate` runs one scheduler at one
site capacity; :func:`run_all` runs them all.

The site
--------
A 400 V three-phase supply (230 V phase to neutral). The site's kW becomes a limit per phase
in whole amperes, as fuses and breakers are rated: ``floor(kW * 1000 / (3 * 230))`` (10 kW:
14 A per phase, 9.66 kW). Every station is a three-phase Type 2 connector of 32 A wired with
phase rotation (:class:`load_manager.dispatch.Wiring`, the controller's own phase model):
stations in order of id get the rotations RST, STR, TRS in turn, so single-phase cars, which
draw on the connector's L1, spread over the site's L1, L2 and L3. (``single_phase_share``
makes a share of the stations single-phase, on the phase their rotation gives; a three-phase
car charges on one phase there, at its 16 A.)

The cars
--------
Each session gets a car, drawn with the seed: 60 % three-phase at up to 16 A per phase
(11 kW), 25 % single-phase at up to 32 A (7.4 kW), 15 % single-phase at up to 16 A (3.7 kW,
plug-in hybrids); a car too slow to take its session's energy in its stay even flat out is
made the fastest type instead (nobody brings a plug-in hybrid for 30 kWh). Its pilot is 0 or
6 A to its maximum in whole amperes, as IEC 61851 pilot signals allow. It draws
``min(pilot, what it accepts)``.

What it accepts: its maximum up to 80 % state of charge, then linearly less, to nothing at
full (the state of charge of the slot's start holds for the slot, so the taper is exact in the
LP of the offline optimum), and nothing once it has the session's energy (the driver's charge
limit). It arrives at a state of charge drawn from 10-50 % with a battery drawn from 40-90 kWh
(10-25 kWh for the 16 A single-phase cars); the battery is then estimated up, if need be, to
the smallest one with which the car, charging flat out from arrival, takes the session's
energy before it leaves: the recorded energy was really delivered, so the taper must let it
fit. Sessions that no car type could take in their stay (the data holds a few) are counted
in ``unservable``.

What the schedulers know
------------------------
The Caltech CSV holds no stated departures or energies, so each is the truth disturbed by
uniform noise, drawn with the seed: departure +/- 30 minutes (whole 5-minute slots, at least
one slot after arrival), energy +/- 20 %. Every online scheduler sees only these, what it
has delivered, and what meter values show (a car drawing less than its pilot). Cars leave
at their true departure whatever they still need. Only the offline optimum knows the truth
(departures, energies, batteries, future arrivals).

Each slot, the scheduler sets every present car's pilot; the cars draw; a car drawing clearly
less than its pilot gives the rest back within the slot (a second decision with the slot's
meter values, as the real-time controller rebalances on meter values), and the slot is
charged at the second decision's pilots. Every decision, all schedulers but uncontrolled, goes
through :func:`load_manager.dispatch.dispatch` with whole amperes and the 6 A minimum, each car
made a load by :func:`load_manager.dispatch.connector_load` from its station's wiring: the code
the real-time controller runs, with the same give-back rule (and the same second chance for
held cars: what nobody else can use is offered to them, except a pilot they refused within
``dispatch.REOFFER_S``, remembered per car as the controller's meter watch does).

The schedulers
--------------
- ``uncontrolled``: every car at its maximum; the limits are only counted.
- ``equal_share``, ``least_laxity``, ``earliest_deadline``: the allocator's rules each slot, with
  the stated departure and the stated energy minus what was delivered.
- ``mpc``: :class:`load_manager.mpc.Mpc`, the very object the real-time controller keeps for
  each site under its ``mpc`` policy (the bench supplies the cars' stated figures, the
  controller their charge plans or its default estimates): an LP
  (:func:`load_manager.lp.solve`) over every present car's stated need and
  departure under the phase limits: the most energy, then the earliest, with each car's
  lateness also measured against its own window (``WINDOW_WEIGHT``: the car leaving first is
  served first among equally good plans). Its current slot becomes pilots by
  :func:`load_manager.dispatch.plan_current` with error feedback (a car short of its plan
  gets more in the next slots, one ahead less: a plan of 2 A is 6 A a third of the time) and
  :func:`load_manager.dispatch.dispatch` (planned targets first in least-laxity order, then
  what is left to whoever can take it, least laxity first), checked by a small MILP where the
  6 A minimums collide (``exact``). It re-plans when a car arrives or leaves, when a car is
  still there at its stated departure (it is then taken to stay ``OVERSTAY_SLOTS`` more),
  when a car's delivery drifts more than ``REPLAN_DRIFT_KWH`` from its plan (rounding, a
  taper, a full battery), and when a car starts giving back. A car past its stated energy
  that still charges is planned for half of what the statement's noise could hide. It does
  not know the batteries: a taper shows as a car that takes less than offered, and it is
  then planned at what it takes.

  What the MPC loses to the offline optimum is mostly foresight, and it shows where single-
  and three-phase cars mix (with either kind alone it is within 0.3 % of the optimum on the
  first three Caltech days; mixed, 3-4 % at 10 kW): a three-phase car uses every phase, but
  a single-phase car on a full phase holds it back, and the LP, which sees only the cars
  present, thinks it can wait for capacity that later arrivals will in fact take. Tried and
  measured on the first ten days, none worth its cost: re-planning every slot (worse: the
  plan's first slot spreads capacity evenly), planning against departures 15-30 minutes
  early (worse), valuing energy now over energy later (``lp.solve``'s ``discount_per_hour``:
  better at 10 kW, worse from 20 kW, and no congestion measure we tried told the two
  apart), and expecting the arrivals of an average past day as virtual cars
  (``forecast=True``, :class:`ArrivalForecast`: +0.2-0.3 % for four times the solve time, so
  off by default). Knowing the real arrivals an hour ahead would be worth about 1 %.
- ``offline``: the truth known in advance: one LP over the whole period with every session's
  true window and energy and its battery's exact taper (lp's ``taper_kwh``), made into pilots
  by the same rounding with error feedback and the same dispatch (what is left goes to the car
  of least true laxity). Its LP value, with continuous currents and no minimum, is an upper
  bound on what any scheduler can deliver (``lp_bound_kwh``); the rounded optimum is a
  schedule the site could really run, and the reference the MPC is measured against.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from load_manager import lp
from load_manager.allocation import Grid, Load, Rule
from load_manager.dispatch import (
    MIN_A,
    STEP_A,
    Dispatch,
    Observation,
    Wiring,
    connector_load,
    counted_limit,
    dispatch,
    refused_pilot,
)
from load_manager.mpc import (
    OVERSTAY_S,
    REPLAN_DRIFT_KWH,
    WINDOW_WEIGHT,
    Car,
    Mpc,
    need_kwh,
    site_problem,
)
from load_manager.simulation import SLOT_MINUTES, Session, SessionSet

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

VOLTAGE_V = 230.0  # phase to neutral of a 400 V three-phase supply
SLOT_HOURS = SLOT_MINUTES / 60
SLOT_SECONDS = SLOT_MINUTES * 60.0
STATION_MAX_A = 32.0
ROTATIONS = ("RST", "STR", "TRS")
TAPER_SOC = 0.8
# (name, share, phases, A per phase, battery kWh range)
CAR_TYPES: tuple[tuple[str, float, int, float, tuple[float, float]], ...] = (
    ("three_phase_16a", 0.60, 3, 16.0, (40.0, 90.0)),
    ("single_phase_32a", 0.25, 1, 32.0, (40.0, 90.0)),
    ("single_phase_16a", 0.15, 1, 16.0, (10.0, 25.0)),
)
ARRIVAL_SOC = (0.10, 0.50)
DEPARTURE_NOISE_MINUTES = 30
ENERGY_NOISE = 0.20
# A session counts as fully served when it is short by no more than this (kWh).
SERVED_TOLERANCE_KWH = 0.01
# Current over a limit by less than this (A) is below any meter's resolution (a car that
# finishes within a slot and is then counted as drawing nothing may still draw a trace of
# current on average over it; see dispatch.IDLE_A), not a violation.
LIMIT_TOLERANCE_A = 1e-3
# MPC: how long a car still there at its stated departure is taken to stay (slots); the
# drift that makes a re-plan and the LP's window weight are the MPC's own (load_manager.mpc).
OVERSTAY_SLOTS = round(OVERSTAY_S / (SLOT_MINUTES * 60))
# MPC: arrivals to expect, learnt from the site's own history (see ArrivalForecast).
SLOTS_PER_DAY = 24 * 60 // SLOT_MINUTES
FORECAST_DAYS = 14  # how far back the history reaches
FORECAST_HORIZON_SLOTS = 12 * 60 // SLOT_MINUTES  # how far ahead arrivals are expected
FORECAST_BIN_SLOTS = 30 // SLOT_MINUTES  # expected arrivals are grouped per half hour
# Stay lengths (slots) that split expected arrivals of one half hour into groups.
FORECAST_STAYS = (24, 60, 120)


class Algorithm(StrEnum):
    uncontrolled = "uncontrolled"
    equal_share = "equal_share"
    least_laxity = "least_laxity"
    earliest_deadline = "earliest_deadline"
    mpc = "mpc"
    offline = "offline"


def phase_limit_a(capacity_kw: float) -> float:
    """The site's limit per phase, whole amperes, from its kW (400 V three-phase)."""
    return float(math.floor(capacity_kw * 1000 / (3 * VOLTAGE_V) + 1e-9))


@dataclass(frozen=True)
class Fleet:
    """The sessions as cars on the site: wiring, car, battery and what drivers said.

    Arrays are indexed like ``sessions.sessions``; slots are the session set's."""

    sessions: SessionSet
    seed: int
    wiring: dict[str, Wiring]
    kind: tuple[str, ...]
    phases: tuple[tuple[int, ...], ...]  # site phases the car draws on
    max_a: FloatArray  # per phase
    battery_kwh: FloatArray
    arrival_soc: FloatArray
    arrival: IntArray
    departure: IntArray  # true, exclusive
    energy_kwh: FloatArray  # true
    stated_departure: IntArray
    stated_kwh: FloatArray
    unservable: int  # sessions no car could take in full in their stay
    n_phases: IntArray = field(init=False)
    kw_per_a: FloatArray = field(init=False)  # kW one ampere per phase is

    def __post_init__(self) -> None:
        n = np.array([len(p) for p in self.phases], dtype=np.int64)
        object.__setattr__(self, "n_phases", n)
        object.__setattr__(self, "kw_per_a", VOLTAGE_V * n / 1000.0)

    def __len__(self) -> int:
        return len(self.kind)

    def acceptance_a(self, ids: IntArray, delivered_kwh: FloatArray) -> FloatArray:
        """What each car takes this slot at most (A per phase): its maximum, the taper above
        80 % state of charge, and no more than the session's energy."""
        soc = self.arrival_soc[ids] + delivered_kwh / self.battery_kwh[ids]
        taper = self.max_a[ids] * np.clip((1.0 - soc) / (1.0 - TAPER_SOC), 0.0, 1.0)
        need = np.maximum(self.energy_kwh[ids] - delivered_kwh, 0.0)
        by_need = need / (SLOT_HOURS * self.kw_per_a[ids])
        amps = np.minimum(np.minimum(self.max_a[ids], taper), by_need)
        return np.where(amps < 1e-9, 0.0, amps)  # float dust of a full battery

    def taper_kwh(self, i: int) -> tuple[float, float]:
        """(kWh from arrival to where the taper starts, kWh to full): lp's ``taper_kwh``."""
        c, s = float(self.battery_kwh[i]), float(self.arrival_soc[i])
        return max(0.0, (TAPER_SOC - s) * c), (1.0 - s) * c


def station_wiring(stations: Sequence[str], single_phase_share: float = 0.0
                   ) -> dict[str, Wiring]:
    """Stations in order get the rotations RST, STR, TRS in turn; every ``1/share``-th one is
    single-phase (none by default)."""
    every = round(1 / single_phase_share) if single_phase_share > 0 else 0
    out = {}
    for k, station in enumerate(sorted(stations)):
        single = every > 0 and k % every == every - 1
        out[station] = Wiring(phases=1 if single else 3, rotation=ROTATIONS[k % 3],
                              max_current_a=STATION_MAX_A, min_current_a=MIN_A)
    return out


def _full_rate_delivery(max_a: FloatArray, kw_per_a: FloatArray, battery: FloatArray,
                        soc: FloatArray, energy: FloatArray, slots: IntArray) -> FloatArray:
    """What each car takes charging flat out from arrival for ``slots`` slots (vectorised)."""
    delivered = np.zeros(len(max_a))
    for t in range(int(slots.max(initial=0))):
        here = slots > t
        if not here.any():
            break
        s = soc + delivered / battery
        amps = np.minimum(max_a * np.clip((1 - s) / (1 - TAPER_SOC), 0, 1),
                          np.maximum(energy - delivered, 0) / (SLOT_HOURS * kw_per_a))
        delivered += np.where(here, amps * kw_per_a * SLOT_HOURS, 0.0)
    return delivered


def build_fleet(sessions: SessionSet, seed: int = 0, *, single_phase_share: float = 0.0
                ) -> Fleet:
    """Cars, batteries and stated departures and energies for the sessions (see the module
    docstring); the same seed gives the same fleet."""
    ss = sessions.sessions
    rng = np.random.default_rng(seed)
    wiring = station_wiring(sessions.stations(), single_phase_share)
    n = len(ss)
    arrival = np.array([s.arrival_slot for s in ss], dtype=np.int64)
    departure = np.array([s.departure_slot for s in ss], dtype=np.int64)
    energy = np.array([s.requested_kwh for s in ss], dtype=np.float64)
    stay_h = (departure - arrival) * SLOT_HOURS

    shares = np.array([t[1] for t in CAR_TYPES])
    kinds = rng.choice(len(CAR_TYPES), size=n, p=shares / shares.sum())
    battery = np.empty(n)
    for k, (_, _, _, _, (lo, hi)) in enumerate(CAR_TYPES):
        battery[kinds == k] = rng.uniform(lo, hi, size=int((kinds == k).sum()))
    soc = rng.uniform(*ARRIVAL_SOC, size=n)
    departure_noise = rng.integers(-DEPARTURE_NOISE_MINUTES // SLOT_MINUTES,
                                   DEPARTURE_NOISE_MINUTES // SLOT_MINUTES + 1, size=n)
    energy_noise = rng.uniform(1 - ENERGY_NOISE, 1 + ENERGY_NOISE, size=n)

    def car(i: int, k: int) -> tuple[tuple[int, ...], float]:
        station = wiring[ss[i].station_id]
        phases = station.site_phases(CAR_TYPES[k][2])
        return phases, min(CAR_TYPES[k][3], station.max_current_a)

    fastest = max(range(len(CAR_TYPES)), key=lambda k: CAR_TYPES[k][2] * CAR_TYPES[k][3])
    phases: list[tuple[int, ...]] = []
    max_a = np.empty(n)
    for i in range(n):
        k = int(kinds[i])
        ph, amps = car(i, k)
        if amps * VOLTAGE_V * len(ph) / 1000 * stay_h[i] < energy[i] and k != fastest:
            k = fastest
            kinds[i] = k
            ph, amps = car(i, k)
            lo, hi = CAR_TYPES[k][4]
            battery[i] = max(battery[i], lo)
        phases.append(ph)
        max_a[i] = amps
    kw_per_a = VOLTAGE_V * np.array([len(p) for p in phases]) / 1000
    # Room to take the energy at all: the battery must hold it above the arrival charge.
    battery = np.maximum(battery, energy / (0.98 - soc))
    battery = _fit_batteries(max_a, kw_per_a, battery, soc, energy, departure - arrival)
    flat_out = max_a * kw_per_a * stay_h
    unservable = int((flat_out < energy - 1e-9).sum())

    stated_departure = np.maximum(departure + departure_noise, arrival + 1)
    return Fleet(
        sessions=sessions, seed=seed, wiring=wiring,
        kind=tuple(CAR_TYPES[int(k)][0] for k in kinds), phases=tuple(phases), max_a=max_a,
        battery_kwh=battery, arrival_soc=soc, arrival=arrival, departure=departure,
        energy_kwh=energy, stated_departure=stated_departure.astype(np.int64),
        stated_kwh=energy * energy_noise, unservable=unservable,
    )


def _fit_batteries(max_a: FloatArray, kw_per_a: FloatArray, battery: FloatArray,
                   soc: FloatArray, energy: FloatArray, slots: IntArray) -> FloatArray:
    """The smallest battery, at least the drawn one, with which each car charging flat out
    takes its energy in its stay (a larger battery tapers later). Bisection, vectorised."""
    def fits(c: FloatArray, which: NDArray[np.bool_]) -> NDArray[np.bool_]:
        out = np.ones(len(c), dtype=bool)
        if which.any():
            got = _full_rate_delivery(max_a[which], kw_per_a[which], c[which], soc[which],
                                      energy[which], slots[which])
            out[which] = got >= energy[which] * (1 - 1e-9) - 1e-12
        return out

    ok = fits(battery, np.ones(len(battery), dtype=bool))
    lo = battery.copy()
    hi = battery.copy()
    grow = ~ok
    for _ in range(12):  # up to 4096 times: beyond that the stay is too short at any size
        if not grow.any():
            break
        hi = np.where(grow, hi * 2, hi)
        grow = grow & ~fits(hi, grow)
    hopeless = grow
    todo = ~ok & ~hopeless
    for _ in range(30):
        if not todo.any():
            break
        mid = (lo + hi) / 2
        good = fits(mid, todo)
        hi = np.where(todo & good, mid, hi)
        lo = np.where(todo & ~good, mid, lo)
    # No battery makes it fit (the car is too slow for the stay): it keeps the drawn size.
    return np.where(ok | hopeless, battery, hi)


# --------------------------------------------------------------------------- forecasting


class ArrivalForecast:
    """Arrivals to expect, learnt from the sessions the site has seen so far.

    An operator has its own history. For the next ``FORECAST_HORIZON_SLOTS``, every car that
    arrived on one of the last ``FORECAST_DAYS`` days of the same kind (weekday or weekend) is
    expected again at the same time of day, weighted by one over the number of such days:
    the average day. Expected cars are summed per half hour of arrival, phases and length of
    stay (as their drivers stated it) into fractional virtual cars (energy and power times
    their weight) that the MPC's LP plans beside the real ones, so that capacity it gives a
    car now is weighed against what later arrivals will probably want (certainty-equivalent
    MPC). Only what drivers stated is used, never the truth.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.seen: list[int] = []
        first = fleet.sessions.slot0_local.date()
        last_day = int(fleet.departure.max()) // SLOTS_PER_DAY + 2
        self.weekend = np.array([(first.toordinal() + d) % 7 in (5, 6)  # Sat = 5, Sun = 6
                                 for d in range(last_day + 1)])
        self.first_day = int(fleet.arrival.min()) // SLOTS_PER_DAY

    def observe(self, i: int) -> None:
        self.seen.append(i)

    def vehicles(self, slot: int, horizon: int = FORECAST_HORIZON_SLOTS) -> list[lp.Vehicle]:
        """Virtual cars (keys ``("forecast", n)``) arriving within ``horizon`` after ``slot``,
        their slots counted from ``slot``."""
        f = self.fleet
        today = slot // SLOTS_PER_DAY
        groups: dict[tuple[int, tuple[int, ...], int], list[float]] = {}
        for target_day in range(today, (slot + horizon) // SLOTS_PER_DAY + 1):
            kind = self.weekend[min(target_day, len(self.weekend) - 1)]
            days = [d for d in range(max(self.first_day, target_day - FORECAST_DAYS), today)
                    if self.weekend[d] == kind]
            if not days:
                continue
            weight = 1.0 / len(days)
            chosen = set(days)
            for j in self.seen:
                arrival = int(f.arrival[j])
                if arrival // SLOTS_PER_DAY not in chosen:
                    continue
                at = target_day * SLOTS_PER_DAY + arrival % SLOTS_PER_DAY
                if not slot < at <= slot + horizon:
                    continue
                stay = int(f.stated_departure[j]) - arrival
                key = (at - at % FORECAST_BIN_SLOTS, f.phases[j],
                       int(np.searchsorted(FORECAST_STAYS, stay)))
                acc = groups.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                acc[0] += weight * float(f.stated_kwh[j])
                acc[1] += weight * float(f.max_a[j] * f.kw_per_a[j])
                acc[2] += weight * stay
                acc[3] += weight
        out = []
        for n, ((at, phases, _), (kwh, kw, stays, weights)) in enumerate(sorted(groups.items())):
            begin = max(1, at - slot)
            length = max(1, round(stays / weights))  # the group's mean stay
            out.append(lp.Vehicle(("forecast", n), begin, begin + length, kwh, kw, phases))
        return out


# --------------------------------------------------------------------------- schedulers

Decide = Callable[[int, IntArray, Mapping[Hashable, Observation], bool], dict[int, float]]


@dataclass
class _Run:
    """What a scheduler may look at: the fleet, the site and what was delivered so far."""

    fleet: Fleet
    grid: Grid
    delivered: FloatArray
    replans: list[float] = field(default_factory=list)
    lp_bound_kwh: float | None = None

    def load(self, i: int, slot: int, *, truth: bool = False) -> Load:
        f = self.fleet
        if truth:
            departure, energy = f.departure[i], f.energy_kwh[i]
        else:
            departure, energy = f.stated_departure[i], f.stated_kwh[i]
        return connector_load(int(i), f.wiring[f.sessions.sessions[i].station_id],
                              car_phases=int(f.n_phases[i]), car_max_a=float(f.max_a[i]),
                              since=float(f.arrival[i]) * SLOT_SECONDS,
                              departure=float(departure) * SLOT_SECONDS,
                              energy_needed_wh=max(0.0, float(energy - self.delivered[i]))
                              * 1000)


def _rule_scheduler(run: _Run, rule: Rule) -> Decide:
    def decide(slot: int, ids: IntArray, observed: Mapping[Hashable, Observation],
               again: bool) -> dict[int, float]:
        loads = [run.load(int(i), slot) for i in ids]
        result = dispatch(run.grid, loads, rule, now=slot * SLOT_SECONDS, step_a=STEP_A,
                          observed=observed)
        return result.pilots  # type: ignore[return-value]
    return decide


def _uncontrolled(run: _Run) -> Decide:
    def decide(slot: int, ids: IntArray, observed: Mapping[Hashable, Observation],
               again: bool) -> dict[int, float]:
        return {int(i): float(run.fleet.max_a[i]) for i in ids}
    return decide


class _Planner:
    """The MPC (stated figures, re-planned) or the offline optimum (truth, planned once):
    :class:`load_manager.mpc.Mpc`, the real-time controller's own, over the present cars."""

    def __init__(self, run: _Run, *, offline: bool, replan_drift_kwh: float,
                 overstay_slots: int, delay_cost: float, window_weight: float = WINDOW_WEIGHT,
                 extra_need: str = "mid", forecast: bool = False, exact: bool = True) -> None:
        self.run = run
        self.forecast = ArrivalForecast(run.fleet) if forecast and not offline else None
        self.offline = offline
        self.extra_need = extra_need
        self.mpc = Mpc(slot_s=SLOT_SECONDS, replan_drift_kwh=replan_drift_kwh,
                       overstay_s=overstay_slots * SLOT_SECONDS, window_weight=window_weight,
                       delay_cost=delay_cost, exact=exact, replans=run.replans)

    def plan_offline(self, start: int, end: int) -> None:
        f = self.run.fleet
        t0 = time.perf_counter()
        vehicles = [
            lp.Vehicle(int(i), int(f.arrival[i] - start), int(f.departure[i] - start),
                       float(f.energy_kwh[i]), float(f.max_a[i] * f.kw_per_a[i]), f.phases[i],
                       taper_kwh=f.taper_kwh(int(i)))
            for i in range(len(f))
        ]
        plan = lp.solve(site_problem(self.run.grid, vehicles, SLOT_MINUTES),
                        minimise_cost=False)
        self.run.replans.append(time.perf_counter() - t0)
        self.run.lp_bound_kwh = plan.total_energy_kwh
        self.mpc.adopt(plan, start * SLOT_SECONDS, base={})

    def need(self, i: int) -> float:
        """What car ``i`` still needs, as far as the scheduler can tell (kWh)."""
        f = self.run.fleet
        return need_kwh(float(f.stated_kwh[i]), float(self.run.delivered[i]),
                        noise=ENERGY_NOISE, extra=self.extra_need)

    def cars(self, slot: int, ids: IntArray) -> list[Car]:
        f, run = self.run.fleet, self.run
        out = []
        for i in (int(i) for i in ids):
            if self.offline:
                departure, need = float(f.departure[i]), 0.0  # never re-planned
            else:
                departure, need = float(f.stated_departure[i]), self.need(i)
            out.append(Car(run.load(i, slot, truth=self.offline), need,
                           departure * SLOT_SECONDS, float(run.delivered[i])))
        return out

    def __call__(self, slot: int, ids: IntArray, observed: Mapping[Hashable, Observation],
                 again: bool) -> dict[int, float]:
        forecast = self.forecast
        if forecast is not None and not again:
            for i in ids:
                if int(self.run.fleet.arrival[i]) == slot:
                    forecast.observe(int(i))
        extra = None if forecast is None else (lambda: forecast.vehicles(slot))
        result = self.mpc.decide(self.run.grid, self.cars(slot, ids), slot * SLOT_SECONDS,
                                 observed, again=again, replan=not self.offline, extra=extra)
        return result.pilots  # type: ignore[return-value]


# --------------------------------------------------------------------------- one re-plan


def replan(grid: Grid, loads: Sequence[Load], vehicles: Sequence[lp.Vehicle], *,
           slot_minutes: float, now: float, observed: Mapping[Hashable, Observation],
           window_weight: float = WINDOW_WEIGHT, exact: bool = True
           ) -> tuple[lp.Plan, Dispatch]:
    """What the MPC does on an event, timed by the bench: :meth:`Mpc.decide` from a fresh
    state (a re-plan: the LP over every car's need, then this slot's pilots). ``loads`` and
    ``vehicles`` share keys (a vehicle's window and need are the car's; its power is the
    load's); a load without a vehicle needs nothing and is only filled."""
    by_key = {v.key: v for v in vehicles}
    slot_s = slot_minutes * 60
    cars = [Car(load, by_key[load.key].energy_kwh if load.key in by_key else 0.0,
                now + (by_key[load.key].departure_slot if load.key in by_key else 1) * slot_s)
            for load in loads]
    mpc = Mpc(slot_s=slot_s, window_weight=window_weight, exact=exact)
    result = mpc.decide(grid, cars, now, observed)
    assert mpc.plan is not None
    return mpc.plan, result


def synthetic_site(vehicles: int = 500, *, seed: int = 0, slot_minutes: int = 15,
                   slots: int = 96, share: float = 0.3
                   ) -> tuple[Grid, list[Load], list[lp.Vehicle], dict[Hashable, Observation]]:
    """A three-phase site of ``vehicles`` plugged-in cars of the fleet's mix, each on its own
    rotated 32 A connector, 5-40 kWh still to go by a departure 2-30 hours out (cut at the
    horizon of ``slots``), with a limit per phase of ``share`` of what the cars could draw
    on it (whole amperes); one car in ten is tapering (seen drawing less than offered)."""
    rng = np.random.default_rng(seed)
    shares = np.array([t[1] for t in CAR_TYPES])
    kinds = rng.choice(len(CAR_TYPES), size=vehicles, p=shares / shares.sum())
    per_hour = 60 / slot_minutes
    loads: list[Load] = []
    cars: list[lp.Vehicle] = []
    observed: dict[Hashable, Observation] = {}
    demand = np.zeros(3)
    for i in range(vehicles):
        _, _, n, amps, _ = CAR_TYPES[int(kinds[i])]
        wiring = Wiring(3, ROTATIONS[i % 3], STATION_MAX_A, MIN_A)
        phases = wiring.site_phases(n)
        key = f"EV{i:03d}"
        departure = int(rng.integers(int(2 * per_hour), int(30 * per_hour) + 1))
        kwh = float(rng.uniform(5, 40))
        loads.append(connector_load(key, wiring, car_phases=n, car_max_a=amps,
                                    since=-float(rng.uniform(0, 8 * 3600)),
                                    departure=departure * slot_minutes * 60.0,
                                    energy_needed_wh=kwh * 1000))
        cars.append(lp.Vehicle(key, 0, min(departure, slots), kwh,
                               amps * VOLTAGE_V * n / 1000, phases))
        if i % 10 == 9:
            observed[key] = Observation(offered_a=amps, drawn_a=float(rng.uniform(2, amps - 3)))
        demand[list(phases)] += amps
    limit = float(np.floor(share * demand.min()))
    grid = Grid(phase_limit_a=(limit, limit, limit), power_limit_w=None, voltage_v=VOLTAGE_V)
    return grid, loads, cars, observed


# --------------------------------------------------------------------------- the simulation


@dataclass
class Result:
    algorithm: Algorithm
    fleet: Fleet
    capacity_kw: float
    limit_a: float
    delivered_kwh: FloatArray  # per session
    phase_a: FloatArray  # 3 x slots: current drawn on each phase
    decision_s: list[float]  # each slot's decision (both passes, any LP solved in it)
    replan_s: list[float]  # each LP solve
    second_passes: int
    lp_bound_kwh: float | None

    def metrics(self) -> dict[str, Any]:
        requested = self.fleet.energy_kwh
        shortfall = requested - self.delivered_kwh
        over = (self.phase_a > self.limit_a + LIMIT_TOLERANCE_A).any(axis=0)
        mean = self.phase_a.mean(axis=0)
        spread = self.phase_a.max(axis=0) - self.phase_a.min(axis=0)
        deviation = np.abs(self.phase_a - mean).max(axis=0)
        ms = [s * 1000 for s in self.decision_s]
        out: dict[str, Any] = {
            "requested_kwh": round(float(requested.sum()), 3),
            "delivered_kwh": round(float(self.delivered_kwh.sum()), 3),
            "energy_pct": round(100 * float(self.delivered_kwh.sum() / requested.sum()), 3),
            "fully_served_pct": round(
                100 * float(np.mean(shortfall <= SERVED_TOLERANCE_KWH)), 2),
            "peak_phase_a": [round(float(v), 2) for v in self.phase_a.max(axis=1, initial=0)],
            # Unbalance: the largest deviation of a phase from the mean of the three, summed
            # over the slots, over the summed mean (NEMA's definition, weighted by load).
            "unbalance_pct": round(100 * float(deviation.sum() / mean.sum()), 2)
            if mean.sum() > 0 else 0.0,
            "max_phase_spread_a": round(float(spread.max(initial=0)), 2),
            "slots_over_limit": int(over.sum()),
            "decisions": len(ms),
            "decision_p50_ms": _pct(ms, 50),
            "decision_p95_ms": _pct(ms, 95),
            "second_passes": self.second_passes,
        }
        if self.replan_s:
            solves = [s * 1000 for s in self.replan_s]
            out.update(lp_solves=len(solves), lp_p50_ms=_pct(solves, 50),
                       lp_p95_ms=_pct(solves, 95))
        if self.lp_bound_kwh is not None:
            out["lp_bound_kwh"] = round(self.lp_bound_kwh, 3)
            out["lp_bound_pct"] = round(100 * self.lp_bound_kwh / float(requested.sum()), 3)
        return out


def _pct(values: Sequence[float], p: int) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, p)), 3)


def simulate(fleet: Fleet, capacity_kw: float, algorithm: Algorithm, *,
             replan_drift_kwh: float = REPLAN_DRIFT_KWH, overstay_slots: int = OVERSTAY_SLOTS,
             delay_cost: float = 0.0, window_weight: float = WINDOW_WEIGHT,
             extra_need: str = "mid", forecast: bool = False, exact: bool = True) -> Result:
    """Run one scheduler over the fleet's sessions at one site capacity.

    The options tune the MPC (the offline optimum takes only ``exact``): ``replan_drift_kwh``
    and ``overstay_slots`` (see the module docstring), ``delay_cost`` and ``window_weight``
    (lp.solve's), ``extra_need`` (what a car past its stated energy that still charges is
    planned for: ``"mid"``, half of the most the statement's noise could hide, ``"max"`` all
    of it, ``"none"`` nothing more), ``forecast`` (:class:`ArrivalForecast`) and ``exact``
    (the MILP check of each slot's pilots, :func:`load_manager.dispatch.dispatch`)."""
    if not len(fleet):
        raise ValueError("no sessions")
    limit = phase_limit_a(capacity_kw)
    grid = Grid(phase_limit_a=(limit, limit, limit), power_limit_w=None, voltage_v=VOLTAGE_V)
    start, end = int(fleet.arrival.min()), int(fleet.departure.max())
    delivered = np.zeros(len(fleet))
    run = _Run(fleet, grid, delivered)
    decide: Decide
    if algorithm is Algorithm.uncontrolled:
        decide = _uncontrolled(run)
    elif algorithm in (Algorithm.mpc, Algorithm.offline):
        planner = _Planner(run, offline=algorithm is Algorithm.offline,
                           replan_drift_kwh=replan_drift_kwh, overstay_slots=overstay_slots,
                           delay_cost=delay_cost, window_weight=window_weight,
                           extra_need=extra_need, forecast=forecast, exact=exact)
        if algorithm is Algorithm.offline:
            planner.plan_offline(start, end)
        decide = planner
    else:
        decide = _rule_scheduler(run, Rule(algorithm.value))

    arrivals: dict[int, list[int]] = defaultdict(list)
    departures: dict[int, list[int]] = defaultdict(list)
    for i in range(len(fleet)):
        arrivals[int(fleet.arrival[i])].append(i)
        departures[int(fleet.departure[i])].append(i)
    phase_a = np.zeros((3, end - start))
    incidence = np.zeros((len(fleet), 3))
    for i, phases in enumerate(fleet.phases):
        incidence[i, list(phases)] = 1.0
    offered = np.zeros(len(fleet))
    drawn = np.zeros(len(fleet))
    # Per car: the latest draw under each pilot, and when (s): what it refused, as the
    # controller's meter watch keeps it (dispatch.refused_pilot).
    under: dict[int, dict[float, tuple[float, float]]] = defaultdict(dict)

    def observation(i: int, pilot: float, draw: float, at: float, now: float) -> Observation:
        seen = under[i]
        seen[pilot] = (draw, at)
        refused = refused_pilot(((p, d, at) for p, (d, at) in seen.items()),
                                offered_a=pilot, now=now)
        return Observation(pilot, draw, refused)

    decisions: list[float] = []
    second_passes = 0
    present: set[int] = set()
    for slot in range(start, end):
        for i in departures.get(slot, ()):
            present.discard(i)
        present.update(arrivals.get(slot, ()))
        if not present:
            continue
        ids = np.array(sorted(present), dtype=np.int64)
        now = slot * SLOT_SECONDS
        before = {int(i): observation(int(i), float(offered[i]), float(drawn[i]),
                                      now - SLOT_SECONDS, now)
                  for i in ids if offered[i] > 0}
        accepts = fleet.acceptance_a(ids, delivered[ids])
        t0 = time.perf_counter()
        pilots = _checked(decide(slot, ids, before, False), ids, fleet)
        draw = np.minimum(pilots, accepts)
        # Meter values within the slot: a car newly taking clearly less than its pilot gives
        # the rest back, and the slot is decided again.
        seen = {int(i): observation(int(i), float(p), float(d), now, now)
                for i, p, d in zip(ids, pilots, draw, strict=True) if p > 0}
        if any(counted_limit(obs, min_a=MIN_A) is not None
               and counted_limit(before.get(i), min_a=MIN_A) is None
               for i, obs in seen.items()) and algorithm is not Algorithm.uncontrolled:
            second_passes += 1
            pilots = _checked(decide(slot, ids, seen, True), ids, fleet)
            draw = np.minimum(pilots, accepts)
        decisions.append(time.perf_counter() - t0)
        delivered[ids] += draw * fleet.kw_per_a[ids] * SLOT_HOURS
        phase_a[:, slot - start] = draw @ incidence[ids]
        offered[ids], drawn[ids] = pilots, draw
    return Result(algorithm, fleet, capacity_kw, limit, delivered, phase_a, decisions,
                  run.replans, second_passes, run.lp_bound_kwh)


def _checked(pilots: dict[int, float], ids: IntArray, fleet: Fleet) -> FloatArray:
    """The pilots as an array, refusing any a pilot signal cannot give."""
    out = np.array([pilots.get(int(i), 0.0) for i in ids], dtype=np.float64)
    bad = (out != 0) & ((out < MIN_A) | (out > fleet.max_a[ids]) | (out != np.round(out)))
    if bad.any():
        i = int(ids[np.argmax(bad)])
        raise AssertionError(f"car {i}: pilot {out[np.argmax(bad)]} A is not 0 or whole"
                             f" amperes in [{MIN_A}, {fleet.max_a[i]}]")
    return out


def run_all(fleet: Fleet, capacity_kw: float,
            algorithms: Sequence[Algorithm] = tuple(Algorithm), **options: Any
            ) -> dict[str, dict[str, Any]]:
    """Every scheduler at one capacity: their metrics, and the MPC's share of the offline
    optimum's energy (and of the LP bound)."""
    out: dict[str, dict[str, Any]] = {}
    for algorithm in algorithms:
        out[algorithm.value] = simulate(fleet, capacity_kw, algorithm, **options).metrics()
    if "mpc" in out and "offline" in out:
        offline = out["offline"]
        if offline["delivered_kwh"] > 0:
            out["mpc"]["energy_vs_offline_pct"] = round(
                100 * out["mpc"]["delivered_kwh"] / offline["delivered_kwh"], 3)
        if offline.get("lp_bound_kwh"):
            out["mpc"]["energy_vs_lp_bound_pct"] = round(
                100 * out["mpc"]["delivered_kwh"] / offline["lp_bound_kwh"], 3)
    return out


def session_of(fleet: Fleet, i: int) -> Session:
    return fleet.sessions.sessions[i]
