"""PNG charts of a support report (:mod:`support.reports`), drawn with matplotlib's Agg
backend through the object API, as ``load_manager.charts`` does: no pyplot, no global state
shared between requests."""

from __future__ import annotations

import io
import textwrap
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
CHARTS = ("containment", "times", "csat", "backlog")
_BLUE, _GREEN, _ORANGE, _GREY = "#2b7bb9", "#2a9d8f", "#e9a03b", "#9aa5b1"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _empty(ax: Any, text: str = "no data in this period") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=_GREY)
    ax.set_xticks([])
    ax.set_yticks([])


def containment(report: dict[str, Any]) -> bytes:
    """Share of bot sessions contained, by channel (left) and by intent (right)."""
    data = report["containment"]
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    for ax, groups, title in ((left, data["by_channel"], "by channel"),
                              (right, data["by_intent"], "by intent")):
        names = [k for k, v in groups.items() if v["sessions"]][:12]
        if not names:
            _empty(ax)
        else:
            rates = [groups[k]["rate"] * 100 for k in names]
            ax.barh(names[::-1], rates[::-1], color=_GREEN)
            ax.set_xlim(0, 100)
            ax.set_xlabel("% contained (no person needed)")
            for y, (name, value) in enumerate(zip(names[::-1], rates[::-1], strict=True)):
                ax.text(min(value + 1, 92), y, f"{value:.0f}% of {groups[name]['sessions']}",
                        va="center", fontsize=8)
        ax.set_title(f"Containment {title}")
    fig.tight_layout()
    return _png(fig)


def _paired_bars(ax: Any, first: dict[str, Any], second: dict[str, Any], title: str) -> None:
    names = sorted(set(first) | set(second))[:12]
    if not names:
        _empty(ax)
    else:
        ys = range(len(names))
        ax.barh([y + 0.2 for y in ys], [(first.get(n) or {}).get("median") or 0 for n in names],
                height=0.4, color=_BLUE, label="first response")
        ax.barh([y - 0.2 for y in ys],
                [(second.get(n) or {}).get("median") or 0 for n in names], height=0.4,
                color=_ORANGE, label="resolution")
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("median, minutes")
        ax.legend(fontsize=7)
    ax.set_title(title)


def times(report: dict[str, Any]) -> bytes:
    """Median first-response and resolution times (minutes) by team, channel and intent."""
    t = report["times"]
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(axes, ("team", "channel", "intent"),
                              ("by team", "by channel", "by intent"), strict=True):
        _paired_bars(ax, t.get(f"first_response_by_{key}", {}),
                     t.get(f"resolution_by_{key}", {}), f"Response times {title}")
    fig.tight_layout()
    return _png(fig)


def _mean_bars(ax: Any, groups: dict[str, Any], title: str) -> None:
    names = [k for k, v in groups.items() if v.get("mean") is not None][:12]
    if not names:
        _empty(ax, "no ratings in this period")
    else:
        means = [groups[k]["mean"] for k in names]
        ax.barh(names[::-1], means[::-1], color=_GREEN)
        ax.set_xlim(0, 5)
        ax.set_xlabel("mean score (1-5)")
        for y, (name, value) in enumerate(zip(names[::-1], means[::-1], strict=True)):
            ax.text(min(value + 0.05, 4.4), y, f"{value:.1f} ({groups[name]['answered']})",
                    va="center", fontsize=8)
    ax.set_title(title)


def csat(report: dict[str, Any]) -> bytes:
    """How drivers rated resolved tickets, 1-5, and the mean by channel and intent."""
    data = report["csat"]
    distribution = data["distribution"]
    fig = Figure(figsize=(12, 3.4))
    ax, by_channel, by_intent = fig.subplots(1, 3)
    counts = [distribution.get(str(n), 0) for n in range(1, 6)]
    if not any(counts):
        _empty(ax, "no ratings in this period")
    else:
        ax.bar([str(n) for n in range(1, 6)], counts,
               color=["#d1495b", "#e9a03b", _GREY, "#8ab17d", _GREEN])
        ax.set_xlabel("score")
        ax.set_ylabel("tickets")
    mean = data["mean"]
    ax.set_title("Satisfaction" + (f" (mean {mean})" if mean is not None else ""))
    _mean_bars(by_channel, data.get("by_channel", {}), "Mean score by channel")
    _mean_bars(by_intent, data.get("by_intent", {}), "Mean score by intent")
    fig.tight_layout()
    return _png(fig)


def _count_bars(ax: Any, counts: dict[str, int], title: str) -> None:
    names = list(counts)[:12]
    if not names:
        _empty(ax, "nothing waiting")
    else:
        ax.barh(names[::-1], [counts[n] for n in names][::-1], color=_BLUE)
        ax.set_xlabel("open tickets")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)


def backlog(report: dict[str, Any]) -> bytes:
    """Tickets waiting now, by team and status, and open ones by channel and intent."""
    data = report["backlog"]
    by_team = data["by_team"]
    fig = Figure(figsize=(12, 3.4))
    ax, by_channel, by_intent = fig.subplots(1, 3)
    teams = list(by_team)
    if not teams:
        _empty(ax, "nothing waiting")
    else:
        bottom = [0] * len(teams)
        for status, colour in (("open", _BLUE), ("snoozed", _GREY), ("pending", _ORANGE)):
            values = [by_team[t].get(status, 0) for t in teams]
            ax.bar([textwrap.fill(t, 14) for t in teams], values, bottom=bottom,
                   color=colour, label=status)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("tickets")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    ax.set_title("Backlog now")
    _count_bars(by_channel, data.get("by_channel", {}), "Open by channel")
    _count_bars(by_intent, data.get("by_intent", {}), "Open by intent")
    fig.tight_layout()
    return _png(fig)


def draw(name: str, report: dict[str, Any]) -> bytes:
    if name not in CHARTS:
        raise KeyError(name)
    return {"containment": containment, "times": times, "csat": csat,
            "backlog": backlog}[name](report)
