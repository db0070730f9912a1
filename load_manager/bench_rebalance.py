"""Benchmark of a site rebalance: :func:`allocation.allocate` on a large, realistic site.

The site mixes single-phase 32 A and three-phase 16 A connectors wired with phase rotation,
cars that charge on one, two or three phases at various limits, departures for about half of
them, a few priority tiers, and a grid connection that cannot serve everyone at full current.
As a baseline, the same run times the cheapest possible pass over the loads (a plain Python sum
of maximum currents per phase), so that the figures can be quoted as ratios, independent of
the machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from load_manager.allocation import Grid, Load, Policy, allocate

__all__ = ["build_site", "rebalance_benchmark"]

_ROTATIONS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
# (share of cars, phases the car draws on, its own current limit in A)
_CARS = (
    (0.30, 1, 32.0),  # single-phase on-board charger
    (0.10, 1, 16.0),
    (0.10, 2, 16.0),  # some older two-phase chargers
    (0.40, 3, 16.0),
    (0.10, 3, 32.0),
)
# Share of the summed demand on each phase that the connection can serve: it binds.
_GRID_SHARE = 0.3


def _car(rng: random.Random) -> tuple[int, float]:
    pick = rng.random()
    for share, phases, limit in _CARS:
        pick -= share
        if pick < 0:
            return phases, limit
    return _CARS[-1][1], _CARS[-1][2]


def _load(index: int, rng: random.Random, now: float) -> Load:
    rotation = _ROTATIONS[index % len(_ROTATIONS)]
    three_phase_connector = rng.random() < 0.4
    connector_phases, connector_a = (3, 16.0) if three_phase_connector else (1, 32.0)
    car_phases, car_a = _car(rng)
    departure = energy = None
    if rng.random() < 0.5:
        departure = now + rng.uniform(0.5, 10.0) * 3600
        energy = rng.uniform(2_000, 40_000)
    return Load(
        key=(f"CS-{index // 2:04d}", index % 2 + 1),
        phases=rotation[: min(connector_phases, car_phases)],
        max_a=min(connector_a, car_a),
        priority=rng.choice((0, 0, 0, 1, 2)),
        since=now - rng.uniform(0, 8 * 3600),
        departure=departure,
        energy_needed_wh=energy,
    )


def build_site(connectors: int = 1000, seed: int = 0) -> tuple[Grid, list[Load], float]:
    """A site of ``connectors`` charging connectors whose grid limit binds, and its ``now``."""
    rng = random.Random(seed)
    now = 1_750_000_000.0
    loads = [_load(i, rng, now) for i in range(connectors)]
    demand = _phase_demand(loads)
    phase_limit = tuple(round(_GRID_SHARE * d, 1) for d in demand)
    voltage = 230.0
    # The power limit binds a little before the phases do.
    power_limit = 0.9 * voltage * sum(phase_limit)
    grid = Grid(phase_limit_a=phase_limit, power_limit_w=power_limit, voltage_v=voltage)  # type: ignore[arg-type]
    return grid, loads, now


def _phase_demand(loads: list[Load]) -> list[float]:
    """The baseline: the cheapest meaningful pass over a site's loads."""
    totals = [0.0, 0.0, 0.0]
    for load in loads:
        for phase in load.phases:
            totals[phase] += load.max_a
    return totals


def _time_ms(run: Callable[[], object], repeats: int) -> dict[str, float]:
    for _ in range(max(3, repeats // 10)):
        run()
    samples = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        started = time.perf_counter_ns()
        run()
        samples[i] = (time.perf_counter_ns() - started) / 1e6
    return {
        "p50_ms": float(np.percentile(samples, 50)),
        "p95_ms": float(np.percentile(samples, 95)),
    }


def rebalance_benchmark(
    connectors: int = 1000, repeats: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Times a full rebalance of one site per policy, beside the baseline pass over its loads.

    Returns ``{"connectors", "repeats", "baseline": {p50_ms, p95_ms}, "policies": {policy:
    {p50_ms, p95_ms, p50_vs_baseline, charging, paused}}}``.
    """
    grid, loads, now = build_site(connectors, seed)
    baseline = _time_ms(lambda: _phase_demand(loads), repeats)
    policies: dict[str, dict[str, float | int]] = {}
    for policy in Policy:
        timing = _time_ms(lambda policy=policy: allocate(grid, loads, policy, now=now), repeats)
        result = allocate(grid, loads, policy, now=now)
        charging = sum(1 for amps in result.values() if amps > 0)
        policies[policy.value] = {
            **timing,
            "p50_vs_baseline": timing["p50_ms"] / baseline["p50_ms"] if baseline["p50_ms"] else 0,
            "charging": charging,
            "paused": len(result) - charging,
        }
    return {
        "connectors": connectors,
        "repeats": repeats,
        "baseline": baseline,
        "policies": policies,
    }
