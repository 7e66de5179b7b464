"""`spot status`: one row per node, from the provider (VM state), the engines (health), the
billing API (current rate) and the store (up since, last request)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from ..config import Settings
from ..providers import BillingItem, ProviderError, Vm
from .connect import engine_url
from .context import FleetContext
from .naming import PREFIX, parse_node_name
from .states import NodeState, node_state


@dataclass(frozen=True)
class NodeStatus:
    tier: str
    name: str
    state: NodeState
    provider: str
    provider_id: str | None
    provider_status: str | None
    ip: str | None
    flavor: str | None
    gpu: str | None
    gpu_count: int
    usd_per_hour: Decimal | None  # the provider's current billing rate, not a list price
    up_since: datetime | None
    last_request: datetime | None
    engine_url: str | None
    configured: bool  # False for a spot-named VM of a tier no longer in the config

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["usd_per_hour"] = float(self.usd_per_hour) if self.usd_per_hour is not None else None
        for key in ("up_since", "last_request"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def fleet_status(ctx: FleetContext, tier_name: str | None = None) -> list[NodeStatus]:
    tiers = [ctx.tier(tier_name)] if tier_name else list(ctx.settings.tiers.values())
    providers = sorted({t.provider for t in tiers})
    vms: dict[str, tuple[str, Vm]] = {}
    rates: dict[str, Decimal | None] = {}
    for provider_name in providers:
        provider = ctx.provider(provider_name)
        for vm in provider.list_vms(PREFIX):
            parsed = parse_node_name(vm.name)
            if parsed and (tier_name is None or parsed[0] == tier_name):
                vms[vm.name] = (provider_name, vm)
        try:
            rates.update(_vm_rates(provider.billing_usage()))
        except ProviderError:
            pass  # status still shows the fleet; the rate column reads unknown
    records = ctx.records.nodes()
    last_requests = ctx.records.last_requests()

    def one(item: tuple[str, tuple[str, Vm]]) -> NodeStatus:
        name, (provider_name, vm) = item
        tier_key = parse_node_name(name)[0]  # type: ignore[index]
        tier = ctx.settings.tiers.get(tier_key)
        record = records.get(name)
        healthy = tier is not None and ctx.engine_healthy(vm, tier)
        state = node_state(vm, engine_healthy=healthy, last_state=record.state if record else None)
        if tier is not None:
            ctx.note(tier, name, vm, state, "observed")
            record = ctx.records.nodes().get(name)
        return NodeStatus(
            tier=tier_key, name=name, state=state, provider=provider_name, provider_id=vm.provider_id,
            provider_status=vm.status, ip=vm.ip, flavor=vm.flavor, gpu=vm.gpu, gpu_count=vm.gpu_count,
            usd_per_hour=rates.get(vm.provider_id), up_since=record.up_since if record else None,
            last_request=last_requests.get((name, vm.provider_id)), engine_url=engine_url(vm, tier) if tier else None,
            configured=tier is not None,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(one, sorted(vms.items())))
    # Nodes the store still thinks exist but the provider no longer lists are gone.
    for name, record in records.items():
        if name in vms or record.state is NodeState.TERMINATED:
            continue
        if tier_name is not None and record.tier != tier_name:
            continue
        tier = ctx.settings.tiers.get(record.tier)
        if tier is not None and tier.provider in providers:
            ctx.note(tier, name, None, NodeState.TERMINATED, "gone at the provider")
    return rows


def _vm_rates(items: list[BillingItem]) -> dict[str, Decimal | None]:
    return {item.resource_id: item.usd_per_hour for item in items if item.resource_type == "vm" and item.active}


def gateway_view(settings: Settings, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The running gateway's own view (``GET /health``: tiers, held requests, the budget gate),
    or None when no gateway answers at the configured address."""
    from ..gateway.operator import operator_endpoint

    root, headers = operator_endpoint(settings)  # the detail is the operator's: token or operator port
    try:
        response = httpx.get(f"{root}/health", headers=headers, timeout=timeout_s)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) and "tiers" in data else None
