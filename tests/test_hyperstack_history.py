"""`providers.hyperstack_history` against `spot sim cloud` over real HTTP, through the provider's API object.

The emulator's clock is moved to an hour boundary plus 30 s before anything is created (see
tests/test_sim_cloud_billing.py), so whole hours of one state exist to check rates against.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from spotinference.config.settings import Settings
from spotinference.providers.errors import ProviderNotFoundError
from spotinference.providers.hyperstack_history import (
    HistoryShapeError,
    _details,
    _entries,
    billing_events,
    credit_balance,
    decimal_or_none,
    format_date,
    resource_hours,
    resource_window,
)
from spotinference.providers.registry import open_provider
from tests.test_sim_cloud import KEY
from tests.test_sim_cloud_billing import H100, HIBERNATED, start, usd  # noqa: F401 - start is a fixture

VOLUME_50GB = Decimal("0.005")


@pytest.fixture
def sim(start):  # noqa: F811 - the fixture imported above
    return start()


@pytest.fixture
def api(sim) -> Iterator:
    settings = Settings(providers={"sim": {"base_url": f"{sim.url}/v1", "api_key": KEY}})
    with open_provider(settings, "sim") as provider:
        yield provider.api


def test_hourly_points_rates_and_events_match_the_usage_totals(sim, api) -> None:
    sim.key_pair()
    h0 = sim.to_hour(30)
    [vm] = sim.create("gpu")
    vol = sim.volume("weights", size=50)
    sim.to_hour(0.25)
    sim.advance(3600)  # H0 (creation), H1 all ACTIVE; now H2 + 0.25 s
    h2 = h0 + timedelta(hours=2)
    sim.ok("GET", f"/core/virtual-machines/{vm['id']}/hibernate")
    sim.to_hour(0.25)  # H2: hibernated from 0:30.25 on; now H3 + 0.25 s
    sim.ok("GET", f"/core/virtual-machines/{vm['id']}/hibernate-restore")
    sim.advance(600)

    hours = resource_hours(api, "vm", vm["id"])
    assert [h.hour_start for h in hours] == [h0 + timedelta(hours=i) for i in range(4)]
    assert all(h.hour_start.tzinfo is not None and h.resource_type == "vm" for h in hours)
    assert sum(h.incurred_usd for h in hours) == sim.total("vm", vm["id"])
    assert [h.usd_per_hour for h in hours] == [None, H100, None, None]  # H0 and H2, H3 change rate
    assert hours[1].incurred_usd == (60 * H100 / 60).quantize(Decimal("1e-10"))

    window = resource_window(api, "vm", vm["id"], start=h2, end=h2 + timedelta(hours=1))
    assert window.name == "gpu" and window.incurred_usd == hours[2].incurred_usd
    assert window.usage_hours == 1 and window.usage_hours_by_state["HIBERNATED"] == usd(59 / 60)
    assert window.usd_per_hour == HIBERNATED

    events = billing_events(api, "vm", vm["id"])
    assert [e.event for e in events] == ["CREATING", "BUILD", "ACTIVE", "HIBERNATING", "HIBERNATED", "RESTORING",
                                         "ACTIVE"]
    assert sum(e.total_cost_usd for e in events) == sim.total("vm", vm["id"])
    assert events[4].usd_per_hour == HIBERNATED and events[4].start.tzinfo == UTC

    vol_hours = resource_hours(api, "volume", vol["id"], start=h0 + timedelta(hours=1), end=h2 + timedelta(hours=1))
    assert [(h.hour_start, h.usd_per_hour) for h in vol_hours] == [(h0 + timedelta(hours=1), VOLUME_50GB),
                                                                   (h2, VOLUME_50GB)]
    assert all(h.incurred_usd == (60 * VOLUME_50GB / 60).quantize(Decimal("1e-10")) for h in vol_hours)

    credit = credit_balance(api)
    assert credit.credit_usd == 500 - sim.total("vm", vm["id"]) - sim.total("volume", vol["id"])
    assert (credit.threshold_usd, credit.can_create_instance) == (Decimal(0), True)


def test_an_unknown_resource_is_not_found(sim, api) -> None:
    with pytest.raises(ProviderNotFoundError):
        resource_hours(api, "vm", 404)
    with pytest.raises(ProviderNotFoundError):
        billing_events(api, "volume", 404)
    with pytest.raises(ValueError):
        resource_hours(api, "gpu", 1)


def test_missing_numbers_are_none_never_zero() -> None:
    assert [decimal_or_none(v) for v in (None, True, "n/a", float("nan"), {}, [])] == [None] * 6
    assert [decimal_or_none(v) for v in (0, 0.0316666667, "1.90", 3)] == [0, Decimal("0.0316666667"),
                                                                         Decimal("1.90"), 3]
    assert format_date(datetime(2026, 5, 6, 17, 18, 42, tzinfo=timezone(timedelta(hours=2)))) == "2026-05-06T15:18:42"
    # the volume graph's key, as the OpenAPI file spells it, and entries without ids
    details = _details({"status": True, "billing_history_snapshot_details": {"billing_history": [{}]}}, "/p", "sim")
    assert _entries(details, 7, "/p", "sim") == [{}]
    for body in ({"status": True}, {"billing_history_vm_details": {"billing_history": None}}, []):
        with pytest.raises(HistoryShapeError):
            _details(body, "/p", "sim")
    with pytest.raises(HistoryShapeError, match="another resource"):
        _entries({"billing_history": [{"attributes": {"infrahub_id": 8}}]}, 7, "/p", "sim")


def test_history_dates_are_sent_in_utc(sim, api) -> None:
    sim.key_pair()
    sim.to_hour(30)
    [vm] = sim.create("gpu")
    h1 = sim.to_hour(0.25)
    sim.advance(7200)
    in_paris = h1.astimezone(timezone(timedelta(hours=2)))
    hours = resource_hours(api, "vm", vm["id"], start=in_paris, end=in_paris + timedelta(hours=1))
    assert [(h.hour_start, h.usd_per_hour) for h in hours] == [(h1, H100)]
