"""The operator dashboard at ``/admin``: utilisation heat maps, bottlenecks, recommendations,
CSV exports, and a place for the live load allocations.

Authentication: the sign-in form takes an operator API key, checks it with
``authenticate_api_key`` and sets it in an HttpOnly, SameSite=Strict cookie (Secure over
https) scoped to ``/admin``. Every page, chart and export checks the cookie again on each
request, so a revoked key stops working at once. CSRF: the cookie is never sent on a
cross-site request (SameSite=Strict), state changes (sign-in, sign-out) are POST only, and a
POST whose ``Origin`` names another host is refused as well.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from chargedesk.auth import Principal, SessionDep, authenticate_api_key
from chargedesk.db import session_scope
from chargedesk.models import Role
from load_manager import analytics, charts
from load_manager import service as load_service
from load_manager.analytics_views import Period, csv_response, period

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)

COOKIE = "chargedesk_admin"
COOKIE_PATH = "/admin"
COOKIE_MAX_AGE = 8 * 3600
# Heat maps drawn on the page; every site is in the table.
HEATMAPS_SHOWN = 6
_env = Environment(loader=PackageLoader("load_manager", "templates"),
                   autoescape=select_autoescape(["html"]))


def _principal(request: Request, session: SessionDep) -> Principal | None:
    key = request.cookies.get(COOKIE)
    if not key:
        return None
    row = authenticate_api_key(session, key=key)
    if row is None or row.role != Role.operator:
        return None
    return Principal(role=row.role, name=row.name)


def page_user(request: Request, session: SessionDep) -> Principal:
    """An operator signed in with the cookie; others are sent to the sign-in form."""
    principal = _principal(request, session)
    if principal is None:
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in first",
                            headers={"Location": f"{COOKIE_PATH}/login"})
    return principal


def asset_user(request: Request, session: SessionDep) -> Principal:
    """An operator signed in with the cookie; 401 for charts and exports without one."""
    principal = _principal(request, session)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in at /admin/login")
    return principal


PageUser = Annotated[Principal, Depends(page_user)]
AssetUser = Annotated[Principal, Depends(asset_user)]
PeriodDep = Annotated[Period, Depends(period)]


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")


def _render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline';"
                                   " img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    })


# ---------------------------------------------------------------- sign in and out


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep) -> Response:
    if _principal(request, session) is not None:
        return RedirectResponse(COOKIE_PATH, status.HTTP_303_SEE_OTHER)
    return _render("admin_login.html", error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, session: SessionDep) -> Response:
    """Check an operator key from the form and keep it in the dashboard's cookie."""
    _same_origin(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("api_key") or [""])[0].strip()
    row = authenticate_api_key(session, key=key) if key else None
    if row is None or row.role != Role.operator:
        return _render("admin_login.html", status.HTTP_401_UNAUTHORIZED,
                       error="That is not a live operator key.")
    response = RedirectResponse(COOKIE_PATH, status.HTTP_303_SEE_OTHER)
    response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    _same_origin(request)
    response = RedirectResponse(f"{COOKIE_PATH}/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


# ---------------------------------------------------------------- pages


def _query(p: Period, **extra: str) -> str:
    return urlencode({"from": p.start.isoformat(), "to": p.end.isoformat(), **extra})


@router.get("", response_class=HTMLResponse)
def dashboard(request: Request, user: PageUser, p: PeriodDep) -> Response:
    """Sites with their heat maps, bottlenecks, recommendations and the CSV exports."""
    report = analytics.analyse(request.app.state.runtime.engine, start=p.start, end=p.end)
    h = report.hours
    sites = []
    for i, site_id in enumerate(h.sites):
        if site_id is None and not h.started[i].any():
            continue
        available = float(h.available_s[i].sum())
        sites.append({
            "id": site_id or "", "name": report.inventory.site_name.get(site_id or "", site_id
                                                                        or "unassigned"),
            "zone": h.zones[i], "connectors": int(h.connectors[i]),
            "utilisation": float(h.occupied_s[i].sum()) / available if available else 0.0,
            "sessions": int(h.started[i].sum()),
            "energy_kwh": float(h.energy_wh[i].sum()) / 1000,
            "required": int(report.plan.required[i].max()),
        })
    sites.sort(key=lambda s: -s["utilisation"])
    for s in [s for s in sites if s["id"]][:HEATMAPS_SHOWN]:
        s["heatmap"] = f"{COOKIE_PATH}/charts/heatmap.png?{_query(p, site_id=s['id'])}"
    with session_scope(request.app.state.runtime.engine) as session:
        live = [load_service.site_load(session, site_id=g.site_id)
                for g in load_service.list_site_grids(session)]
    return _render(
        "admin_dashboard.html", user=user, sites=sites, visits=report.visits, live=live,
        start=p.start, end=p.end, bottlenecks=report.bottlenecks[:20],
        recommendations=report.recommendations[:20],
        more_bottlenecks=max(0, len(report.bottlenecks) - 20),
        more_recommendations=max(0, len(report.recommendations) - 20),
        energy_chart=f"{COOKIE_PATH}/charts/energy.png?{_query(p)}",
        bottleneck_chart=f"{COOKIE_PATH}/charts/bottlenecks.png?{_query(p)}",
        exports=[(kind, f"{COOKIE_PATH}/export.csv?{_query(p, kind=kind)}")
                 for kind in analytics.EXPORT_KINDS],
    )


@router.get("/charts/heatmap.png", response_class=Response)
def heatmap_png(request: Request, _: AssetUser, p: PeriodDep,
                site_id: Annotated[str, Query(min_length=1, max_length=48)]) -> Response:
    report = analytics.analyse(request.app.state.runtime.engine, start=p.start, end=p.end,
                               site_ids=[site_id])
    try:
        png = charts.utilisation_heatmap(report, site_id=site_id)
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"site {site_id} not found") from None
    return _png(png)


@router.get("/charts/energy.png", response_class=Response)
def energy_png(request: Request, _: AssetUser, p: PeriodDep,
               site_id: Annotated[str | None, Query(max_length=48)] = None) -> Response:
    report = analytics.analyse(request.app.state.runtime.engine, start=p.start, end=p.end,
                               site_ids=[site_id] if site_id else None)
    try:
        return _png(charts.energy_per_day(report, site_id=site_id))
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"site {site_id} not found") from None


@router.get("/charts/bottlenecks.png", response_class=Response)
def bottlenecks_png(request: Request, _: AssetUser, p: PeriodDep) -> Response:
    report = analytics.analyse(request.app.state.runtime.engine, start=p.start, end=p.end)
    return _png(charts.bottleneck_bars(report.bottlenecks))


@router.get("/export.csv", response_class=Response)
def export_csv(request: Request, _: AssetUser, p: PeriodDep,
               kind: Annotated[str, Query()],
               site_id: Annotated[str | None, Query(max_length=48)] = None) -> Response:
    """The REST export, authenticated by the dashboard's cookie so that a link can fetch it."""
    return csv_response(request, p, kind=kind, site_id=site_id)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})
