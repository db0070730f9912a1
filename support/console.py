"""The agent console at ``/agent``: sign-in, the queue and a ticket on one screen
(``static/console.js`` on top of ``/api/v1/support``), and ``/agent/reports``.

Pages need a console session (:mod:`support.auth`); without one they send the browser to
``/agent/login``. Sign-in and sign-out are POSTs from our own origin; sign-out carries the
session's CSRF token. Sign-in attempts are limited per client address and per username.
The page, its script and its stylesheet are served with a strict Content-Security-Policy
(scripts only from this origin, no inline script).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from assistant.channels.web import RateLimiter
from chargedesk.auth import SessionDep
from support import auth, charts, reports
from support.auth import COOKIE, Actor
from support.models import SupportAgent

router = APIRouter(prefix="/agent", tags=["agent console"], include_in_schema=False)

HERE = Path(__file__).parent
STATIC = HERE / "static"
_env = Environment(loader=FileSystemLoader(HERE / "templates"),
                   autoescape=select_autoescape(["html"]))


def _attempts(request: Request) -> dict[str, RateLimiter]:
    """Sign-in attempts of this app: a few at once, then one every 10 s, per client
    address and per username."""
    limiters: dict[str, RateLimiter] | None = getattr(request.app.state, "agent_sign_in", None)
    if limiters is None:
        limiters = request.app.state.agent_sign_in = {
            "client": RateLimiter(10, 0.1), "user": RateLimiter(5, 0.1)}
    return limiters


def _render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                                   "style-src 'self'; img-src 'self' data:; "
                                   "connect-src 'self'; form-action 'self'; "
                                   "frame-ancestors 'none'"})


def _agent(request: Request, session: SessionDep) -> SupportAgent | None:
    desk = request.app.state.support
    return auth.session_agent(session, settings=desk.settings,
                              cookie=request.cookies.get(COOKIE), now=desk.clock())


def page_agent(request: Request, session: SessionDep) -> SupportAgent:
    agent = _agent(request, session)
    if agent is None:
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in first",
                            headers={"Location": "/agent/login"})
    auth.touch(session, agent=agent, now=request.app.state.support.clock())
    return agent


PageAgent = Annotated[SupportAgent, Depends(page_agent)]


def _cookie_args(request: Request) -> dict[str, Any]:
    return {"path": "/", "httponly": True, "samesite": "lax",
            "secure": request.url.scheme == "https"}


# ---------------------------------------------------------------- sign in and out


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep) -> Response:
    if _agent(request, session) is not None:
        return RedirectResponse("/agent", status.HTTP_303_SEE_OTHER)
    return _render("agent_login.html", error=None, username="")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, session: SessionDep) -> Response:
    auth.same_origin(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    username = (form.get("username") or [""])[0].strip()[:80]
    password = (form.get("password") or [""])[0][:200]
    client = request.client.host if request.client else "unknown"
    limits = _attempts(request)
    if not (limits["client"].allow(client) and limits["user"].allow(username.lower())):
        return _render("agent_login.html", status.HTTP_429_TOO_MANY_REQUESTS,
                       error="Too many attempts. Wait a minute and try again.",
                       username=username)
    agent = auth.check_credentials(session, username=username, password=password) \
        if username and password else None
    if agent is None:
        return _render("agent_login.html", status.HTTP_401_UNAUTHORIZED,
                       error="Wrong username or password.", username=username)
    desk = request.app.state.support
    cookie = auth.start_session(session, agent=agent, settings=desk.settings,
                                now=desk.clock())
    response = RedirectResponse("/agent", status.HTTP_303_SEE_OTHER)
    response.set_cookie(COOKIE, cookie, max_age=desk.settings.support_session_hours * 3600,
                        **_cookie_args(request))
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep) -> Response:
    auth.same_origin(request)
    desk = request.app.state.support
    cookie = request.cookies.get(COOKIE)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    sent = (form.get("csrf_token") or [""])[0]
    expected = auth.csrf_token(desk.settings, cookie)
    if not expected or sent != expected:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    auth.end_session(session, settings=desk.settings, cookie=cookie, now=desk.clock())
    response = RedirectResponse("/agent/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, **_cookie_args(request))
    return response


# ---------------------------------------------------------------- pages


def _context(request: Request, agent: SupportAgent) -> dict[str, Any]:
    desk = request.app.state.support
    return {"agent": agent, "role": str(agent.role),
            "lead": str(agent.role) == "supervisor",
            "csrf": auth.csrf_token(desk.settings, request.cookies.get(COOKIE))}


@router.get("", response_class=HTMLResponse)
def console(request: Request, agent: PageAgent) -> Response:
    """The queue and the open ticket; the script fills them from the REST API."""
    return _render("agent_console.html", **_context(request, agent))


@router.get("/reports", response_class=HTMLResponse)
def reports_page(request: Request, session: SessionDep, agent: PageAgent,
                 start: Annotated[date | None, Query(alias="from")] = None,
                 end: Annotated[date | None, Query(alias="to")] = None) -> Response:
    """The report as tables and charts (supervisors)."""
    from support.views import report_period

    if str(agent.role) != "supervisor":
        return _render("agent_denied.html", status.HTTP_403_FORBIDDEN,
                       **_context(request, agent))
    desk = request.app.state.support
    period = report_period(request, start, end)
    report = reports.build(session, period=period, now=desk.clock())
    query = urlencode({"from": _local(request, period.start).isoformat(),
                       "to": _local(request, period.end, end=True).isoformat()})
    return _render("agent_reports.html", report=report, query=query, charts=charts.CHARTS,
                   start=_local(request, period.start), end=_local(request, period.end,
                                                                    end=True),
                   **_context(request, agent))


def _local(request: Request, at: Any, *, end: bool = False) -> date:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(request.app.state.support.settings.time_zone)
    day: date = at.astimezone(zone).date()
    return day - timedelta(days=1) if end else day


@router.get("/reports/charts/{name}.png", response_class=Response)
def chart(name: str, request: Request, session: SessionDep, agent: PageAgent,
          start: Annotated[date | None, Query(alias="from")] = None,
          end: Annotated[date | None, Query(alias="to")] = None) -> Response:
    from support.views import report_period

    if str(agent.role) != "supervisor":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "reports are for supervisors")
    if name not in charts.CHARTS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no chart {name}")
    desk = request.app.state.support
    report = reports.build(session, period=report_period(request, start, end),
                           now=desk.clock())
    return Response(charts.draw(name, report), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=60"})


# ---------------------------------------------------------------- assets

_ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    """The console's script and stylesheet (no secrets; the login page needs the CSS)."""
    if name not in _ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return FileResponse(STATIC / name, media_type=_ASSETS[name],
                        headers={"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


__all__ = ["Actor", "router"]
