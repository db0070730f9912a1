"""Proactive notifications: domain events become messages to drivers on their channel.

- :mod:`.models`: preferences per driver and the outbox (deduplicated per driver, kind and
  subject; attempts, next attempt, status);
- :mod:`.subscribers`: station, billing and load-manager events into the outbox;
- :mod:`.service`: preferences, the decisions made when a row is due (opt-outs, quiet
  hours, still true?, where to), retries;
- :mod:`.sender`: the background job that delivers, and reads invoices and failed debits
  from the billing tables;
- :mod:`.texts`: the messages in Swedish and English;
- :mod:`.views`: ``/api/v1/me/notification-preferences`` and the operator's outbox.

:func:`install` mounts the routes, subscribes to the bus and adds the sender to the app's
background jobs.
"""

from __future__ import annotations

from typing import Any


def install(app: Any) -> None:
    from assistant.notifications.sender import NotificationSender
    from assistant.notifications.subscribers import NotificationSubscriber
    from assistant.notifications.views import router

    runtime = app.state.runtime
    sender = NotificationSender(runtime)
    app.state.notifications = sender
    NotificationSubscriber(runtime.engine, runtime.settings, sender.wake).install(runtime.bus)
    app.include_router(router)

    async def notification_sender(_: Any) -> None:
        await sender.run()

    runtime.jobs.append(notification_sender)


__all__ = ["install"]
