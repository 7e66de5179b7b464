"""The account's passive resources: environments, key pairs, volumes; and the API's errors.

``Account`` is the base of ``lifecycle.Cloud``: it holds the world, the clock and the dirty flag
(the state is saved when set), and validates what callers send. Calls that break a rule raise
``CloudError``: the HTTP status, Hyperstack's ``error_reason`` and a message.
"""

from __future__ import annotations

import base64
import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import billing, catalog
from .clock import EmulatedClock
from .state import Environment, KeyPair, VmRecord, Volume, World, save

MAX_NAME = 50


class CloudError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def bad_request(message: str) -> CloudError:
    return CloudError(400, "bad_request", message)


def not_found(message: str) -> CloudError:
    return CloudError(404, "not_found", message)


class Account:
    def __init__(self, state_dir: Path, world: World, clock: EmulatedClock) -> None:
        self.state_dir = state_dir
        self.world = world
        self.clock = clock
        self.dirty = False

    @property
    def now_us(self) -> int:
        return self.clock.now_us()

    def sync(self) -> None:
        """Bring the account up to the clock's now (``Cloud`` applies due steps and bills)."""

    def save_if_dirty(self) -> None:
        if self.dirty:
            save(self.state_dir, self.world, self.clock.to_json())
            self.dirty = False

    def _environment(self, name: Any) -> Environment:
        env = self.world.environments.get(name) if isinstance(name, str) else None
        if env is None:
            raise bad_request(f"Environment {name!r} does not exist")
        return env

    # -- environments, key pairs, volumes ------------------------------------------------------

    def create_environment(self, name: Any, region: Any) -> Environment:
        check_name(name, "environment")
        if region not in catalog.REGIONS:
            raise bad_request(f"Region {region!r} does not exist; regions: {', '.join(catalog.REGIONS)}")
        if name in self.world.environments:
            raise bad_request(f"An environment named {name!r} already exists")
        env = Environment(self.world.next_id("environment"), name, region, self.now_us)
        self.world.environments[name] = env
        self.dirty = True
        return env

    def create_keypair(self, name: Any, environment: Any, public_key: Any) -> KeyPair:
        check_name(name, "key pair")
        env = self._environment(environment)
        if not isinstance(public_key, str) or not public_key.strip():
            raise bad_request("public_key is required")
        if any(k.name == name and k.environment == env.name for k in self.world.keypairs.values()):
            raise bad_request(f"A key pair named {name!r} already exists in environment {env.name!r}")
        key = KeyPair(self.world.next_id("keypair"), name, env.name, public_key.strip(),
                      fingerprint(public_key), self.now_us)
        self.world.keypairs[key.id] = key
        self.dirty = True
        return key

    def create_volume(self, name: Any, environment: Any, size: Any, volume_type: Any) -> Volume:
        check_name(name, "volume")
        env = self._environment(environment)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 100_000:
            raise bad_request("size must be a whole number of GB between 1 and 100000")
        if not isinstance(volume_type, str) or not volume_type:
            raise bad_request("volume_type is required (e.g. 'Cloud-SSD')")
        self.sync()
        volume = Volume(self.world.next_id("volume"), name, env.name, size, volume_type, self.now_us)
        billing.note_event(volume.meter, volume.created_us, "CREATED", billing.volume_usd_per_hour(volume))
        self.world.volumes[volume.id] = volume
        self.dirty = True
        return volume

    def volume(self, volume_id: int) -> Volume:
        volume = self.world.volumes.get(volume_id)
        if volume is None or volume.terminated_us is not None:
            raise not_found(f"Volume with id {volume_id} not found")
        return volume

    def delete_volume(self, volume_id: int) -> None:
        volume = self.volume(volume_id)
        if volume.attached_to is not None:
            raise bad_request(f"Volume {volume_id} is attached to virtual machine {volume.attached_to}: detach it first")
        self.sync()
        volume.terminated_us = self.now_us
        billing.note_event(volume.meter, volume.terminated_us, "DELETED", Decimal(0))
        self.dirty = True

    def _check_attachable(self, volume: Volume, vm: VmRecord) -> None:
        if volume.environment != vm.environment:
            raise bad_request(f"Volume {volume.id} is in environment {volume.environment!r}, "
                              f"the virtual machine in {vm.environment!r}")
        if volume.attached_to is not None and volume.attached_to != vm.id:
            raise bad_request(f"Volume {volume.id} is already attached to virtual machine {volume.attached_to}")

    def _attach(self, volume: Volume, vm: VmRecord) -> None:
        if volume.attached_to == vm.id:
            return
        volume.attached_to = vm.id
        volume.attachment_id = self.world.next_id("attachment")
        volume.attached_us = self.now_us
        vm.volume_ids.append(volume.id)
        self.dirty = True

    def _volume_by_name(self, name: Any, environment: str, count: int) -> Volume | None:
        if not name:
            return None
        matches = [v for v in self.world.live_volumes() if v.name == name and v.environment == environment]
        if not matches:
            raise bad_request(f"Volume {name!r} not found in environment {environment!r}")
        if count > 1:
            raise bad_request("a volume can be attached to one virtual machine only: use count 1 with volume_name")
        if matches[0].attached_to is not None:
            raise bad_request(f"Volume {name!r} is already attached to virtual machine {matches[0].attached_to}")
        return matches[0]


def check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise bad_request(f"a {what} name is required")
    if len(name) > MAX_NAME:
        raise bad_request(f"a {what} name is at most {MAX_NAME} characters")


def security_rule(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("a security rule must be a JSON object")
    for field in ("direction", "ethertype", "protocol", "remote_ip_prefix"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise bad_request(f"{field} is required in a security rule")
    rule = {f: body[f] for f in ("direction", "ethertype", "protocol", "remote_ip_prefix")}
    for field in ("port_range_min", "port_range_max"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or not 0 <= value <= 65535):
            raise bad_request(f"{field} must be a port number")
        rule[field] = value
    return rule


def fingerprint(public_key: str) -> str:
    parts = public_key.split()
    try:
        raw = base64.b64decode(parts[1], validate=True) if len(parts) > 1 else public_key.encode()
    except ValueError:
        raw = public_key.encode()
    digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
