"""``open_provider``: the configured provider by name, with the implementation its ``kind`` names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from ..config.settings import Settings
from ..errors import ConfigError
from .base import Provider


def open_provider(
    settings: Settings,
    name: str,
    *,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Provider:
    """The provider configured under ``[providers.NAME]``; ConfigError when it is missing or has
    no credentials. ``transport``, ``clock`` and ``sleep`` are for tests."""
    config = settings.providers.get(name)
    if config is None:
        known = ", ".join(sorted(settings.providers)) or "none configured"
        raise ConfigError(
            f"provider {name!r} is not configured (configured: {known})",
            hint=f"add a [providers.{name}] table to the config file",
        )
    if not config.has_credentials:
        raise ConfigError(
            f"provider {name!r} has no API key",
            hint=f"export SPOT_PROVIDERS__{name.upper()}__API_KEY=... or set api_key_file in [providers.{name}]",
        )
    injected: dict[str, Any] = {"transport": transport}
    if clock is not None:
        injected["clock"] = clock
    if sleep is not None:
        injected["sleep"] = sleep
    if config.kind == "hyperstack":
        from .hyperstack import HyperstackProvider

        return HyperstackProvider(name, config, **injected)
    raise ConfigError(f"provider {name!r} has kind {config.kind!r}, which this spot cannot drive")
