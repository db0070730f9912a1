"""A typed publish/subscribe bus for domain events.

Events are pydantic models with a ``topic``; they cross a process boundary as
``(topic, json)`` through :func:`encode` and :func:`decode`, so a PostgreSQL LISTEN/NOTIFY
or Redis pub/sub backend only has to carry strings and call :meth:`EventBus.deliver`.
The in-memory backend delivers in-process, each subscriber in its own task, so a slow or
failing subscriber never blocks the publisher or the other subscribers.

Subscribers run in the database's background lane (:func:`chargedesk.db.background_lane`):
their database work, and that of any task they start, waits behind the work of stations'
messages and REST requests instead of ahead of it. A burst of events then delays billing
and usage a little, never a station's answer.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field

from chargedesk.db import background_lane

log = structlog.get_logger(__name__)


class Event(BaseModel):
    """Base class of domain events. Subclasses set a unique ``topic``."""

    model_config = ConfigDict(frozen=True)

    topic: ClassVar[str]
    registry: ClassVar[dict[str, type[Event]]] = {}

    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        topic = cls.__dict__.get("topic")
        if topic:
            if topic in Event.registry and Event.registry[topic] is not cls:
                raise TypeError(f"event topic {topic!r} is already taken")
            Event.registry[topic] = cls


E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None] | None]


def encode(event: Event) -> tuple[str, str]:
    return event.topic, event.model_dump_json()


def decode(topic: str, payload: str) -> Event:
    try:
        cls = Event.registry[topic]
    except KeyError:
        raise ValueError(f"unknown event topic {topic!r}") from None
    return cls.model_validate_json(payload)


class EventBus(Protocol):
    def subscribe(self, event_type: type[E], handler: Handler[E]) -> None: ...

    async def publish(self, event: Event) -> None: ...


class InMemoryEventBus:
    """Delivers events to subscribers of the same process."""

    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Handler[Any]]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> None:
        self._handlers[event_type].append(handler)

    async def publish(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        """Hand an event to its subscribers (also the entry point of a remote backend)."""
        for event_type, handlers in self._handlers.items():
            if isinstance(event, event_type):
                for handler in handlers:
                    task = asyncio.create_task(self._run(handler, event))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait until every delivered event has been handled (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    async def _run(handler: Handler[Any], event: Event) -> None:
        try:
            with background_lane():
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            log.exception("event handler failed", topic=event.topic, handler=repr(handler))
