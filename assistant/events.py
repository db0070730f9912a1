"""Events the assistant publishes on the runtime's bus."""

from __future__ import annotations

from typing import Any, ClassVar

from chargedesk.events import Event


class BotUttered(Event):
    """A bot message to one sender on one channel (pushed by channels that keep a socket)."""

    topic: ClassVar[str] = "assistant.bot_uttered"

    channel: str
    sender: str
    message: dict[str, Any]


class ConversationEscalated(Event):
    """A conversation was handed to a human: the support desk's queue listens for this."""

    topic: ClassVar[str] = "assistant.conversation_escalated"

    escalation_id: int
    conversation_id: int
    channel: str
    sender: str
    reason: str
