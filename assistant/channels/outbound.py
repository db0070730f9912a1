"""Messages to a driver that do not answer a message of theirs: an agent's reply, a
notification, a late answer. One contract for every channel.

Each channel registers how it delivers to one of its senders (the address the conversation
has on that channel: a web chat sender id, a phone number, an e-mail address) when it is
installed; :func:`send` picks the conversation's own channel. A channel that is not installed
(Twilio without credentials, say) raises :class:`ChannelUnavailable`, so the caller can say so
rather than lose the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from assistant.events import BotUttered

# (runtime, sender, messages in Rasa's REST-channel shape, conversation id or None)
Deliver = Callable[[Any, str, list[dict[str, Any]], int | None], Awaitable[None]]


class ChannelUnavailable(RuntimeError):
    """The channel has no way to deliver here (not configured, or unknown)."""


def _registry(runtime: Any) -> dict[str, Deliver]:
    registry: dict[str, Deliver] = runtime.outbound_channels
    return registry


def register(runtime: Any, channel: str, deliver: Deliver) -> None:
    """Make ``channel`` deliverable on this runtime (called by the channel's install)."""
    _registry(runtime)[channel] = deliver


def channels(runtime: Any) -> list[str]:
    """The channels this runtime can deliver on, sorted."""
    return sorted(_registry(runtime))


async def send(runtime: Any, *, channel: str, sender: str, messages: list[dict[str, Any]],
               conversation_id: int | None = None) -> None:
    """Deliver ``messages`` to ``sender`` on ``channel``; raises ChannelUnavailable.

    This signature is a contract (the support desk, notifications): keep it.

    - ``channel``: ``"web"``, ``"sms"``, ``"voice"`` (answered by SMS to the caller) or
      ``"email"``; see :func:`channels` for those installed here.
    - ``sender``: the address on that channel, as the conversation has it: the web chat's
      sender id; the driver's number in E.164 for ``sms``/``voice``; for ``email`` the
      thread's token (the e-mail conversation's sender: the message is threaded under the
      driver's newest mail, In-Reply-To and References set) or an e-mail address (a new
      thread; the driver's reply continues it).
    - ``messages``: Rasa REST-channel dicts: ``text``, optional ``buttons``
      (``[{"title", "payload"}]``, numbered choices on SMS and e-mail, a reply of "2"
      picks the second), ``image``; for a new e-mail thread, ``subject``.
    - ``conversation_id``: the assistant's conversation, when known (for the record).

    Returns once the message is stored for delivery (SMS: after Twilio's API took each
    part or its failure was recorded for a retry; e-mail: in the outbox, the deliverer
    woken; web: pushed to open chat sockets). Later failures are retried, then escalated
    to a person, by the channel. ChannelUnavailable: the channel is not configured here,
    the e-mail thread is unknown, or the number has opted out of texts (STOP): nothing
    was sent.
    """
    deliver = _registry(runtime).get(channel)
    if deliver is None:
        raise ChannelUnavailable(f"no outbound delivery for channel {channel!r}")
    await deliver(runtime, sender, messages, conversation_id)


async def push_to_web(runtime: Any, sender: str, messages: list[dict[str, Any]],
                      conversation_id: int | None) -> None:
    """The web chat has no address to send to: the message goes to the sender's open chat
    sockets through the bus, and the widget shows it."""
    for message in messages:
        await runtime.bus.publish(BotUttered(channel="web", sender=sender,
                                             message={"recipient_id": sender, **message}))
