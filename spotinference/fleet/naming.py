"""Names: a node is ``spot-<tier>-<n>``. The name is the provider-side idempotency key (a retried
create finds the VM by it) and how a VM is traced back to its tier."""

from __future__ import annotations

import re

PREFIX = "spot-"
_NODE = re.compile(r"^spot-(?P<tier>[a-z][a-z0-9_-]{0,39})-(?P<index>[1-9][0-9]{0,2})$")


def node_name(tier: str, index: int) -> str:
    return f"{PREFIX}{tier}-{index}"


def tier_prefix(tier: str) -> str:
    return f"{PREFIX}{tier}-"


def parse_node_name(name: str) -> tuple[str, int] | None:
    """(tier, index) of a spot node name, or None for any other VM."""
    match = _NODE.match(name)
    if match is None:
        return None
    return match["tier"], int(match["index"])


def belongs_to(name: str, tier: str) -> bool:
    # The prefix alone is not enough: tier "demo" must not claim "spot-demo-ondemand-1".
    parsed = parse_node_name(name)
    return parsed is not None and parsed[0] == tier


def volume_name(base: str, index: int) -> str:
    # A volume attaches to one VM: node 1 uses the configured name, later nodes a numbered twin.
    return base if index == 1 else f"{base}-{index}"


def key_pair_name(environment: str) -> str:
    return f"spotinference-{environment}"
