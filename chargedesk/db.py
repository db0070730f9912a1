"""Database engine and sessions. SQLite (WAL) by default, PostgreSQL through psycopg."""

from __future__ import annotations

import asyncio
import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy defaults to psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        # The pool may grow well past its default of 5 + 10: a request that holds a session
        # while it waits for something else must never leave the database worker thread,
        # which every station's messages go through, waiting for a connection. SQLite
        # connections are cheap (a file handle and a page cache).
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30},
            **({} if _in_memory(url) else {"pool_size": 5, "max_overflow": 60}),
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers work while the OCPP handlers write.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _in_memory(url: str) -> bool:
    """An in-memory SQLite database, which SQLAlchemy serves from a pool of its own kind."""
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class Lane(Enum):
    """Which queue of the engine's worker threads a piece of database work waits in."""

    # Someone is waiting for the answer: a station's OCPP message, a REST request.
    FOREGROUND = "foreground"
    # Reactions to domain events (billing, usage, load management): they may wait.
    BACKGROUND = "background"


_lane: ContextVar[Lane] = ContextVar("chargedesk_db_lane", default=Lane.FOREGROUND)


@contextmanager
def background_lane() -> Iterator[None]:
    """Send the database work of this context (and of tasks it starts) to the background
    lane. The event bus runs every subscriber inside it."""
    token = _lane.set(Lane.BACKGROUND)
    try:
        yield
    finally:
        _lane.reset(token)


def current_lane() -> Lane:
    return _lane.get()


class LaneExecutor:
    """Worker threads serving two queues: foreground work first, background in between.

    A worker takes the oldest foreground job; background jobs run when no foreground job
    waits, and also after every ``FAIRNESS`` foreground jobs in a row, so that a steady
    stream of stations' messages cannot starve billing and usage for good. At most
    ``background_workers`` threads run background jobs at once, so foreground work always
    finds a thread of its own. A foreground job thus waits behind at most one background
    job per thread, never behind the whole backlog of event reactions.

    Threads start on demand and end after a minute without work.
    """

    FAIRNESS = 8
    IDLE_EXIT_S = 60.0

    def __init__(self, workers: int, *, background_workers: int, name: str = "db") -> None:
        self._workers = workers
        self._background_limit = max(1, min(workers, background_workers))
        self._name = name
        self._queues: dict[Lane, deque[tuple[Future[Any], Callable[[], Any]]]] = {
            Lane.FOREGROUND: deque(), Lane.BACKGROUND: deque(),
        }
        self._cond = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._background_running = 0
        self._streak = 0
        self._shutdown = False
        self._numbers = itertools.count()

    def submit(self, lane: Lane, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` in ``lane``; its future is cancelled harmlessly if not yet begun."""
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule database work after shutdown")
            self._queues[lane].append((future, fn))
            if self._idle == 0 and len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{next(self._numbers)}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
            self._cond.notify()
        return future

    def queued(self) -> dict[Lane, int]:
        """Jobs waiting per lane (for metrics and tests)."""
        with self._cond:
            return {lane: len(queue) for lane, queue in self._queues.items()}

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then end the threads."""
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _take(self) -> tuple[Lane, Future[Any], Callable[[], Any]] | None:
        foreground, background = self._queues[Lane.FOREGROUND], self._queues[Lane.BACKGROUND]
        background_ok = bool(background) and self._background_running < self._background_limit
        if foreground and not (background_ok and self._streak >= self.FAIRNESS):
            self._streak = self._streak + 1 if background else 0
            return (Lane.FOREGROUND, *foreground.popleft())
        if background_ok:
            self._streak = 0
            self._background_running += 1
            return (Lane.BACKGROUND, *background.popleft())
        return None

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                item = self._take()
                while item is None:
                    if self._shutdown and not any(self._queues.values()):
                        self._threads.discard(me)
                        self._cond.notify_all()
                        return
                    self._idle += 1
                    woken = self._cond.wait(self.IDLE_EXIT_S)
                    self._idle -= 1
                    item = self._take()
                    if item is None and not woken and not any(self._queues.values()):
                        self._threads.discard(me)
                        return
            lane, future, fn = item
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn()
                    except BaseException as exc:  # handed to whoever awaits the future
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                if lane is Lane.BACKGROUND:
                    with self._cond:
                        self._background_running -= 1
                        self._cond.notify()  # a worker held back by the limit may go on


_executors: weakref.WeakKeyDictionary[Engine, LaneExecutor] = weakref.WeakKeyDictionary()
_executors_lock = threading.Lock()


def _executor(engine: Engine) -> LaneExecutor:
    with _executors_lock:
        executor = _executors.get(engine)
        if executor is None:
            # SQLite has a single writer: more threads would only queue in its busy handler,
            # which sleeps and so turns contention into tail latency. PostgreSQL gets a few,
            # half of which may be busy with background work.
            sqlite = engine.dialect.name == "sqlite"
            executor = _executors[engine] = LaneExecutor(
                1 if sqlite else 8, background_workers=1 if sqlite else 4
            )
        return executor


async def run_in_session(engine: Engine, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a synchronous service function off the event loop, inside one transaction.

    The work goes to the engine's own small thread pool, so database work from the OCPP
    handlers never starves the threads that serve HTTP requests. It waits in the lane of
    the calling context (:func:`background_lane`): event subscribers' work waits behind the
    work someone is waiting for.
    """

    def work() -> T:
        with session_scope(engine) as session:
            return fn(session, **kwargs)

    return await asyncio.wrap_future(_executor(engine).submit(_lane.get(), work))


def dispose(engine: Engine) -> None:
    """Close the engine's connections and its worker threads."""
    executor = _executors.pop(engine, None)
    if executor is not None:
        executor.shutdown(wait=True)
    engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` with Alembic."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
