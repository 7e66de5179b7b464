"""The ``/v1`` routes: Hyperstack's API shape over the emulated account.

Lists (VMs, volumes, key pairs, environments) are paginated honestly: ``page`` (from 1) and
``pageSize`` (default 30, at most 1000); ``count`` is the number of items matching the filters
across all pages, so a client reads pages until it has ``count`` items or a page comes back
short. ``search`` matches a substring of the name (case-insensitive) or the exact id. For VMs,
``environment`` matches a substring of the environment's name unless
``exact_environment_match=true``. ``count`` > 1 in a create names the VMs ``<name>-1`` ...
``<name>-<count>``.

Billing: ``usage`` (see ``usage`` for its faults and optional paging), the credit, and the
history of one VM or volume (see ``history``): details and hourly ``/graph`` points under
``/billing/billing/history/{virtual-machine,volume}/{id}``, rate events under
``/billing/billing/{virtual-machine,volume}/{id}/billing-events``. Terminated resources keep
their history; an id never seen is a 404.
"""

from __future__ import annotations

from typing import Any

from . import billing, catalog, history, render, usage
from .account import bad_request, not_found
from .faults import FaultBook
from .lifecycle import Cloud
from .routing import Request, Response, Router, ok

DEFAULT_PAGE_SIZE = 30
MAX_PAGE_SIZE = 1000


class Api:
    def __init__(self, cloud: Cloud, faults: FaultBook, *, ssh_port: int | None) -> None:
        self.cloud = cloud
        self.faults = faults
        self.ssh_port = ssh_port

    def register(self, router: Router) -> None:
        vm = "/v1/core/virtual-machines"
        for method, path, handler in (
            ("GET", "/v1/billing/alive", self.alive),
            ("GET", "/v1/core/environments", self.list_environments),
            ("POST", "/v1/core/environments", self.create_environment),
            ("GET", "/v1/core/flavors", self.flavors),
            ("GET", "/v1/core/images", self.images),
            ("GET", "/v1/pricebook", self.pricebook),
            ("GET", "/v1/core/keypairs", self.list_keypairs),
            ("POST", "/v1/core/keypairs", self.create_keypair),
            ("GET", "/v1/core/volumes", self.list_volumes),
            ("POST", "/v1/core/volumes", self.create_volume),
            ("GET", "/v1/core/volumes/{volume_id}", self.get_volume),
            ("DELETE", "/v1/core/volumes/{volume_id}", self.delete_volume),
            ("GET", vm, self.list_vms),
            ("POST", vm, self.create_vms),
            ("GET", f"{vm}/name-availability/{{name}}", self.name_availability),
            ("GET", f"{vm}/{{vm_id}}", self.get_vm),
            ("DELETE", f"{vm}/{{vm_id}}", self.delete_vm),
            ("GET", f"{vm}/{{vm_id}}/hibernate", self.hibernate),
            ("GET", f"{vm}/{{vm_id}}/hibernate-restore", self.restore),
            ("GET", f"{vm}/{{vm_id}}/start", self.start),
            ("GET", f"{vm}/{{vm_id}}/stop", self.stop),
            ("POST", f"{vm}/{{vm_id}}/sg-rules", self.add_security_rule),
            ("POST", f"{vm}/{{vm_id}}/attach-volumes", self.attach_volumes),
            ("GET", "/v1/billing/billing/usage", self.billing_usage),
            ("GET", "/v1/billing/user-credit/credit", self.credit),
            ("GET", "/v1/billing/billing/history/virtual-machine/{vm_id}", self.vm_history),
            ("GET", "/v1/billing/billing/history/virtual-machine/{vm_id}/graph", self.vm_graph),
            ("GET", "/v1/billing/billing/history/volume/{volume_id}", self.volume_history),
            ("GET", "/v1/billing/billing/history/volume/{volume_id}/graph", self.volume_graph),
            ("GET", "/v1/billing/billing/virtual-machine/{vm_id}/billing-events", self.vm_events),
            ("GET", "/v1/billing/billing/volume/{volume_id}/billing-events", self.volume_events),
        ):
            router.add(method, path, handler)

    def _instance(self, vm: Any) -> dict[str, Any]:
        return render.instance_json(vm, self.cloud.world, self.cloud.clock, ssh_port=self.ssh_port)

    # -- account -------------------------------------------------------------------------------

    def alive(self, req: Request) -> Response:
        return ok("alive")

    def list_environments(self, req: Request) -> Response:
        envs = _searched(req, list(self.cloud.world.environments.values()))
        return _page(req, "Getting environments success", "environments",
                     [render.environment_json(e, self.cloud.clock) for e in envs])

    def create_environment(self, req: Request) -> Response:
        body = req.json_object()
        env = self.cloud.create_environment(body.get("name"), body.get("region"))
        return ok("Environment created successfully", environment=render.environment_json(env, self.cloud.clock))

    def flavors(self, req: Request) -> Response:
        return ok("Getting flavors success", data=catalog.flavors_json(req.query.get("region")))

    def images(self, req: Request) -> Response:
        return ok("Getting images success", images=catalog.images_json(req.query.get("region")))

    def pricebook(self, req: Request) -> Response:
        return Response(200, catalog.pricebook_json())

    def list_keypairs(self, req: Request) -> Response:
        world, clock = self.cloud.world, self.cloud.clock
        keys = _searched(req, list(world.keypairs.values()))
        return _page(req, "Getting keypairs success", "keypairs", [render.keypair_json(k, world, clock) for k in keys])

    def create_keypair(self, req: Request) -> Response:
        body = req.json_object()
        key = self.cloud.create_keypair(body.get("name"), body.get("environment_name"), body.get("public_key"))
        return ok("Imported keypair successfully", keypair=render.keypair_json(key, self.cloud.world, self.cloud.clock))

    # -- volumes -------------------------------------------------------------------------------

    def list_volumes(self, req: Request) -> Response:
        world, clock = self.cloud.world, self.cloud.clock
        vols = _searched(req, world.live_volumes())
        return _page(req, "Getting volumes success", "volumes", [render.volume_json(v, world, clock) for v in vols])

    def create_volume(self, req: Request) -> Response:
        body = req.json_object()
        volume = self.cloud.create_volume(body.get("name"), body.get("environment_name"), body.get("size"),
                                          body.get("volume_type"))
        return ok("Volume created successfully", volume=render.volume_json(volume, self.cloud.world, self.cloud.clock))

    def get_volume(self, req: Request, volume_id: int) -> Response:
        volume = self.cloud.volume(volume_id)
        return ok("Getting volume success", volume=render.volume_json(volume, self.cloud.world, self.cloud.clock))

    def delete_volume(self, req: Request, volume_id: int) -> Response:
        self.cloud.delete_volume(volume_id)
        return ok("Volume deleted successfully")

    def attach_volumes(self, req: Request, vm_id: int) -> Response:
        volumes = self.cloud.attach_volumes(vm_id, req.json_object().get("volume_ids"))
        clock = self.cloud.clock
        attached = [{"id": v.attachment_id, "volume_id": v.id, "instance_id": vm_id, "device": "/dev/vdb",
                     "status": "ATTACHED", "protected": False, "created_at": clock.iso_at(v.attached_us)}
                    for v in volumes]
        return ok("Volume(s) attached successfully", volume_attachments=attached)

    # -- virtual machines ----------------------------------------------------------------------

    def list_vms(self, req: Request) -> Response:
        vms = self.cloud.list_vms(search=req.query.get("search"), environment=req.query.get("environment"),
                                  exact_environment=req.flag("exact_environment_match"))
        return _page(req, "Getting virtual machines success", "instances", vms, self._instance)

    def create_vms(self, req: Request) -> Response:
        vms = self.cloud.create_vms(req.json_object())
        return ok("Virtual machine(s) creation in progress", instances=[self._instance(vm) for vm in vms])

    def name_availability(self, req: Request, name: str) -> Response:
        count = req.int_param("count", 1)
        names = [name] if count == 1 else [f"{name}-{i + 1}" for i in range(count)]
        available = not any(self.cloud.name_taken(n) for n in names)
        message = "Name is available" if available else f"A virtual machine named {name!r} already exists"
        return ok(message, available=available, name=name)

    def get_vm(self, req: Request, vm_id: int) -> Response:
        return ok("Getting virtual machine success", instance=self._instance(self.cloud.vm(vm_id)))

    def delete_vm(self, req: Request, vm_id: int) -> Response:
        self.cloud.delete_vm(vm_id)
        return ok("Virtual machine deletion in progress")

    def hibernate(self, req: Request, vm_id: int) -> Response:
        self.cloud.hibernate(vm_id, retain_ip=req.flag("retain_ip"))
        return ok("Virtual machine hibernation initiated")

    def restore(self, req: Request, vm_id: int) -> Response:
        vm = self.cloud.check_restorable(vm_id)
        fault = self.faults.take_restore_fault(req.path)
        if fault is not None and fault.mode == "reject":
            region = self.cloud.world.environments[vm.environment].region
            raise bad_request(f"Insufficient capacity: no {vm.flavor} available in {region} at the moment")
        self.cloud.restore(vm_id, revert=fault is not None)
        return ok("Virtual machine restore from hibernation initiated")

    def start(self, req: Request, vm_id: int) -> Response:
        self.cloud.start(vm_id)
        return ok("Virtual machine start initiated")

    def stop(self, req: Request, vm_id: int) -> Response:
        self.cloud.stop(vm_id)
        return ok("Virtual machine stop initiated")

    def add_security_rule(self, req: Request, vm_id: int) -> Response:
        rule = self.cloud.add_security_rule(vm_id, req.json())
        return ok("Security rule added successfully", security_rule=rule)

    # -- billing -------------------------------------------------------------------------------

    def billing_usage(self, req: Request) -> Response:
        deleted = req.flag("deleted")
        items = billing.usage_items(self.cloud.world, self.cloud.clock, deleted=deleted,
                                    environment=req.query.get("environment"))
        return usage.answer(req, items, self.faults.take_billing_faults(req.path, deleted=deleted))

    def credit(self, req: Request) -> Response:
        return ok("Getting credit success", data=billing.credit_json(self.cloud.world))

    # -- billing history -----------------------------------------------------------------------

    def _any_vm(self, vm_id: int) -> Any:
        vm = self.cloud.world.vms.get(vm_id)
        if vm is None:
            raise not_found(f"Virtual machine with id {vm_id} not found")
        return vm

    def _any_volume(self, volume_id: int) -> Any:
        volume = self.cloud.world.volumes.get(volume_id)
        if volume is None:
            raise not_found(f"Volume with id {volume_id} not found")
        return volume

    def _points(self, req: Request, res: Any) -> list[history.HourPoint]:
        start, end = history.window(self.cloud.clock, res, req.query.get("start_date"), req.query.get("end_date"))
        return history.hour_points(res.meter, start, end)

    def _history(self, res: Any, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        entry = {"attributes": {**history.attributes(res), **(extra or {})}, "metrics": metrics}
        return {"org_id": self.cloud.world.organization_id, "total_count": 1, "billing_history": [entry]}

    def vm_history(self, req: Request, vm_id: int) -> Response:
        vm = self._any_vm(vm_id)
        metrics = history.details_metrics(self._points(req, vm), vm=True)
        return ok("Billing details of the virtual machine retrieved successfully",
                  billing_history_vm_details=self._history(vm, metrics))

    def vm_graph(self, req: Request, vm_id: int) -> Response:
        vm = self._any_vm(vm_id)
        graph = {**self._history(vm, history.graph_metrics(self._points(req, vm))), "granularity": 3600}
        return ok("Billing details hourly cost datapoints for the virtual machine retrieved successfully",
                  billing_history_vm_details=graph)

    def volume_history(self, req: Request, volume_id: int) -> Response:
        volume = self._any_volume(volume_id)
        metrics = history.details_metrics(self._points(req, volume), vm=False)
        extra = {"subresource_type": volume.volume_type, "subresource_amount": volume.size_gb}
        return ok("Billing details of the volume retrieved successfully",
                  billing_history_volume_details=self._history(volume, metrics, extra))

    def volume_graph(self, req: Request, volume_id: int) -> Response:
        volume = self._any_volume(volume_id)
        graph = {**self._history(volume, history.graph_metrics(self._points(req, volume))), "granularity": 3600}
        # the OpenAPI file names this key billing_history_snapshot_details, and so does the emulator
        return ok("Billing details hourly cost datapoints for the volume retrieved successfully",
                  billing_history_snapshot_details=graph)

    def _events(self, req: Request, res: Any) -> Response:
        start, end = history.window(self.cloud.clock, res, req.query.get("start_date"), req.query.get("end_date"))
        return ok("Billing events history retrieved successfully",
                  billing_events_history=history.billing_events(self.cloud.clock, res, start, end))

    def vm_events(self, req: Request, vm_id: int) -> Response:
        return self._events(req, self._any_vm(vm_id))

    def volume_events(self, req: Request, volume_id: int) -> Response:
        return self._events(req, self._any_volume(volume_id))


def _searched(req: Request, items: list[Any]) -> list[Any]:
    search = (req.query.get("search") or "").lower()
    if not search:
        return items
    return [item for item in items if search in item.name.lower() or search == str(item.id)]


def _page(req: Request, message: str, key: str, items: list[Any], render_item: Any = None) -> Response:
    page = req.int_param("page", 1)
    size = min(req.int_param("pageSize", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    chosen = items[(page - 1) * size:page * size]
    if render_item is not None:
        chosen = [render_item(item) for item in chosen]
    return ok(message, **{key: chosen}, count=len(items), page=page, page_size=size)
