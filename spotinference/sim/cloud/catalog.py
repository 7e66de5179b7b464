"""What the emulated cloud sells: regions, flavors and their prices, images, default environments.

Prices are Decimal US dollars per hour. A VM bills its flavor's rate while it runs (ACTIVE,
SHUTOFF, STOPPING, STARTING), ``HIBERNATED_USD_PER_HOUR`` while hibernated (root disk and public
IP), nothing otherwise; a volume bills ``VOLUME_USD_PER_GB_HOUR`` per GB while it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

REGIONS = ("SIM-1", "CANADA-1", "NORWAY-1")

#: (name, region) of the environments every fresh emulator starts with
DEFAULT_ENVIRONMENTS = (("sim-local", "SIM-1"), ("default-CANADA-1", "CANADA-1"), ("default-NORWAY-1", "NORWAY-1"))

HIBERNATED_USD_PER_HOUR = Decimal("0.012")  # per hibernated VM: root disk + public IP
VOLUME_USD_PER_GB_HOUR = Decimal("0.0001")
NO_HIBERNATION = "no-hibernation"

#: the date every catalog entry claims to exist since (a constant, so answers are stable)
CATALOG_SINCE = "2025-01-01T00:00:00"


@dataclass(frozen=True, slots=True)
class FlavorSpec:
    id: int
    name: str
    gpu: str
    gpu_count: int
    cpu: int
    ram_gb: float
    disk_gb: int
    ephemeral_gb: int
    usd_per_hour: Decimal
    labels: tuple[str, ...] = ()

    @property
    def can_hibernate(self) -> bool:
        return NO_HIBERNATION not in self.labels

    def labels_json(self) -> list[dict[str, Any]]:
        return [{"id": i + 1, "label": label} for i, label in enumerate(self.labels)]

    def instance_json(self) -> dict[str, Any]:
        """The ``flavor`` object inside an instance."""
        return {
            "id": self.id,
            "name": self.name,
            "cpu": self.cpu,
            "ram": self.ram_gb,
            "disk": self.disk_gb,
            "ephemeral": self.ephemeral_gb,
            "gpu": self.gpu,
            "gpu_count": self.gpu_count,
            "labels": self.labels_json(),
            "features": {},
        }

    def catalog_json(self, region: str) -> dict[str, Any]:
        """One entry of ``GET /core/flavors``."""
        return {
            **self.instance_json(),
            "display_name": self.name,
            "region_name": region,
            "stock_available": True,
            "created_at": CATALOG_SINCE,
        }


FLAVORS: dict[str, FlavorSpec] = {
    f.name: f
    for f in (
        FlavorSpec(1, "sim-cpu-1", "SIM-CPU", 1, 4, 8.0, 50, 0, Decimal("0.50")),
        FlavorSpec(2, "n3-H100x1", "H100-80G-PCIe", 1, 28, 180.0, 100, 750, Decimal("1.90")),
        FlavorSpec(3, "n3-H100x2", "H100-80G-PCIe", 2, 60, 360.0, 100, 1500, Decimal("3.80")),
        FlavorSpec(4, "n3-A100x2", "A100-80G-PCIe", 2, 56, 240.0, 100, 1500, Decimal("2.70")),
        FlavorSpec(5, "n3-L40x1", "L40", 1, 28, 58.0, 100, 725, Decimal("1.00"), (NO_HIBERNATION,)),
    )
}

DEFAULT_IMAGE = "Ubuntu Server 22.04 LTS R535 CUDA 12.2"
IMAGES = (
    (1, DEFAULT_IMAGE, "Ubuntu", "22.04"),
    (2, "Ubuntu Server 22.04 LTS", "Ubuntu", "22.04"),
    (3, "Ubuntu Server 24.04 LTS R550 CUDA 12.4 with Docker", "Ubuntu", "24.04"),
)
IMAGE_NAMES = frozenset(name for _, name, _, _ in IMAGES)


def flavors_json(region: str | None = None) -> list[dict[str, Any]]:
    """``GET /core/flavors``: one group per GPU model and region, each with its ``flavors``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for reg in REGIONS:
        if region and reg != region:
            continue
        for flavor in FLAVORS.values():
            groups.setdefault((flavor.gpu, reg), []).append(flavor.catalog_json(reg))
    return [{"gpu": gpu, "region_name": reg, "flavors": items} for (gpu, reg), items in groups.items()]


def images_json(region: str | None = None) -> list[dict[str, Any]]:
    """``GET /core/images``: images grouped per region and family."""
    out = []
    for reg in REGIONS:
        if region and reg != region:
            continue
        out.append({
            "region_name": reg,
            "type": "Ubuntu",
            "logo": "",
            "images": [
                {"id": i, "name": name, "region_name": reg, "type": kind, "version": version,
                 "size": 10737418240, "display_size": "10.00 GB", "is_public": True, "description": name,
                 "labels": []}
                for i, name, kind, version in IMAGES
            ],
        })
    return out


def pricebook_json() -> list[dict[str, Any]]:
    """``GET /pricebook``: a bare array, one entry per flavor plus hibernation and volume storage."""
    entries: list[tuple[str, Decimal]] = [(f.name, f.usd_per_hour) for f in FLAVORS.values()]
    entries += [("hibernated-vm", HIBERNATED_USD_PER_HOUR), ("volume-per-gb", VOLUME_USD_PER_GB_HOUR)]
    return [
        {"id": i + 1, "name": name, "value": float(value), "original_value": float(value),
         "discount_applied": False, "start_time": CATALOG_SINCE, "end_time": None}
        for i, (name, value) in enumerate(entries)
    ]
