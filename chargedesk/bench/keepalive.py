"""One keep-alive HTTP/1.1 connection for the load generators (`bench chat`, `bench sms`).

The measured requests go through this rather than httpx: httpx spends about 3 ms of CPU per
request here, so on a 2-core machine the load generator, not the server, would set the
figures. This costs a few tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
import contextlib


class Connection:
    """One keep-alive connection (reopened when the server closes it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return await self.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send a whole request as written (head and body); the status and the body."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        try:
            status_line = await self.reader.readuntil(b"\r\n")
            length, close = 0, False
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
                elif name == "transfer-encoding":
                    raise ConnectionError("chunked answers are not expected here")
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise ConnectionError(f"connection lost: {exc}") from exc
        if close:
            await self.close()
        return int(status_line.split(b" ", 2)[1]), payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
            self.writer = None
