"""Spend per UTC day, for charts: the series (``daily_spend``) and the image file (``write_chart``).

The product's first rule holds in pictures too: a day without an observed bill is a gap, never a
$0 bar. A day is observed when the sampler had a good run on it (``spend_by_day.sql``); the bill
is observed up to the report's last sample (``billed_until``), and the rest of the window is "not
billed yet". Each bar spans the part of its day it covers, so a window of one day starting at
09:30 draws its bars from 09:30, not over the whole calendar day. The x axis spans exactly the
window asked for.

Nothing here prints: ``write_chart`` writes the file and raises ``InputError`` for a target it
cannot write.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .report import CostReport

# The image formats matplotlib writes without extra packages.
SUFFIXES = (".png", ".svg", ".pdf")
# Chart colours, named so a reader of the image (and its tests) can tell a bar from a gap.
BAR_COLOUR = "#2b6cb0"
LINE_COLOUR = "#c05621"
UNOBSERVED_COLOUR = "#e6e6e6"
SAMPLER_GAP_COLOUR = "#d69e2e"
GRID_COLOUR = "#c4c4c4"

_HEADROOM = 0.12  # above the tallest bar or point, as a share of it
_STRIP = 0.05  # the sampler-gap strip under the $0 line, as a share of the tallest bar

OBSERVED, UNOBSERVED, NOT_BILLED_YET = "observed", "unobserved", "not billed yet"


@dataclass(frozen=True)
class DaySpend:
    """One UTC day's part of the window and what was observed of it."""

    day: date
    start: datetime  # the day's part of the window: [start, end)
    end: datetime
    status: str  # observed | unobserved | not billed yet
    spend_usd: Decimal | None  # None unless observed: never $0 for "not seen"
    usd_per_mtok_output: Decimal | None
    billed_until: datetime | None  # observed days: where the day's observed bill ends (<= end)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def daily_spend(report: CostReport) -> list[DaySpend]:
    """Every UTC day the window touches, oldest first, from a report made with ``by="day"``."""
    if report.by != "day":
        raise ValueError("daily_spend needs a report broken down by day")
    rows = {row["day"]: row for row in report.breakdown}
    window = report.window
    last_billed = report.billed_until.astimezone(UTC) if report.billed_until is not None else None
    days = []
    day = window.start.astimezone(UTC).date()
    while _midnight(day) < window.end:
        start = max(_midnight(day), window.start)
        end = min(_midnight(day + timedelta(days=1)), window.end)
        row = rows.get(day)
        if last_billed is not None and last_billed <= start:
            days.append(DaySpend(day, start, end, NOT_BILLED_YET, None, None, None))
        elif row is None or row["spend_usd"] is None:
            days.append(DaySpend(day, start, end, UNOBSERVED, None, None, None))
        else:
            until = min(end, last_billed) if last_billed is not None else end
            days.append(DaySpend(day, start, end, OBSERVED, row["spend_usd"], row["usd_per_mtok_output"], until))
        day += timedelta(days=1)
    return days


def unobserved_spans(days: list[DaySpend]) -> list[tuple[datetime, datetime]]:
    """The parts of the window without an observed bill, neighbours merged."""
    spans: list[tuple[datetime, datetime]] = []
    for d in days:
        start = d.billed_until if d.status == OBSERVED else d.start
        if start is None or start >= d.end:
            continue
        if spans and spans[-1][1] >= start:
            spans[-1] = (spans[-1][0], d.end)
        else:
            spans.append((start, d.end))
    return spans


def check_target(path: Path) -> Path:
    """The file to write, or an ``InputError`` saying why it cannot be (before any drawing)."""
    if path.is_dir():
        raise InputError(f"cannot write a chart to {path}: it is a directory; expected a file name such as {path / 'cost.png'}")
    if path.suffix.lower() not in SUFFIXES:
        got = f"{path.suffix!r}" if path.suffix else "no suffix"
        raise InputError(f"cannot write a chart to {path}: unsupported suffix ({got}); "
                         f"expected a name ending in {', '.join(SUFFIXES[:-1])} or {SUFFIXES[-1]}")
    folder = path.parent
    if not folder.exists():
        # A parent that is a file makes the folder "not exist" too: say which it is.
        blocking = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise InputError(f"cannot write a chart to {path}: {blocking} is not a directory")
        raise InputError(f"cannot write a chart to {path}: the directory {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"cannot write a chart to {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write a chart to {path}: it is not writable")
    return path


def write_chart(report: CostReport, path: Path) -> Path:
    """Draw spend per day (bars) over $/M output tokens (a line) to ``path`` (.png, .svg or .pdf)."""
    check_target(path)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(f"cannot write {path}: charts need matplotlib, which is not installed",
                         hint="pip install 'spotinference[plot]', or use --plot alone for a terminal chart") from None
    days = daily_spend(report)
    figure = _draw(Figure(figsize=(11, 6.5), dpi=100, layout="constrained"), report, days)
    try:
        figure.savefig(path, format=path.suffix.lower()[1:])
    except OSError as exc:
        raise InputError(f"cannot write a chart to {path}: {exc.strerror or exc}") from None
    return path


def _nan(value: Decimal | None) -> float:
    return math.nan if value is None else float(value)


def _draw(figure, report: CostReport, days: list[DaySpend]):  # noqa: ANN001, ANN202 - matplotlib types
    from matplotlib import dates as mdates
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    spend_ax, rate_ax = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    window = report.window
    gaps = unobserved_spans(days)
    for ax in (spend_ax, rate_ax):
        for start, end in gaps:
            ax.axvspan(start, end, color=UNOBSERVED_COLOUR, lw=0, zorder=0)
        ax.grid(axis="y", color=GRID_COLOUR, lw=0.6, zorder=1)
        ax.set_axisbelow(True)

    observed = [d for d in days if d.status == OBSERVED]
    if observed:
        # antialiased off: a year of day bars stays solid colour rather than blended stripes; a
        # white edge parts neighbouring days while they are wide enough to show it.
        spend_ax.bar([d.start for d in observed], [float(d.spend_usd) for d in observed],  # type: ignore[arg-type]
                     width=[d.billed_until - d.start for d in observed], align="edge", color=BAR_COLOUR,
                     edgecolor="white", lw=0.8 if len(days) <= 62 else 0, antialiased=False, zorder=2)
        # Minutes without a good sampler run inside an observed day: its bill is not lost (it is
        # counted at the next sample), but the bar cannot say when inside the day it accrued.
        # They are a strip under the $0 line (see the y limits below), never over a bar.
        for gap in report.gaps:
            spend_ax.axvspan(max(gap.start, window.start), min(gap.end, window.end), ymin=0,
                             ymax=_STRIP / (1 + _STRIP + _HEADROOM), color=SAMPLER_GAP_COLOUR, lw=0,
                             antialiased=False, zorder=3)
    else:
        spend_ax.text(0.5, 0.5, "no bill observed in this window", transform=spend_ax.transAxes,
                      ha="center", va="center", color="#555555")
    # The line breaks (NaN) wherever there is no observed bill or no output tokens.
    middles = [d.start + ((d.billed_until or d.end) - d.start) / 2 for d in days]  # under the bar
    rates = [_nan(d.usd_per_mtok_output) for d in days]
    rate_ax.plot(middles, rates, color=LINE_COLOUR, lw=1.6, marker="o", markersize=4 if len(days) <= 62 else 1.5,
                 zorder=2)

    spend_ax.set_ylabel("spend per UTC day")
    rate_ax.set_ylabel("$ / M output tokens")
    for ax, values, strip in ((spend_ax, [float(d.spend_usd) for d in observed], bool(report.gaps)),  # type: ignore[arg-type]
                              (rate_ax, [r for r in rates if not math.isnan(r)], False)):
        top = max(values, default=0.0) or 1.0
        ax.set_ylim(-top * _STRIP if strip else 0, top * (1 + _HEADROOM))  # room above the tallest
    for ax in (spend_ax, rate_ax):  # cents only where the axis is small enough to need them
        ax.yaxis.set_major_formatter(FuncFormatter(
            lambda value, _pos, ax=ax: "" if value < 0 else f"${value:,.0f}" if ax.get_ylim()[1] >= 20
            else f"${value:,.2f}"))
    if not observed:
        spend_ax.set_yticks([])  # no scale for nothing: an axis would read as $0
    if all(math.isnan(r) for r in rates):
        rate_ax.set_yticks([])
        rate_ax.text(0.5, 0.5, "no observed spend with output tokens", transform=rate_ax.transAxes,
                     ha="center", va="center", color="#555555")

    locator = mdates.AutoDateLocator(minticks=4, maxticks=10, tz=UTC)
    rate_ax.xaxis.set_major_locator(locator)
    rate_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    rate_ax.set_xlim(window.start, window.end)
    rate_ax.set_xlabel("UTC")

    unobserved_days = sum(d.status == UNOBSERVED for d in days)
    facts = [f"{_when(window.start)} → {_when(window.end)} UTC"]
    facts.append(f"billed until {_when(report.billed_until)}" if report.billed_until else "no bill observed")
    if unobserved_days:
        facts.append(f"{unobserved_days} day{'s' if unobserved_days != 1 else ''} unobserved")
    figure.suptitle("spot cost: invoice-true spend and cost per million output tokens\n" + " · ".join(facts),
                    fontsize=11)
    legend = [(Patch(color=BAR_COLOUR), "spend (the provider's bill)"),
              (Patch(color=UNOBSERVED_COLOUR), "no bill observed (no sample, or not billed yet)"),
              (rate_ax.lines[0], "$ / M output tokens")]
    if observed and report.gaps:
        legend.insert(2, (Patch(color=SAMPLER_GAP_COLOUR), "sampler gap (its spend counted at the next sample)"))
    figure.legend(handles=[h for h, _ in legend], labels=[label for _, label in legend],
                  loc="outside lower center", ncols=3 if len(legend) == 3 else 2, frameon=False, fontsize=9)
    return figure


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
