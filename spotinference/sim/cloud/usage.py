"""The ``GET /billing/billing/usage`` answer, with the billing faults of ``faults`` applied.

Without faults and without ``page`` it is Hyperstack's documented shape: ``{"status": true,
"message": ..., "data": [items]}``. ``page``/``pageSize`` (as the VM list takes them) page it,
and so does an injected ``billing_paged``; the paged answer also carries ``page``, ``page_size``
and ``count`` (items over all pages), so a client reading pages until a short one gets every
item. Faults change only the answer, never the meters behind it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .faults import Fault
from .routing import Request, Response

MESSAGE = "Getting billing usage success"
DEFAULT_PAGE_SIZE = 30
MAX_PAGE_SIZE = 1000


def answer(req: Request, items: list[dict[str, Any]], faults: dict[str, Fault]) -> Response:
    dropped = faults.get("billing_missing_item")
    items = [_item_faults(item, faults) for item in items if dropped is None or not dropped.targets(item)]
    if "billing_empty" in faults:
        items = []
    body: dict[str, Any] = {"status": True, "message": MESSAGE}
    paged = faults.get("billing_paged")
    if paged is not None or req.query.get("page") not in (None, ""):
        page = req.int_param("page", 1)
        asked = min(req.int_param("pageSize", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
        size = min(asked, paged.page_size) if paged is not None and paged.page_size else asked
        body.update(data=items[(page - 1) * size:page * size], page=page, page_size=size, count=len(items))
    else:
        body["data"] = items
    reshaped = faults.get("billing_reshaped")
    if reshaped is not None:
        return _reshape(body, reshaped.shape or "no_data")
    return Response(200, body)


def _item_faults(item: dict[str, Any], faults: dict[str, Fault]) -> dict[str, Any]:
    item = dict(item)
    jitter = faults.get("billing_jitter")
    if jitter is not None and jitter.targets(item) and item.get("total_bill") is not None:
        lowered = Decimal(repr(item["total_bill"])) - Decimal(jitter.amount_usd or "0")
        item["total_bill"] = float(max(lowered, Decimal(0)))
    null = faults.get("billing_null_total")
    if null is not None and null.targets(item):
        item["total_bill"] = None
    missing = faults.get("billing_missing_total")
    if missing is not None and missing.targets(item):
        item.pop("total_bill", None)
    undated = faults.get("billing_no_create_time")
    if undated is not None and undated.targets(item):
        item.pop("create_time", None)
    return item


def _reshape(body: dict[str, Any], shape: str) -> Response:
    data = body.pop("data")
    if shape == "data_null":
        body["data"] = None
    elif shape == "data_object":
        body["data"] = {"items": data, "count": len(data)}
    elif shape == "renamed":
        body["usage"] = data
    elif shape == "bare_list":
        return Response(200, data)
    return Response(200, body)
