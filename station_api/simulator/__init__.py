"""Simulated OCPP 1.6J charge points, for tests, demos and load benchmarks.

A `SimulatedStation` is the client side of an OCPP connection: it boots, heartbeats, reports
connector status, runs charging sessions with a battery model whose power follows the
installed charging profiles, and answers every command a 1.6 central system can send.
Misbehaviour (a stuck cable lock, a fault, a mute station, a dropped link) is switched on
through `Behaviour`, so tests can pin down how the central system copes.

Everything a station sends goes through one ordered outbox drained by a single sender task:
the ocpp library validates payloads in a thread pool before sending, so concurrent senders
would reorder messages. Transaction messages (StartTransaction, MeterValues,
StopTransaction) survive a lost connection and are delivered after the next boot with their
original timestamps; everything else is dropped while offline, as it is stale by then.
"""

from station_api.simulator.fleet import SimulationResult, run_fleet, run_simulation
from station_api.simulator.model import Battery, Behaviour, Counters, NotConnected
from station_api.simulator.station import SimulatedStation

__all__ = [
    "Battery",
    "Behaviour",
    "Counters",
    "NotConnected",
    "SimulatedStation",
    "SimulationResult",
    "run_fleet",
    "run_simulation",
]
