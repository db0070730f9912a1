"""A scriptable charge point for central-system tests, on the ocpp library's client side."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect

PASSWORD = "test-station-password-1"


def basic_auth(station_id: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{station_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class ScriptedStation(ChargePoint):
    """Answers commands as told; ``silent`` makes it swallow them."""

    def __init__(self, station_id: str, connection: ClientConnection) -> None:
        super().__init__(station_id, connection, response_timeout=5)
        self.unlock_status = "Unlocked"
        self.silent = False
        self.swallowed = 0
        self.received: list[tuple[str, dict[str, Any]]] = []

    async def route_message(self, raw_msg: str) -> None:
        if self.silent and raw_msg.startswith("[2,"):
            self.swallowed += 1
            return
        await super().route_message(raw_msg)

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id: int) -> call_result.UnlockConnector:
        self.received.append(("UnlockConnector", {"connector_id": connector_id}))
        return call_result.UnlockConnector(status=self.unlock_status)

    @on(Action.trigger_message)
    def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        self.received.append(("TriggerMessage", {"requested_message": requested_message}))
        return call_result.TriggerMessage(status="Accepted")

    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        self.received.append(("Reset", {"type": type}))
        return call_result.Reset(status="Accepted")

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        return call_result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "60"}],
            unknown_key=[k for k in key or [] if k != "HeartbeatInterval"],
        )

    async def boot(self) -> Any:
        return await self.call(call.BootNotification(
            charge_point_model="TestModel", charge_point_vendor="TestVendor",
            charge_point_serial_number="SN-1", firmware_version="1.2.3",
        ), suppress=False)


@asynccontextmanager
async def station(
    ws_url: str, station_id: str, password: str | None = PASSWORD
) -> AsyncIterator[ScriptedStation]:
    """A connected station whose message loop runs until the block ends."""
    headers = basic_auth(station_id, password) if password else {}
    async with connect(f"{ws_url}/{station_id}", subprotocols=["ocpp1.6"],
                       additional_headers=headers) as ws:
        cp = ScriptedStation(station_id, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
