"""Settings from the environment (prefix ``CHARGEDESK_``), in one pydantic-settings class."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARGEDESK_", env_file=".env", extra="ignore")

    data_dir: Path = Path("var")
    # Empty means a SQLite file under data_dir.
    database_url: str = ""

    log_level: str = "INFO"
    # auto: key=value lines on a terminal, JSON lines otherwise (containers, files).
    log_format: Literal["auto", "json", "console"] = "auto"

    # Local time of the network: tariffs' time-of-day rules and what drivers are shown.
    time_zone: str = "Europe/Stockholm"

    # OCPP central system.
    heartbeat_interval: int = Field(300, ge=1, description="Seconds, sent in BootNotification")
    # A station is offline after this many heartbeat intervals without a message.
    heartbeat_grace_intervals: int = Field(2, ge=1)
    ocpp_auto_register: bool = False
    command_timeout: float = Field(30.0, gt=0)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'chargedesk.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
