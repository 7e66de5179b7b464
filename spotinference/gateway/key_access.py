"""What a key may reach, from its settings in the key ring (``key_settings.py``), once per request:
an expired key is refused (401 ``key_expired``); a model outside its allowlist does not exist for
it (the same 404 as an unknown model, and absent from ``GET /v1/models``).

A key without settings costs one failed dict lookup here; rate limits are in key_limits.py.
"""

from __future__ import annotations

from ..keys import KeyRing
from .errors import GatewayError
from .routing import Route, Router


class KeyExpired(GatewayError):
    """401 ``key_expired``; it names the key (a known one), so that its statement counts the refusal."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(401, message, code="key_expired")
        self.key_id = key_id


def refuse_if_expired(keys: KeyRing, key_id: str) -> None:
    settings = keys.settings.get(key_id)
    if settings is not None and settings.expired():
        assert settings.expires_at is not None
        raise KeyExpired(f"this API key expired at {settings.expires_at.isoformat()}: ask the operator "
                         "to extend it (spot keys update NAME --expires DATE)", key_id)


def visible_models(router: Router, keys: KeyRing | None, key_id: str | None) -> list[str]:
    settings = keys.settings.get(key_id) if keys is not None and key_id is not None else None
    models = router.models()
    return models if settings is None else [m for m in models if settings.allows(m)]


def model_route(router: Router, keys: KeyRing | None, key_id: str | None, model: str) -> Route:
    """The model's route for this key; the 404 of an unknown model if it has none or the key may
    not use it (naming only the models the key may use)."""
    route = router.route(model)
    if route is not None and keys is not None and key_id is not None:
        settings = keys.settings.get(key_id)
        if settings is not None and not settings.allows(model):
            route = None
    if route is None:
        raise model_not_found(model, visible_models(router, keys, key_id))
    return route


def model_not_found(model: str, known: list[str]) -> GatewayError:
    return GatewayError(404, f"The model '{model}' does not exist (known models: {', '.join(known) or 'none'})",
                        param="model", code="model_not_found")
