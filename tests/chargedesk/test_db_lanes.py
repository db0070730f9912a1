"""The database worker threads: what stations wait for goes before what event subscribers
do, without starving them, and subscribers' work lands in the background lane."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from chargedesk.db import Lane, LaneExecutor, current_lane, dispose, make_engine, run_in_session
from chargedesk.events import InMemoryEventBus
from station_api.events import StationOnline


class Recorder:
    """Jobs that note their name when they run; `block` holds the worker until released."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def job(self, name: str) -> Callable[[], str]:
        def run() -> str:
            self.order.append(name)
            return name
        return run

    def block(self) -> str:
        self.started.set()
        assert self.release.wait(10)
        return "block"


def test_foreground_work_goes_before_queued_background_work() -> None:
    executor = LaneExecutor(1, background_workers=1)
    r = Recorder()
    blocker = executor.submit(Lane.FOREGROUND, r.block)
    assert r.started.wait(10)
    futures = [executor.submit(Lane.BACKGROUND, r.job("billing-1")),
               executor.submit(Lane.BACKGROUND, r.job("usage-1")),
               executor.submit(Lane.FOREGROUND, r.job("meter-values")),
               executor.submit(Lane.BACKGROUND, r.job("billing-2")),
               executor.submit(Lane.FOREGROUND, r.job("status"))]
    assert executor.queued() == {Lane.FOREGROUND: 2, Lane.BACKGROUND: 3}
    r.release.set()
    assert [f.result(10) for f in futures] == [
        "billing-1", "usage-1", "meter-values", "billing-2", "status"]
    assert blocker.result(10) == "block"
    assert r.order == ["meter-values", "status", "billing-1", "usage-1", "billing-2"]
    executor.shutdown()


def test_a_stream_of_foreground_work_lets_background_work_through_now_and_then() -> None:
    executor = LaneExecutor(1, background_workers=1)
    r = Recorder()
    executor.submit(Lane.FOREGROUND, r.block)
    assert r.started.wait(10)
    executor.submit(Lane.BACKGROUND, r.job("settle"))
    for n in range(2 * LaneExecutor.FAIRNESS):
        executor.submit(Lane.FOREGROUND, r.job(f"fg{n}"))
    r.release.set()
    executor.shutdown()
    assert r.order.index("settle") == LaneExecutor.FAIRNESS
    assert len(r.order) == 2 * LaneExecutor.FAIRNESS + 1


def test_background_work_never_takes_every_thread() -> None:
    executor = LaneExecutor(2, background_workers=1)
    r = Recorder()
    executor.submit(Lane.BACKGROUND, r.block)
    assert r.started.wait(10)
    second = executor.submit(Lane.BACKGROUND, r.job("usage"))
    # The other thread is free for foreground work while the background lane is full.
    assert executor.submit(Lane.FOREGROUND, r.job("boot")).result(10) == "boot"
    assert not second.done()
    r.release.set()
    assert second.result(10) == "usage"
    executor.shutdown()


def test_work_cancelled_before_it_begins_never_runs_and_errors_reach_the_caller() -> None:
    executor = LaneExecutor(1, background_workers=1)
    r = Recorder()
    executor.submit(Lane.FOREGROUND, r.block)
    assert r.started.wait(10)
    cancelled = executor.submit(Lane.BACKGROUND, r.job("gone"))
    assert cancelled.cancel()

    def broken() -> None:
        raise ValueError("a service refused")

    failing = executor.submit(Lane.FOREGROUND, broken)
    r.release.set()
    with pytest.raises(ValueError, match="refused"):
        failing.result(10)
    executor.shutdown()
    assert r.order == []
    with pytest.raises(RuntimeError):
        executor.submit(Lane.FOREGROUND, r.job("late"))


async def test_subscribers_work_in_the_background_lane_and_publishers_do_not(
    tmp_path: Any
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'lanes.db'}")
    bus = InMemoryEventBus()
    seen: list[tuple[str, Lane]] = []

    def query(session: Any, *, who: str) -> int:
        return session.execute(text("SELECT 1")).scalar_one()

    async def subscriber(event: StationOnline) -> None:
        seen.append(("subscriber", current_lane()))
        assert await run_in_session(engine, query, who="subscriber") == 1

        async def started_by_the_subscriber() -> None:
            seen.append(("its task", current_lane()))

        await asyncio.create_task(started_by_the_subscriber())

    bus.subscribe(StationOnline, subscriber)
    try:
        await bus.publish(StationOnline(station_id="CP-1"))
        seen.append(("publisher", current_lane()))
        await bus.join()
        assert await run_in_session(engine, query, who="publisher") == 1
    finally:
        dispose(engine)
    assert sorted(seen) == [("its task", Lane.BACKGROUND), ("publisher", Lane.FOREGROUND),
                            ("subscriber", Lane.BACKGROUND)]
