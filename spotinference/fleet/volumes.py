"""Volumes: what keeps billing after the VMs are gone (`spot volumes`, `spot down --terminate
--volumes`, the last line of `spot status`).

A weights volume outlives its node on purpose (the next node attaches it instead of downloading
the weights again), so it bills until somebody deletes it. The rate shown is the provider's own
billing rate for the volume (its usage API), never a list price; unknown when billing is unreadable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..config import Tier
from ..errors import SpotError
from ..providers import ProviderError, VmPhase
from ..providers.base import Volume
from ..providers.errors import ProviderNotSupportedError
from .context import FleetContext
from .states import NodeState

DELETE_DEADLINE_S = 600.0  # a VM's delete must finish (and free its volume) within this


class VolumeInUseError(SpotError):
    """A tier's volume is attached to a VM that is not being deleted: deleting it would fail."""

    exit_code = 7
    http_status = 409


@dataclass(frozen=True)
class VolumeRow:
    provider: str
    tier: str | None  # by spot's naming (a tier's weights_volume, or it numbered -2, -3...), else who made it
    name: str
    volume_id: str
    size_gb: int | None
    status: str
    usd_per_hour: Decimal | None  # the provider's current billing rate; None: unknown
    attached_to: str | None  # the VM's name (its id when the VM list does not have it)
    billing_since: datetime | None  # the provider's create time of the billed resource
    environment: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "tier": self.tier, "name": self.name, "volume_id": self.volume_id,
            "size_gb": self.size_gb, "status": self.status,
            "usd_per_hour": float(self.usd_per_hour) if self.usd_per_hour is not None else None,
            "attached_to": self.attached_to,
            "billing_since": self.billing_since.isoformat() if self.billing_since else None,
            "environment": self.environment,
        }


@dataclass(frozen=True)
class VolumeListing:
    volumes: list[VolumeRow]
    problems: list[str]  # what could not be read (an account that cannot list volumes, unreadable billing)


@dataclass(frozen=True)
class SleepingBill:
    """What bills while no node serves: volumes, and hibernated VMs (root disk and public IP)."""

    volumes: list[VolumeRow]
    hibernated: list[tuple[str, Decimal | None]]  # (node name, its current rate)

    @property
    def usd_per_hour(self) -> Decimal | None:
        """The sum, or None when any part's rate is unknown (never a partial sum shown as whole)."""
        rates = [v.usd_per_hour for v in self.volumes] + [rate for _, rate in self.hibernated]
        if any(rate is None for rate in rates):
            return None
        return sum(rates, Decimal(0))  # type: ignore[arg-type]


def tier_of_volume(name: str, tiers: Iterable[Tier]) -> str | None:
    """The tier whose weights volume this is, by spot's naming (``preflight.prepare``)."""
    tiers = [t for t in tiers if t.weights_volume]
    for tier in tiers:
        if name == tier.weights_volume:
            return tier.name
    for tier in tiers:
        match = re.fullmatch(re.escape(tier.weights_volume or "") + r"-([2-9]|[1-9][0-9]{1,2})", name)
        if match is not None:
            return tier.name
    return None


def list_volumes(ctx: FleetContext, tier_name: str | None = None, *, tiers_accounts_only: bool = False) -> VolumeListing:
    """Every volume in the configured accounts (or only ``tier_name``'s; ``tiers_accounts_only``:
    only the accounts some tier uses, as `spot status` reads), with its rate and VM."""
    if tier_name is not None:
        providers = [ctx.tier(tier_name).provider]
    elif tiers_accounts_only:
        providers = sorted({tier.provider for tier in ctx.settings.tiers.values()})
    else:
        providers = sorted(ctx.settings.providers)
    owners = _owning_tiers(ctx)
    rows: list[VolumeRow] = []
    problems: list[str] = []
    for provider_name in providers:
        provider = ctx.provider(provider_name)
        try:
            volumes = provider.list_volumes()
        except ProviderNotSupportedError as exc:
            problems.append(f"{provider_name}: {exc.message}")
            continue
        vm_names = {vm.provider_id: vm.name for vm in provider.list_vms()}
        rates: dict[str, tuple[Decimal | None, datetime | None]] = {}
        try:
            for item in provider.read_billing().items:
                if item.resource_type == "volume" and item.active:
                    rates[item.resource_id] = (item.usd_per_hour, item.created_at)
        except ProviderError as exc:
            problems.append(f"{provider_name}: billing unreadable, rates unknown ({exc.message})")
        for volume in volumes:
            tier = tier_of_volume(volume.name, ctx.settings.tiers.values()) or owners.get(
                (provider_name, volume.provider_id))
            if tier_name is not None and tier != tier_name:
                continue
            rate, since = rates.get(volume.provider_id, (None, None))
            rows.append(_row(provider_name, tier, volume, rate, since or volume.created_at, vm_names))
    rows.sort(key=lambda r: (r.tier is None, r.tier or "", r.name))
    return VolumeListing(rows, problems)


def _row(provider: str, tier: str | None, volume: Volume, rate: Decimal | None, since: datetime | None,
         vm_names: dict[str, str]) -> VolumeRow:
    attached = ", ".join(vm_names.get(vm_id, f"VM {vm_id}") for vm_id in volume.attached_vm_ids) or None
    return VolumeRow(provider=provider, tier=tier, name=volume.name, volume_id=volume.provider_id,
                     size_gb=volume.size_gb, status=volume.status, usd_per_hour=rate, attached_to=attached,
                     billing_since=since, environment=volume.environment)


def _owning_tiers(ctx: FleetContext) -> dict[tuple[str, str], str]:
    """Volumes spot created or adopted, by the tier it recorded (for tiers since renamed)."""
    with ctx.store.reading() as con:
        rows = con.execute("SELECT provider, resource_id, tier FROM fleet_resources"
                           " WHERE resource_type = 'volume' AND tier IS NOT NULL").fetchall()
    return {(provider, resource_id): tier for provider, resource_id, tier in rows}


def delete_tier_volumes(ctx: FleetContext, tier_name: str, *, reason: str,
                        deadline_s: float = DELETE_DEADLINE_S) -> list[VolumeRow]:
    """Delete every volume of the tier and wait until the provider no longer lists them.

    A volume still attached to a VM that is being deleted is waited for (the provider frees it
    when the VM is gone); one attached to a live VM is refused with VolumeInUseError."""
    tier = ctx.tier(tier_name)
    provider = ctx.provider(tier.provider)
    started = ctx.monotonic()
    first = list_volumes(ctx, tier.name).volumes
    requested: set[str] = set()
    while True:
        mine = [v for v in provider.list_volumes() if _is_tiers(ctx, tier, v, first)]
        if not mine:
            return first
        vms = {vm.provider_id: vm for vm in provider.list_vms()}
        for volume in mine:
            if volume.provider_id in requested:
                continue
            live = [vms[i] for i in volume.attached_vm_ids if i in vms and vms[i].phase is not VmPhase.DELETING]
            if live:
                raise VolumeInUseError(
                    f"volume {volume.name} is attached to VM {live[0].name} ({live[0].status}), which is not being deleted",
                    hint=f"`spot down {tier.name} --terminate` deletes the tier's nodes first; detach other VMs at the provider",
                )
            if volume.attached_vm_ids and any(i in vms for i in volume.attached_vm_ids):
                continue  # its VM is being deleted: the provider frees the volume when it is gone
            try:
                provider.delete_volume(volume.provider_id)
            except ProviderError as exc:
                # Refused while it still lists an attachment to a VM now gone: the provider is
                # catching up, look again. Refused with no attachment: that is the answer.
                if exc.status_code not in (400, 409) or not volume.attached_vm_ids:
                    raise
                continue
            requested.add(volume.provider_id)
            size = f" ({volume.size_gb} GB)" if volume.size_gb is not None else ""
            ctx.records.decision(tier=tier.name, reason=f"{reason}: volume {volume.name} deleted",
                                 detail={"volume_id": volume.provider_id, "name": volume.name})
            ctx.progress(tier.name, None, f"volume {volume.name}{size}: deleted")
        elapsed = ctx.monotonic() - started
        if elapsed > deadline_s:
            left = ", ".join(v.name for v in mine)
            from .operations import FleetTimeoutError

            raise FleetTimeoutError(f"volumes of tier {tier.name} still exist after {elapsed:.0f} s: {left}",
                                    hint="run the command again to keep waiting, or `spot volumes` to see them")
        ctx.sleep(ctx.poll_interval_s)


def _is_tiers(ctx: FleetContext, tier: Tier, volume: Volume, known: list[VolumeRow]) -> bool:
    return (tier_of_volume(volume.name, ctx.settings.tiers.values()) == tier.name
            or any(row.volume_id == volume.provider_id for row in known))


def sleeping_bill(volumes: list[VolumeRow], nodes: Iterable[Any]) -> SleepingBill:
    """What keeps billing while nothing serves: every volume, and each hibernated node's rate
    (``nodes`` are ``status.NodeStatus`` rows)."""
    hibernated = [(n.name, n.usd_per_hour) for n in nodes if n.state is NodeState.HIBERNATED]
    return SleepingBill(volumes=list(volumes), hibernated=hibernated)
