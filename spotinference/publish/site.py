"""Render the economics site into a directory: index.html, method.html, data.json.

Jinja2 renders the pages: it is maintained, small, and escapes every value into HTML by default
(a tier or model name can hold any character); the chart is SVG built in ``chart`` and placed
inline, so the page needs no JavaScript. Each file is written beside its target and renamed over
it, so a reader (or a web server) never sees half a page.
"""

from __future__ import annotations

import json
import os
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..errors import InputError
from ..reports import query_text
from .chart import svg
from .figures import QUERIES, Figures, tier_rows, to_data

FILES = ("index.html", "method.html", "data.json")


def usd(value: Decimal | None) -> str:
    if value is None:
        return "unknown"
    return f"${value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("spotinference.publish", "templates"),
                      autoescape=select_autoescape(["html"]), keep_trailing_newline=True)
    env.globals["usd"] = usd
    return env


def _incomplete_reason(f: Figures) -> str:
    h = f.headline
    parts = []
    if h.gaps:
        parts.append(f"billing was observed in {h.coverage:.2%} of the week's minutes ({len(h.gaps)} gap(s) "
                     "without a billing sample)")
    lag = h.billing_lag_s
    if lag is not None and lag > h.fresh_within_s:
        parts.append(f"the last billing sample is {lag / 60:,.0f} minutes before the week's end")
    if not parts:
        parts.append("not every account was observed every minute of it")
    return "Incomplete: " + "; ".join(parts) + ". A figure over part of the week would pretend to be the week's."


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write(figures: Figures, directory: Path) -> list[Path]:
    """Write the site into ``directory`` (created if missing); returns the files written."""
    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise InputError(f"spot publish {directory}: it is a file; expected a directory to write the site into")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"spot publish {directory}: cannot create it ({exc.strerror})") from None
    env = _environment()
    h = figures.headline
    index = env.get_template("index.html").render(
        status=figures.status, h=h, tiers=tier_rows(figures), chart=svg(figures.days),
        generated_at=figures.generated_at, incomplete_reason=_incomplete_reason(figures))
    method = env.get_template("method.html").render(
        queries=[{"title": title, "name": name, "sql": query_text(name)} for title, name in QUERIES.items()])
    data = json.dumps(to_data(figures), indent=2) + "\n"
    written = []
    for name, text in zip(FILES, (index, method, data), strict=True):
        _write(directory / name, text)
        written.append(directory / name)
    return written
