"""Real-time current allocation for a site's charging connectors.

Model
-----
A site has three phases (0, 1, 2 = L1, L2, L3). ``Grid.phase_limit_a`` is the current still
available to EVs on each phase (the connection limit minus the forecast of the site's other
load); an optional ``Grid.power_limit_w`` caps the site's aggregate EV power. Every charging
connector is a :class:`Load` drawing the same current on each phase it uses (``Load.phases``,
already mapped through the connector's wiring rotation and the car's observed phases), so a
load of ``a`` amps puts ``a`` on each of its phases and draws ``voltage * a * len(phases)``
watts.

A car cannot charge below ``min_a`` (IEC 61851: 6 A), so every allocation is either 0 (paused)
or within ``[min_a, max_a]``. When the minimums of all loads do not fit, loads are admitted one
by one in the policy's order, each only if its minimum still fits beside those already admitted;
the others are paused. The capacity left over is then shared by the policy:

* ``equal_share``: water-filling. Everyone's level rises together; a load stops rising when
  it reaches its maximum or when one of its phases (or the power limit) saturates; the others
  keep rising. The result is max-min fair under the per-phase constraints.
* ``priority``: tiers by descending ``Load.priority``; each tier water-fills what the tiers
  above it left, lower tiers holding only their minimum meanwhile.
* ``least_laxity``: loads with a departure time and an energy need are served one at a time,
  least laxity first, each taking as much as it can (classic LLF); the rest then share equally.
  Laxity is the time a car can still spare: ``(departure - now) - energy_needed_wh * 3600 /
  (max_a * voltage * len(phases))`` seconds (the energy term is the charge time at full rate).

Who is paused, and the tie-breaks within a level, follow the policy's order: equal_share by
``since`` (earlier first) then key; priority by descending priority, then since, then key;
least_laxity by laxity (unknown = +inf), then since, then key.

Everything is computed in integer units of ``step_a`` (limits floored, minimums ceiled), so
the allocations are exact multiples of ``step_a`` and the limits hold without float drift. A
top-up after each shared group hands out any unit that a constraint's granularity left unused
(a three-phase load cannot use one spare unit of the power limit, a single-phase load can),
which makes the result work-conserving: no charging load below its maximum could take one
more step without breaking a limit, and no paused load could get its minimum.

:mod:`load_manager.dispatch` turns allocations into pilots, for the real-time controller and
the scheduling bench alike (give-back from meter values, planned targets, the exact packing).
The :class:`Rule` ``earliest_deadline`` is a bench baseline, not a site policy.

Allocation runs on every transaction start/stop, meter value and status change, so it is
vectorised with numpy: the sequential "each in turn, if it fits" passes are done in strides
between the loads that overflow. A site of 1,000 connectors rebalances in about 1-2 ms; each
priority tier of two or more loads adds about 0.1 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import combinations, permutations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Grid",
    "Load",
    "Policy",
    "Rule",
    "allocate",
]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

# Absorbs float noise when limits are converted to whole steps (0.7 / 0.1 = 6.999...).
_EPS = 1e-9
_PHASES = 3


class Policy(StrEnum):
    """How capacity is shared once every charging load has its minimum (a site's setting)."""

    equal_share = "equal_share"
    priority = "priority"
    least_laxity = "least_laxity"


class Rule(StrEnum):
    """Every sharing rule the allocator knows: the site policies, plus earliest deadline first,
    a textbook baseline the scheduling bench compares against (not offered to sites).

    ``earliest_deadline`` is least laxity first with the laxity replaced by the time left
    before the departure: the car leaving first takes all it can, whatever it still needs.
    """

    equal_share = "equal_share"
    priority = "priority"
    least_laxity = "least_laxity"
    earliest_deadline = "earliest_deadline"


@dataclass(frozen=True, slots=True)
class Grid:
    """What the site's connection leaves for its EVs."""

    # Current available to EVs on L1, L2, L3 (limit minus forecast other load), >= 0.
    phase_limit_a: tuple[float, float, float]
    # Optional aggregate limit on the site's EV power (kW limit * 1000).
    power_limit_w: float | None = None
    # Phase-to-neutral; the power of a load is voltage * amps * len(phases).
    voltage_v: float = 230.0


@dataclass(frozen=True, slots=True)
class Load:
    """One charging connector, as the allocation sees it."""

    key: Hashable  # e.g. (station_id, connector_id)
    # Site phases (0, 1, 2) it draws on: wiring rotation and the car's phases already applied.
    phases: tuple[int, ...]
    max_a: float  # per phase: the smallest of connector, station and vehicle limits
    min_a: float = 6.0  # below this the car cannot charge: it gets 0 (paused) or at least this
    priority: int = 0  # higher is served first under Policy.priority
    since: float = 0.0  # epoch seconds it started charging (tie-breaks: earlier first)
    departure: float | None = None  # epoch seconds, when known
    energy_needed_wh: float | None = None  # still to deliver, when known


# Every valid phases tuple (non-empty, distinct phases of 0..2, any order) gets a column of the
# incidence matrix: a dict lookup per load instead of a Python loop over its phases.
_PATTERNS: tuple[tuple[int, ...], ...] = tuple(
    perm
    for size in range(1, _PHASES + 1)
    for combo in combinations(range(_PHASES), size)
    for perm in permutations(combo)
)
_PATTERN_INDEX: dict[tuple[int, ...], int] = {p: i for i, p in enumerate(_PATTERNS)}
_PATTERN_COLUMNS: IntArray = np.array(
    [[1 if phase in p else 0 for p in _PATTERNS] for phase in range(_PHASES)], dtype=np.int64
)
_PATTERN_WIDTH: IntArray = _PATTERN_COLUMNS.sum(axis=0)


@dataclass(slots=True)
class _Site:
    """The allocation problem in whole steps: ``weights @ x <= capacity`` row by row.

    Rows 0..2 are the phases (weight 1 on each phase a load uses); row 3, present only with a
    power limit, counts phase-steps (weight = the load's number of phases).
    """

    weights: IntArray  # rows x loads
    capacity: IntArray  # rows
    low: IntArray  # minimum in steps
    high: IntArray  # maximum in steps
    rank: IntArray  # position in the policy's order


def allocate(
    grid: Grid,
    loads: Sequence[Load],
    policy: Policy | Rule = Policy.equal_share,
    *,
    now: float | None = None,
    step_a: float = 0.1,
) -> dict[Hashable, float]:
    """Amps per phase for every load (0.0 = paused)."""
    _check_grid(grid, step_a)
    if not loads:
        return {}
    rule = Rule(policy.value)
    keys = [load.key for load in loads]
    if len(set(keys)) != len(keys):
        raise ValueError("load keys must be unique")
    patterns = _pattern_indices(loads)
    laxity = None
    if rule is Rule.least_laxity:
        laxity = _laxities(loads, grid.voltage_v, now)
    elif rule is Rule.earliest_deadline:
        laxity = _deadlines(loads, now)
    order = _policy_order(loads, keys, rule, laxity)
    site = _build_site(grid, loads, patterns, order, step_a)

    x = _admit(site, order)
    for kind, group in _service_plan(loads, rule, order, laxity):
        if kind == "greedy":
            _serve_greedy(site, x, group)
        else:
            _water_fill(site, x, group)
            _top_up(site, x, group)
    amps = np.round(x * step_a, 9).tolist()
    return dict(zip(keys, amps, strict=True))


# --- validation and conversion ---------------------------------------------------------------


def _check_grid(grid: Grid, step_a: float) -> None:
    if not (math.isfinite(step_a) and step_a > 0):
        raise ValueError(f"step_a must be positive, got {step_a!r}")
    if not (math.isfinite(grid.voltage_v) and grid.voltage_v > 0):
        raise ValueError(f"voltage_v must be positive, got {grid.voltage_v!r}")
    if len(grid.phase_limit_a) != _PHASES:
        raise ValueError("phase_limit_a needs exactly three values")
    for limit in grid.phase_limit_a:
        if not (math.isfinite(limit) and limit >= 0):
            raise ValueError(f"phase limits must be finite and >= 0, got {grid.phase_limit_a!r}")
    power = grid.power_limit_w
    if power is not None and not (math.isfinite(power) and power >= 0):
        raise ValueError(f"power_limit_w must be finite and >= 0, got {power!r}")


def _pattern_indices(loads: Sequence[Load]) -> IntArray:
    found = [_PATTERN_INDEX.get(load.phases) for load in loads]
    if None in found:
        bad = loads[found.index(None)]
        raise ValueError(
            f"load {bad.key!r}: phases must be distinct values of 0..2, got {bad.phases!r}"
        )
    return np.array(found, dtype=np.int64)


def _to_steps(values: FloatArray, step_a: float, *, up: bool) -> IntArray:
    scaled = values / step_a
    rounded = np.ceil(scaled - _EPS) if up else np.floor(scaled + _EPS)
    return rounded.astype(np.int64)


def _build_site(
    grid: Grid, loads: Sequence[Load], patterns: IntArray, order: IntArray, step_a: float
) -> _Site:
    max_a = np.array([load.max_a for load in loads], dtype=np.float64)
    min_a = np.array([load.min_a for load in loads], dtype=np.float64)
    for name, values in (("max_a", max_a), ("min_a", min_a)):
        if not (np.isfinite(values).all() and (values >= 0).all()):
            raise ValueError(f"{name} must be finite and >= 0 for every load")
    high = _to_steps(max_a, step_a, up=False)
    low = _to_steps(min_a, step_a, up=True)
    # A car that cannot reach its minimum never charges: its maximum becomes 0 as well.
    high[high < low] = 0
    low = np.minimum(low, high)

    weights = _PATTERN_COLUMNS[:, patterns]
    capacity = [math.floor(limit / step_a + _EPS) for limit in grid.phase_limit_a]
    if grid.power_limit_w is not None:
        weights = np.vstack([weights, _PATTERN_WIDTH[patterns]])
        capacity.append(math.floor(grid.power_limit_w / (grid.voltage_v * step_a) + _EPS))
    rank = np.empty(len(loads), dtype=np.int64)
    rank[order] = np.arange(len(loads), dtype=np.int64)
    return _Site(
        weights=np.ascontiguousarray(weights),
        capacity=np.array(capacity, dtype=np.int64),
        low=low,
        high=high,
        rank=rank,
    )


# --- policy order ------------------------------------------------------------------------------


def _key_ranks(keys: list[Hashable]) -> IntArray:
    """Position of each key in key order; keys of mixed types fall back to type name and repr."""
    indices = range(len(keys))
    try:
        ordered = sorted(indices, key=keys.__getitem__)  # type: ignore[arg-type]
    except TypeError:
        ordered = sorted(indices, key=lambda i: (type(keys[i]).__name__, repr(keys[i])))
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[ordered] = np.arange(len(keys), dtype=np.int64)
    return ranks


def _laxities(loads: Sequence[Load], voltage_v: float, now: float | None) -> FloatArray:
    """Seconds of slack before each load must charge flat out to finish by its departure."""
    laxity = np.full(len(loads), math.inf)
    for i, load in enumerate(loads):
        if load.departure is None:
            continue
        if now is None:
            raise ValueError("least_laxity needs `now` when a load has a departure")
        energy = load.energy_needed_wh
        if energy is None or load.max_a <= 0:
            continue
        if energy < 0:
            raise ValueError(f"load {load.key!r}: energy_needed_wh must be >= 0")
        full_power_w = load.max_a * voltage_v * len(load.phases)
        laxity[i] = (load.departure - now) - energy / full_power_w * 3600.0
    return laxity


def _deadlines(loads: Sequence[Load], now: float | None) -> FloatArray:
    """Seconds before each load's departure (+inf when unknown): earliest deadline first."""
    left = np.full(len(loads), math.inf)
    for i, load in enumerate(loads):
        if load.departure is None:
            continue
        if now is None:
            raise ValueError("earliest_deadline needs `now` when a load has a departure")
        left[i] = load.departure - now
    return left


def _policy_order(
    loads: Sequence[Load], keys: list[Hashable], rule: Rule, laxity: FloatArray | None
) -> IntArray:
    """Load indices in service order; np.lexsort sorts by its last key first."""
    since = np.array([load.since for load in loads], dtype=np.float64)
    sort_keys: list[NDArray[np.generic]] = [_key_ranks(keys), since]
    if rule is Rule.priority:
        sort_keys.append(-np.array([load.priority for load in loads], dtype=np.int64))
    elif rule in (Rule.least_laxity, Rule.earliest_deadline):
        assert laxity is not None
        sort_keys.append(laxity)
    return np.lexsort(sort_keys).astype(np.int64)


def _service_plan(
    loads: Sequence[Load], rule: Rule, order: IntArray, laxity: FloatArray | None
) -> list[tuple[str, IntArray]]:
    """Groups in service order: ("greedy", loads served one by one) or ("share", a tier)."""
    if rule is Rule.equal_share:
        return [("share", order)]
    if rule in (Rule.least_laxity, Rule.earliest_deadline):
        assert laxity is not None
        known = np.isfinite(laxity[order])
        return [("greedy", order[known]), ("share", order[~known])]
    priority = np.array([load.priority for load in loads], dtype=np.int64)[order]
    # `order` is already by descending priority, so tiers are contiguous runs.
    cuts = np.flatnonzero(np.diff(priority)) + 1
    plan: list[tuple[str, IntArray]] = []
    for tier in np.split(order, cuts):
        # A tier of one is served greedily; runs of those are merged to skip per-tier overhead.
        if tier.size == 1 and plan and plan[-1][0] == "greedy":
            plan[-1] = ("greedy", np.concatenate([plan[-1][1], tier]))
        else:
            plan.append(("greedy" if tier.size == 1 else "share", tier))
    return plan


# --- admission (who charges at all) ---------------------------------------------------------


def _admit(site: _Site, order: IntArray) -> IntArray:
    """Start every admitted load at its minimum; pause the rest (their maximum drops to 0)."""
    candidates = order[site.high[order] > 0]
    granted = _grant_in_order(site, candidates, site.low[candidates], site.capacity)
    admitted = np.zeros(len(site.low), dtype=bool)
    admitted[candidates[granted]] = True
    site.high[~admitted] = 0
    return np.where(admitted, site.low, 0)


def _grant_in_order(
    site: _Site, ordered: IntArray, amounts: IntArray, slack: IntArray
) -> NDArray[np.bool_]:
    """Which of ``ordered`` get their ``amounts`` when each, in turn, takes it only if it fits.

    Sequential by definition, but done in vectorised strides: everyone before the first
    overflow fits, the load that overflows is refused, and since free capacity only shrinks,
    whoever does not fit on its own at that point never will and is dropped at once.
    """
    usage = site.weights[:, ordered] * amounts
    granted = np.zeros(ordered.size, dtype=bool)
    free = slack
    pending = np.flatnonzero((usage <= free[:, None]).all(axis=0))
    while pending.size:
        running = np.cumsum(usage[:, pending], axis=1)
        within = (running <= free[:, None]).all(axis=0)
        if within.all():
            granted[pending] = True
            break
        first = int(np.argmin(within))
        granted[pending[:first]] = True
        if first:
            free = free - running[:, first - 1]
        rest = pending[first + 1 :]
        pending = rest[(usage[:, rest] <= free[:, None]).all(axis=0)]
    return granted


# --- sharing -----------------------------------------------------------------------------------


def _slack(site: _Site, x: IntArray) -> IntArray:
    return site.capacity - site.weights @ x


def _serve_greedy(site: _Site, x: IntArray, group: IntArray) -> None:
    """Each load in turn takes all it can (least laxity first, or a priority tier of one).

    In vectorised strides: everyone before the first load that would overflow gets all it
    wants, that load gets what is left, and whoever then has no room on some phase is dropped.
    """
    wanted = site.high[group] - x[group]
    per_step = site.weights[:, group]
    free = _slack(site, x)
    pending = np.flatnonzero((wanted > 0) & (per_step <= free[:, None]).all(axis=0))
    while pending.size:
        running = np.cumsum(per_step[:, pending] * wanted[pending], axis=1)
        within = (running <= free[:, None]).all(axis=0)
        first = int(np.argmin(within)) if not within.all() else pending.size
        x[group[pending[:first]]] += wanted[pending[:first]]
        if first == pending.size:
            return
        if first:
            free = free - running[:, first - 1]
        last = pending[first]
        rows = per_step[:, last] > 0
        extra = min(int(wanted[last]), int((free[rows] // per_step[rows, last]).min()))
        x[group[last]] += extra
        free = free - per_step[:, last] * extra
        rest = pending[first + 1 :]
        pending = rest[(per_step[:, rest] <= free[:, None]).all(axis=0)]


def _water_fill(site: _Site, x: IntArray, group: IntArray) -> None:
    """Raise the group's common level until every member is at its maximum or blocked.

    Each round finds the highest whole level every constraint allows, hands the units short of
    the next level to the earliest loads of the constraints that block it, and freezes every
    load on those constraints. A blocked constraint has no risers left, so there are at most
    as many rounds as constraints.
    """
    active = group[x[group] < site.high[group]]
    while active.size:
        slack = _slack(site, x)
        weights = site.weights[:, active]
        start, high = x[active], site.high[active]

        def rise(
            level: int,
            *,
            start: IntArray = start,
            high: IntArray = high,
            weights: IntArray = weights,
        ) -> IntArray:
            return weights @ (np.clip(level, start, high) - start)

        top = int(high.max())
        if (rise(top) <= slack).all():
            x[active] = high
            return
        level = _highest_level(rise, slack, int(start.min()), top)
        reached = np.clip(level, start, high)
        x[active] = reached
        blocked = rise(level + 1) > slack
        on_blocked = (weights[blocked] > 0).any(axis=0)
        risers = active[on_blocked & (reached < high) & (reached == level)]
        _hand_out_units(site, x, risers[np.argsort(site.rank[risers])], _slack(site, x))
        active = active[~on_blocked & (reached < high)]


def _highest_level(
    rise: Callable[[int], IntArray], slack: IntArray, feasible: int, infeasible: int
) -> int:
    """Binary search for the highest level whose rise fits in ``slack``."""
    while infeasible - feasible > 1:
        mid = (feasible + infeasible) // 2
        if (rise(mid) <= slack).all():
            feasible = mid
        else:
            infeasible = mid
    return feasible


def _hand_out_units(site: _Site, x: IntArray, ordered: IntArray, slack: IntArray) -> int:
    """One more step to each load of ``ordered`` in turn while its constraints allow it."""
    granted = _grant_in_order(site, ordered, np.ones(ordered.size, dtype=np.int64), slack)
    x[ordered[granted]] += 1
    return int(granted.sum())


def _top_up(site: _Site, x: IntArray, group: IntArray) -> None:
    """Give away steps left over by granularity, lowest allocation first, until none fits."""
    while True:
        slack = _slack(site, x)
        fits = (site.weights[:, group] <= slack[:, None]).all(axis=0)
        open_ = group[fits & (x[group] < site.high[group])]
        if not open_.size:
            return
        lowest = open_[x[open_] == x[open_].min()]
        if not _hand_out_units(site, x, lowest[np.argsort(site.rank[lowest])], slack):
            return
