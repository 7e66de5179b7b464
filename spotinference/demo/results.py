"""What a demo run reports: its progress events, options and final figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jsonable import jsonable
from .traffic import BurstStats

if TYPE_CHECKING:
    from ..costs import CostReport, Window


@dataclass(frozen=True)
class DemoEvent:
    """One thing to show. ``kind``: "step" (a stage begins), "note" (a line), "fleet" (a node's
    progress), "live" (a changing status line; ``data["key"]`` changes when its state does)."""

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoOptions:
    engine: str = "sim"  # "sim" or "vllm"
    gateway_port: int | None = None
    asleep_s: float = 45.0  # how long the demo lets the hibernated tier sleep before waking it
    burst_requests: int = 32
    concurrency: int = 8
    max_tokens: int = 48


@dataclass(frozen=True)
class WakeStats:
    requests: int
    ok: int
    held_s: list[float]  # per request: sent → first token (streams) or reply
    states_seen: list[str]  # the tier's states in /health while they were held
    max_held: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok": self.ok, "held_s": self.held_s, "states_seen": self.states_seen,
                "max_held": self.max_held, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True)
class Savings:
    """Hibernation against an always-on tier: a comparison, not a bill."""

    vm_usd_per_hour: Decimal  # the VM's full rate as the provider billed it while serving
    storage_usd_per_hour: Decimal  # its volumes, billed whether the VM runs or sleeps
    billed_hours: Decimal  # the window as the emulator's clock billed it (wall seconds × time scale)
    always_on_usd: Decimal
    spend_usd: Decimal
    saving_usd: Decimal
    saving_share: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"vm_usd_per_hour": self.vm_usd_per_hour, "storage_usd_per_hour": self.storage_usd_per_hour,
                "billed_hours": self.billed_hours, "always_on_usd": self.always_on_usd,
                "spend_usd": self.spend_usd, "saving_usd": self.saving_usd, "saving_share": self.saving_share}


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    config_path: Path
    home: Path
    base_url: str
    engine: str
    time_scale: float
    window: Window
    cost: CostReport
    burst: BurstStats
    wake: WakeStats
    savings: Savings | None
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        cost = self.cost.to_dict()
        data = {
            "run_dir": str(self.run_dir), "config": str(self.config_path), "home": str(self.home),
            "base_url": self.base_url, "engine": self.engine, "time_scale": self.time_scale,
            "window_start": self.window.start, "window_end": self.window.end, "duration_s": round(self.duration_s, 1),
            "observable": cost["observable"], "spend_usd": cost["spend_usd"],
            "prompt_tokens": cost["prompt_tokens"], "completion_tokens": cost["completion_tokens"],
            "usd_per_mtok_output": cost["usd_per_mtok_output"], "usd_per_mtok_total": cost["usd_per_mtok_total"],
            "coverage": cost["coverage"],
            "always_on_usd": self.savings.always_on_usd if self.savings else None,
            "hibernation_saving_usd": self.savings.saving_usd if self.savings else None,
            "hibernation_saving_share": self.savings.saving_share if self.savings else None,
            "savings": self.savings.to_dict() if self.savings else None,
            "burst": self.burst.to_dict(), "wake": self.wake.to_dict(), "cost": cost,
        }
        return jsonable(data)
