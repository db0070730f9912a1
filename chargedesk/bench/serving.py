"""The server a bench starts for itself: `chargedesk serve` in its own process, on a fresh
database migrated and seeded with the demo network, scheduler off, NLU model loaded.

The chat, SMS and e-mail benches share it; each adds its own settings (a Twilio stand-in,
an SMTP relay) through :meth:`DemoServer.environment` and, where a port besides HTTP must be
up, :meth:`DemoServer.ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from chargedesk.bench.ocpp import _end_process, _free_port, _tail

Progress = Callable[[str], None]
START_TIMEOUT_S = 180


class DemoServer:
    """`chargedesk serve` on a migrated database seeded with the demo network."""

    def __init__(self, directory: Path, database_url: str | None) -> None:
        self.directory = directory
        self.url = database_url or f"sqlite:///{directory / 'bench.db'}"
        self.proc: asyncio.subprocess.Process | None = None
        self.log = directory / "server.log"

    @property
    def database_label(self) -> str:
        return self.url.split("://", 1)[0].split("+", 1)[0]

    def environment(self) -> dict[str, str]:
        """Settings a bench adds to the server's environment."""
        return {}

    async def ready(self, client: httpx.AsyncClient) -> bool:
        """Whether the server answers (``GET /healthz``); a bench may wait for more."""
        return (await client.get("/healthz", timeout=2)).status_code == 200

    async def start(self, say: Progress) -> str:
        """Prepare the database, start the server and wait until it is ready: its URL."""
        say("migrating and seeding the demo network")
        await asyncio.to_thread(prepare_database, self.url, self.directory)
        port = _free_port()
        env = {
            **os.environ,
            "CHARGEDESK_DATABASE_URL": self.url,
            "CHARGEDESK_DATA_DIR": str(self.directory),
            "CHARGEDESK_LOG_LEVEL": "WARNING",
            "CHARGEDESK_SCHEDULER": "false",
            "CHARGEDESK_NLU_WARM_UP": "true",
            **self.environment(),
        }
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from chargedesk.cli import app; app()",
                "serve", "--host", "127.0.0.1", "--port", str(port),
                stdout=out, stderr=out, env=env, cwd=self.directory,
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(base_url=base) as client:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"chargedesk serve exited:\n{_tail(self.log)}")
                with contextlib.suppress(httpx.HTTPError, OSError):
                    if await self.ready(client):
                        return base
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chargedesk serve did not come up:\n{_tail(self.log)}")
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.proc is not None:
            await _end_process(self.proc, 15)

    def cpu_seconds(self) -> float | None:
        """User and system CPU time of the server process so far."""
        import psutil

        if self.proc is None or self.proc.returncode is not None:
            return None
        try:
            times = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)


def prepare_database(url: str, directory: Path) -> None:
    """Migrate ``url`` and seed the demo network; reuse the user's cached NLU model."""
    from chargedesk import demo
    from chargedesk.db import dispose, make_engine, upgrade
    from chargedesk.settings import Settings

    # The NLU model is cached per data directory: reuse the user's, or train it once.
    models = Path(os.environ.get("CHARGEDESK_DATA_DIR", "var")).resolve() / "models"
    if models.is_dir():
        with contextlib.suppress(OSError):
            (directory / "models").symlink_to(models, target_is_directory=True)
    upgrade(url)
    engine = make_engine(url)
    try:
        settings = Settings(database_url=url, data_dir=directory, scheduler=False)
        demo.prepare(engine, demo.load_demo(), settings=settings)
    finally:
        dispose(engine)
