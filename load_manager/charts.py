"""PNG charts of an analytics report, drawn with matplotlib's Agg backend (no display).

Figures are built with the object API (``Figure`` + ``FigureCanvasAgg``), not pyplot, so no
global state is shared between requests served on different threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from load_manager.analytics import DAYS, Finding, Report

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def utilisation_heatmap(report: Report, *, site_id: str) -> bytes:
    """Utilisation by local day (rows) and hour (columns) for one site, 0-100 %."""
    i = report.site_index(site_id)
    grid = report.hours.utilisation[i].reshape(7, 24) * 100
    fig = Figure(figsize=(9, 3.2))
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="YlOrRd", vmin=0, vmax=100)
    ax.set_yticks(range(7), DAYS)
    ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
    ax.set_xlabel(f"hour ({report.hours.zones[i]})")
    name = report.inventory.site_name.get(site_id) or site_id
    ax.set_title(f"{name}: connectors occupied, {report.start:%Y-%m-%d} to {report.end:%Y-%m-%d}")
    fig.colorbar(image, ax=ax, label="%")
    return _png(fig)


def energy_per_day(report: Report, *, site_id: str | None = None) -> bytes:
    """Energy delivered per local day of plug-in, for one site or the whole network."""
    h = report.hours
    rows = [report.site_index(site_id)] if site_id is not None else list(range(len(h.sites)))
    daily = h.daily_energy_wh[rows].sum(axis=0) / 1000 if rows else np.zeros(0)
    first = np.datetime64(h.first_day)
    days = first + np.arange(daily.shape[0]).astype("timedelta64[D]")
    lo, hi = np.datetime64(report.start.date()), np.datetime64(report.end.date())
    keep = (days >= lo) & (days <= hi)
    fig = Figure(figsize=(9, 3))
    ax = fig.add_subplot()
    ax.bar(days[keep].astype("datetime64[D]").astype(object), daily[keep], width=0.9,
           color="#2b7bb9")
    ax.set_ylabel("kWh")
    title = report.inventory.site_name.get(site_id, site_id) if site_id else "All sites"
    ax.set_title(f"{title}: energy per day")
    fig.autofmt_xdate()
    return _png(fig)


def bottleneck_bars(findings: Sequence[Finding], *, top: int = 10) -> bytes:
    """The most severe findings as horizontal bars of severity (1 = at the threshold)."""
    shown = list(findings[:top])[::-1]
    fig = Figure(figsize=(9, max(2.0, 0.4 * len(shown) + 1)))
    ax = fig.add_subplot()
    if shown:
        labels = [f"{f.scope} {f.id}: {f.kind.replace('_', ' ')}" for f in shown]
        ax.barh(range(len(shown)), [f.severity for f in shown], color="#d9534f")
        ax.set_yticks(range(len(shown)), labels)
        ax.axvline(1.0, color="black", linewidth=0.8)
    else:
        ax.text(0.5, 0.5, "no bottlenecks", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("severity (value / threshold)")
    ax.set_title(f"Top {len(shown)} bottlenecks")
    return _png(fig)
