"""Settings from the environment (prefix ``CHARGEDESK_``), in one pydantic-settings class."""

from __future__ import annotations

from decimal import Decimal
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

    # Scheduled jobs (monthly invoice run, e-mail delivery); tests turn them off.
    scheduler: bool = True
    # Load (or train, after a data change) the NLU model at start-up rather than on the
    # first message; tests that need it load it themselves.
    nlu_warm_up: bool = True
    # A conversation idle this long starts a new session: slots reset, identity and language kept.
    conversation_expiry_minutes: int = Field(60, ge=1)
    # Signs web chat tokens; empty: a random secret per process (tokens die with it).
    chat_secret: str = ""

    # Billing. Amounts are in the network's currency, written as decimals ("50.00").
    currency: str = "SEK"
    # Authorize is refused to a prepaid driver whose available balance is below this.
    wallet_minimum_balance: Decimal = Decimal("50.00")
    # A low-balance event is published when a debit takes the balance below this.
    wallet_low_balance: Decimal = Decimal("100.00")
    # Set aside from the wallet when a prepaid session starts, settled at its stop.
    wallet_hold_amount: Decimal = Decimal("200.00")
    invoice_series: str = "F"
    credit_note_series: str = "K"
    invoice_due_days: int = Field(14, ge=0)
    # The monthly invoice run: day of month and hour, local time.
    invoice_run_day: int = Field(1, ge=1, le=28)
    invoice_run_hour: int = Field(3, ge=0, le=23)
    # Failed collections of one invoice before the driver's id tags are blocked.
    dunning_block_after: int = Field(3, ge=1)

    # The seller, as printed on invoices (ML 2023:200 17 kap. 24 §).
    seller_name: str = "ChargeDesk Demo AB"
    seller_address: str = "Kungsgatan 1\n111 43 Stockholm\nSverige"
    seller_org_number: str = "556677-8899"
    seller_vat_number: str = "SE556677889901"
    seller_bankgiro: str = "5050-1055"
    seller_email: str = "faktura@chargedesk.example"
    # Bankgirot Autogiro: our customer number (kundnummer, 6 digits) and bankgiro.
    autogiro_customer_number: str = "123456"
    # SEPA Direct Debit: creditor identifier and the account collections are paid into.
    sepa_creditor_id: str = "DE98ZZZ09999999999"
    sepa_creditor_name: str = "ChargeDesk Demo AB"
    sepa_iban: str = "DE89370400440532013000"
    sepa_bic: str = "COBADEFFXXX"

    # Load management. TxProfiles last this long and are refreshed at a third of it, so a
    # station that loses the central system falls back to its safe default by itself.
    load_profile_validity_s: int = Field(900, ge=60)
    load_plan_slot_minutes: int = Field(15, ge=5, le=60)
    # Hourly spot prices (CSV, see data/prices/README.md) charge plans are costed with.
    price_series: Path = Path(__file__).resolve().parent.parent / "data/prices/SE3_sample.csv"
    # The shipped series is a synthetic sample of four weeks: plans outside it use its mean
    # price per hour of the week. Set false with a real series, so a gap is an error.
    price_series_repeats_weekly: bool = True

    # Outgoing e-mail (invoices, reminders). Empty host: messages are kept queued, unsent.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_from: str = "ChargeDesk <faktura@chargedesk.example>"

    # The assistant's e-mail channel: an inbound SMTP server (port 0: none; `serve --demo`
    # uses 2525) taking mail for the support address and its reply+<thread>@ addresses.
    # Replies go out From the support address through the outgoing SMTP settings above.
    smtp_inbound_host: str = "127.0.0.1"
    smtp_inbound_port: int = Field(0, ge=0, le=65535)
    support_address: str = "ChargeDesk Support <support@chargedesk.example>"
    # Refused at SMTP time (552) above this; attachments above these are not kept.
    smtp_inbound_max_bytes: int = Field(25_000_000, ge=10_000)
    email_attachment_max_bytes: int = Field(10_000_000, ge=0)
    email_attachments_max_bytes: int = Field(20_000_000, ge=0)
    # Replies to one sender address per hour; more messages are stored, not answered.
    email_replies_per_hour: int = Field(20, ge=1)
    # When set, a From address identifies a driver only if this mail server's
    # Authentication-Results header says DMARC (or aligned DKIM) passed.
    email_trusted_authserv_id: str = ""

    # Twilio SMS and voice. Without an auth token the webhooks answer 503; secrets come
    # from the environment only. The API base is Twilio's own unless a test points it at
    # a stand-in on loopback.
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"
    # The address Twilio calls us at (behind a proxy: the proxy's); signatures cover it.
    public_base_url: str = ""
    # Callers asking for a person are put through to this number; empty: voicemail.
    support_phone_number: str = ""

    # The support desk (agent console at /agent). The secret signs agents' session cookies
    # and CSRF tokens; empty: a random secret per process (sign-ins end with it).
    support_secret: str = ""
    support_session_hours: int = Field(10, ge=1, le=24 * 30)
    # Credit notes and refunds an agent may give without approval, per role (incl. VAT);
    # above it the request waits for a supervisor (or an operator) whose limit covers it.
    support_agent_credit_limit: Decimal = Decimal("500.00")
    support_supervisor_credit_limit: Decimal = Decimal("5000.00")
    # An agent counts as online only while their console was seen this recently.
    support_presence_timeout_s: int = Field(120, ge=10)
    # The support desk's jobs (driver messages, SLA timers, routing, webhooks); unset:
    # as `scheduler`. How often driver messages and the SLA timers are looked at.
    support_scheduler: bool | None = None
    support_poll_seconds: float = Field(2.0, gt=0)
    support_sla_tick_seconds: float = Field(20.0, gt=0)
    # The satisfaction question waits this long for an answer before the bot takes over.
    support_csat_timeout_minutes: int = Field(60, ge=1)
    # A ticket handed back to the bot is resolved when it has not come back in this long.
    support_pending_resolve_hours: int = Field(24, ge=1)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'chargedesk.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
