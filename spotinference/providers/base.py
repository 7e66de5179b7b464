"""The Provider interface: what the fleet and the billing sampler need from a cloud.

A provider rents VMs. The fleet creates them from a ``VmSpec``, watches them as ``Vm`` snapshots,
hibernates and restores them, and deletes them; the sampler reads ``BillingItem``s. Volumes
(``Volume``) outlive the VMs they were attached to and keep billing until deleted. Each
implementation maps its own states onto ``VmPhase`` (the fleet maps phases plus engine health
onto node states) and raises only ``providers.errors`` exceptions, so callers never see HTTP.

Every method is synchronous and bounded by the implementation's own retry deadline: a method
either returns or raises within it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any


class VmPhase(StrEnum):
    """Where a VM is in its life, as the provider reports it."""

    CREATING = "creating"  # Hyperstack CREATING, BUILD
    RUNNING = "running"  # ACTIVE (``Vm.ready`` says whether it can take traffic yet)
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    RESTORING = "restoring"
    STOPPED = "stopped"  # SHUTOFF and friends: billed in full, never used to save money
    DELETING = "deleting"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class FirewallRule:
    """One inbound TCP rule: ``port_min..port_max`` from ``remote_ip_prefix`` (a CIDR)."""

    port_min: int
    port_max: int
    remote_ip_prefix: str
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What to create. ``name`` is unique per provider account: it is the idempotency key."""

    name: str
    flavor: str
    environment: str
    key_name: str
    image: str | None = None
    volume_names: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    firewall_rules: tuple[FirewallRule, ...] = ()
    assign_floating_ip: bool = True
    user_data: str | None = None


@dataclass(frozen=True, slots=True)
class Vm:
    """A snapshot of one VM. ``provider_id`` is a string whatever the provider's id type."""

    provider_id: str
    name: str
    phase: VmPhase
    ready: bool  # running, booted, and reachable at ``ip`` (Hyperstack: ACTIVE + active + IP attached)
    status: str  # the provider's own status word, for display and events
    flavor: str
    ip: str | None = None  # the public (floating) address, once attached
    private_ip: str | None = None
    gpu: str | None = None
    gpu_count: int = 0
    environment: str | None = None
    labels: tuple[str, ...] = ()
    created_at: datetime | None = None
    # Set only by the cloud emulator (`spot sim cloud`): the node's directory on this machine and
    # the ports its engine and sshd listen on, since every emulated VM shares 127.0.0.1.
    node_dir: Path | None = None
    engine_port: int | None = None
    ssh_port: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Volume:
    """A snapshot of one block-storage volume. It bills from creation until deleted, attached or not."""

    provider_id: str
    name: str
    size_gb: int | None
    status: str  # the provider's own word: available, in-use, ...
    environment: str | None = None
    volume_type: str | None = None
    attached_vm_ids: tuple[str, ...] = ()  # the VMs it is attached to (provider ids)
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    gpu: str | None
    gpu_count: int
    can_hibernate: bool
    region: str | None = None
    stock_available: bool | None = None


@dataclass(frozen=True, slots=True)
class BillingItem:
    """One resource's line in the provider's billing usage, as read at one moment."""

    resource_id: str
    resource_type: str  # vm | volume | ...
    name: str | None
    usd_per_hour: Decimal | None  # None once the resource is terminated
    # The provider's cumulative bill for the resource; None when the answer had no readable
    # total (a missing sample, never $0).
    total_bill_usd: Decimal | None
    active: bool
    created_at: datetime | None = None  # the provider's create_time, in the provider's clock
    excluded: bool = False  # the provider says it is not billed (Hyperstack's exclude_billing)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BillingReading:
    """One complete, validated read of an account's billing usage."""

    items: list[BillingItem]
    # The provider's own time when it answered (its HTTP Date header), None if it gave none:
    # ``created_at`` values are compared with this, not with our clock.
    provider_clock_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BilledHour:
    """What the provider's own billing history says one resource cost in one UTC hour (its clock).

    ``incurred_usd`` covers the billed minutes that ENDED in ``[hour_start, hour_start + 1 h)``;
    None when the provider gave no readable figure (unknown, never $0)."""

    resource_type: str  # vm | volume
    resource_id: str
    hour_start: datetime  # aware UTC, on the hour
    incurred_usd: Decimal | None


class Provider(ABC):
    """One account at one cloud. Implementations take their settings and an injectable clock."""

    #: the provider's configured name (the key under ``[providers.NAME]``)
    name: str

    # -- VMs ---------------------------------------------------------------------------------

    @abstractmethod
    def create_vm(self, spec: VmSpec) -> Vm:
        """Create a VM, or return the one already named ``spec.name`` (never a duplicate)."""

    @abstractmethod
    def get_vm(self, provider_id: str) -> Vm | None:
        """The VM, or None once it is gone."""

    @abstractmethod
    def find_vm(self, name: str) -> Vm | None:
        """The VM with exactly this name, or None."""

    @abstractmethod
    def list_vms(self, name_prefix: str = "") -> list[Vm]:
        """Every VM whose name starts with ``name_prefix`` (all pages)."""

    @abstractmethod
    def hibernate_vm(self, provider_id: str) -> None:
        """Start hibernating a running VM (returns at once; watch ``get_vm``)."""

    @abstractmethod
    def restore_vm(self, provider_id: str) -> None:
        """Start restoring a hibernated VM. Raises InsufficientCapacityError when refused for lack of GPUs."""

    @abstractmethod
    def delete_vm(self, provider_id: str) -> None:
        """Delete the VM; a VM that is already gone is not an error."""

    @abstractmethod
    def add_firewall_rule(self, provider_id: str, rule: FirewallRule) -> None:
        """Open an inbound port (adding a rule that already exists is not an error)."""

    # -- what the fleet prepares once ----------------------------------------------------------

    @abstractmethod
    def ensure_key_pair(self, name: str, environment: str, public_key: str) -> None:
        """Register an SSH public key under ``name`` unless it is already there."""

    @abstractmethod
    def ensure_volume(self, name: str, environment: str, size_gb: int) -> str:
        """The id of the volume named ``name``, created if missing."""

    # -- volumes (optional: `spot volumes`, `spot down --terminate --volumes`) -------------------

    def list_volumes(self) -> list[Volume]:
        """Every volume in the account (all pages), attached or not. Raises
        ProviderNotSupportedError when the provider cannot list them."""
        from .errors import ProviderNotSupportedError

        raise ProviderNotSupportedError(f"provider {self.name!r} cannot list volumes", provider=self.name)

    def delete_volume(self, provider_id: str) -> None:
        """Delete a volume; one that is already gone is not an error. The provider refuses while
        the volume is attached (a ProviderError): detach it or delete its VM first."""
        from .errors import ProviderNotSupportedError

        raise ProviderNotSupportedError(f"provider {self.name!r} cannot delete volumes", provider=self.name)

    @abstractmethod
    def get_flavor(self, name: str, region: str | None = None) -> Flavor | None:
        """The flavor, or None when the provider has no flavor of that name."""

    # -- money -----------------------------------------------------------------------------------

    @abstractmethod
    def read_billing(self) -> BillingReading:
        """Every resource's current rate and cumulative bill, active and terminated.

        Raises ProviderError when the answer does not have the documented shape: an answer the
        provider reshaped is a failed read, never an account with no resources."""

    def billing_usage(self) -> list[BillingItem]:
        """``read_billing().items``."""
        return self.read_billing().items

    # -- the provider's own billing history (optional: `spot cost reconcile`) ------------------

    def billing_history(self, resource_type: str, resource_id: str, start: datetime | None = None,
                        end: datetime | None = None) -> list[BilledHour]:
        """The resource's hourly bill, oldest first, for the hours overlapping ``[start, end)``
        (None: from its creation / up to now). Raises ProviderNotSupportedError when the provider
        keeps no such history."""
        from .errors import ProviderNotSupportedError

        raise ProviderNotSupportedError(f"provider {self.name!r} gives no hourly billing history",
                                        provider=self.name)

    def credit_usd(self) -> Decimal | None:
        """The account's credit balance now (None: the answer had no readable figure). Raises
        ProviderNotSupportedError when the provider has no such figure."""
        from .errors import ProviderNotSupportedError

        raise ProviderNotSupportedError(f"provider {self.name!r} gives no credit balance", provider=self.name)

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
