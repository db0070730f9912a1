"""Prometheus metrics, served at ``/metrics``."""

from prometheus_client import Counter, Gauge, Histogram

OCPP_MESSAGES = Counter(
    "chargedesk_ocpp_messages_total", "CALLs received from charge points", ["action"]
)
OCPP_CALL_ERRORS = Counter(
    "chargedesk_ocpp_call_errors_total", "CALLERRORs sent to charge points", ["code"]
)
STATIONS_CONNECTED = Gauge("chargedesk_stations_connected", "Open charge point WebSockets")
COMMAND_SECONDS = Histogram(
    "chargedesk_command_seconds",
    "Round trip of remote commands",
    ["action", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
