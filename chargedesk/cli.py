"""The ``chargedesk`` command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from chargedesk.settings import get_settings

app = typer.Typer(help="ChargeDesk: support and operations for EV charging networks.",
                  no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for /api/v1.", no_args_is_help=True)
station_app = typer.Typer(help="Charging stations.", no_args_is_help=True)
billing_app = typer.Typer(help="Rating, invoice runs, bank files, e-mail.",
                          no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; each prints its figures, or one JSON object.",
                        no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(apikey_app, name="apikey")
app.add_typer(station_app, name="station")
app.add_typer(billing_app, name="billing")
app.add_typer(bench_app, name="bench")


def _engine():  # type: ignore[no-untyped-def]
    from chargedesk.db import make_engine

    return make_engine(get_settings().resolved_database_url())


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _in_session(fn: Any, /, **kwargs: Any) -> Any:
    """Run a service function in one transaction; a refusal ends the command with its reason."""
    from chargedesk.db import session_scope
    from chargedesk.errors import DomainError

    try:
        with session_scope(_engine()) as session:
            return fn(session, **kwargs)
    except DomainError as exc:
        _fail(str(exc))


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP and OCPP WebSocket port")] = 8000,
    demo: Annotated[
        bool, typer.Option(help="Seed a demo network and simulate its stations")
    ] = False,
) -> None:
    """Run the HTTP API, the OCPP WebSocket endpoint and background jobs in one process."""
    import uvicorn

    from chargedesk.app import create_app
    from chargedesk.db import current_revision, head_revision, upgrade

    settings = get_settings()
    url = settings.resolved_database_url()
    jobs = []
    if demo:
        upgrade(url)
        jobs.append(_demo_job(host, port))
        if not settings.smtp_inbound_port:  # the demo takes e-mail to the support address
            settings = settings.model_copy(update={"smtp_inbound_port": 2525})
    elif current_revision(url) != head_revision():
        _fail("the database schema is not current: run `chargedesk db upgrade` first")
    application = create_app(settings, jobs=jobs)
    uvicorn.run(application, host=host, port=port, log_config=None, ws="websockets-sansio",
                ws_per_message_deflate=False)


def _demo_job(host: str, port: int):  # type: ignore[no-untyped-def]
    from chargedesk import demo as demo_network

    demo = demo_network.load_demo()

    async def run(runtime: Any) -> None:
        key = await asyncio.to_thread(demo_network.prepare, runtime.engine, demo,
                                      settings=runtime.settings)
        base = f"http://{host}:{port}"
        typer.secho(
            f"\nChargeDesk demo on {base}\n"
            f"  API docs:        {base}/docs\n"
            f"  operator key:    {key}\n"
            f"  try:             curl -H 'Authorization: Bearer {key}' {base}/api/v1/stations\n",
            fg=typer.colors.GREEN, err=True,
        )
        agents = await asyncio.to_thread(demo_network.prepare_support, runtime.engine,
                                         settings=runtime.settings)
        typer.secho(f"  agent console:   {base}/agent  (new passwords every start)\n" + "".join(
            f"    {username:<8} {role:<11} {password}\n" for username, role, password in agents),
            fg=typer.colors.GREEN, err=True)
        await asyncio.sleep(0.5)  # let uvicorn bind before the stations dial in
        await demo_network.run_demo_stations(
            f"ws://{host}:{port}/ocpp", demo["stations"],
            id_tags=[t["id_tag"] for t in demo["id_tags"] if not t.get("status")],
        )

    return run


# ---------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to the newest schema (or to REVISION)."""
    from chargedesk.db import upgrade

    url = get_settings().resolved_database_url()
    upgrade(url, revision)
    typer.echo(f"database at {revision}: {_redact(url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------- api keys


@apikey_app.command("create")
def apikey_create(
    role: Annotated[str, typer.Option(help="operator or agent")],
    name: Annotated[str, typer.Option(help="Who or what uses the key")] = "cli",
) -> None:
    """Create an API key; it is shown once and stored hashed."""
    from chargedesk.auth import create_api_key
    from chargedesk.db import session_scope
    from chargedesk.models import Role

    try:
        role_ = Role(role)
    except ValueError:
        _fail(f"unknown role {role!r}: use operator or agent")
    with session_scope(_engine()) as session:
        row, key = create_api_key(session, name=name, role=role_)
        key_id = row.id
    typer.echo(key)
    typer.secho(f"key {key_id} ({role_}, {name}): keep it now, it cannot be shown again",
                err=True)


@apikey_app.command("list")
def apikey_list() -> None:
    """List keys (never the keys themselves)."""
    from sqlmodel import select

    from chargedesk.db import session_scope
    from chargedesk.models import ApiKey

    with session_scope(_engine()) as session:
        for row in session.exec(select(ApiKey).order_by(ApiKey.id)).all():
            state = "revoked" if row.revoked_at else "active"
            typer.echo(f"{row.id}\t{row.role}\t{row.name}\t{row.prefix}…\t{state}")


@apikey_app.command("revoke")
def apikey_revoke(key_id: int) -> None:
    """Revoke a key by its id."""
    from chargedesk.auth import revoke_api_key
    from chargedesk.db import session_scope

    with session_scope(_engine()) as session:
        if not revoke_api_key(session, key_id=key_id):
            _fail(f"no active key {key_id}")
    typer.echo(f"key {key_id} revoked")


# ---------------------------------------------------------------- stations


@station_app.command("add")
def station_add(
    station_id: str,
    password: Annotated[str | None, typer.Option(help="OCPP Basic-auth password")] = None,
    insecure_no_password: Annotated[bool, typer.Option(
        help="Let it connect without Basic auth (chargers without security profile 1)")] = False,
    site: Annotated[str | None, typer.Option(help="The site it stands on")] = None,
) -> None:
    """Register a station, with its security-profile-1 password."""
    from station_api import service

    if password is None and not insecure_no_password:
        _fail("give --password, or --insecure-no-password to let it connect without one")
    _in_session(service.register_station, station_id=station_id, password=password,
                site_id=site)
    typer.echo(f"station {station_id} registered")


@station_app.command("site")
def station_site(
    site_id: str,
    name: Annotated[str, typer.Option(help="What drivers and operators call it")],
    time_zone: Annotated[str, typer.Option(help="IANA time zone")] = "Europe/Stockholm",
    address: Annotated[str | None, typer.Option(help="Street address")] = None,
) -> None:
    """Create a site: a place with stations, whose time zone tariffs follow."""
    from station_api import service

    _in_session(service.create_site, site_id=site_id, name=name, time_zone=time_zone,
                address=address)
    typer.echo(f"site {site_id} created")


@station_app.command("password")
def station_password(
    station_id: str,
    password: Annotated[str, typer.Option(help="The new Basic-auth password (16-40 chars)")],
) -> None:
    """Set a station's password; give the station the same key (AuthorizationKey)."""
    from station_api import service

    _in_session(service.set_station_password, station_id=station_id, password=password)
    typer.echo(f"password of {station_id} changed; it applies from the next connection")


@station_app.command("list")
def station_list() -> None:
    """Stations with registration, online state and connector status."""
    from chargedesk.db import session_scope
    from station_api import service

    with session_scope(_engine()) as session:
        stations = service.list_stations(session)
        connectors = service.list_connectors(session, station_ids=[s.id for s in stations])
    for s in stations:
        states = ", ".join(
            f"{c.connector_id}:{c.status}" for c in connectors if c.station_id == s.id
        )
        seen = s.last_seen_at.isoformat(timespec="seconds") if s.last_seen_at else "never"
        typer.echo(f"{s.id}\t{s.registration}\t{'online' if s.online else 'offline'}\t"
                   f"last seen {seen}\t{states}")


@station_app.command("command")
def station_command(
    station_id: str,
    action: str,
    payload: Annotated[str, typer.Option("--json", help="The OCPP payload as JSON")] = "{}",
    url: Annotated[str, typer.Option(envvar="CHARGEDESK_URL", help="The running service")] = (
        "http://127.0.0.1:8000"
    ),
    api_key: Annotated[str | None, typer.Option(envvar="CHARGEDESK_API_KEY",
                                                help="An operator or agent key")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the audit log")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the station")] = None,
) -> None:
    """Send an OCPP command through the running service and print its outcome."""
    if not api_key:
        _fail("give an API key with --api-key or CHARGEDESK_API_KEY")
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"--json is not JSON: {exc}")
    params = {k: v for k, v in {"reason": reason, "timeout": timeout}.items() if v is not None}
    try:
        answer = httpx.post(
            f"{url}/api/v1/stations/{station_id}/commands/{action}", json=body, params=params,
            headers={"Authorization": f"Bearer {api_key}"}, timeout=(timeout or 30) + 10,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    typer.echo(json.dumps(answer.json(), indent=2))
    if answer.status_code != 200 or answer.json().get("outcome") != "accepted":
        raise typer.Exit(1)


# ---------------------------------------------------------------- simulator


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="Central system, without the station id")] = (
        "ws://127.0.0.1:8000/ocpp"
    ),
    stations: Annotated[int, typer.Option(min=1)] = 1,
    connectors: Annotated[int, typer.Option(min=1)] = 2,
    password: Annotated[str | None, typer.Option(envvar="CHARGEDESK_SIM_PASSWORD")] = None,
    id_prefix: Annotated[str, typer.Option(help="Stations are PREFIX-0001 …")] = "SIM",
    duration: Annotated[float | None, typer.Option(help="Seconds; default until Ctrl-C")] = None,
) -> None:
    """Run simulated OCPP 1.6J charge points against a central system."""
    from dataclasses import asdict

    from station_api.simulator import SimulationResult, run_simulation

    def progress(state: SimulationResult) -> None:
        c = state.counters
        typer.echo(f"{state.elapsed:6.0f} s  connected {state.connected}/{state.stations}  "
                   f"booted {state.booted}  calls {c.calls_sent}  errors {c.errors_received}  "
                   f"commands answered {c.commands_answered}", err=True)

    stop = asyncio.Event()

    async def main() -> SimulationResult:
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        return await run_simulation(
            url, stations=stations, connectors=connectors, password=password,
            id_prefix=id_prefix, duration=duration, progress=progress, stop=stop,
            progress_interval=5,
        )

    typer.echo(json.dumps(asdict(asyncio.run(main()))))


@billing_app.command("rate")
def billing_rate(
    tariff: Annotated[Path, typer.Option(help="An OCPI 2.2.1 Tariff object (JSON)")],
    session: Annotated[Path, typer.Option(help="What the station reported (JSON)")],
) -> None:
    """Rate one charging session and print its CDR (OCPI totals, periods, cost lines)."""
    from billing_api.rating import parse_session, rate
    from billing_api.tariffs import BillingInputError, parse_tariff

    try:
        cdr = rate(parse_tariff(tariff.read_bytes()),
                   parse_session(json.loads(session.read_text(), parse_float=Decimal)))
    except (OSError, json.JSONDecodeError, BillingInputError) as exc:
        _fail(str(exc))
    typer.echo(cdr.to_json())


@billing_app.command("run")
def billing_run(
    period: Annotated[str, typer.Option(help="The month to invoice, YYYY-MM "
                                             "[default: last month]")] = "",
) -> None:
    """Run the monthly invoicing now (the service's scheduler does it every month). A period
    run again invoices only the drivers still without an invoice for it."""
    from billing_api import invoicing, scheduled

    settings = get_settings()
    try:
        start = (date.fromisoformat(f"{period}-01") if period
                 else invoicing.previous_month(date.today()))
    except ValueError:
        _fail(f"period {period!r} is not YYYY-MM")
    from chargedesk.errors import DomainError

    try:
        report = invoicing.run_invoices(
            _engine(), period_start=start, settings=settings, started_by="cli",
            after_batch=scheduled.after_invoices(settings),
            on_batch=lambda done, total: _progress(f"{done}/{total} drivers invoiced"))
    except DomainError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(asdict(report), default=str))


@billing_app.command("export")
def billing_export(
    kind: Annotated[str, typer.Argument(
        help="autogiro-mandates | autogiro-payments | sepa-payments")],
    out: Annotated[Path | None, typer.Option(help="Write the file here too")] = None,
) -> None:
    """Write the next file for the bank; it is also kept in the database."""
    from billing_api import payments

    exports = {"autogiro-mandates": payments.export_autogiro_mandates,
               "autogiro-payments": payments.export_autogiro_payments,
               "sepa-payments": payments.export_sepa_payments}
    if kind not in exports:
        _fail(f"no export {kind}; choose one of {', '.join(exports)}")
    made = _in_session(exports[kind], settings=get_settings(), created_by="cli",
                       today=date.today())
    if made is None:
        typer.echo("nothing to send")
        return
    if out is not None:
        out.write_text(made.content, encoding="latin-1" if kind.startswith("autogiro")
                       else "utf-8", newline="")
    typer.echo(f"{made.filename}: {made.records} records (bank file {made.id})")


@billing_app.command("import")
def billing_import(
    kind: Annotated[str, typer.Argument(
        help="autogiro-mandate-result | autogiro-payment-result")],
    file: Annotated[Path, typer.Argument(help="The file Bankgirot delivered")],
) -> None:
    """Read a result file from Bankgirot into mandate and payment states."""
    from billing_api import payments

    imports = {"autogiro-mandate-result": payments.import_autogiro_mandate_result,
               "autogiro-payment-result": payments.import_autogiro_payment_result}
    if kind not in imports:
        _fail(f"no import {kind}; choose one of {', '.join(imports)}")
    summary = _in_session(imports[kind], content=file.read_bytes(), filename=file.name,
                          created_by="cli", settings=get_settings())
    typer.echo(json.dumps(asdict(summary), default=str))


@billing_app.command("send-email")
def billing_send_email() -> None:
    """Queue e-mail for new invoices and deliver what is queued (the service does this every
    minute)."""
    from billing_api import mailer

    settings = get_settings()
    engine = _engine()
    queued = _in_session(mailer.queue_new_invoices, settings=settings)
    report = asyncio.run(mailer.deliver_pending(engine, settings))
    typer.echo(f"{queued} invoice(s) queued; {report.summary}")


@bench_app.command("ocpp")
def bench_ocpp(
    stations: Annotated[int, typer.Option(min=1, help="Simulated stations")] = 1000,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of steady load")] = 60,
    command_rate: Annotated[float, typer.Option(help="Remote commands per second")] = 20,
    find_limit: Annotated[bool, typer.Option(
        help="Also ramp the station count to find where command p99 passes 1 s")] = False,
    limit_step: Annotated[int, typer.Option(min=100, help="Stations added per limit step")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Load the central system with simulated stations and commands, against a bare baseline."""
    from chargedesk.bench.ocpp import run

    figures = run(stations=stations, duration=duration, command_rate=command_rate,
                  find_limit=find_limit, limit_step=limit_step, progress=_progress)
    typer.echo(json.dumps(figures, indent=None if as_json else 2, default=str))


@bench_app.command("billing")
def bench_billing(
    sessions: Annotated[int, typer.Option(min=1, help="Sessions to generate and rate")] = 1_000_000,
    drivers: Annotated[int | None, typer.Option(
        min=1, help="Drivers invoiced in the monthly run [default: sessions/10]")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="An empty database (sqlite:///… allowed) [default: a fresh PostgreSQL schema"
             " bench_billing on 127.0.0.1:5432/test]")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Rating processes [default: CPU count]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated sessions")] = 1,
    keep: Annotated[bool, typer.Option(help="Keep the schema and rows afterwards")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Rate sessions in worker processes and run a monthly invoice run, each beside a plain
    SQL aggregate over the same rows."""
    from chargedesk.bench.billing import BenchError, run, summary

    try:
        figures = run(sessions=sessions, drivers=drivers, database_url=database_url,
                      workers=workers, keep=keep, seed=seed, progress=_progress)
    except BenchError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(figures, default=str) if as_json else summary(figures))
    if figures["failures"]:
        _fail("bench billing failed: " + "; ".join(figures["failures"]))


@bench_app.command("schedule")
def bench_schedule(
    sessions: Annotated[Path, typer.Option(
        exists=True, dir_okay=False, help="Sessions CSV (columns of acn_caltech_2019-03.csv)")],
    capacity_kw: Annotated[str, typer.Option(
        help="Comma-separated site capacities, kW")] = "10,20,30,40,50,60,70,80",
    phase_limits: Annotated[bool, typer.Option(
        help="Also run each capacity with per-phase limits (a third on each phase)")] = True,
    days: Annotated[float | None, typer.Option(
        min=0.1, help="Only sessions arriving in the first DAYS days")] = None,
    replan_runs: Annotated[int, typer.Option(
        min=1, help="Timed runs of the 500-car re-plan")] = 7,
    realistic: Annotated[bool, typer.Option(
        "--realistic", help="A 400 V three-phase site: 6 A minimum, whole amperes, taper,"
                            " noisy stated departures and energies (load_manager.realistic)")
                         ] = False,
    seed: Annotated[int, typer.Option(
        help="--realistic: seed of the cars, batteries and statement noise")] = 0,
    controller_connectors: Annotated[int, typer.Option(
        min=0, help="--realistic: also time the real-time controller's rebalance of an MPC"
                    " site with this many charging connectors (0: not)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Compare charging schedulers on recorded sessions under a capacity sweep; time a 500-car
    re-plan and a 1,000-connector rebalance (with --realistic: a 500-car three-phase re-plan)."""
    from chargedesk.bench.schedule import realistic_summary, run, run_realistic, summary

    try:
        capacities = [float(c) for c in capacity_kw.split(",") if c.strip()]
    except ValueError:
        _fail(f"--capacity-kw: not a list of numbers: {capacity_kw!r}")
    if not capacities or any(c <= 0 for c in capacities):
        _fail("--capacity-kw: give positive capacities")
    if realistic:
        figures = run_realistic(sessions_path=sessions, capacities=capacities, seed=seed,
                                days=days, replan_runs=replan_runs,
                                controller_connectors=controller_connectors,
                                progress=_progress)
        typer.echo(json.dumps(figures, default=str) if as_json else realistic_summary(figures))
    else:
        figures = run(sessions_path=sessions, capacities=capacities, phase_limits=phase_limits,
                      days=days, replan_runs=replan_runs, progress=_progress)
        typer.echo(json.dumps(figures, default=str) if as_json else summary(figures))
    if figures["failures"]:
        _fail("bench schedule missed: " + ", ".join(figures["failures"]))


@bench_app.command("analytics")
def bench_analytics(
    sessions: Annotated[int, typer.Option(min=1, help="Visits to generate")] = 1_000_000,
    database_url: Annotated[str | None, typer.Option(
        help="An empty database (sqlite:///… allowed) [default: a fresh PostgreSQL schema"
             " bench_analytics on 127.0.0.1:5432/test]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated visits")] = 1,
    keep: Annotated[bool, typer.Option(help="Keep the schema and rows afterwards")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Usage analytics over a year of visits learnt from the Trondheim data, beside a plain
    SQL GROUP BY over the same table."""
    from chargedesk.bench.analytics import BenchError, run, summary

    try:
        figures = run(sessions=sessions, database_url=database_url, keep=keep, seed=seed,
                      progress=_progress)
    except BenchError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(figures, default=str) if as_json else summary(figures))
    if figures["failures"]:
        _fail("bench analytics failed: " + "; ".join(figures["failures"]))


@bench_app.command("chat")
def bench_chat(
    conversations: Annotated[int, typer.Option(min=1, help="Concurrent conversations")] = 200,
    turns: Annotated[int, typer.Option(min=1, help="Turns per conversation")] = 10,
    rate: Annotated[float, typer.Option(
        min=1, help="Turns per second offered by all conversations together")] = 600,
    url: Annotated[str | None, typer.Option(
        help="A running server [default: start one]")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="Database of the server started here (empty; migrated and seeded with the"
             " demo network) [default: a fresh SQLite file]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Concurrent web chat conversations over the REST channel, beside GET /healthz under
    the same schedule: turns per second and p50/p99 per turn."""
    from chargedesk.bench.chat import run, summary

    if url is not None and database_url is not None:
        _fail("give --url or --database-url, not both")
    try:
        figures = run(conversations=conversations, turns=turns, rate=rate, url=url,
                      database_url=database_url, progress=_progress)
    except (RuntimeError, httpx.HTTPError) as exc:
        _fail(f"bench chat failed: {exc}")
    typer.echo(json.dumps(figures, default=str) if as_json else summary(figures))
    if figures["failures"]:
        _fail("bench chat missed: " + "; ".join(figures["failures"]))


@bench_app.command("sms")
def bench_sms(
    requests: Annotated[int, typer.Option(min=1, help="Signed webhooks to post")] = 3000,
    concurrency: Annotated[int, typer.Option(min=1, help="Connections posting at once")] = 16,
    url: Annotated[str | None, typer.Option(
        help="A running server whose CHARGEDESK_TWILIO_API_BASE_URL is"
             " http://127.0.0.1:<--stub-port> [default: start one]")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="Database of the server started here [default: a fresh SQLite file]")] = None,
    stub_port: Annotated[int, typer.Option(
        help="Port of the Twilio API stand-in (needed with --url) [default: any]")] = 0,
    public_url: Annotated[str | None, typer.Option(
        envvar="CHARGEDESK_PUBLIC_BASE_URL",
        help="With --url: the base URL the server checks signatures against")] = None,
    account_sid: Annotated[str | None, typer.Option(
        envvar="CHARGEDESK_TWILIO_ACCOUNT_SID", help="With --url: the server's")] = None,
    auth_token: Annotated[str | None, typer.Option(
        envvar="CHARGEDESK_TWILIO_AUTH_TOKEN", show_default=False,
        help="With --url: the server's")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Signed Twilio SMS webhooks at a server, beside GET /healthz the same way: requests
    per second and p50/p99; replies go to a Twilio stand-in on loopback."""
    from chargedesk.bench.sms import run, summary

    if url is not None and database_url is not None:
        _fail("give --url or --database-url, not both")
    if url is not None and not (stub_port and account_sid and auth_token):
        _fail("with --url give --stub-port, --account-sid and --auth-token (or their"
              " CHARGEDESK_TWILIO_* variables) as the server has them")
    try:
        figures = run(requests=requests, concurrency=concurrency, url=url,
                      database_url=database_url, stub_port=stub_port,
                      public_url=public_url if url is not None else None,
                      account_sid=account_sid if url is not None else None,
                      auth_token=auth_token if url is not None else None, progress=_progress)
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        _fail(f"bench sms failed: {exc}")
    typer.echo(json.dumps(figures, default=str) if as_json else summary(figures))
    if figures["failures"]:
        _fail("bench sms missed: " + "; ".join(figures["failures"]))


@bench_app.command("email")
def bench_email(
    messages: Annotated[int, typer.Option(min=2, help="Messages to send")] = 1000,
    concurrency: Annotated[int, typer.Option(min=1, help="SMTP connections at once")] = 8,
    database_url: Annotated[str | None, typer.Option(
        help="Database of the server started here (empty; migrated and seeded with the"
             " demo network) [default: a fresh SQLite file]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Real SMTP messages at the inbound e-mail server of a server started here: messages
    ingested (stored, 250) and answered per second, beside an SMTP sink that only accepts."""
    from chargedesk.bench.email import run, summary

    try:
        figures = run(messages=messages, concurrency=concurrency, database_url=database_url,
                      progress=_progress)
    except (RuntimeError, OSError) as exc:
        _fail(f"bench email failed: {exc}")
    typer.echo(json.dumps(figures, default=str) if as_json else summary(figures))
    if figures["failures"]:
        _fail("bench email failed: " + "; ".join(figures["failures"]))


# ---------------------------------------------------------------- chat


@app.command()
def chat(
    url: Annotated[str, typer.Option(envvar="CHARGEDESK_URL",
                                     help="The running server")] = "http://127.0.0.1:8000",
    sender: Annotated[str | None, typer.Option(
        help="Keep this conversation under NAME and resume it next time (the server picks "
             "the sender id; its token is kept in DATA_DIR/chat/NAME.json)")] = None,
) -> None:
    """Chat with the assistant from the terminal, through the public web chat endpoints.

    Type a message; a number picks a quick reply; /login signs in with a one-time code;
    /quit ends."""
    store = get_settings().data_dir / "chat" / f"{sender}.json" if sender else None
    with httpx.Client(base_url=url.rstrip("/"), timeout=60) as client:
        try:
            session = json.loads(store.read_text()) if store and store.exists() else None
            if session is None:
                response = client.post("/chat/session")
                response.raise_for_status()
                session = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            _fail(f"cannot reach the chat at {url}: {exc}")
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(session))
            store.chmod(0o600)
        buttons: list[dict[str, Any]] = []
        typer.echo("Skriv på svenska eller engelska. /login loggar in, /quit avslutar.")
        while True:
            try:
                text = input("du> ").strip()
            except (EOFError, KeyboardInterrupt):
                typer.echo()
                return
            if not text:
                continue
            if text in {"/quit", "/exit"}:
                return
            auth = {"Authorization": f"Bearer {session['token']}"}
            if text == "/login":
                contact = input("e-post eller mobilnummer> ").strip()
                answer = client.post("/chat/verify/start", json={"contact": contact},
                                     headers=auth)
                if answer.status_code != 200:
                    typer.echo(f"   {answer.json().get('detail', answer.status_code)}")
                    continue
                typer.echo("   Om kontot finns har en kod skickats till dess e-post.")
                answer = client.post("/chat/verify/check",
                                     json={"code": input("kod> ").strip()}, headers=auth)
                if answer.status_code != 200:
                    typer.echo(f"   {answer.json().get('detail', answer.status_code)}")
                    continue
                session = answer.json()
                if store is not None:
                    store.write_text(json.dumps(session))
                typer.echo("   Inloggad.")
                continue
            if text.isdigit() and 0 < int(text) <= len(buttons):
                text = buttons[int(text) - 1].get("payload") or buttons[int(text) - 1]["title"]
            response = client.post("/webhooks/rest/webhook",
                                   json={"sender": session["sender"], "message": text},
                                   headers=auth)
            if response.status_code != 200:
                typer.echo(f"   ({response.status_code}) {response.text[:200]}")
                continue
            buttons = []
            for message in response.json():
                if message.get("text"):
                    typer.secho(f"bot> {message['text']}", fg=typer.colors.GREEN)
                for button in message.get("buttons") or []:
                    buttons.append(button)
                    typer.echo(f"   [{len(buttons)}] {button['title']}")


# ---------------------------------------------------------------- nlu

nlu_app = typer.Typer(help="The assistant's language understanding.", no_args_is_help=True)
app.add_typer(nlu_app, name="nlu")


@nlu_app.command("train")
def nlu_train(
    force: Annotated[bool, typer.Option(help="Train even if a cached model matches")] = False,
) -> None:
    """Train the NLU model on assistant/intents (cached under DATA_DIR/models)."""
    from assistant.nlu import data as nlu_data
    from assistant.nlu.engine import load_or_train, model_path

    models_dir = get_settings().data_dir / "models"
    training = nlu_data.load()
    path = model_path(models_dir, training)
    cached = path.exists() and not force
    engine = load_or_train(models_dir, training, force=force)
    how = "cached, trained in" if cached else "trained in"
    typer.echo(f"{path}: {len(training.examples)} examples, {len(training.intents)} intents, "
               f"{how} {engine.trained_seconds:.2f} s")


@nlu_app.command("parse")
def nlu_parse(
    today: Annotated[str | None, typer.Option(
        help="Read relative dates against this day, YYYY-MM-DD [default: today]")] = None,
) -> None:
    """Parse each line of standard input; print one Rasa parse result (JSON) per line."""
    from assistant.nlu.engine import get_engine

    engine = get_engine(get_settings().data_dir / "models")
    day = date.fromisoformat(today) if today else None
    for line in sys.stdin:
        text = line.rstrip("\n")
        if text.strip():
            typer.echo(json.dumps(engine.parse(text, today=day), ensure_ascii=False))


@nlu_app.command("evaluate")
def nlu_evaluate(
    data: Annotated[str, typer.Option(help="ours, clinc150, banking77 or all")] = "ours",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    report_dir: Annotated[Path | None, typer.Option(
        help="Write confusion-matrix PNGs and report.json here")] = None,
) -> None:
    """Accuracy, per-intent precision/recall/F1, confusion matrices and parse latency."""
    from assistant.nlu.evaluate import run, summary

    if data not in {"ours", "clinc150", "banking77", "all"}:
        _fail(f"--data: one of ours, clinc150, banking77, all; not {data!r}")
    reports = run(data, report_dir=report_dir, progress=_progress)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "report.json").write_text(json.dumps(reports, indent=2, default=str))
    typer.echo(json.dumps(reports, default=str) if as_json else summary(reports))


def _progress(text: str) -> None:
    typer.echo(text, err=True)


def main() -> None:  # pragma: no cover - console entry
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())
