"""REST under ``/api/v1/analytics``: usage per site and hour of week, per station, bottlenecks,
the capacity plan with recommendations, and CSV exports. Operator or agent keys.

Every endpoint takes the period as ``from``/``to`` (ISO 8601 with an offset; default the 28
days to the start of the current hour) and computes on request with
:func:`load_manager.analytics.analyse`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel

from chargedesk.auth import SessionDep, StaffUser
from load_manager import analytics
from load_manager.analytics import EXPORT_KINDS, Report, Thresholds

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])

MAX_PERIOD = timedelta(days=400)
DEFAULT_PERIOD = timedelta(days=28)


class Period(BaseModel):
    start: datetime
    end: datetime


def period(
    start: Annotated[datetime | None, Query(alias="from", description=(
        "Start, ISO 8601 with an offset (default: 28 days before `to`)"))] = None,
    end: Annotated[datetime | None, Query(alias="to", description=(
        "End, exclusive, ISO 8601 with an offset (default: this hour's start)"))] = None,
) -> Period:
    """The period asked for, validated: both aware, ``from`` before ``to``, at most 400 days."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"`{name}` needs a UTC offset, e.g. 2026-03-01T00:00:00+01:00")
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if start is None:
        start = end - DEFAULT_PERIOD
    if not start < end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`from` must be before `to`")
    if end - start > MAX_PERIOD:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"the period may be at most {MAX_PERIOD.days} days")
    return Period(start=start, end=end)


PeriodDep = Annotated[Period, Depends(period)]
Target = Annotated[float, Query(gt=0, lt=1, description="Highest acceptable P(wait)")]
ExtraKw = Annotated[float, Query(gt=0, le=10_000, description="Grid upgrade to assess, kW")]


def run_analysis(request: Request, p: Period, *, target: float = 0.2, extra_kw: float = 22.0,
                 site_ids: list[str] | None = None) -> Report:
    return analytics.analyse(request.app.state.runtime.engine, start=p.start, end=p.end,
                             target=target, extra_kw=extra_kw, thresholds=Thresholds(),
                             site_ids=site_ids)


def _meta(report: Report) -> dict[str, Any]:
    return {"from": report.start.isoformat(), "to": report.end.isoformat(),
            "visits": report.visits}


@router.get("/sites")
def sites(request: Request, p: PeriodDep, _: StaffUser) -> dict[str, Any]:
    """Each site over the period: connectors, utilisation, peak hour, sessions, energy."""
    report = run_analysis(request, p)
    h = report.hours
    util = h.utilisation
    rows = []
    for i, site_id in enumerate(h.sites):
        available = float(h.available_s[i].sum())
        peak = int(util[i].argmax())
        rows.append({
            "site_id": site_id, "name": report.inventory.site_name.get(site_id or ""),
            "time_zone": h.zones[i], "connectors": int(h.connectors[i]),
            "utilisation": round(float(h.occupied_s[i].sum()) / available, 4)
            if available else 0.0,
            "peak_hour_of_week": peak, "peak_utilisation": round(float(util[i, peak]), 4),
            "sessions": int(h.started[i].sum()),
            "energy_kwh": round(float(h.energy_wh[i].sum()) / 1000, 3),
        })
    return {**_meta(report), "sites": rows}


@router.get("/sites/{site_id}/hours")
def site_hours(site_id: str, request: Request, p: PeriodDep, _: StaffUser,
               target: Target = 0.2) -> dict[str, Any]:
    """168 rows, Monday 00:00 local first: utilisation, sessions, durations, idle share,
    energy, failed starts, faults, offered load and connectors needed at ``target``."""
    report = run_analysis(request, p, target=target, site_ids=[site_id])
    rows = analytics.site_hour_rows(report, site_id=site_id)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"site {site_id} not found")
    return {**_meta(report), "site_id": site_id, "time_zone": report.hours.zones[
        report.site_index(site_id)], "target_p_wait": target, "hours": rows}


@router.get("/stations")
def stations(request: Request, p: PeriodDep, _: StaffUser) -> dict[str, Any]:
    """Each station over the period."""
    report = run_analysis(request, p)
    return {**_meta(report), "stations": analytics.station_rows(report)}


@router.get("/stations/{station_id}/hours")
def station_hours(station_id: str, request: Request, session: SessionDep, p: PeriodDep,
                  _: StaffUser) -> dict[str, Any]:
    """168 rows for one station, in its site's local time."""
    from station_api.models import Station

    if session.get(Station, station_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"station {station_id} not found")
    engine = request.app.state.runtime.engine
    report = analytics.analyse(engine, start=p.start, end=p.end, station_ids=[station_id])
    return {**_meta(report), "station_id": station_id,
            "hours": analytics.station_hour_rows(report, engine, station_id=station_id)}


@router.get("/bottlenecks")
def bottlenecks(request: Request, p: PeriodDep, _: StaffUser) -> dict[str, Any]:
    """Stations and sites over a threshold, most severe first, with the thresholds used."""
    report = run_analysis(request, p)
    return {**_meta(report), "thresholds": Thresholds().__dict__,
            "bottlenecks": [f.as_dict() for f in report.bottlenecks]}


@router.get("/capacity")
def capacity(request: Request, p: PeriodDep, _: StaffUser, target: Target = 0.2,
             extra_kw: ExtraKw = 22.0) -> dict[str, Any]:
    """Erlang-C sizing per site (the hours short of connectors), grid upgrades and the ranked
    recommendations."""
    report = run_analysis(request, p, target=target, extra_kw=extra_kw)
    h, plan = report.hours, report.plan
    sites = []
    for i, site_id in enumerate(h.sites):
        short = (plan.required[i] > h.connectors[i]).nonzero()[0].tolist()
        sites.append({
            "site_id": site_id, "connectors": int(h.connectors[i]),
            "required_max": int(plan.required[i].max()),
            "hours_short": short,
            "hours_short_text": analytics.describe_hours(short),
            "p_wait_max": round(float(plan.p_wait_now[i].max()), 4),
        })
    return {**_meta(report), "target_p_wait": target, "extra_kw": extra_kw, "sites": sites,
            "grid": analytics.grid_rows(report),
            "recommendations": [f.as_dict() for f in report.recommendations]}


@router.get("/recommendations")
def recommendations(request: Request, p: PeriodDep, _: StaffUser, target: Target = 0.2,
                    extra_kw: ExtraKw = 22.0) -> dict[str, Any]:
    """Ranked actions with a machine-readable reason each."""
    report = run_analysis(request, p, target=target, extra_kw=extra_kw)
    return {**_meta(report), "recommendations": [f.as_dict() for f in report.recommendations]}


@router.get("/export.csv", response_class=Response, responses={
    200: {"content": {"text/csv": {}}, "description": "RFC 4180 CSV with a header row"}})
def export_csv(request: Request, p: PeriodDep, _: StaffUser,
               kind: Annotated[str, Query(description=", ".join(EXPORT_KINDS))],
               site_id: str | None = None, target: Target = 0.2,
               extra_kw: ExtraKw = 22.0) -> Response:
    """One table as CSV: ``site_hours`` (optionally one site), ``stations``, ``bottlenecks``,
    ``recommendations``, ``grid`` or ``daily_energy``."""
    return csv_response(request, p, kind=kind, site_id=site_id, target=target,
                        extra_kw=extra_kw)


def csv_response(request: Request, p: Period, *, kind: str, site_id: str | None = None,
                 target: float = 0.2, extra_kw: float = 22.0) -> Response:
    """A CSV download of one export kind (also served to the dashboard's cookie holders)."""
    if kind not in EXPORT_KINDS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"kind must be one of {', '.join(EXPORT_KINDS)}")
    report = run_analysis(request, p, target=target, extra_kw=extra_kw,
                          site_ids=[site_id] if site_id else None)
    body = analytics.to_csv(analytics.export_rows(report, kind, site_id=site_id))
    name = f"chargedesk-{kind}{'-' + site_id if site_id else ''}-{p.start:%Y%m%d}-{p.end:%Y%m%d}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{safe}.csv"'})
