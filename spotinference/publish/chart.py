"""The 90-day chart as inline SVG (no JavaScript): a bar per observed UTC day's spend, and the
cost per million output tokens as points joined only across consecutive observed days.

A day without an observed bill is a gap: no bar and a pale band titled "no billing sample" (or
"not billed yet"), never a $0 bar. Classes name what each mark is, so a reader (and a test) can
count the bars: ``spend-bar``, ``gap``, ``rate-point``, ``rate-line``.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape

from ..costs.plot import OBSERVED, DaySpend

WIDTH, HEIGHT = 900, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 20, 40
BAR_COLOUR, RATE_COLOUR, GAP_COLOUR = "#2b6cb0", "#c05621", "#e6e6e6"


def _usd(value: Decimal) -> str:
    return f"${value:,.2f}"


def svg(days: list[DaySpend]) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(days), 1)
    top_spend = max((d.spend_usd for d in days if d.status == OBSERVED and d.spend_usd), default=Decimal(0))
    top_rate = max((d.usd_per_mtok_output for d in days if d.usd_per_mtok_output is not None), default=Decimal(0))
    base = TOP + plot_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="Daily spend and cost per million output tokens">',
           f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#888"/>']
    points: list[tuple[float, float] | None] = []
    for i, d in enumerate(days):
        x = LEFT + i * step
        label = escape(d.day.isoformat())
        if d.status != OBSERVED or d.spend_usd is None:
            why = "no billing sample" if d.status != "not billed yet" else "not billed yet"
            out.append(f'<rect class="gap" data-day="{label}" x="{x:.1f}" y="{TOP}" width="{step:.1f}" height="{plot_h}" '
                       f'fill="{GAP_COLOUR}" opacity="0.5"><title>{label}: {why}</title></rect>')
            points.append(None)
            continue
        h = float(d.spend_usd / top_spend) * plot_h if top_spend else 0.0
        out.append(f'<rect class="spend-bar" data-day="{label}" data-spend-usd="{d.spend_usd}" x="{x + step * 0.1:.1f}" '
                   f'y="{base - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" fill="{BAR_COLOUR}">'
                   f'<title>{label}: spend {_usd(d.spend_usd)}</title></rect>')
        rate = d.usd_per_mtok_output
        if rate is None or not top_rate:
            points.append(None)
            continue
        y = base - float(rate / top_rate) * plot_h
        points.append((x + step / 2, y))
        out.append(f'<circle class="rate-point" data-day="{label}" cx="{x + step / 2:.1f}" cy="{y:.1f}" r="2.5" '
                   f'fill="{RATE_COLOUR}"><title>{label}: {_usd(rate)} per million output tokens</title></circle>')
    run: list[tuple[float, float]] = []
    for p in [*points, None]:  # a line only across consecutive observed days: a gap breaks it
        if p is not None:
            run.append(p)
            continue
        if len(run) > 1:
            out.append('<polyline class="rate-line" fill="none" stroke="{}" stroke-width="1.5" points="{}"/>'.format(
                RATE_COLOUR, " ".join(f"{x:.1f},{y:.1f}" for x, y in run)))
        run = []
    out.append(f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11" fill="{BAR_COLOUR}">'
               f'{_usd(top_spend)}</text>')
    out.append(f'<text x="{WIDTH - RIGHT + 6}" y="{TOP + 10}" font-size="11" fill="{RATE_COLOUR}">{_usd(top_rate)}/M</text>')
    if days:
        out.append(f'<text x="{LEFT}" y="{HEIGHT - 12}" font-size="11">{escape(days[0].day.isoformat())}</text>')
        out.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 12}" text-anchor="end" font-size="11">'
                   f'{escape(days[-1].day.isoformat())}</text>')
    out.append("</svg>")
    return "\n".join(out)
