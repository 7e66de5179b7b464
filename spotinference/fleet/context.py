"""What every fleet operation shares: settings, store, providers, transports, clocks, progress.

Everything slow or external is injected (provider and transport factories, the HTTP client that
probes engines, sleep and the monotonic clock) so tests can drive it fast and for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import Settings, Tier
from ..errors import InputError
from ..nodes.transport import Transport
from ..providers import Provider, Vm
from ..store import Store
from .connect import engine_url, transport_for
from .records import Clock, FleetRecords, utc_now
from .states import NodeState


@dataclass(frozen=True)
class Progress:
    """One step of an operation, for the CLI to render (the library never prints).

    Reported when something changes (the step, the node's state or the provider's status), never
    on a timer: keeping a live line's clock ticking between reports is the renderer's job."""

    tier: str
    node: str | None
    state: NodeState | None
    message: str
    provider_status: str | None = None  # the VM's status in the provider's own words (ACTIVE, RESTORING, ...)
    elapsed_s: float | None = None  # since the operation on this node began

    def to_json(self) -> dict[str, Any]:
        return {"event": "progress", "tier": self.tier, "node": self.node,
                "state": self.state.value if self.state else None, "provider_status": self.provider_status,
                "message": self.message,
                "elapsed_s": round(self.elapsed_s, 1) if self.elapsed_s is not None else None}


ProviderFactory = Callable[[Settings, str], Provider]
TransportFactory = Callable[[Vm, Settings, Tier], Transport]


def _open_provider(settings: Settings, name: str) -> Provider:
    from ..providers.registry import open_provider

    return open_provider(settings, name)


class FleetContext:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        provider_factory: ProviderFactory = _open_provider,
        transport_factory: TransportFactory = transport_for,
        http: httpx.Client | None = None,
        clock: Clock = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        poll_interval_s: float = 1.0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.records = FleetRecords(store, clock=clock)
        self._provider_factory = provider_factory
        self._transport_factory = transport_factory
        self._providers: dict[str, Provider] = {}
        self._providers_lock = threading.Lock()
        self.http = http or httpx.Client(timeout=httpx.Timeout(3.0, connect=2.0))
        self.sleep = sleep
        self.monotonic = monotonic
        self.poll_interval_s = poll_interval_s
        self._on_progress = on_progress or (lambda update: None)

    # -- lookups -----------------------------------------------------------------------------

    def tier(self, name: str) -> Tier:
        tier = self.settings.tiers.get(name)
        if tier is None:
            known = ", ".join(sorted(self.settings.tiers)) or "none configured"
            raise InputError(f"no tier named {name!r} (configured tiers: {known})")
        return tier

    def provider(self, name: str) -> Provider:
        with self._providers_lock:
            if name not in self._providers:
                self._providers[name] = self._provider_factory(self.settings, name)
            return self._providers[name]

    def transport(self, vm: Vm, tier: Tier) -> Transport:
        return self._transport_factory(vm, self.settings, tier)

    # -- engines -----------------------------------------------------------------------------

    def engine_healthy(self, vm: Vm, tier: Tier) -> bool:
        """GET /health on the node's engine: the source of truth for serving."""
        url = engine_url(vm, tier)
        if url is None or not vm.ready:
            return False
        try:
            return self.http.get(f"{url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    # -- reporting ---------------------------------------------------------------------------

    def progress(self, tier: str, node: str | None, message: str, state: NodeState | None = None, *,
                 provider_status: str | None = None, elapsed_s: float | None = None) -> None:
        self._on_progress(Progress(tier=tier, node=node, state=state, message=message,
                                   provider_status=provider_status, elapsed_s=elapsed_s))

    def note(self, tier: Tier, name: str, vm: Vm | None, state: NodeState, reason: str) -> NodeState | None:
        """Record the node's state (an event when it changed) and report a change as progress."""
        previous = self.records.record(
            name=name, tier=tier.name, provider=tier.provider, vm=vm, state=state, reason=reason,
            engine_url=engine_url(vm, tier) if vm else None,
        )
        if previous is not state:
            self.progress(tier.name, name, f"{state.value} ({reason})", state, provider_status=vm.status if vm else None)
        return previous

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()
        self.http.close()
