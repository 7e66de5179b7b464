"""Checks and one-time preparations before a tier's nodes are created: the flavor exists and can
hibernate if the tier does, the SSH key pair and weights volumes exist, the firewall rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import Settings, Tier
from ..errors import ConfigError
from ..providers import FirewallRule, Provider, Vm, VmSpec
from .connect import engine_port
from .naming import key_pair_name, volume_name

# Registered as the key pair when an emulated fleet has no SSH key configured: the emulator's
# nodes are reached by the local transport and never read it.
EMULATOR_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVtdWxhdG9yLW5vZGVzLWhhdmUtbm8tc3NoLWtleQ spotinference-emulator"


def check_tier(settings: Settings, tier: Tier, provider: Provider) -> None:
    flavor = provider.get_flavor(tier.flavor, tier.region)
    if flavor is None:
        raise ConfigError(
            f"tiers.{tier.name}.flavor = {tier.flavor!r} is not offered by provider {tier.provider!r}"
            + (f" in region {tier.region}" if tier.region else ""),
            hint="pick a flavor the provider lists (Hyperstack: GET /core/flavors)",
        )
    if tier.hibernate and not flavor.can_hibernate:
        raise ConfigError(
            f"tiers.{tier.name}.flavor = {tier.flavor!r} is labelled no-hibernation, but the tier hibernates when idle",
            hint=f"choose a flavor that can hibernate, or set tiers.{tier.name}.hibernate = false "
            "(then only `spot down --terminate` stops its bill)",
        )
    if not settings.providers[tier.provider].emulator and not settings.gateway.egress_cidr:
        raise ConfigError(
            "gateway.egress_cidr is not set: the engine port is opened only to the gateway's address",
            hint="set gateway.egress_cidr to the gateway's public address as a CIDR, e.g. 203.0.113.7/32",
        )


def public_key(settings: Settings, tier: Tier) -> str:
    key_path = settings.ssh.key_path
    if key_path is not None:
        pub = Path(f"{key_path.expanduser()}.pub")
        try:
            return pub.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the SSH public key {pub}: {exc.strerror}",
                hint="ssh.key_path names the private key; its .pub half is registered with the provider",
            ) from None
    if settings.providers[tier.provider].emulator:
        return EMULATOR_PUBLIC_KEY
    raise ConfigError(
        "ssh.key_path is not set: new nodes need a public key to let spot in",
        hint="set ssh.key_path to a private key whose .pub file sits beside it",
    )


def prepare(settings: Settings, tier: Tier, provider: Provider, index: int,
            own: Callable[[str, str, str], None] | None = None) -> VmSpec:
    """Make sure the key pair and the node's weights volume exist; the spec to create the node.

    ``own(resource_type, resource_id, name)`` records a resource spot made or uses for the tier."""
    from .naming import node_name

    key_name = key_pair_name(tier.environment)
    provider.ensure_key_pair(key_name, tier.environment, public_key(settings, tier))
    volumes: tuple[str, ...] = ()
    if tier.weights_volume:
        name = volume_name(tier.weights_volume, index)
        volume_id = provider.ensure_volume(name, tier.environment, tier.weights_volume_gb)
        if own is not None:
            own("volume", volume_id, name)
        volumes = (name,)
    return VmSpec(
        name=node_name(tier.name, index),
        flavor=tier.flavor,
        environment=tier.environment,
        key_name=key_name,
        image=tier.image,
        volume_names=volumes,
        labels=("spotinference", f"tier-{tier.name}", tier.capacity),
        assign_floating_ip=True,
    )


def firewall_rules(settings: Settings, tier: Tier, vm: Vm) -> list[FirewallRule]:
    """SSH from the operator's range; the engine port from the gateway's address only."""
    provider_settings = settings.providers[tier.provider]
    gateway = settings.gateway.egress_cidr or ("127.0.0.1/32" if provider_settings.emulator else None)
    rules = [FirewallRule(22, 22, provider_settings.ssh_cidr)]
    if gateway:
        port = engine_port(vm, tier)
        rules.append(FirewallRule(port, port, gateway))
    return rules
