"""Hyperstack's JSON shapes onto the Provider interface's dataclasses, and VmSpec onto a body.

Every reader here tolerates missing, null or oddly typed fields: the OpenAPI file and the live
API do not always agree, and a field we cannot read must degrade a snapshot, never crash it.

Status words onto phases (``status`` is kept raw on ``Vm.status``)::

    CREATING, BUILD, STARTING       → CREATING   (on its way to ACTIVE without any action from us)
    ACTIVE                          → RUNNING    (``ready`` adds vm_state and the floating IP)
    HIBERNATING / HIBERNATED        → HIBERNATING / HIBERNATED
    RESTORING                       → RESTORING
    STOPPING, SHUTOFF               → STOPPED    (billed in full)
    DELETING                        → DELETING
    ERROR, or any of status / vm_state / power_state equal to "error" → ERROR

STARTING is a SHUTOFF VM booting after a start call: it becomes ACTIVE by itself, so the fleet
should wait on it as it waits on a new VM, not treat it as a stopped machine to act on. An unknown
status falls back on ``vm_state`` (active → RUNNING but never ready, stopped → STOPPED,
shelved* → HIBERNATED) and else on CREATING: a transient phase the fleet waits on and times out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .base import BillingItem, FirewallRule, Flavor, Vm, VmPhase, VmSpec, Volume

_PHASES = {
    "CREATING": VmPhase.CREATING,
    "BUILD": VmPhase.CREATING,
    "BUILDING": VmPhase.CREATING,
    "STARTING": VmPhase.CREATING,
    "ACTIVE": VmPhase.RUNNING,
    "HIBERNATING": VmPhase.HIBERNATING,
    "HIBERNATED": VmPhase.HIBERNATED,
    "RESTORING": VmPhase.RESTORING,
    "STOPPING": VmPhase.STOPPED,
    "SHUTOFF": VmPhase.STOPPED,
    "STOPPED": VmPhase.STOPPED,
    "DELETING": VmPhase.DELETING,
    "DELETED": VmPhase.DELETING,
    "ERROR": VmPhase.ERROR,
}
_VM_STATES = {
    "active": VmPhase.RUNNING,
    "building": VmPhase.CREATING,
    "stopped": VmPhase.STOPPED,
    "shelved": VmPhase.HIBERNATED,
    "shelved_offloaded": VmPhase.HIBERNATED,
    "deleted": VmPhase.DELETING,
    "error": VmPhase.ERROR,
}


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _labels(value: Any) -> tuple[str, ...]:
    """Labels as strings, whether given as ``["a"]`` or ``[{"id": 1, "label": "a"}]``."""
    out: list[str] = []
    for item in value if isinstance(value, list) else ():
        label = item.get("label") if isinstance(item, dict) else item
        if isinstance(label, str) and label:
            out.append(label)
    return tuple(out)


def parse_time(value: Any) -> datetime | None:
    """A timezone-aware UTC datetime from ISO 8601 (with Z, offset or none), a space-separated
    form, or epoch seconds; None when unreadable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = _text(value)
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def phase_of(instance: dict[str, Any]) -> VmPhase:
    status = _text(instance.get("status")).upper()
    vm_state = _text(instance.get("vm_state")).lower()
    if any(_text(instance.get(key)).lower() == "error" for key in ("status", "vm_state", "power_state")):
        return VmPhase.ERROR
    if status in _PHASES:
        return _PHASES[status]
    if vm_state.startswith("shelved"):
        return VmPhase.HIBERNATED
    return _VM_STATES.get(vm_state, VmPhase.CREATING)


def _wants_public_ip(instance: dict[str, Any]) -> bool:
    asked = instance.get("requires_public_ip")
    if isinstance(asked, bool):
        return asked
    ip_status = _text(instance.get("floating_ip_status")).upper()
    return bool(_text(instance.get("floating_ip"))) or ip_status not in ("", "NOT_ATTACHED", "DETACHED")


def is_ready(instance: dict[str, Any]) -> bool:
    """ACTIVE, vm_state active, and (where a public IP was asked for) that IP attached."""
    if _text(instance.get("status")).upper() != "ACTIVE" or _text(instance.get("vm_state")).lower() != "active":
        return False
    if phase_of(instance) is not VmPhase.RUNNING:
        return False  # e.g. power_state "error"
    if not _wants_public_ip(instance):
        return True
    return _text(instance.get("floating_ip_status")).upper() == "ATTACHED" and bool(_text(instance.get("floating_ip")))


def vm_from(instance: dict[str, Any]) -> Vm:
    flavor = _dict(instance.get("flavor"))
    environment = _dict(instance.get("environment"))
    emulator = _dict(instance.get("emulator"))
    node_dir = _text(emulator.get("node_dir"))
    ssh_port = emulator.get("ssh_port")
    engine_port = emulator.get("engine_port")
    return Vm(
        provider_id=str(instance.get("id", "")),
        name=_text(instance.get("name")),
        phase=phase_of(instance),
        ready=is_ready(instance),
        status=_text(instance.get("status")) or "UNKNOWN",
        flavor=_text(flavor.get("name")) or _text(instance.get("flavor_name")),
        ip=_text(instance.get("floating_ip")) or None,
        private_ip=_text(instance.get("fixed_ip")) or None,
        gpu=_text(flavor.get("gpu")) or None,
        gpu_count=_int(flavor.get("gpu_count")),
        environment=_text(environment.get("name")) or _text(instance.get("environment_name")) or None,
        labels=_labels(instance.get("labels")),
        created_at=parse_time(instance.get("created_at")),
        node_dir=Path(node_dir) if node_dir else None,
        engine_port=_int(engine_port) if engine_port is not None else None,
        ssh_port=_int(ssh_port) if ssh_port is not None else None,
        raw=instance,
    )


# -- requests --------------------------------------------------------------------------------------


def rule_body(rule: FirewallRule) -> dict[str, Any]:
    return {
        "direction": "ingress",
        "protocol": rule.protocol,
        "ethertype": "IPv4",
        "remote_ip_prefix": rule.remote_ip_prefix,
        "port_range_min": rule.port_min,
        "port_range_max": rule.port_max,
    }


def has_rule(instance: dict[str, Any], rule: FirewallRule) -> bool:
    """Whether the instance already carries an ingress rule identical to ``rule``."""
    for existing in instance.get("security_rules") or ():
        if not isinstance(existing, dict):
            continue
        if (
            _text(existing.get("direction")).lower() == "ingress"
            and _text(existing.get("protocol")).lower() == rule.protocol.lower()
            and _text(existing.get("ethertype") or "IPv4").lower() == "ipv4"
            and _text(existing.get("remote_ip_prefix")) == rule.remote_ip_prefix
            and _int(existing.get("port_range_min"), -1) == rule.port_min
            and _int(existing.get("port_range_max"), -1) == rule.port_max
        ):
            return True
    return False


def create_body(spec: VmSpec) -> dict[str, Any]:
    """The POST /core/virtual-machines body for one VM (further volumes are attached after)."""
    body: dict[str, Any] = {
        "name": spec.name,
        "environment_name": spec.environment,
        "flavor_name": spec.flavor,
        "key_name": spec.key_name,
        "count": 1,
        "assign_floating_ip": spec.assign_floating_ip,
    }
    if spec.image:
        body["image_name"] = spec.image
    if spec.volume_names:
        body["volume_name"] = spec.volume_names[0]
    if spec.user_data:
        body["user_data"] = spec.user_data
    if spec.labels:
        body["labels"] = list(spec.labels)
    if spec.firewall_rules:
        body["security_rules"] = [rule_body(rule) for rule in spec.firewall_rules]
    return body


def attached_volume_names(instance: dict[str, Any]) -> set[str]:
    names = set()
    for attachment in instance.get("volume_attachments") or ():
        name = _text(_dict(_dict(attachment).get("volume")).get("name"))
        if name:
            names.add(name)
    return names


# -- flavors and money -----------------------------------------------------------------------------


def volume_from(item: dict[str, Any]) -> Volume:
    """A ``Volumes_Fields`` item of ``GET /core/volumes``: ``attachments[].instance_id`` say where
    it is attached (an attachment whose status says detached or detaching is not counted)."""
    attached = []
    for attachment in item.get("attachments") or []:
        if not isinstance(attachment, dict) or attachment.get("instance_id") is None:
            continue
        if _text(attachment.get("status")).lower() in ("detached", "detaching"):
            continue
        attached.append(str(attachment["instance_id"]))
    size = item.get("size")
    return Volume(
        provider_id=str(item.get("id", "")),
        name=_text(item.get("name")),
        size_gb=size if isinstance(size, int) and not isinstance(size, bool) else None,
        status=_text(item.get("status")),
        environment=_text(_dict(item.get("environment")).get("name")) or None,
        volume_type=_text(item.get("volume_type")) or None,
        attached_vm_ids=tuple(attached),
        created_at=parse_time(item.get("created_at")),
        raw=item,
    )


def flavors_from(data: Any) -> list[Flavor]:
    """Flavors from GET /core/flavors' ``data``: groups (per GPU and region) each with ``flavors[]``;
    a flat list of flavors is accepted too."""
    out: list[Flavor] = []
    for group in data if isinstance(data, list) else ():
        if not isinstance(group, dict):
            continue
        members = group.get("flavors") if isinstance(group.get("flavors"), list) else [group]
        for item in members:
            item = _dict(item)
            name = _text(item.get("name"))
            if not name:
                continue
            stock = item.get("stock_available")
            out.append(Flavor(
                name=name,
                gpu=_text(item.get("gpu")) or _text(group.get("gpu")) or None,
                gpu_count=_int(item.get("gpu_count")),
                can_hibernate="no-hibernation" not in _labels(item.get("labels")),
                region=_text(item.get("region_name")) or _text(group.get("region_name")) or None,
                stock_available=stock if isinstance(stock, bool) else None,
            ))
    return out


def decimal_of(value: Any) -> Decimal | None:
    """A Decimal from a JSON number via its shortest repr (0.1 stays 0.1), or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


# A cumulative bill past this is not a bill: it would not fit the ledger's DECIMAL(18, 6).
_MAX_BILL_USD = Decimal("1e12")


class BillingShapeError(ValueError):
    """A billing usage answer without the documented shape (the message names what is missing)."""


def usage_list(answer: Any, which: str) -> list[dict[str, Any]]:
    """The ``data`` list of a usage answer, each item checked for what names a resource.

    Raises BillingShapeError naming what is missing: an answer reshaped or emptied of its list
    is a failed read, never an account without resources. A missing or unreadable total is
    not a shape error: that resource's sample is missing (``billing_item_from``)."""
    if not isinstance(answer, dict):
        raise BillingShapeError(f"the {which} billing usage answer is not a JSON object")
    data = answer.get("data")
    if not isinstance(data, list):
        keys = ", ".join(sorted(map(str, answer))) or "none"
        got = "missing" if data is None else f"a {type(data).__name__}"
        raise BillingShapeError(f"the {which} billing usage answer has no `data` list ({got}; keys: {keys})")
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise BillingShapeError(f"item {position} of the {which} billing usage is not an object")
        for key in ("resource_id", "resource_type"):
            if item.get(key) in (None, ""):
                raise BillingShapeError(f"item {position} of the {which} billing usage has no `{key}`")
    return data


def billing_item_from(item: dict[str, Any]) -> BillingItem:
    """One usage line (``usage_list`` has checked that it names a resource)."""
    per_minute = decimal_of(item.get("bill_per_minute"))
    total = decimal_of(item.get("total_bill"))
    if total is not None and not 0 <= total < _MAX_BILL_USD:
        total = None  # negative or absurd: unreadable, so a missing sample
    active = item.get("active")
    return BillingItem(
        resource_id=str(item["resource_id"]),
        resource_type=_text(item.get("resource_type")).lower() or "unknown",
        name=_text(item.get("name")) or None,
        usd_per_hour=per_minute * 60 if per_minute is not None else None,
        total_bill_usd=total,
        active=active if isinstance(active, bool) else item.get("terminate_time") in (None, ""),
        created_at=parse_time(item.get("create_time")),
        excluded=item.get("exclude_billing") is True,
        raw=item,
    )


def merge_billing(active: list[dict[str, Any]], deleted: list[dict[str, Any]]) -> list[BillingItem]:
    """Both usage lists, one item per (resource_type, resource_id); the active list wins."""
    merged: dict[tuple[str, str], BillingItem] = {}
    for source in (deleted, active):  # active last, so it overwrites
        for raw in source:
            item = billing_item_from(raw)
            merged[(item.resource_type, item.resource_id)] = item
    return list(merged.values())
