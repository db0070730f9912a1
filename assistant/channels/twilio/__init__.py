"""Twilio channels: SMS (:mod:`.sms`) and phone calls (:mod:`.voice`) into the assistant.

:func:`install` adds their webhooks to the app, runs the SMS worker (replies, delivery
retries, escalations) as one of the runtime's background jobs and, when Twilio is
configured, registers SMS as the outbound delivery of the ``sms`` and ``voice`` channels
(:mod:`assistant.channels.outbound`) and of one-time codes for phone numbers
(:func:`assistant.identity.set_sms_codes`).
"""

from __future__ import annotations

from typing import Any


def install(app: Any) -> None:
    """Mount the SMS and voice webhooks and start the SMS worker with the app."""
    from assistant.channels.twilio.sms import router as sms_router
    from assistant.channels.twilio.sms import sms_channel
    from assistant.channels.twilio.voice import router as voice_router

    app.include_router(sms_router)
    app.include_router(voice_router)
    channel = sms_channel(app)

    async def sms_worker(runtime: Any) -> None:
        await channel.run()

    app.state.runtime.jobs.append(sms_worker)
    if channel.configured:
        from assistant.channels import outbound

        # Messages that answer nothing (agents, notifications) go by text; so does a
        # reply to a phone call, which is over by then.
        outbound.register(app.state.runtime, "sms", channel.deliver)
        outbound.register(app.state.runtime, "voice", channel.deliver)
        # One-time codes for a phone number go to that number by text.
        from assistant import identity

        identity.set_sms_codes(app.state.runtime.engine, channel.codes())


__all__ = ["install"]
