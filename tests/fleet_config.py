"""spot.toml for tests of a fleet on `spot sim cloud`: one provider, tiers of emulated nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def sim_tier(**fields: Any) -> dict[str, Any]:
    """A tier of emulated nodes running `spot sim engine` serving tiny-chat; ``fields`` override."""
    return {"provider": "sim", "flavor": "sim-cpu-1", "environment": "sim-local", "capacity": "spot",
            "engine": "sim", "model": "tiny-chat", **fields}


def write_fleet_config(base_url: str, tiers: dict[str, dict[str, Any]], *, gateway: dict[str, Any] | None = None,
                       extra: str = "", path: Path = Path("spot.toml")) -> None:
    """Write ``path`` (./spot.toml): [gateway] (if given), the emulator as provider `sim`, the tiers
    (nested dicts such as ``sim`` or ``vllm`` become their sub-tables), then ``extra`` verbatim."""
    lines = []
    if gateway:
        lines += ["[gateway]", *_pairs(gateway), ""]
    lines += ["[providers.sim]", 'kind = "hyperstack"', f"base_url = {json.dumps(base_url)}", "emulator = true", ""]
    for name, tier in tiers.items():
        plain = {k: v for k, v in tier.items() if not isinstance(v, dict) or k == "env"}
        lines += [f"[tiers.{name}]", *_pairs(plain), ""]
        for table, values in tier.items():
            if isinstance(values, dict) and table != "env":
                lines += [f"[tiers.{name}.{table}]", *_pairs(values), ""]
    path.write_text("\n".join(lines) + "\n" + extra)


def _pairs(values: dict[str, Any]) -> list[str]:
    return [f"{key} = {_value(value)}" for key, value in values.items()]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, numbers and lists are the same in JSON and TOML
