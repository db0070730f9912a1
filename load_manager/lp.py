"""Charging planned against the site's capacity and the price: a lexicographic linear programme.

The model
---------
Time is cut into ``T`` slots of ``slot_minutes`` (5-15 minutes); slot 0 starts now. Vehicle
``i`` is plugged in over the slots ``[arrival_slot, departure_slot)`` and still needs
``energy_kwh``. The decision variable ``p[i, t]`` is its charging power in kW during slot ``t``,
constant within the slot, and exists only inside the vehicle's window (the matrix of all
vehicles times all slots is never built). With ``dt`` the slot length in hours:

- ``0 <= p[i, t] <= min(max_kw_i, energy_kwh_i / dt)``        (the car's and the connector's limit)
- ``sum_t p[i, t] * dt <= energy_kwh_i``                        (never more than it needs)
- ``sum_i p[i, t] <= capacity_kw[t]``                            (the site limit, already net of
  the forecast other load; a negative figure means "none left" and is taken as 0)
- for each phase ``k`` when per-phase limits are given:
  ``sum_{i on k} p[i, t] / n_phases_i <= phase_capacity_kw[k][t]``: a three-phase car draws a
  third of its power on each phase, a single-phase car all of it on its phase.

Two stages, solved with HiGHS' interior-point method through :func:`scipy.optimize.linprog`
on sparse matrices:

1. The most energy that can be delivered, ``E* = max sum p[i, t] * dt`` (its value only).
2. Among the plans delivering at least ``E*`` minus a tiny tolerance (``1e-6`` relative), the
   one of least ``sum w[t] * p[i, t] * dt``, with
   ``w[t] = price[t] + delay_cost * hours(t) + tie_break * t / T``: the energy cost under the
   time-of-use prices (SEK/kWh per slot), plus an optional cost of delay (SEK per kWh per hour
   from now; 0 by default), plus a tie-break of at most 1e-4 SEK/kWh (the last decimal of a
   price series in SEK/kWh) that leans equal prices towards earlier slots; it can cost at most
   1e-4 SEK per kWh. The interior-point solver resolves it only to its own tolerance, so cars
   tied for equally cheap slots may also share them. Without prices the tie-break is
   ``t / T`` instead, at full weight: the earliest of the maximum-energy plans.

   The delay cost is for a re-planning (MPC) controller: it does not know the cars still to
   come, and capacity it leaves unused now, waiting for a cheaper hour, may be wanted by a later
   arrival. Measured on the Caltech sessions (``chargedesk bench schedule``), an MPC following
   the prices alone delivers 3.6-7 % less energy than the offline optimum at 10-30 kW; with a
   delay cost of 0.3 SEK/kWh/h it stays within 0.6 %, but then pays about what uncontrolled
   charging pays even where capacity is ample. The offline optimum and a single plan for
   known cars need none.

Stage 2 is solved as one weighted LP, ``min sum (w[t] - M) * p * dt`` with ``M`` above every
``w``. With all cars single-phase, or all three-phase, the problem is a flow network (source to
car, capacity its need; car to (slot, phase), capacity its max power; (slot, phase) to slot, the
phase limit; slot to sink, the site limit). Every augmenting path then ends in a car-to-slot
arc whose weight ``w - M`` is negative, and the intermediate arcs cancel (they enter and leave
the same slot), so the weighted optimum is a maximum flow, and among maximum flows it
minimises ``sum w * p``: the lexicographic optimum in one solve. Mixed phase counts break the
network structure; if the weighted optimum then delivers less than stage 1 found, the
textbook LP with an explicit energy floor is solved instead (``Plan.fallback``; its energy row
is put on per-slot site-power variables, since a row over every ``p`` is dense and slows the
interior-point method). The bench times the textbook stage 2 beside the one-solve form.

Two more things the realistic MPC (:mod:`load_manager.realistic`) uses. A vehicle may taper
(``taper_kwh``: full power to about 80 % state of charge, then linearly less to nothing at
full): its power is then also bounded by a linear function of the energy it has had in the
plan, written with one cumulative-energy column per slot (the running sum itself would be a
dense triangle), and stage 2 is the textbook LP, since the flow structure is gone. And
``discount_per_hour`` replaces both stages by one LP whose energy is worth less the later it
comes: it may give up some energy of the cars it knows for energy now, which a controller
that does not see the next arrivals can want on a congested site.

:func:`explain` turns one vehicle's row of a plan into the facts a driver is told ("38 kWh by
06:30, about 52 kr, charging mostly 01\u201305"), with money as :class:`~decimal.Decimal`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import OptimizeWarning, linprog

PHASES = 3
# Relative slack on the stage-1 energy that stage 2 must keep: well above HiGHS' feasibility
# tolerance (1e-7), so stage 2 is never infeasible by rounding, and far below anything a
# driver or an operator would notice (1 Wh in 1 MWh).
ENERGY_TOLERANCE = 1e-6
TIE_BREAK = 1e-4  # SEK/kWh across the whole horizon
# Power below this (kW) is a solver's zero, not charging.
ZERO_KW = 1e-6


class InfeasibleError(RuntimeError):
    """HiGHS did not return an optimum (it should not: p = 0 is always feasible)."""


@dataclass(frozen=True, slots=True)
class Vehicle:
    """A plugged-in car (or one expected): its window in slots, what it needs, what it takes."""

    key: Hashable
    arrival_slot: int
    departure_slot: int  # exclusive: the car is gone from this slot on
    energy_kwh: float  # still needed
    max_kw: float  # the car's and the connector's limit, whichever is lower
    phases: tuple[int, ...] = (0, 1, 2)
    # A battery that tapers: (kWh from the start of the window to where the taper begins,
    # kWh to full). Past the first, the car takes at most max_kw * (full - e) / (full - start)
    # with ``e`` the energy it has had in the plan: full power up to about 80 % state of
    # charge, then linearly less, to nothing at full. None: it takes max_kw to the end.
    taper_kwh: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.taper_kwh is not None:
            start, full = (float(v) for v in self.taper_kwh)
            if not (math.isfinite(start) and math.isfinite(full) and 0 <= start < full):
                raise ValueError(f"vehicle {self.key!r}: taper {self.taper_kwh!r}")
            object.__setattr__(self, "taper_kwh", (start, full))
        if self.arrival_slot < 0:
            raise ValueError(f"vehicle {self.key!r}: arrival slot {self.arrival_slot} < 0")
        if self.departure_slot <= self.arrival_slot:
            raise ValueError(f"vehicle {self.key!r}: departure slot {self.departure_slot} is"
                             f" not after arrival slot {self.arrival_slot}")
        if not math.isfinite(self.energy_kwh) or self.energy_kwh < 0:
            raise ValueError(f"vehicle {self.key!r}: energy {self.energy_kwh} kWh")
        if not math.isfinite(self.max_kw) or self.max_kw < 0:
            raise ValueError(f"vehicle {self.key!r}: max power {self.max_kw} kW")
        phases = tuple(self.phases)
        if not phases or len(set(phases)) != len(phases) or any(
                p not in range(PHASES) for p in phases):
            raise ValueError(f"vehicle {self.key!r}: phases {self.phases!r}")
        object.__setattr__(self, "phases", phases)


def _floats(values: Sequence[float], what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what}: not a finite number")
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    """One planning problem. The horizon is ``len(capacity_kw)`` slots.

    A window reaching past the horizon is cut at its end (the car is planned for the part we
    see). ``prices`` are SEK/kWh per slot; ``phase_capacity_kw`` holds three per-slot
    sequences, L1, L2, L3, in kW of power on that phase.
    """

    slot_minutes: float
    capacity_kw: Sequence[float]
    vehicles: Sequence[Vehicle]
    prices: Sequence[float] | None = None
    phase_capacity_kw: Sequence[Sequence[float]] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.slot_minutes) or self.slot_minutes <= 0:
            raise ValueError(f"slot length {self.slot_minutes} min")
        capacity = _floats(self.capacity_kw, "capacity")
        if not capacity:
            raise ValueError("an empty horizon")
        object.__setattr__(self, "capacity_kw", capacity)
        object.__setattr__(self, "vehicles", tuple(self.vehicles))
        keys = [v.key for v in self.vehicles]
        if len(set(keys)) != len(keys):
            raise ValueError("two vehicles share a key")
        if self.prices is not None:
            prices = _floats(self.prices, "prices")
            if len(prices) != len(capacity):
                raise ValueError(f"{len(prices)} prices for {len(capacity)} slots")
            object.__setattr__(self, "prices", prices)
        if self.phase_capacity_kw is not None:
            phase = tuple(_floats(row, "phase capacity") for row in self.phase_capacity_kw)
            if len(phase) != PHASES or any(len(row) != len(capacity) for row in phase):
                raise ValueError("phase capacity: three rows of one figure per slot")
            object.__setattr__(self, "phase_capacity_kw", phase)

    @property
    def slots(self) -> int:
        return len(self.capacity_kw)

    @property
    def slot_hours(self) -> float:
        return self.slot_minutes / 60.0


@dataclass(frozen=True)
class Plan:
    """The solution: ``power_kw[i, t]`` for vehicle ``keys[i]`` in slot ``t``."""

    keys: tuple[Hashable, ...]
    slot_minutes: float
    power_kw: NDArray[np.float64]
    energy_kwh: NDArray[np.float64]  # per vehicle
    cost_sek: float | None  # under the problem's prices, None without
    solve_seconds: float  # both stages, building the matrices included
    stage_seconds: tuple[float, ...] = ()
    variables: int = 0
    fallback: bool = False  # stage 2 needed the explicit energy floor (see solve)
    _index: dict[Hashable, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update((k, i) for i, k in enumerate(self.keys))

    @property
    def total_energy_kwh(self) -> float:
        return float(self.energy_kwh.sum())

    def row(self, key: Hashable) -> NDArray[np.float64]:
        """The vehicle's power per slot, kW."""
        return self.power_kw[self._index[key]]

    def site_kw(self) -> NDArray[np.float64]:
        return self.power_kw.sum(axis=0)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each variable sits: vehicle, slot, and its upper bound."""

    vehicle: NDArray[np.int64]
    slot: NDArray[np.int64]
    upper: NDArray[np.float64]


def _layout(problem: Problem) -> _Layout:
    dt = problem.slot_hours
    vs = problem.vehicles
    first = np.fromiter((v.arrival_slot for v in vs), np.int64, len(vs))
    end = np.minimum(np.fromiter((v.departure_slot for v in vs), np.int64, len(vs)),
                     problem.slots)
    lengths = np.maximum(end - first, 0)
    total = int(lengths.sum())
    vehicle = np.repeat(np.arange(len(vs), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    slot = np.arange(total, dtype=np.int64) - np.repeat(offsets - first, lengths)
    # A car needing E cannot use more than E/dt in one slot: a tighter bound, same optimum.
    cap = np.fromiter((min(v.max_kw, v.energy_kwh / dt) for v in vs), np.float64, len(vs))
    return _Layout(vehicle, slot, np.repeat(cap, lengths))


def build_constraints(problem: Problem) -> tuple[_Layout, sp.csr_matrix, NDArray[np.float64]]:
    """The layout and ``A_ub x <= b_ub`` of the problem (energy, site and phase rows)."""
    lay = _layout(problem)
    n, nv, T = len(lay.vehicle), len(problem.vehicles), problem.slots
    dt = problem.slot_hours
    cols = np.arange(n, dtype=np.int64)
    energy = np.fromiter((v.energy_kwh for v in problem.vehicles), np.float64, nv)
    capacity = np.maximum(np.asarray(problem.capacity_kw), 0.0)
    site_row = np.ones(T, bool)
    phase_cap = None
    if problem.phase_capacity_kw is not None:
        phase_cap = np.maximum(np.asarray(problem.phase_capacity_kw), 0.0)
        # Every car's power is split over its phases, so the site's power is the sum of the
        # phases' powers: where the phase limits add up to no more than the site limit, the
        # site row is implied. Left in, it is a dense row the interior-point method pays for
        # (about a third of the solve time for 500 cars of mixed phases); it stays empty.
        site_row = phase_cap.sum(axis=0) > capacity
    on_site = site_row[lay.slot]
    rows = [lay.vehicle, nv + lay.slot[on_site]]
    data = [np.full(n, dt), np.ones(int(on_site.sum()))]
    colsets = [cols, cols[on_site]]
    b = [energy, capacity]
    if phase_cap is not None:
        share = np.zeros((nv, PHASES))
        for i, v in enumerate(problem.vehicles):
            share[i, list(v.phases)] = 1.0 / len(v.phases)
        for k in range(PHASES):
            on = share[lay.vehicle, k] > 0
            rows.append(nv + (1 + k) * T + lay.slot[on])
            data.append(share[lay.vehicle[on], k])
            colsets.append(cols[on])
            b.append(phase_cap[k])
    nrows = nv + T * (1 + (PHASES if problem.phase_capacity_kw is not None else 0))
    a = sp.csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(colsets))),
                      shape=(nrows, n))
    return lay, a, np.concatenate(b)


@dataclass(frozen=True, slots=True)
class _Taper:
    """The taper rows, on the plan's power columns and ``m`` cumulative-energy columns after
    them: ``a_ub [p q] <= b_ub`` (the taper) and ``a_eq [p q] = 0`` (q adds up p)."""

    m: int
    a_ub: sp.csr_matrix
    b_ub: NDArray[np.float64]
    a_eq: sp.csr_matrix
    upper: NDArray[np.float64]  # bounds of the q columns (their lower bound is 0)


def _taper_block(problem: Problem, lay: _Layout) -> _Taper | None:
    """Rows that keep every tapering car under its taper (None when no car can reach one).

    With ``q[k]`` the plan's energy for the car before the k-th slot of its window (a column
    of its own: the running sum written out would be a dense triangle per car), the taper
    is ``p[k] + max_kw / (full - start) * q[k] <= max_kw * full / (full - start)`` and
    ``q[k] = q[k-1] + p[k-1] * dt``. A row is left out where the car cannot have reached the
    taper yet (``k * upper * dt <= start``)."""
    dt = problem.slot_hours
    n = len(lay.vehicle)
    starts = np.searchsorted(lay.vehicle, np.arange(len(problem.vehicles)))
    counts = np.bincount(lay.vehicle, minlength=len(problem.vehicles))
    ub_rows: list[NDArray[np.int64]] = []
    ub_cols: list[NDArray[np.int64]] = []
    ub_data: list[NDArray[np.float64]] = []
    b_ub: list[NDArray[np.float64]] = []
    eq_rows: list[NDArray[np.int64]] = []
    eq_cols: list[NDArray[np.int64]] = []
    eq_data: list[NDArray[np.float64]] = []
    q_upper: list[NDArray[np.float64]] = []
    m = ub = eq = 0
    for i, v in enumerate(problem.vehicles):
        length = int(counts[i])
        if v.taper_kwh is None or length < 2 or v.energy_kwh <= v.taper_kwh[0]:
            continue
        start, full = v.taper_kwh
        upper = float(lay.upper[starts[i]])
        first = int(starts[i])
        k = np.arange(1, length)
        p_cols = first + k  # p[k]
        q_cols = n + m + (k - 1)  # q[k], k = 1..length-1
        # q[k] - q[k-1] - dt p[k-1] = 0 (q[0] = 0 is left out)
        rows = eq + (k - 1)
        eq_rows += [rows, rows[1:], rows]
        eq_cols += [q_cols, q_cols[:-1], p_cols - 1]
        eq_data += [np.ones(len(k)), -np.ones(len(k) - 1), np.full(len(k), -dt)]
        eq += len(k)
        reach = k * upper * dt > start
        slope = v.max_kw / (full - start)
        rows = ub + np.arange(int(reach.sum()))
        ub_rows += [rows, rows]
        ub_cols += [p_cols[reach], q_cols[reach]]
        ub_data += [np.ones(len(rows)), np.full(len(rows), slope)]
        b_ub.append(np.full(len(rows), slope * full))
        ub += len(rows)
        q_upper.append(np.full(len(k), v.energy_kwh))
        m += len(k)
    if not m:
        return None
    width = n + m
    return _Taper(
        m=m,
        a_ub=sp.csr_matrix((np.concatenate(ub_data), (np.concatenate(ub_rows),
                            np.concatenate(ub_cols))), shape=(ub, width)),
        b_ub=np.concatenate(b_ub) if b_ub else np.zeros(0),
        a_eq=sp.csr_matrix((np.concatenate(eq_data), (np.concatenate(eq_rows),
                            np.concatenate(eq_cols))), shape=(eq, width)),
        upper=np.concatenate(q_upper),
    )


def _with_taper(a: sp.csr_matrix, b: NDArray[np.float64], bounds: NDArray[np.float64],
                taper: _Taper) -> tuple[sp.csr_matrix, NDArray[np.float64], NDArray[np.float64]]:
    """The problem's rows widened by the q columns, with the taper rows below them."""
    a_ub = sp.vstack([sp.hstack([a, sp.csr_matrix((a.shape[0], taper.m))]), taper.a_ub],
                     format="csr")
    q_bounds = np.column_stack([np.zeros(taper.m), taper.upper])
    return a_ub, np.concatenate([b, taper.b_ub]), np.vstack([bounds, q_bounds])


def _linprog(c: NDArray[np.float64], a: sp.csr_matrix, b: NDArray[np.float64],
             bounds: NDArray[np.float64], *,
             a_eq: sp.csr_matrix | None = None, b_eq: NDArray[np.float64] | None = None,
             ) -> NDArray[np.float64]:
    # HiGHS' interior-point method, without presolve and without crossover. These
    # transport-like problems are massively degenerate: dual simplex took 4-6 s for 500 cars x
    # 96 slots where the IPM takes 0.2-0.4 s; crossover (turning the IPM's answer into a
    # vertex) doubled stage 2, and presolve found little to remove but cost a third of stage 1
    # (measured on the bench's 500-car problem). Without crossover the answer is the centre of
    # the optimal face, so cars tied for a cheap slot share it rather than one taking all,
    # to within the IPM's tolerance (1e-8 relative on the objective, 1e-7 on the limits).
    # When the IPM stops short of its optimality test (HiGHS "model status Unknown", seen now
    # and then on small problems) the next attempts are the defaults, then dual simplex.
    # run_crossover is a HiGHS option scipy passes on verbatim, warning that it does.
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("highs-ipm", {"run_crossover": "off", "presolve": False}),
        ("highs-ipm", {}),
        ("highs-ds", {}),
    ]
    message = ""
    for method, options in attempts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            result = linprog(c, A_ub=a, b_ub=b, A_eq=a_eq, b_eq=b_eq, bounds=bounds,
                             method=method, options=options)
        if result.status == 0 and result.x is not None:
            return np.clip(np.asarray(result.x), 0.0, bounds[:, 1])
        message = str(result.message)
    raise InfeasibleError(f"HiGHS: {message}")


def _energy_floor_lp(lay: _Layout, a: sp.csr_matrix, b: NDArray[np.float64], nv: int, T: int,
                     dt: float, c: NDArray[np.float64], bounds: NDArray[np.float64],
                     floor: float) -> NDArray[np.float64]:
    """min c.x subject to the limits and total energy >= floor, the textbook stage 2.

    The energy row is put on T site-power variables ``y[t] = sum_i p[i, t]`` rather than on
    every ``p``: a row over all of them is dense and doubles the interior-point time."""
    n = len(lay.vehicle)
    site = sp.csr_matrix((np.ones(n), (lay.slot, np.arange(n))), shape=(T, n))
    a_ub = sp.vstack([
        sp.hstack([a[:nv], sp.csr_matrix((nv, T))]),
        sp.hstack([a[nv + T:], sp.csr_matrix((a.shape[0] - nv - T, T))]),
        sp.hstack([sp.csr_matrix((1, n)), sp.csr_matrix(np.full((1, T), -dt))]),
    ], format="csr")
    b_ub = np.concatenate([b[:nv], b[nv + T:], [-floor]])
    a_eq = sp.hstack([site, -sp.identity(T, format="csr")], format="csr")
    y_bounds = np.column_stack([np.zeros(T), b[nv:nv + T]])
    x = _linprog(np.concatenate([c, np.zeros(T)]), a_ub, b_ub, np.vstack([bounds, y_bounds]),
                 a_eq=a_eq, b_eq=np.zeros(T))
    return x[:n]


def _solve_tapered(lay: _Layout, a: sp.csr_matrix, b: NDArray[np.float64],
                   bounds: NDArray[np.float64], taper: _Taper, dt: float,
                   w: NDArray[np.float64], stage_times: list[float]) -> NDArray[np.float64]:
    """Both stages with taper rows: the flow structure is gone, so stage 2 is always the
    textbook LP, its energy floor a row over every power column."""
    n = len(lay.vehicle)
    a_ub, b_ub, all_bounds = _with_taper(a, b, bounds, taper)
    zeros_q = np.zeros(taper.m)
    t0 = time.perf_counter()
    x = _linprog(np.concatenate([np.full(n, -dt), zeros_q]), a_ub, b_ub, all_bounds,
                 a_eq=taper.a_eq, b_eq=np.zeros(taper.a_eq.shape[0]))
    best = float(x[:n].sum() * dt)
    stage_times.append(time.perf_counter() - t0)
    floor = best - ENERGY_TOLERANCE * max(1.0, best)
    t0 = time.perf_counter()
    energy_row = sp.csr_matrix(np.concatenate([np.full(n, -dt), zeros_q])[None, :])
    x = _linprog(np.concatenate([dt * w, zeros_q]), sp.vstack([a_ub, energy_row], format="csr"),
                 np.concatenate([b_ub, [-floor]]), all_bounds,
                 a_eq=taper.a_eq, b_eq=np.zeros(taper.a_eq.shape[0]))
    stage_times.append(time.perf_counter() - t0)
    return x[:n]


def max_energy(problem: Problem) -> float:
    """Stage 1 alone: the most energy (kWh) the problem can deliver. The bench times it as the
    baseline of one LP stage over the same constraint matrix (built here too)."""
    lay, a, b = build_constraints(problem)
    if len(lay.vehicle) == 0:
        return 0.0
    n = len(lay.vehicle)
    bounds = np.column_stack([np.zeros(n), lay.upper])
    dt = problem.slot_hours
    taper = _taper_block(problem, lay)
    if taper is None:
        return float(_linprog(np.full(n, -dt), a, b, bounds).sum() * dt)
    a_ub, b_ub, all_bounds = _with_taper(a, b, bounds, taper)
    x = _linprog(np.concatenate([np.full(n, -dt), np.zeros(taper.m)]), a_ub, b_ub, all_bounds,
                 a_eq=taper.a_eq, b_eq=np.zeros(taper.a_eq.shape[0]))
    return float(x[:n].sum() * dt)


def _within_limits(problem: Problem, lay: _Layout, x: NDArray[np.float64]
                   ) -> NDArray[np.float64]:
    """``x`` scaled down wherever the solver's tolerance (1e-7) left it a hair over a limit:
    limits are physical, a plan must hold them exactly. Scaling down breaks no other limit."""
    dt = problem.slot_hours
    x = np.where(x < ZERO_KW, 0.0, x)
    need = np.fromiter((v.energy_kwh for v in problem.vehicles), np.float64,
                       len(problem.vehicles))
    got = np.bincount(lay.vehicle, weights=x, minlength=len(need)) * dt
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x * np.minimum(1.0, np.where(got > need, need / got, 1.0))[lay.vehicle]
        T = problem.slots
        site = np.bincount(lay.slot, weights=x, minlength=T)
        capacity = np.maximum(np.asarray(problem.capacity_kw), 0.0)
        factor = np.where(site > capacity, capacity / site, 1.0)
        if problem.phase_capacity_kw is not None:
            for k in range(PHASES):
                share = np.fromiter(
                    (1.0 / len(v.phases) if k in v.phases else 0.0 for v in problem.vehicles),
                    np.float64, len(problem.vehicles))[lay.vehicle]
                load = np.bincount(lay.slot, weights=x * share, minlength=T)
                limit = np.maximum(np.asarray(problem.phase_capacity_kw[k]), 0.0)
                factor = np.minimum(factor, np.where(load > limit, limit / load, 1.0))
    return x * factor[lay.slot]


def solve(problem: Problem, *, delay_cost: float = 0.0, minimise_cost: bool = True,
          stage2: Literal["auto", "energy_floor"] = "auto",
          window_weight: float = 0.0, discount_per_hour: float = 0.0) -> Plan:
    """Plan the charging: the most energy, then the lowest cost, earliest among equals.

    ``delay_cost`` (SEK per kWh per hour of delay) is added to every slot's price in stage 2,
    trading cost for early delivery (see the module docstring). ``minimise_cost=False``
    ignores the prices: the earliest of the maximum-energy plans (the cost is still
    reported). ``stage2="energy_floor"`` skips the one-solve weighted form and solves the
    textbook stage 2 (tests and the bench compare the two).

    ``window_weight`` adds to the earliness tie-break how late a slot is for each car against
    its own window (slot / departure slot, times the weight): among plans of equal energy
    (and cost), a car leaving soon is then served before one staying long, which keeps the
    long stays' energy for later, quieter hours (earliest deadline first within the optimal
    plans), while the horizon-wide term keeps the site's total as early as it can be. The
    weights stay on the car-to-slot arcs, so the one-solve form still holds."""
    if not math.isfinite(delay_cost) or delay_cost < 0:
        raise ValueError(f"delay cost {delay_cost}")
    if stage2 not in ("auto", "energy_floor"):
        raise ValueError(f"stage 2 {stage2!r}")
    started = time.perf_counter()
    lay, a, b = build_constraints(problem)
    T, dt, nv = problem.slots, problem.slot_hours, len(problem.vehicles)
    keys = tuple(v.key for v in problem.vehicles)
    power = np.zeros((nv, T))
    n = len(lay.vehicle)
    priced = problem.prices is not None
    if n == 0 or not np.any(lay.upper > 0):
        elapsed = time.perf_counter() - started
        return Plan(keys, problem.slot_minutes, power, np.zeros(nv), 0.0 if priced else None,
                    elapsed, (), n)
    bounds = np.column_stack([np.zeros(n), lay.upper])
    stage_times = []
    if priced and minimise_cost:
        w = (np.asarray(problem.prices)[lay.slot]
             + (delay_cost * dt + TIE_BREAK / T) * lay.slot)
    else:
        w = (delay_cost * dt + 1.0 / T) * lay.slot
    if not math.isfinite(window_weight) or window_weight < 0:
        raise ValueError(f"window weight {window_weight}")
    if window_weight:
        window = np.fromiter((max(1, v.departure_slot) for v in problem.vehicles), np.float64,
                             nv)[lay.vehicle]
        w = w + window_weight * lay.slot / window
    if not (math.isfinite(discount_per_hour) and 0 <= discount_per_hour < 1):
        raise ValueError(f"discount {discount_per_hour}")
    taper = _taper_block(problem, lay)
    fallback = stage2 == "energy_floor"
    if discount_per_hour:
        # One LP: every kWh counts (1 - discount) per hour of delay less than one now, so
        # energy now may be preferred to slightly more energy later (see the docstring).
        t0 = time.perf_counter()
        value = (1.0 - discount_per_hour) ** (lay.slot * dt)
        x = _linprog(dt * (w * 1e-3 - value), a, b, bounds)
        stage_times.append(time.perf_counter() - t0)
        fallback = False
    elif taper is not None:
        x = _solve_tapered(lay, a, b, bounds, taper, dt, w, stage_times)
        fallback = True
    else:
        # Stage 1: only its value is used.
        t0 = time.perf_counter()
        best = float(_linprog(np.full(n, -dt), a, b, bounds).sum() * dt)
        stage_times.append(time.perf_counter() - t0)
        floor = best - ENERGY_TOLERANCE * max(1.0, best)

        # Stage 2, first as one weighted LP: minimise sum (w[t] - M) * p * dt with w the
        # price plus the earliness penalty and M above every w. On a flow network (see the
        # module docstring) every augmenting path then lowers the objective, so its optimum
        # has the most energy and, among those, the least sum w * p: the lexicographic
        # optimum in one solve. Should it come back short of the stage-1 energy (possible
        # only when single- and three-phase cars share phase limits) the textbook LP with an
        # energy floor decides.
        t0 = time.perf_counter()
        if not fallback:
            big_m = float(w.max()) + max(1.0, float(w.max() - w.min()))
            x = _linprog(dt * (w - big_m), a, b, bounds)
            fallback = float(x.sum() * dt) < floor
        if fallback:
            x = _energy_floor_lp(lay, a, b, nv, T, dt, dt * w, bounds, floor)
        stage_times.append(time.perf_counter() - t0)

    power[lay.vehicle, lay.slot] = _within_limits(problem, lay, x)
    energy = power.sum(axis=1) * dt
    cost = (float((power.sum(axis=0) * np.asarray(problem.prices)).sum() * dt)
            if priced else None)
    return Plan(keys, problem.slot_minutes, power, energy, cost,
                time.perf_counter() - started, tuple(stage_times), n, fallback)


def violations(problem: Problem, plan: Plan, *, tol: float = 1e-6) -> list[str]:
    """What in ``plan`` breaks a limit of ``problem`` (empty when none): used by tests and
    the bench, which check every plan rather than trust the solver."""
    found: list[str] = []
    dt = problem.slot_hours
    for i, v in enumerate(problem.vehicles):
        row = plan.power_kw[i]
        outside = np.ones(problem.slots, bool)
        outside[v.arrival_slot:min(v.departure_slot, problem.slots)] = False
        if np.any(row[outside] > tol):
            found.append(f"{v.key!r} charges outside its window")
        if np.any(row > v.max_kw + tol) or np.any(row < -tol):
            found.append(f"{v.key!r} above its max power")
        if row.sum() * dt > v.energy_kwh + tol:
            found.append(f"{v.key!r} gets more than it needs")
        if v.taper_kwh is not None:
            start, full = v.taper_kwh
            before = np.concatenate([[0.0], np.cumsum(row)[:-1] * dt])
            allowed = v.max_kw * np.minimum(1.0, (full - before) / (full - start))
            if np.any(row > allowed + tol):
                found.append(f"{v.key!r} above its taper")
    site = plan.power_kw.sum(axis=0)
    over = np.nonzero(site > np.maximum(np.asarray(problem.capacity_kw), 0) + tol)[0]
    if len(over):
        found.append(f"site limit exceeded in slots {over.tolist()[:5]}")
    if problem.phase_capacity_kw is not None:
        for k in range(PHASES):
            load = np.zeros(problem.slots)
            for i, v in enumerate(problem.vehicles):
                if k in v.phases:
                    load += plan.power_kw[i] / len(v.phases)
            limit = np.maximum(np.asarray(problem.phase_capacity_kw[k]), 0)
            if np.any(load > limit + tol):
                found.append(f"phase L{k + 1} limit exceeded")
    return found


# ---------------------------------------------------------------- explaining a plan

Language = Literal["en", "sv"]
# Share of the car's energy the "charging mostly" hours must hold.
MAIN_SHARE = 0.75
ORE = Decimal("0.01")
KRONA = Decimal("1")
EN_DASH = "\u2013"  # as in "01\u201305": a range of hours


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a driver is told about one car's plan."""

    vehicle_key: Hashable
    energy_kwh: Decimal  # one decimal
    finish: datetime | None  # end of the last slot with charging; None when none planned
    cost_sek: Decimal | None  # to the öre, ROUND_HALF_UP
    cost_sek_rounded: Decimal | None  # whole kronor, as said in the sentence
    main_hours: tuple[datetime, datetime] | None  # whole hours holding >= 75 % of the energy
    sentence: str


def _at(start: datetime, minutes: float) -> datetime:
    """``start`` plus elapsed minutes in its own zone, through UTC so DST changes count."""
    if start.tzinfo is None:
        return start + timedelta(minutes=minutes)
    return (start.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(start.tzinfo)


def _energy_text(kwh: Decimal, language: Language) -> str:
    shown = kwh.quantize(KRONA if kwh >= 10 else Decimal("0.1"), ROUND_HALF_UP)
    text = f"{shown:f}"
    return text.replace(".", ",") if language == "sv" else text


def _main_hours(row: NDArray[np.float64], start: datetime, slot_minutes: float,
                ) -> tuple[datetime, datetime] | None:
    """The shortest run of whole clock hours that holds at least MAIN_SHARE of the energy
    (the earliest such run on ties)."""
    total = float(row.sum())
    if total <= 0:
        return None
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    offset_min = (start - first_hour).total_seconds() / 60.0
    hours = np.floor((offset_min + np.arange(len(row)) * slot_minutes) / 60.0).astype(int)
    per_hour = np.bincount(hours, weights=row)
    prefix = np.concatenate([[0.0], np.cumsum(per_hour)])
    need = MAIN_SHARE * total - 1e-9 * total
    best: tuple[int, int] | None = None
    for width in range(1, len(per_hour) + 1):
        for lo in range(len(per_hour) - width + 1):
            if prefix[lo + width] - prefix[lo] >= need:
                best = (lo, lo + width)
                break
        if best:
            break
    assert best is not None
    return (_at(first_hour, best[0] * 60), _at(first_hour, best[1] * 60))


def explain(plan: Plan, vehicle_key: Hashable, start: datetime, slot_minutes: float,
            prices: Sequence[float] | None, language: Language = "en") -> Explanation:
    """The facts of one car's plan and a sentence saying them.

    ``start`` is the start of slot 0 (aware: times are shown in its zone); ``prices`` SEK/kWh
    per slot, as planned with, or None. The cost is the plan's energy times the prices, in
    Decimal: to the öre in ``cost_sek``, to the krona in the sentence ("about").
    """
    if language not in ("en", "sv"):
        raise ValueError(f"language {language!r}")
    row = plan.row(vehicle_key)
    dt = slot_minutes / 60.0
    energy = Decimal(repr(float(row.sum() * dt))).quantize(Decimal("0.1"), ROUND_HALF_UP)
    charging = np.nonzero(row > ZERO_KW)[0]
    if len(charging) == 0:
        sentence = "no charging planned" if language == "en" else "ingen laddning planerad"
        return Explanation(vehicle_key, Decimal("0.0"), None,
                           Decimal("0.00") if prices is not None else None,
                           Decimal("0") if prices is not None else None, None, sentence)
    finish = _at(start, (int(charging[-1]) + 1) * slot_minutes)
    cost = rounded = None
    if prices is not None:
        if len(prices) != len(row):
            raise ValueError(f"{len(prices)} prices for {len(row)} slots")
        raw = float((row * np.asarray(prices, dtype=float)).sum() * dt)
        cost = Decimal(repr(raw)).quantize(ORE, ROUND_HALF_UP)
        rounded = cost.quantize(KRONA, ROUND_HALF_UP)
    hours = _main_hours(row, start, slot_minutes)
    assert hours is not None
    span = f"{hours[0]:%H}{EN_DASH}{hours[1]:%H}"
    kwh = _energy_text(energy, language)
    if language == "en":
        parts = [f"{kwh} kWh by {finish:%H:%M}"]
        if rounded is not None:
            parts.append(f"about {rounded} kr")
        parts.append(f"charging mostly {span}")
    else:
        parts = [f"{kwh} kWh till kl. {finish:%H:%M}"]
        if rounded is not None:
            parts.append(f"cirka {rounded} kr")
        parts.append(f"laddar mest {span}")
    return Explanation(vehicle_key, energy, finish, cost, rounded, hours, ", ".join(parts))
