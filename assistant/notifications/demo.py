"""Notification preferences of the demo's drivers: one of each channel."""

from __future__ import annotations

from datetime import time

from sqlmodel import Session, col, select

from assistant.notifications import service
from assistant.notifications.models import NotificationCursor, NotificationPreference
from billing_api.models import Driver, DunningNotice, Invoice


def seed(session: Session) -> int:
    """Preferences for the demo drivers (once), and the billing scan moved past the seeded
    history (its invoices are not news). How many drivers got preferences."""
    for source, table in (("invoice", Invoice), ("dunning_notice", DunningNotice)):
        cursor = session.get(NotificationCursor, source) or NotificationCursor(source=source)
        latest = session.exec(select(table.id).order_by(col(table.id).desc())).first()
        cursor.last_id = max(cursor.last_id, latest or 0)
        session.add(cursor)
    if session.exec(select(NotificationPreference)).first() is not None:
        return 0
    drivers = session.exec(select(Driver).order_by(col(Driver.id))).all()
    # The first driver reads them in the web chat after signing in; the second by SMS
    # (delivered once Twilio is configured); the third, a company, by e-mail in English
    # without the session-started messages, at any hour.
    choices = [
        {"channel": "web", "quiet_hours": (time(22, 0), time(7, 0))},
        {"channel": "sms", "quiet_hours": (time(21, 30), time(7, 30))},
        {"channel": "email", "language": "en", "quiet_hours": None,
         "muted": ["session_started"]},
    ]
    made = 0
    for driver, choice in zip(drivers, choices, strict=False):
        if choice["channel"] == "sms" and not driver.phone:
            continue
        if choice["channel"] == "email" and not driver.email:
            continue
        service.set_preferences(session, driver_id=driver.id or 0, **choice)
        made += 1
    return made
