"""The channel tests' stand-ins (see :mod:`tests.channels.fixtures`)."""

from tests.channels.fixtures import nlu, relay, twilio_api  # noqa: F401  (fixtures)
