"""One lock per tier across every process that may wake or hibernate it (gateway workers, `spot
wake`, cron; on a lake store, on every host), held only around a decision that must not happen
twice: create a VM, restore a VM, hibernate an idle tier.

The provider's VM state is the other half of single flight: a VM already RESTORING is never
restored again, so whoever takes the lock second sees the first one's restore and just waits.
A file store's lock is an flock in ``home``; a lake store's lives in its catalog
(spotinference.store.catalog_locks).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ..store.catalog_locks import named_locks

if TYPE_CHECKING:
    from ..config import Settings


def tier_lock_name(tier: str) -> str:
    return f"locks/tier-{tier}.lock"


def tier_lock(settings: Settings, tier: str) -> AbstractContextManager[None]:
    """Waits for the tier's lock (held for one provider call at most: seconds)."""
    return named_locks(settings).hold(tier_lock_name(tier))


def try_tier_lock(settings: Settings, tier: str) -> AbstractContextManager[str | None]:
    """The tier's lock if free now (yields None), else who holds it: no waiting."""
    return named_locks(settings).try_hold(tier_lock_name(tier))
