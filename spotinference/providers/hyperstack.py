"""The Hyperstack provider: the Provider interface over Hyperstack's REST API (``hyperstack_api``).

Hyperstack has no idempotency keys, so every call that creates something (a VM, a firewall
rule, a key pair, a volume) looks first and is never retried blindly: after an ambiguous failure
(a timeout, a 5xx, a dropped connection) it looks again before it posts again. A VM's name is the
idempotency key; ``create_vm`` returns the VM already named so rather than make a second.

Each public method is one logical call bounded by ``retry_deadline_s``: the REST layer's own
retries and this module's waits (a delete refused while the VM is still being created) share it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from ..config.models import ProviderSettings
from ..errors import ConfigError
from .base import BilledHour, BillingReading, FirewallRule, Flavor, Provider, Vm, VmPhase, VmSpec, Volume
from .errors import (
    InsufficientCapacityError,
    ProviderError,
    ProviderNotFoundError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    ProviderUnreachableError,
)
from .hyperstack_api import Deadline, HyperstackApi, payload, says_no_capacity
from .hyperstack_mapping import (
    attached_volume_names,
    create_body,
    flavors_from,
    BillingShapeError,
    has_rule,
    merge_billing,
    usage_list,
    rule_body,
    vm_from,
    volume_from,
)

log = logging.getLogger(__name__)

#: sent to the emulator when no key is configured (it accepts any non-empty key)
EMULATOR_PLACEHOLDER_KEY = "spot-sim-cloud"
#: the volume type new volumes get (Hyperstack's standard network SSD)
VOLUME_TYPE = "Cloud-SSD"
PAGE_SIZE = 100
_MAX_PAGES = 1000
_VMS = "/core/virtual-machines"
_DEFAULT_BASE_URL = ProviderSettings.model_fields["base_url"].default
_STILL_CREATING = re.compile(r"being created|creating|\bbuild", re.IGNORECASE)
#: failures after which a POST may or may not have taken effect
_AMBIGUOUS = (ProviderUnavailableError, ProviderRateLimitedError)


class HyperstackProvider(Provider):
    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self._api_root_ok = False
        key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
        if not key and settings.emulator:
            key = EMULATOR_PLACEHOLDER_KEY
        if not key:
            raise ConfigError(
                f"provider {name!r} has no API key",
                hint=f"export SPOT_PROVIDERS__{name.upper()}__API_KEY=... or set api_key_file in [providers.{name}]",
            )
        extra = {"jitter": jitter} if jitter is not None else {}
        self.api = HyperstackApi(
            provider=name,
            base_url=settings.base_url,
            api_key=key,
            request_timeout_s=settings.request_timeout_s,
            retry_deadline_s=settings.retry_deadline_s,
            retry_base_s=settings.retry_base_s,
            transport=transport,
            clock=clock,
            sleep=sleep,
            **extra,
        )

    def __repr__(self) -> str:
        return f"HyperstackProvider(name={self.name!r}, base_url={self.api.base_url!r})"

    def close(self) -> None:
        self.api.close()

    # -- VMs -----------------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> Vm:
        deadline = self.api.deadline()
        body = create_body(spec)

        def existing() -> Vm | None:
            return self._find(spec.name, deadline, include_deleting=False)

        answer = self._create_once(f"VM {spec.name!r}", existing, lambda: self.api.call(
            "POST", _VMS, json=body, retry=False, deadline=deadline), deadline, capacity=True)
        if not isinstance(answer, Vm):
            instances = payload(answer, "instances", "instance")
            instances = instances if isinstance(instances, list) else [instances]
            mine = [i for i in instances if isinstance(i, dict) and i.get("name") == spec.name]
            answer = vm_from(mine[0]) if mine else existing()
            if answer is None:
                raise ProviderError(f"Hyperstack accepted VM {spec.name!r} but did not return it", provider=self.name)
        return self._attach_extra_volumes(answer, spec, deadline)

    def get_vm(self, provider_id: str) -> Vm | None:
        return self._get(provider_id, self.api.deadline())

    def find_vm(self, name: str) -> Vm | None:
        return self._find(name, self.api.deadline(), include_deleting=True)

    def list_vms(self, name_prefix: str = "") -> list[Vm]:
        instances = self._list_instances(name_prefix, self.api.deadline())
        return [vm_from(i) for i in instances if str(i.get("name", "")).startswith(name_prefix)]

    def hibernate_vm(self, provider_id: str) -> None:
        deadline = self.api.deadline()
        try:
            self.api.call("GET", f"{_VMS}/{provider_id}/hibernate", deadline=deadline)
        except ProviderError as exc:
            # A retried call whose first try got through is refused as already hibernating.
            if not self._phase_in(provider_id, exc, {VmPhase.HIBERNATING, VmPhase.HIBERNATED}, deadline):
                raise

    def restore_vm(self, provider_id: str) -> None:
        deadline = self.api.deadline()
        try:
            self.api.call("GET", f"{_VMS}/{provider_id}/hibernate-restore", deadline=deadline)
        except ProviderError as exc:
            if says_no_capacity(exc.message):
                raise self._no_capacity(exc, "restore") from None
            # A VM already restoring (or restored) is not restored twice: that is success.
            if not self._phase_in(provider_id, exc, {VmPhase.RESTORING, VmPhase.RUNNING}, deadline):
                raise

    def delete_vm(self, provider_id: str) -> None:
        deadline = self.api.deadline()
        attempt = 0
        while True:
            try:
                self.api.call("DELETE", f"{_VMS}/{provider_id}", deadline=deadline)
                return
            except ProviderNotFoundError:
                self._confirm_api_root(deadline)
                return  # already gone
            except ProviderError as exc:
                if exc.status_code not in (400, 409, 200) or not self._still_creating(provider_id, exc, deadline):
                    raise
                if not self.api.wait(attempt, deadline):
                    raise ProviderError(
                        f"{exc.message} (still being created when the {self.api.retry_deadline_s:g} s deadline passed)",
                        provider=self.name, status_code=exc.status_code, reason=exc.reason,
                        hint="delete it again once it has finished creating",
                    ) from None
                attempt += 1

    def add_firewall_rule(self, provider_id: str, rule: FirewallRule) -> None:
        deadline = self.api.deadline()

        def existing() -> bool | None:
            answer = self.api.call("GET", f"{_VMS}/{provider_id}", deadline=deadline)
            instance = payload(answer, "instance")
            return True if isinstance(instance, dict) and has_rule(instance, rule) else None

        self._create_once(f"firewall rule {rule}", existing, lambda: self.api.call(
            "POST", f"{_VMS}/{provider_id}/sg-rules", json=rule_body(rule), retry=False, deadline=deadline),
            deadline)

    # -- what the fleet prepares once ------------------------------------------------------------

    def ensure_key_pair(self, name: str, environment: str, public_key: str) -> None:
        deadline = self.api.deadline()

        def existing() -> bool | None:
            for item in self._pages("/core/keypairs", "keypairs", {"search": name}, deadline):
                if item.get("name") == name and _environment_of(item) in (None, environment):
                    if _key_material(item.get("public_key")) not in (None, _key_material(public_key)):
                        raise ProviderError(
                            f"key pair {name!r} in {environment!r} exists with a different public key",
                            provider=self.name, hint="delete that key pair at the provider or choose another name",
                        )
                    return True
            return None

        body = {"name": name, "environment_name": environment, "public_key": public_key}
        self._create_once(f"key pair {name!r}", existing, lambda: self.api.call(
            "POST", "/core/keypairs", json=body, retry=False, deadline=deadline), deadline)

    def ensure_volume(self, name: str, environment: str, size_gb: int) -> str:
        deadline = self.api.deadline()

        def existing() -> str | None:
            return self._volume_ids([name], environment, deadline).get(name)

        body = {"name": name, "environment_name": environment, "size": size_gb, "volume_type": VOLUME_TYPE}
        answer = self._create_once(f"volume {name!r}", existing, lambda: self.api.call(
            "POST", "/core/volumes", json=body, retry=False, deadline=deadline), deadline)
        if isinstance(answer, str):
            return answer
        volume = payload(answer, "volume", "data")
        if isinstance(volume, dict) and volume.get("id") is not None:
            return str(volume["id"])
        created = existing()
        if created is None:
            raise ProviderError(f"Hyperstack accepted volume {name!r} but did not return its id", provider=self.name)
        return created

    def list_volumes(self) -> list[Volume]:
        """``GET /core/volumes``, every page."""
        items = self._pages("/core/volumes", "volumes", {}, self.api.deadline())
        return [volume_from(item) for item in items if item.get("id") is not None]

    def delete_volume(self, provider_id: str) -> None:
        """``DELETE /core/volumes/{id}``. Hyperstack refuses (400) while the volume is attached;
        that refusal is raised as is. A 404 (already gone) is success once the API root answers."""
        if not provider_id.isdigit():
            raise ProviderNotFoundError(f"volume {provider_id!r}: Hyperstack ids are numbers", provider=self.name)
        deadline = self.api.deadline()
        try:
            self.api.call("DELETE", f"/core/volumes/{provider_id}", deadline=deadline)
        except ProviderNotFoundError:
            self._confirm_api_root(deadline)

    def get_flavor(self, name: str, region: str | None = None) -> Flavor | None:
        answer = self.api.call("GET", "/core/flavors", params={"region": region} if region else None)
        matches = [f for f in flavors_from(payload(answer, "data", "flavors")) if f.name == name]
        if region:
            matches = [f for f in matches if f.region in (None, region)]
        return matches[0] if matches else None

    # -- money -----------------------------------------------------------------------------------

    def read_billing(self) -> BillingReading:
        """Active and deleted usage, every page, validated; the provider's clock from its Date."""
        deadline = self.api.deadline()
        active = self._usage_pages("active", {}, deadline)
        clock_at = self.api.last_answer_date
        deleted = self._usage_pages("deleted", {"deleted": "true"}, deadline)
        return BillingReading(merge_billing(active, deleted), clock_at)

    def _usage_pages(self, which: str, params: dict[str, Any], deadline: Deadline) -> list[dict[str, Any]]:
        """One usage list, following pages when the answer says it is paged (``page_size`` or a
        ``count`` above what came back). Usage is not documented as paged; if it is, a list that
        ends short of its ``count`` is a failed read, not a smaller bill."""
        items: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        page_size = PAGE_SIZE
        for page in range(1, _MAX_PAGES + 1):
            asked = params if page == 1 else {**params, "page": page, "pageSize": page_size}
            answer = self.api.call("GET", "/billing/billing/usage", params=asked or None, deadline=deadline)
            try:
                batch = usage_list(answer, which)
            except BillingShapeError as exc:
                raise ProviderError(str(exc), provider=self.name) from None
            fresh = [i for i in batch if (str(i["resource_type"]), str(i["resource_id"])) not in seen]
            seen.update((str(i["resource_type"]), str(i["resource_id"])) for i in batch)
            items.extend(fresh)
            count = answer.get("count") if isinstance(answer.get("count"), int) else None
            echoed = answer.get("page_size")
            page_size = echoed if isinstance(echoed, int) and echoed > 0 else PAGE_SIZE
            paged = isinstance(echoed, int) or (count is not None and count > len(items))
            if not paged or not fresh or len(batch) < page_size:
                break
        if count is not None and len(items) < count:  # a total or a page's count: never above what we hold
            raise ProviderError(f"the {which} billing usage listed {len(items)} of its {count} resources",
                                provider=self.name)
        return items

    # -- helpers ---------------------------------------------------------------------------------

    def _create_once(
        self,
        what: str,
        existing: Callable[[], Any],
        post: Callable[[], Any],
        deadline: Deadline,
        *,
        capacity: bool = False,
    ) -> Any:
        """``existing()`` if it finds something, else ``post()``'s answer. After an ambiguous
        failure ``existing()`` is asked again before posting again, so nothing is made twice."""
        attempt = 0
        while True:
            found = existing()
            if found is not None:
                return found
            try:
                return post()
            except ProviderUnreachableError:
                raise  # no connection at all: the POST never left, and looking again cannot work either
            except _AMBIGUOUS as exc:
                # No answer at all (a timeout, a dropped connection): the server may still be
                # working on the POST, so give it a request timeout's worth before looking again.
                settle_s = self.api.request_timeout_s if exc.status_code is None else 0.0
                if not self.api.wait(attempt, deadline, at_least_s=settle_s):
                    raise
                log.info("%s: %s; looking it up before trying again", what, exc.message)
                attempt += 1
            except ProviderError as exc:
                if capacity and exc.status_code is not None and says_no_capacity(exc.message):
                    raise self._no_capacity(exc, "create") from None
                raise

    def _no_capacity(self, exc: ProviderError, action: str) -> InsufficientCapacityError:
        return InsufficientCapacityError(
            exc.message, provider=self.name, status_code=exc.status_code, reason=exc.reason,
            hint=f"no GPU capacity for this {action} now: try later, another region, or a fallback tier",
        )

    def _pages(self, path: str, key: str, params: dict[str, Any], deadline: Deadline) -> list[dict[str, Any]]:
        """Every item of a paginated list (page / pageSize), stopping on a short or repeated page.

        ``count`` is not trusted (total or per page is not documented); a server that caps the
        page size is followed by the ``page_size`` it echoes, one that ignores paging by ids."""
        items: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for page in range(1, _MAX_PAGES + 1):
            answer = self.api.call("GET", path, params={**params, "page": page, "pageSize": PAGE_SIZE},
                                   deadline=deadline)
            batch = [i for i in (payload(answer, key) or []) if isinstance(i, dict)]
            fresh = [i for i in batch if i.get("id") is None or i.get("id") not in seen]
            seen.update(i.get("id") for i in batch)
            items.extend(fresh)
            echoed = answer.get("page_size") if isinstance(answer, dict) else None
            page_size = echoed if isinstance(echoed, int) and 0 < echoed < PAGE_SIZE else PAGE_SIZE
            if not fresh or len(batch) < page_size:
                break
        return items

    def _list_instances(self, search: str, deadline: Deadline) -> list[dict[str, Any]]:
        return self._pages(_VMS, "instances", {"search": search} if search else {}, deadline)

    def _find(self, name: str, deadline: Deadline, *, include_deleting: bool) -> Vm | None:
        matches = [vm_from(i) for i in self._list_instances(name, deadline) if i.get("name") == name]
        if not include_deleting:
            matches = [vm for vm in matches if vm.phase is not VmPhase.DELETING]
        if not matches:
            return None
        # Someone else may have made duplicates: prefer a live VM, then the oldest.
        matches.sort(key=lambda vm: (vm.phase is VmPhase.DELETING, _id_order(vm.provider_id)))
        if len(matches) > 1:
            log.warning("%d VMs are named %r; using id %s", len(matches), name, matches[0].provider_id)
        return matches[0]

    def _phase_in(self, provider_id: str, exc: ProviderError, phases: set[VmPhase], deadline: Deadline) -> bool:
        """After a refusal (not a 404): whether the VM is already where the call would put it."""
        if exc.status_code not in (400, 409, 200):
            return False
        vm = self._get(provider_id, deadline)
        return vm is not None and vm.phase in phases

    def _still_creating(self, provider_id: str, exc: ProviderError, deadline: Deadline) -> bool:
        if _STILL_CREATING.search(exc.message):
            return True
        vm = self._get(provider_id, deadline)
        return vm is not None and vm.phase is VmPhase.CREATING

    def _get(self, provider_id: str, deadline: Deadline) -> Vm | None:
        try:
            answer = self.api.call("GET", f"{_VMS}/{provider_id}", deadline=deadline)
        except ProviderNotFoundError:
            self._confirm_api_root(deadline)
            return None
        instance = payload(answer, "instance", "instances")
        if isinstance(instance, list):
            instance = instance[0] if instance else None
        return vm_from(instance) if isinstance(instance, dict) else None

    def _confirm_api_root(self, deadline: Deadline) -> None:
        """Before a 404 is read as "that VM is gone": a wrong base_url answers 404 to every path,
        and must not make every VM look deleted. Checked once; the VM list must answer."""
        if self._api_root_ok:
            return
        try:
            self.api.call("GET", _VMS, params={"page": 1, "pageSize": 1}, deadline=deadline)
        except ProviderNotFoundError as exc:
            raise ProviderError(
                f"{exc.message} (the VM list itself is not found: is base_url right?)",
                provider=self.name, status_code=exc.status_code, reason=exc.reason,
                hint=f"check [providers.{self.name}] base_url (Hyperstack: {_DEFAULT_BASE_URL})",
            ) from None
        self._api_root_ok = True

    def _volume_ids(self, names: list[str], environment: str | None, deadline: Deadline) -> dict[str, str]:
        wanted = set(names)
        found: dict[str, str] = {}
        search = names[0] if len(names) == 1 else ""
        for item in self._pages("/core/volumes", "volumes", {"search": search} if search else {}, deadline):
            name = item.get("name")
            if name in wanted and name not in found and item.get("id") is not None:
                if environment is None or _environment_of(item) in (None, environment):
                    found[name] = str(item["id"])
        return found

    def _attach_extra_volumes(self, vm: Vm, spec: VmSpec, deadline: Deadline) -> Vm:
        """Attach ``spec.volume_names[1:]`` (the create body takes one volume) unless attached."""
        missing = [n for n in spec.volume_names[1:] if n not in attached_volume_names(vm.raw)]
        if not missing:
            return vm
        ids = self._volume_ids(missing, spec.environment, deadline)
        unknown = [n for n in missing if n not in ids]
        if unknown:
            raise ProviderNotFoundError(
                f"VM {spec.name!r}: no volume named {', '.join(map(repr, unknown))} in {spec.environment!r}",
                provider=self.name, hint="create it first (ensure_volume)",
            )
        self.api.call("POST", f"{_VMS}/{vm.provider_id}/attach-volumes",
                      json={"volume_ids": [int(ids[n]) if ids[n].isdigit() else ids[n] for n in missing]},
                      deadline=deadline)
        return self._get(vm.provider_id, deadline) or vm

    # -- the provider's own billing history (`spot cost reconcile`) -----------------------------

    def billing_history(self, resource_type: str, resource_id: str, start: datetime | None = None,
                        end: datetime | None = None) -> list[BilledHour]:
        """``GET /billing/billing/history/{virtual-machine,volume}/{id}/graph``: hourly points."""
        from .hyperstack_history import resource_hours

        if not resource_id.isdigit():
            raise ProviderNotFoundError(f"{resource_type} {resource_id!r}: Hyperstack ids are numbers",
                                        provider=self.name)
        hours = resource_hours(self.api, resource_type, int(resource_id), start=start, end=end, with_rates=False)
        return [BilledHour(h.resource_type, resource_id, h.hour_start, h.incurred_usd) for h in hours]

    def credit_usd(self) -> Decimal | None:
        """``GET /billing/user-credit/credit``: the account's balance now."""
        from .hyperstack_history import credit_balance

        return credit_balance(self.api).credit_usd


def _environment_of(item: dict[str, Any]) -> str | None:
    env = item.get("environment")
    if isinstance(env, dict):
        env = env.get("name")
    if env is None:
        env = item.get("environment_name")
    return env if isinstance(env, str) and env else None


def _key_material(public_key: Any) -> str | None:
    """``type base64`` of an OpenSSH public key, ignoring its comment."""
    if not isinstance(public_key, str) or not public_key.strip():
        return None
    return " ".join(public_key.split()[:2])


def _id_order(provider_id: str) -> tuple[int, str]:
    return (int(provider_id), "") if provider_id.isdigit() else (1 << 62, provider_id)
