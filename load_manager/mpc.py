"""The online MPC: one site's LP over every present car, re-planned when the site's state
departs from it, its current slot made into whole-ampere pilots. One implementation, run
by both the realistic scheduling bench (:mod:`load_manager.realistic`, the ``mpc`` and
``offline`` schedulers) and the real-time controller (:mod:`load_manager.controller`, sites
with the ``mpc`` policy), so that what the bench measures is what stations get.

A decision (:meth:`Mpc.decide`) takes the site's :class:`~load_manager.allocation.Grid`, every
present car as a :class:`Car` (its load from :func:`load_manager.dispatch.connector_load`, what
it still needs and when it is taken to leave, as far as the caller knows, and what it has had),
and what meter values say each car draws (:class:`~load_manager.dispatch.Observation`):

1. *Re-plan* (:meth:`Mpc.replan`) when a car arrived or left, a car is still there at the
   departure it was planned with (it is then taken to stay ``overstay_s`` more), a car's
   delivery drifted ``replan_drift_kwh`` from its plan (rounding, a taper, a full battery), a
   car started taking less than offered (a taper: it is then planned at what it takes), or
   the cars with a fixed target (below) changed: :func:`lp.solve` over every car's need and
   window under the phase (and kW) limits, the most energy first, then the earliest, each
   car's lateness also weighed against its own window (``window_weight``: the car leaving
   first is served first among equally good plans).
2. *Targets* for the plan's current slot by :func:`load_manager.dispatch.plan_current` with
   error feedback (a car behind its plan gets more in the next slots, one ahead less: a plan
   of 2 A is 6 A a third of the time), decided once per slot: decisions within a slot (meter
   values, give-back) keep them, so pilots do not move with every reading.
3. *Pilots* by :func:`load_manager.dispatch.dispatch`: targets first in least-laxity order,
   what is left to whoever can take it (least laxity first), the give-back rule, and the
   exact packing (a small MILP) where the 6 A minimums collide.

A car may come with a *fixed target* (``Car.fixed_a``): the controller's charge plans, whose
cost-minimising schedule is decided by :mod:`load_manager.planning`. Such a car is not in the
MPC's LP: its schedule is taken off the site's capacity (``reserved_kw``) and the MPC plans the
other cars around it; its pilot is its plan's, a ceiling, not filled (a plan that waits for
cheap hours is not filled with dear ones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from load_manager import lp
from load_manager.allocation import Grid, Load, Rule
from load_manager.dispatch import (
    STEP_A,
    Dispatch,
    Observation,
    counted_limit,
    dispatch,
    plan_current,
)

FloatArray = NDArray[np.float64]

# How far a car's delivery may drift from its plan before the plan is made again (kWh).
REPLAN_DRIFT_KWH = 0.5
# How long a car still there at the departure it was planned with is taken to stay (s).
OVERSTAY_S = 15 * 60.0
# The weight of each car's own window in the LP's earliness tie-break (lp.solve).
WINDOW_WEIGHT = 1.0
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Car:
    """One present car as the MPC sees it.

    ``need_kwh`` and ``departure_s`` are what the caller knows (a driver's statement, a
    plan, an estimate); ``delivered_kwh`` what it has had so far (error feedback and drift);
    ``fixed_a`` a target decided elsewhere (a charge plan), None for the MPC to plan."""

    load: Load
    need_kwh: float
    departure_s: float
    delivered_kwh: float = 0.0
    fixed_a: float | None = None

    @property
    def key(self) -> Hashable:
        return self.load.key


def need_kwh(stated_kwh: float, delivered_kwh: float, *, noise: float,
             extra: str = "mid") -> float:
    """What a car still needs, as far as a statement off by up to ``noise`` (a share) can
    tell. Past its statement and still charging, the truth lies between what it has had and
    the most a statement this far off could hide: ``"mid"`` plans half of that, ``"max"``
    all of it, ``"none"`` nothing."""
    if delivered_kwh < stated_kwh or extra == "none":
        return stated_kwh - delivered_kwh
    most = stated_kwh / (1 - noise)
    rest = most - delivered_kwh if extra == "max" else (most - delivered_kwh) / 2
    return max(rest, 0.0)


def site_problem(grid: Grid, vehicles: Sequence[lp.Vehicle], slot_minutes: float, *,
                 reserved_kw: Sequence[Sequence[float]] | None = None) -> lp.Problem:
    """The LP of a site's phase (and kW) limits over the vehicles' windows, less the kW per
    phase and slot ``reserved_kw`` holds (L1, L2, L3 rows; beyond a row's end, nothing)."""
    slots = max((v.departure_slot for v in vehicles), default=1)
    phase_kw = []
    for k, limit in enumerate(grid.phase_limit_a):
        row = reserved_kw[k] if reserved_kw is not None else ()
        phase_kw.append([max(0.0, limit * grid.voltage_v / 1000
                             - (row[t] if t < len(row) else 0.0)) for t in range(slots)])
    total = [sum(row[t] for row in phase_kw) for t in range(slots)]
    if grid.power_limit_w is not None:
        kw = grid.power_limit_w / 1000
        for t in range(slots):
            taken = sum(row[t] if t < len(row) else 0.0 for row in reserved_kw or ())
            total[t] = min(total[t], max(0.0, kw - taken))
    return lp.Problem(slot_minutes, total, vehicles, None, phase_kw)


@dataclass
class Mpc:
    """The MPC's state between decisions: the plan, when it was made, and what for."""

    slot_s: float
    replan_drift_kwh: float = REPLAN_DRIFT_KWH
    overstay_s: float = OVERSTAY_S
    window_weight: float = WINDOW_WEIGHT
    delay_cost: float = 0.0
    exact: bool = True
    # Seconds each LP solve took (the bench reports them).
    replans: list[float] = field(default_factory=list)
    plan: lp.Plan | None = None
    first_s: float = 0.0  # when the plan's slot 0 starts
    row: dict[Hashable, int] = field(default_factory=dict)
    cum: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))  # kWh before each slot
    base: dict[Hashable, float] = field(default_factory=dict)  # delivered when planned
    planned_for: frozenset[Hashable] = frozenset()
    fixed: frozenset[tuple[Hashable, float]] = frozenset()
    until: dict[Hashable, float] = field(default_factory=dict)  # departure planned with
    capped: set[Hashable] = field(default_factory=set)  # planned at what they took
    _targets: tuple[int, dict[Hashable, float]] | None = None

    # -- planning

    def slot(self, now_s: float) -> int:
        """The plan's slot ``now_s`` falls in."""
        return math.floor((now_s - self.first_s) / self.slot_s + _EPS)

    def adopt(self, plan: lp.Plan, first_s: float, *, base: Mapping[Hashable, float],
              keys: set[Hashable] | None = None) -> None:
        """Follow ``plan`` from ``first_s``; ``base`` is what each car had then, ``keys`` the
        plan's rows that are cars (the others, expected arrivals, are not dispatched)."""
        self.plan, self.first_s = plan, first_s
        self.row = {k: j for j, k in enumerate(plan.keys) if keys is None or k in keys}
        dt = plan.slot_minutes / 60
        self.cum = np.concatenate([np.zeros((len(plan.keys), 1)),
                                   np.cumsum(plan.power_kw, axis=1) * dt], axis=1)
        self.base = dict(base)
        self._targets = None

    def needs_replan(self, now_s: float, cars: Sequence[Car],
                     observed: Mapping[Hashable, Observation]) -> bool:
        if self.plan is None or frozenset(c.key for c in cars) != self.planned_for:
            return True
        if _fixed(cars) != self.fixed:
            return True
        k = self.slot(now_s)
        for car in cars:
            key = car.key
            if key in self.until and now_s >= self.until[key] - _EPS:
                return True  # still here at the departure it was planned with
            if key not in self.capped and car.fixed_a is None and counted_limit(
                    observed.get(key), min_a=car.load.min_a) is not None:
                return True  # started taking less than offered
            j = self.row.get(key)
            if j is not None and k <= self.cum.shape[1] - 1:
                drift = self.cum[j, k] - (car.delivered_kwh - self.base.get(key, 0.0))
                if abs(drift) > self.replan_drift_kwh:
                    return True
        return False

    def replan(self, grid: Grid, cars: Sequence[Car], now_s: float,
               observed: Mapping[Hashable, Observation], *,
               extra: Callable[[], Sequence[lp.Vehicle]] | None = None,
               reserved_kw: Sequence[Sequence[float]] | None = None) -> lp.Plan:
        """Make the plan again from ``now_s``: every car without a fixed target that still
        needs energy and takes some, at most what it was last seen to take. ``extra`` gives
        more vehicles to plan beside them (the bench's expected arrivals)."""
        t0 = time.perf_counter()
        vehicles = []
        self.until, self.capped = {}, set()
        for car in cars:
            if car.fixed_a is not None:
                continue
            load = car.load
            cap = counted_limit(observed.get(car.key), min_a=load.min_a)
            if cap is not None:
                self.capped.add(car.key)
            if car.need_kwh <= 1e-6 or cap == 0.0:
                continue
            until = car.departure_s
            if until <= now_s + _EPS:
                until = now_s + self.overstay_s
            amps = load.max_a if cap is None else min(load.max_a, cap)
            self.until[car.key] = until
            slots = max(1, math.floor((until - now_s) / self.slot_s + _EPS))
            kw_per_a = grid.voltage_v * len(load.phases) / 1000
            vehicles.append(lp.Vehicle(car.key, 0, slots, car.need_kwh, amps * kw_per_a,
                                       load.phases))
        if extra is not None and vehicles:
            vehicles += extra()
        problem = site_problem(grid, vehicles, self.slot_s / 60, reserved_kw=reserved_kw)
        plan = lp.solve(problem, minimise_cost=False, delay_cost=self.delay_cost,
                        window_weight=self.window_weight)
        self.replans.append(time.perf_counter() - t0)
        self.planned_for = frozenset(c.key for c in cars)
        self.fixed = _fixed(cars)
        self.adopt(plan, now_s, base={c.key: c.delivered_kwh for c in cars},
                   keys={c.key for c in cars})
        return plan

    # -- deciding

    def targets(self, cars: Sequence[Car], now_s: float, *, voltage_v: float
                ) -> dict[Hashable, float]:
        """Each car's target (A per phase) for the plan's current slot, decided at the
        slot's first decision and kept for the rest of it."""
        k = self.slot(now_s)
        cached = self._targets[1] if self._targets is not None and self._targets[0] == k \
            else {}
        out: dict[Hashable, float] = {}
        slot_hours = self.slot_s / 3600
        for car in cars:
            key = car.key
            if car.fixed_a is not None:
                out[key] = car.fixed_a
                continue
            if key in cached:
                out[key] = cached[key]
                continue
            j = self.row.get(key)
            if self.plan is None or j is None or k >= self.plan.power_kw.shape[1] or k < 0:
                out[key] = 0.0
                continue
            behind = self.cum[j, k] - (car.delivered_kwh - self.base.get(key, 0.0))
            phases = len(car.load.phases)
            per_amp = voltage_v * phases / 1000 * slot_hours
            out[key] = plan_current(float(self.plan.power_kw[j, k]), phases=phases,
                                    voltage_v=voltage_v, min_a=car.load.min_a, step_a=STEP_A,
                                    carry_a=behind / per_amp)
        self._targets = (k, {**cached, **out})
        return out

    def decide(self, grid: Grid, cars: Sequence[Car], now_s: float,
               observed: Mapping[Hashable, Observation], *, again: bool = False,
               replan: bool = True,
               extra: Callable[[], Sequence[lp.Vehicle]] | None = None,
               reserved_kw: Sequence[Sequence[float]] | None = None) -> Dispatch:
        """The pilots for now: re-plan if the state departed from the plan (not on a second
        decision within a slot, ``again``, nor without ``replan``: the offline optimum),
        then the current slot's targets, dispatched."""
        if replan and not again and self.needs_replan(now_s, cars, observed):
            self.replan(grid, cars, now_s, observed, extra=extra, reserved_kw=reserved_kw)
        targets = self.targets(cars, now_s, voltage_v=grid.voltage_v)
        loads = [car.load if car.fixed_a is None
                 else replace(car.load, max_a=min(car.load.max_a, max(0.0, car.fixed_a)))
                 for car in cars]
        return dispatch(grid, loads, Rule.least_laxity, now=now_s, step_a=STEP_A,
                        observed=observed, targets=targets, target_policy=Rule.least_laxity,
                        fill=True, exact=self.exact)


def _fixed(cars: Sequence[Car]) -> frozenset[tuple[Hashable, float]]:
    return frozenset((c.key, c.fixed_a) for c in cars if c.fixed_a is not None)
