"""The running service the actions act through.

``chargedesk.app`` calls :func:`configure` once with its :class:`~chargedesk.app.Runtime`;
actions reach the database, the central system and the load controller through
:func:`current`. Actions run on the event loop that owns the stations' connections (the
dialogue engine and ``POST /webhook`` both run there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from chargedesk.db import run_in_session

if TYPE_CHECKING:
    from chargedesk.app import Runtime

T = TypeVar("T")

_runtime: Runtime | None = None


def configure(runtime: Runtime) -> None:
    """Point the actions at ``runtime`` (the last call wins), and subscribe what they
    react to on its bus (card blocks owed to stations that reconnect, statuses that make
    kept reference data stale)."""
    from assistant.actions import cards, reference

    global _runtime
    _runtime = runtime
    cards.install(runtime)
    reference.install(runtime)


def current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("assistant.actions.context.configure(runtime) was not called")
    return _runtime


async def db(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a service function in one transaction, off the event loop."""
    return await run_in_session(current().engine, fn, **kwargs)
