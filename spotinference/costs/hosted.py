"""Hosted API list prices (a dated file in configs/) and what the window's tokens would cost there."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

_FILE = re.compile(r"^hosted-prices-(\d{4}-\d{2})\.toml$")
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class HostedPrice:
    provider: str
    model: str
    usd_per_mtok_input: Decimal
    usd_per_mtok_output: Decimal
    source: str


@dataclass(frozen=True)
class HostedPrices:
    as_of: date
    note: str
    file: str
    prices: list[HostedPrice]


@dataclass(frozen=True)
class HostedComparison:
    provider: str
    model: str
    usd_per_mtok_input: Decimal
    usd_per_mtok_output: Decimal
    hosted_usd: Decimal  # the window's prompt and completion tokens at this list price
    spend_ratio: Decimal | None  # our spend / hosted_usd; None when either is unknown or zero


def load_hosted_prices(path: Path | None = None) -> HostedPrices:
    """The newest ``configs/hosted-prices-YYYY-MM.toml`` (or the file given)."""
    if path is None:
        files = sorted(
            (e for e in resources.files("spotinference.configs").iterdir() if _FILE.match(e.name)),
            key=lambda e: e.name,
        )
        if not files:
            raise ConfigError("no configs/hosted-prices-YYYY-MM.toml file is installed")
        name, text = files[-1].name, files[-1].read_text()
    else:
        name, text = path.name, path.read_text()
    try:
        data = tomllib.loads(text)
        prices = [
            HostedPrice(p["provider"], p["model"], Decimal(str(p["usd_per_mtok_input"])),
                        Decimal(str(p["usd_per_mtok_output"])), p.get("source", ""))
            for p in data.get("price", [])
        ]
        return HostedPrices(date.fromisoformat(str(data["as_of"])), data.get("note", ""), name, prices)
    except (tomllib.TOMLDecodeError, KeyError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"hosted price file {name} is malformed: {exc}") from None


def compare(prices: HostedPrices, spend_usd: Decimal | None, prompt_tokens: int,
            completion_tokens: int) -> list[HostedComparison]:
    rows = []
    for p in prices.prices:
        hosted = (p.usd_per_mtok_input * prompt_tokens + p.usd_per_mtok_output * completion_tokens) / MILLION
        ratio = spend_usd / hosted if spend_usd is not None and hosted > 0 else None
        rows.append(HostedComparison(p.provider, p.model, p.usd_per_mtok_input, p.usd_per_mtok_output, hosted, ratio))
    return rows
