"""Which engine serves a request: model → tier → the node with the fewest requests in flight.

For now a tier's nodes are static engine URLs (from the tier's ``upstreams`` or from
``spot serve --upstream MODEL=URL``); the fleet makes them dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import InputError


@dataclass(eq=False)
class Node:
    name: str
    base_url: str  # e.g. http://10.0.0.5:8001, without /v1
    tier: str
    in_flight: int = 0
    # "Bearer <engine key>" for fleet nodes, whose engines demand their own key.
    authorization: str | None = None
    # The tier controller the node belongs to (a fallback tier's, when failing over).
    owner: Any = None


@dataclass(eq=False)
class Route:
    model: str
    tier: str
    nodes: list[Node] = field(default_factory=list)
    # The tier's controller when the fleet manages it (wake on request, idle hibernation).
    controller: Any = None

    def pick(self) -> Node | None:
        if not self.nodes:
            return None
        return min(self.nodes, key=lambda node: node.in_flight)

    def acquire(self) -> Node | None:
        """Pick the least busy node and count the request on it at once, before any await, so
        requests released together spread over the nodes."""
        node = self.pick()
        if node is not None:
            node.in_flight += 1
        return node


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self._routes = {route.model: route for route in routes}

    def route(self, model: str) -> Route | None:
        return self._routes.get(model)

    def models(self) -> list[str]:
        return sorted(self._routes)

    def nodes(self) -> list[Node]:
        return [node for route in self._routes.values() for node in route.nodes]


def normalise_engine_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise InputError(f"engine URL {url!r} is invalid: expected http://HOST:PORT")
    return url


def parse_upstream_flags(flags: list[str]) -> dict[str, list[str]]:
    """``--upstream MODEL=URL`` (repeatable; a model may have several URLs)."""
    upstreams: dict[str, list[str]] = {}
    for flag in flags:
        model, sep, url = flag.partition("=")
        if not sep or not model or not url:
            raise InputError(f"--upstream {flag!r} is invalid: expected MODEL=URL, e.g. tiny-chat=http://127.0.0.1:8001")
        upstreams.setdefault(model, []).append(normalise_engine_url(url))
    return upstreams


def build_router(settings: Settings, static: dict[str, list[str]] | None = None) -> Router:
    """Routes for every model the fleet serves, plus static upstreams given on the command line.

    With static upstreams only (``spot serve --upstream``), the fleet config is not used.
    """
    routes: list[Route] = []
    if static:
        for model, urls in static.items():
            route = Route(model, tier=f"static:{model}")
            route.nodes = [Node(f"{model}-{i}", url, route.tier) for i, url in enumerate(urls)]
            routes.append(route)
        return Router(routes)
    for name, tier in settings.tiers.items():
        primary = settings.tier_for_model(tier.model_name)
        if primary is None or primary.name != name:
            continue  # a fallback tier is reached through its primary
        route = Route(tier.model_name, tier=name)
        route.nodes = [
            Node(f"{name}-static-{i}", normalise_engine_url(url), name) for i, url in enumerate(tier.upstreams)
        ]
        routes.append(route)
    return Router(routes)
