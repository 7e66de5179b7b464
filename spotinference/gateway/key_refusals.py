"""Which of a key's own limits refused a request: the label its usage row keeps in ``extra.refused``,
which `spot cost --by key` counts per key (queries/key_statement.sql).

Only refusals of a known key by its own settings are labelled; a wrong key has no statement, and
the fleet's refusals (no serving node, the fleet's budget gate) are not the key's limits.
"""

from __future__ import annotations

from .errors import GatewayError
from .key_limits import RateLimited
from .routing import Router

# The labels, in the order the statement shows them.
REFUSALS = ("rpm", "tpm", "concurrency", "budget", "price_unknown", "expired", "model_not_allowed")

_BY_CODE = {"key_budget_exhausted": "budget", "price_unknown": "price_unknown", "key_expired": "expired"}


def refusal_of(exc: GatewayError, router: Router, model: str | None) -> str | None:
    """The limit that refused with ``exc`` (a request for ``model``), or None if none of the key's did."""
    if isinstance(exc, RateLimited):
        return exc.limit
    if exc.code == "model_not_found":
        # A model the gateway serves, answered 404: the key's allowlist hid it.
        return "model_not_allowed" if model and router.route(model) is not None else None
    return _BY_CODE.get(exc.code or "")
