"""What a benchmark learns about what it measures: the tier (GPU, current rate, nodes) and the
engine (its version).

The rate is the provider's CURRENT billing rate for the tier's VMs (billing usage
``usd_per_hour``, as `spot status` shows it), used only for the cost projection at full
utilisation; `spot cost` alone reports invoice-true spend.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from ..config import Settings
from ..fleet.context import FleetContext
from ..fleet.engine_keys import engine_key
from ..fleet.states import NodeState
from ..fleet.status import fleet_status


@dataclass(frozen=True)
class TierFacts:
    tier: str
    model: str
    gpu: str | None
    usd_per_hour: float | None
    rate_note: str  # which VMs the rate covers, or why there is none
    engine_url: str | None  # a serving node's engine, for --target direct without --direct-url
    engine_key: str | None
    gateway_url: str


def tier_facts(ctx: FleetContext, tier_name: str, node: str | None = None) -> TierFacts:
    tier = ctx.tier(tier_name)
    rows = [r for r in fleet_status(ctx, tier_name) if node is None or r.name == node]
    serving = [r for r in rows if r.state is NodeState.SERVING]
    first = (serving or rows or [None])[0]
    gpu = None
    if first is not None and first.gpu:
        gpu = f"{first.gpu_count}x {first.gpu}"
    elif first is not None:
        gpu = first.flavor
    if not serving:
        rate, note = None, f"no serving node in tier {tier_name}"
    elif any(r.usd_per_hour is None for r in serving):
        rate, note = None, "the provider's billing did not give a current rate for every serving node"
    else:
        rate = float(sum(r.usd_per_hour for r in serving))  # type: ignore[misc]
        names = ", ".join(r.name for r in serving)
        note = f"current rate of {names}" if len(serving) == 1 else f"current rate of {len(serving)} nodes ({names})"
    return TierFacts(
        tier=tier_name, model=tier.model_name, gpu=gpu, usd_per_hour=rate, rate_note=note,
        engine_url=serving[0].engine_url if serving else None,
        engine_key=engine_key(ctx.settings.home, serving[0].name) if serving else None,
        gateway_url=gateway_url(ctx.settings),
    )


def gateway_url(settings: Settings) -> str:
    """Where `spot serve` listens by the config (gateway.host, gateway.port); a wildcard bind
    address is reached on loopback."""
    host = settings.gateway.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.gateway.port}"


def engine_version(url: str | None, key: str | None = None) -> str | None:
    """The engine's ``GET /version`` (vLLM's and the simulator's), or None."""
    if not url:
        return None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/').removesuffix('/v1')}/version", headers=headers, timeout=3.0)
        version = response.json().get("version") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return f"vllm {version}" if version else None
