"""Cloud providers: the Provider interface (``base``) and its implementations.

Callers (the fleet, the billing sampler) only ever see ``Provider``, ``Vm``, ``VmSpec``,
``BillingItem`` and the errors in ``errors``; ``open_provider`` picks the implementation from the
settings, so a second provider fits without touching them.
"""

from .base import BillingItem, FirewallRule, Flavor, Provider, Vm, VmPhase, VmSpec
from .errors import (
    InsufficientCapacityError,
    ProviderAuthError,
    ProviderError,
    ProviderNotFoundError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
)

__all__ = [
    "BillingItem",
    "FirewallRule",
    "Flavor",
    "InsufficientCapacityError",
    "Provider",
    "ProviderAuthError",
    "ProviderError",
    "ProviderNotFoundError",
    "ProviderRateLimitedError",
    "ProviderUnavailableError",
    "Vm",
    "VmPhase",
    "VmSpec",
]
