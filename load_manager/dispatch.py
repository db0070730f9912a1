"""From allocations to pilots: the one decision the real-time controller and the realistic
scheduling bench both make, so that what the bench measures is what stations get.

:func:`dispatch` takes a site's :class:`~load_manager.allocation.Grid` (the current left on
each phase), its charging connectors as :class:`~load_manager.allocation.Load` (built by
:func:`connector_load` from the station's wiring, phases and rotation, its maximum, and the
car's phases where meter values have shown them), and what meter values say each car draws
(:class:`Observation`), and returns every connector's pilot:

* 0 or from the minimum (IEC 61851: 6 A) to the connector's maximum, in whole ``step_a``
  (``STEP_A``, whole amperes, as pilot signals are set);
* within every phase limit, counting each car at what it can really draw;
* work-conserving: what the rounding of a plan or a minimum frees goes to others.

Give-back. A car seen drawing clearly less than its pilot (tapering, a smaller on-board
charger, full) gives the rest back to the others at the next decision: it is counted at what
it draws plus ``GIVE_BACK_MARGIN_A`` (:func:`counted_limit`). It is held there while it keeps
drawing less than that pilot, and offered more only once it draws (nearly) all of it: a car
cannot show that it would take more than it is offered, so a pilot above what it draws by
more than meters and cars normally differ (``UNDER_DRAW_A``) means it takes no more. The
margin is larger than that difference by at least a step, so a car capped on what it draws
stays capped instead of being offered more and less in turn.

A held car is not stuck there: a car that draws its pilot minus an ampere or two (many on-board
chargers keep such a margin, and meters differ) may still take much more. Capacity that no
other car can use (what is left once every other car has what it can take) is offered to
held cars above their pilot. One that shows it does not take the offer (it draws clearly
less under it, and so gives back) has *refused* that pilot (``Observation.refused_a``): it is
offered more again only above that pilot, or once ``REOFFER_S`` have passed, so a car that
really takes no more costs one pilot up and down per ``REOFFER_S``, not one per meter value.

The real-time controller (:mod:`load_manager.controller`) reads the observations from meter
values (:mod:`load_manager.meters`: Current.Import per phase, or Power.Active.Import) under
the pilot the station had accepted; the bench (:mod:`load_manager.realistic`) from its
simulated cars.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from load_manager.allocation import (
    _EPS,
    _PATTERN_COLUMNS,
    _PATTERN_WIDTH,
    Grid,
    Load,
    Policy,
    Rule,
    _check_grid,
    _laxities,
    _pattern_indices,
    _policy_order,
    _to_steps,
    allocate,
)

__all__ = [
    "MIN_A",
    "STEP_A",
    "Dispatch",
    "Observation",
    "Wiring",
    "connector_load",
    "counted_limit",
    "dispatch",
    "gives_back",
    "pack",
    "plan_current",
    "refused_pilot",
    "remaining_grid",
]

FloatArray = NDArray[np.float64]

# IEC 61851: the least current a pilot may offer, and pilots in whole amperes.
MIN_A = 6.0
STEP_A = 1.0
_PHASE_OF_LETTER = {"R": 0, "S": 1, "T": 2}


@dataclass(frozen=True, slots=True)
class Wiring:
    """How a connector is wired: 1 or 3 phases, OCPP rotation letters (R, S, T are the site's
    L1, L2, L3; the first is the site phase on the connector's L1), and its current limits."""

    phases: int = 3
    rotation: str = "RST"
    max_current_a: float = 16.0
    min_current_a: float = MIN_A

    def site_phases(self, used: int | None = None) -> tuple[int, ...]:
        """The site phases a car drawing on ``used`` of the connector's phases loads."""
        count = self.phases if used is None else max(1, min(used, self.phases))
        return tuple(_PHASE_OF_LETTER[letter] for letter in self.rotation[:count])


def connector_load(key: Hashable, wiring: Wiring, *, car_phases: int | None = None,
                   car_max_a: float | None = None, priority: int = 0, since: float = 0.0,
                   departure: float | None = None, energy_needed_wh: float | None = None
                   ) -> Load:
    """A charging connector as :func:`dispatch` sees it: the site phases its car loads (all
    the connector's while the car's phases are unknown: the safe assumption), its maximum
    (the connector's, or the car's where known and lower) and minimum."""
    max_a = wiring.max_current_a if car_max_a is None else min(wiring.max_current_a, car_max_a)
    return Load(key=key, phases=wiring.site_phases(car_phases), max_a=max_a,
                min_a=wiring.min_current_a, priority=priority, since=since,
                departure=departure, energy_needed_wh=energy_needed_wh)


# A car drawing clearly less than its pilot (by more than this) gives the rest back: it is
# counted at what it draws plus the margin.
GIVE_BACK_THRESHOLD_A = 3.0
GIVE_BACK_MARGIN_A = 2.0
# Cars and meters differ from the pilot by up to this when the pilot is what limits the car;
# a car drawing less than its pilot by more takes no more than it was offered.
UNDER_DRAW_A = 1.0
# Below this a car draws nothing, to a meter's resolution (it is full, or waiting): it keeps
# the minimum pilot, so it can start again, but is counted at 0 A; should it start, the next
# meter value counts it again. A car drawing a little (the last minutes of a charge) is
# counted at that plus the margin, like any car giving back.
IDLE_A = 1e-3
# A held car that refused spare capacity (gave back under a higher pilot) is offered it again
# after this long (s), or at once when more is spare than it refused.
REOFFER_S = 900.0


@dataclass(frozen=True, slots=True)
class Observation:
    """What meter values say about a charging car: the pilot it had and what it drew, and the
    highest pilot it was recently seen not to use (None: none within ``REOFFER_S``)."""

    offered_a: float
    drawn_a: float
    refused_a: float | None = None


def refused_pilot(seen: Iterable[tuple[float, float, float]], *, offered_a: float,
                  now: float, reoffer_s: float = REOFFER_S) -> float | None:
    """The highest pilot above ``offered_a`` that the car refused within ``reoffer_s`` before
    ``now``: ``seen`` holds (pilot, what it drew under it, when), the latest per pilot."""
    refused = None
    for pilot, drawn, at in seen:
        if (pilot > offered_a and now - at < reoffer_s
                and gives_back(Observation(pilot, drawn))):
            refused = pilot if refused is None else max(refused, pilot)
    return refused


def gives_back(observation: Observation | None) -> bool:
    """Whether the car draws clearly less than its pilot, though not nothing: under that
    pilot it has refused what it was offered (see ``Observation.refused_a``)."""
    if observation is None:
        return False
    return IDLE_A <= observation.drawn_a < observation.offered_a - GIVE_BACK_THRESHOLD_A


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One decision: the pilot each station is told, and what each car counts against the
    limits (the same, except for a car that gives back: less than its pilot)."""

    pilots: dict[Hashable, float]
    counted: dict[Hashable, float]


def counted_limit(observation: Observation | None, *, min_a: float) -> float | None:
    """The most a car is counted at after what it was seen to draw; None: its maximum.

    0.0 means it draws nothing under a pilot of at least its minimum (full, or waiting). A
    car drawing less than its pilot by more than ``UNDER_DRAW_A`` but not by the threshold
    is held at its pilot: it does not use all of it, so it is offered no more, except what
    nobody else can use (:func:`dispatch`, step 5)."""
    if observation is None:
        return None
    offered, drawn = observation.offered_a, observation.drawn_a
    if offered >= min_a - _EPS and drawn < IDLE_A:
        return 0.0
    if drawn < offered - GIVE_BACK_THRESHOLD_A:
        return drawn + GIVE_BACK_MARGIN_A
    if drawn < offered - UNDER_DRAW_A - _EPS:
        return offered
    return None


def plan_current(kw: float, *, phases: int, voltage_v: float, min_a: float, step_a: float,
                 carry_a: float = 0.0) -> float:
    """The pilot (A per phase) a plan's power for one slot asks for: 0 or at least ``min_a``,
    in whole steps.

    ``carry_a`` is what earlier slots fell short of the plan (negative: ahead of it), as
    amps over one slot: added in, it makes the pilots track the plan on average (error
    feedback, as in sigma-delta modulation). A plan below the minimum (say 2 A for an hour)
    becomes 6 A in a third of the slots, not 0 A in all of them: from half the minimum on,
    the pilot is the minimum, and the carry takes the excess off the following slots.
    """
    amps = kw * 1000.0 / (voltage_v * phases) + carry_a
    if amps < min_a / 2:
        return 0.0
    rounded = math.floor(amps / step_a + 0.5) * step_a
    return round(max(min_a, rounded), 9)


def remaining_grid(grid: Grid, loads: Sequence[Load], counted: Mapping[Hashable, float]
                   ) -> Grid:
    """What ``grid`` has left once ``loads`` draw what they are counted at."""
    used = [0.0, 0.0, 0.0]
    power = 0.0
    for load in loads:
        amps = counted.get(load.key, 0.0)
        for phase in load.phases:
            used[phase] += amps
        power += amps * grid.voltage_v * len(load.phases)
    phases = tuple(max(0.0, limit - u) for limit, u in zip(grid.phase_limit_a, used, strict=True))
    left = None if grid.power_limit_w is None else max(0.0, grid.power_limit_w - power)
    return Grid(phase_limit_a=phases, power_limit_w=left, voltage_v=grid.voltage_v)  # type: ignore[arg-type]


def _floor_step(amps: float, step_a: float) -> float:
    return round(math.floor(amps / step_a + _EPS) * step_a, 9)


def _ceil_step(amps: float, step_a: float) -> float:
    return round(math.ceil(amps / step_a - _EPS) * step_a, 9)


def dispatch(
    grid: Grid,
    loads: Sequence[Load],
    policy: Policy | Rule,
    *,
    now: float | None = None,
    step_a: float = 0.1,
    observed: Mapping[Hashable, Observation] | None = None,
    targets: Mapping[Hashable, float] | None = None,
    target_policy: Policy | Rule = Policy.priority,
    fill: bool = False,
    exact: bool = False,
) -> Dispatch:
    """Pilots for every load: meter values first, then the planned loads, then the rest.

    1. *Give-back.* A car seen drawing clearly less than its pilot (``observed``, see
       :func:`counted_limit`) is counted at what it draws plus a margin. Below the minimum
       (a car deep in its taper) it keeps the minimum pilot while counted at that smaller
       figure; a car drawing nothing is counted at 0 A and keeps the minimum pilot.
    2. *Planned loads* (those with a ``targets`` entry, A per phase from
       :func:`plan_current`) are allocated first, each capped at its target, by
       ``target_policy``; a target of 0 pauses the load in this pass.
    3. *The others* share what is left by ``policy``.
    4. With ``fill``, what is still left goes to the planned loads above their targets, by
       ``policy`` (work-conserving: a plan never leaves capacity idle that a car could use).
       Without it a plan's target is a ceiling (a plan that waits for cheap hours must not
       be filled with expensive ones).
    5. *Held cars* (drawing 1-3 A less than their pilot, held at it by steps 2-4) are
       offered what is still left above their pilot, by ``policy``, unless it is no more
       than the pilot they last refused (``Observation.refused_a``): capacity nobody else
       can use, so offering it costs the others nothing, and a car that takes it is held
       no longer.

    With ``exact`` (and ``fill``, every load planned), steps 2-4 are checked against a small
    mixed-integer programme (:func:`pack`) whenever the greedy passes leave a planned load
    short of its target (the 6 A minimums collided: pausing in priority order can idle two
    phases to keep one single-phase car) or a phase with a step to spare beside a load that
    could take more (a three-phase car held back by another phase that single-phase cars
    fill). The programme's answer is taken when it is better by its objective: it gives up
    an ampere of a single-phase car's target for an ampere on every phase of a three-phase
    car. Measured on the first ten Caltech days at 10 kW (realistic model), the second
    trigger is worth 0.45 % of the offline optimum's energy to the MPC and 0.1 % to the
    offline optimum itself, whose plan needs it less.

    Every pilot is 0 or within [min, max] of its load, in whole ``step_a``; the counted
    currents respect every limit of ``grid``.
    """
    observed = observed or {}
    targets = targets or {}
    pilots: dict[Hashable, float] = {}
    counted: dict[Hashable, float] = {}
    minimum = {load.key: load.min_a for load in loads}
    active: list[Load] = []
    small: set[Hashable] = set()
    held: dict[Hashable, tuple[Load, float]] = {}  # the whole load, the pilot it refused
    for load in loads:
        seen = observed.get(load.key)
        cap = counted_limit(seen, min_a=load.min_a)
        if seen is not None and cap is not None and cap == seen.offered_a > 0:
            refused = seen.refused_a if seen.refused_a is not None else 0.0
            whole = load
            if not fill and load.key in targets:  # a plan's target is a ceiling
                whole = replace(load, max_a=min(load.max_a, max(0.0, targets[load.key])))
            held[load.key] = (whole, max(refused, cap))
        if cap is None:
            active.append(load)
        elif _floor_step(load.max_a, step_a) < load.min_a - _EPS:
            pilots[load.key] = counted[load.key] = 0.0  # it can never have its minimum
        elif cap <= 0.0:
            pilots[load.key] = _ceil_step(load.min_a, step_a)
            counted[load.key] = 0.0
        else:
            cap = min(_floor_step(cap, step_a), _floor_step(load.max_a, step_a))
            if cap >= load.min_a:
                active.append(replace(load, max_a=cap))
            elif cap > 0:
                small.add(load.key)
                active.append(replace(load, min_a=cap, max_a=cap))
            else:
                pilots[load.key] = counted[load.key] = 0.0

    first: list[Load] = []
    rest: list[Load] = []
    for load in active:
        if load.key not in targets:
            rest.append(load)
        elif load.key in small:
            (first if targets[load.key] > 0 else rest).append(load)
        else:
            first.append(replace(load, max_a=min(load.max_a, max(0.0, targets[load.key]))))
    x: dict[Hashable, float] = {}
    left = grid
    if first:
        x.update(allocate(left, first, target_policy, now=now, step_a=step_a))
        left = remaining_grid(left, first, x)
    if rest:
        x.update(allocate(left, rest, policy, now=now, step_a=step_a))
        left = remaining_grid(left, rest, x)
    if fill and first:
        full = {load.key: load for load in active}
        extra = []
        for load in first:
            whole = full[load.key]
            have = x[load.key]
            room = _floor_step(whole.max_a - have, step_a)
            if room < step_a:
                continue
            extra.append(replace(whole, min_a=0.0, max_a=room) if have > 0 else whole)
        if extra:
            more = allocate(left, extra, policy, now=now, step_a=step_a)
            for key, amps in more.items():
                x[key] = round(x[key] + amps, 9)
    if exact and fill and first and not rest:
        goals = {load.key: (load.max_a if load.key in small else
                            min(load.max_a, max(0.0, targets[load.key]))) for load in active}
        if _could_do_better(grid, active, x, goals, step_a):
            order = _policy_order(active, [load.key for load in active], Rule(policy.value),
                                  _laxities(active, grid.voltage_v, now)
                                  if Rule(policy.value) is Rule.least_laxity else None)
            better = pack(grid, active, goals, order=[active[i].key for i in order],
                          step_a=step_a, start=x)
            if better is not None:
                x = better
    if held:
        x = _offer_spare(grid, active, x, held, policy, now=now, step_a=step_a)
    for key, amps in x.items():
        counted[key] = amps
        pilots[key] = 0.0 if amps <= 0 else max(amps, _ceil_step(minimum[key], step_a))
    return Dispatch(pilots=pilots, counted=counted)


def _offer_spare(grid: Grid, active: Sequence[Load], x: dict[Hashable, float],
                 held: Mapping[Hashable, tuple[Load, float]], policy: Policy | Rule, *,
                 now: float | None, step_a: float) -> dict[Hashable, float]:
    """What is left of ``grid`` after ``x``, offered to the held cars that have their whole
    held pilot, up to their maximum; an offer no higher than the pilot a car refused is not
    made (it would be refused again)."""
    left = remaining_grid(grid, active, x)
    extra = []
    for load in active:
        entry = held.get(load.key)
        if entry is None:
            continue
        whole, _ = entry
        have = x.get(load.key, 0.0)
        if have < load.max_a - _EPS or have <= 0:
            continue  # not held back by its hold: the others or the limits keep it there
        room = _floor_step(whole.max_a - have, step_a)
        if room >= step_a:
            extra.append(replace(whole, min_a=0.0, max_a=room))
    if not extra:
        return x
    more = allocate(left, extra, policy, now=now, step_a=step_a)
    out = dict(x)
    for key, amps in more.items():
        if amps > 0 and x[key] + amps > held[key][1] + _EPS:
            out[key] = round(x[key] + amps, 9)
    return out


# Weights of :func:`pack`'s objective, per ampere on one phase: a planned ampere missed costs
# twice what an ampere gained elsewhere brings, so the plan comes first and then the most
# current; an ampere above target costs a little more for each later car in the policy's
# order (at most OVER_COST in all), so what is left goes to the earliest.
SHORT_COST = 2.0
OVER_COST = 0.01


def _could_do_better(grid: Grid, loads: Sequence[Load], x: Mapping[Hashable, float],
                     goals: Mapping[Hashable, float], step_a: float) -> bool:
    """Whether a planned load is short of its goal (the greedy passes paused or cut it), or
    a phase has a step to spare beside a load on it below its maximum (a three-phase car held
    back by another, full, phase)."""
    used = [0.0, 0.0, 0.0]
    for load in loads:
        for phase in load.phases:
            used[phase] += x[load.key]
    spare = [limit - u >= step_a - _EPS for limit, u in zip(grid.phase_limit_a, used,
                                                             strict=True)]
    for load in loads:
        if x[load.key] < goals[load.key] - _EPS:
            return True
        if x[load.key] < load.max_a - step_a + _EPS and any(spare[p] for p in load.phases):
            return True
    return False


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null while HiGHS runs: its MIP solver now and then prints a
    line to stdout whatever its settings (ERGO-Code/HiGHS#2783), which would corrupt a
    bench's --json output. Only in the main thread: the bench and the simulator run there;
    the real-time controller packs in worker threads and leaves stdout alone."""
    if threading.current_thread() is not threading.main_thread():
        # Another thread (the controller's decisions run in worker threads of a server
        # whose other threads write to stdout) must never take fd 1 from them: a stray
        # HiGHS line in a server's log is harmless.
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def pack(grid: Grid, loads: Sequence[Load], goals: Mapping[Hashable, float], *,
         order: Sequence[Hashable], step_a: float, start: Mapping[Hashable, float] | None = None,
         time_limit_s: float = 2.0) -> dict[Hashable, float] | None:
    """Currents for one slot by a mixed-integer programme (HiGHS through scipy's ``milp``):
    each load 0 or within [min, max] in whole steps, under every limit of ``grid``;
    minimising, per ampere on one phase, ``SHORT_COST`` for every ampere short of the goal,
    minus one for every ampere given, plus a cost for every ampere above the goal that grows
    along ``order``. None when HiGHS finds nothing better than ``start`` in ``time_limit_s``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    n = len(loads)
    if not n:
        return {}
    _check_grid(grid, step_a)
    patterns = _pattern_indices(loads)
    width = _PATTERN_WIDTH[patterns].astype(np.float64)
    high = _to_steps(np.array([load.max_a for load in loads]), step_a, up=False)
    low = _to_steps(np.array([load.min_a for load in loads]), step_a, up=True)
    high[high < low] = 0
    low = np.minimum(low, high)
    goal = np.minimum(_to_steps(np.array([goals[load.key] for load in loads]), step_a,
                                up=False), high)
    rank = {key: r for r, key in enumerate(order)}
    over_cost = OVER_COST * (1 + np.array([rank.get(load.key, n) for load in loads])) / (n + 1)

    # Columns: x (steps), z (charging or not), short, over; rows below.
    cols = np.arange(n)
    c = np.concatenate([-width, np.zeros(n), SHORT_COST * width, over_cost * width])
    rows: list[NDArray[np.int64]] = []
    rcols: list[NDArray[np.int64]] = []
    vals: list[FloatArray] = []
    lo: list[FloatArray] = []
    hi: list[FloatArray] = []
    r = 0

    def add(row: NDArray[np.int64], col: NDArray[np.int64], val: FloatArray) -> None:
        rows.append(row)
        rcols.append(col)
        vals.append(val)

    # low z <= x <= high z
    add(r + cols, cols, np.ones(n))
    add(r + cols, n + cols, -low.astype(np.float64))
    lo.append(np.zeros(n))
    hi.append(np.full(n, np.inf))
    r += n
    add(r + cols, cols, np.ones(n))
    add(r + cols, n + cols, -high.astype(np.float64))
    lo.append(np.full(n, -np.inf))
    hi.append(np.zeros(n))
    r += n
    # x + short - over = goal
    add(r + cols, cols, np.ones(n))
    add(r + cols, 2 * n + cols, np.ones(n))
    add(r + cols, 3 * n + cols, -np.ones(n))
    lo.append(goal.astype(np.float64))
    hi.append(goal.astype(np.float64))
    r += n
    weights = _PATTERN_COLUMNS[:, patterns]
    capacity = [math.floor(limit / step_a + _EPS) for limit in grid.phase_limit_a]
    if grid.power_limit_w is not None:
        weights = np.vstack([weights, _PATTERN_WIDTH[patterns]])
        capacity.append(math.floor(grid.power_limit_w / (grid.voltage_v * step_a) + _EPS))
    for k, cap in enumerate(capacity):
        on = np.flatnonzero(weights[k])
        add(np.full(on.size, r), on, weights[k, on].astype(np.float64))
        lo.append(np.array([-np.inf]))
        hi.append(np.array([float(cap)]))
        r += 1
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(rcols))),
                   shape=(r, 4 * n)).tocsr()
    integrality = np.concatenate([np.ones(2 * n), np.zeros(2 * n)])
    bounds = Bounds(np.zeros(4 * n),
                    np.concatenate([high, np.ones(n), np.full(2 * n, np.inf)]).astype(float))
    with _quiet_stdout():
        result = milp(c, integrality=integrality, bounds=bounds,
                      constraints=LinearConstraint(a, np.concatenate(lo), np.concatenate(hi)),
                      options={"time_limit": time_limit_s, "presolve": False})
    if result.x is None:
        return None
    steps = np.round(result.x[:n]).astype(np.int64)
    steps = np.where((steps >= low) & (steps <= high), steps, 0)
    if (weights @ steps > np.array(capacity)).any():
        return None  # cannot happen with an integral answer; never risk a limit on it

    def value(v: NDArray[np.int64]) -> float:
        short = np.maximum(goal - v, 0)
        over = np.maximum(v - goal, 0)
        return float((-width * v + SHORT_COST * width * short + over_cost * width * over).sum())

    if start is not None:
        before = _to_steps(np.array([start[load.key] for load in loads]), step_a, up=False)
        if value(steps) >= value(before) - 1e-9:
            return None
    return {load.key: round(float(v) * step_a, 9) for load, v in zip(loads, steps, strict=True)}
