"""The support desk: tickets from the assistant's escalations, worked by agents in a web
console (``/agent``) and through ``/api/v1/support``, with routing, business hours, SLAs,
satisfaction surveys, reports and webhooks. :func:`support.desk.install` wires it in."""
