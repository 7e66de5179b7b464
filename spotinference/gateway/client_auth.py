"""Which client key a request carries, the same way on every client route.

Two SDKs, two headers: the ``openai`` SDK sends ``Authorization: Bearer <key>``, the
``anthropic`` SDK ``x-api-key: <key>`` (and it calls ``/v1/models`` as well as ``/v1/messages``).
A key is accepted in either header on every route a client calls; ``Authorization: Bearer`` wins
when both are sent, so that a request never passes on the second header after the first failed.
"""

from __future__ import annotations

from typing import Any

from ..keys import KeyRing
from .errors import GatewayError
from .key_access import refuse_if_expired
from .requests import bearer_credentials, header

MISSING_KEY = "missing API key: send 'Authorization: Bearer sk-spot-...' or 'x-api-key: sk-spot-...'"


def client_key(scope: dict[str, Any]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (scheme in any case), else of ``x-api-key``."""
    key = bearer_credentials(header(scope, b"authorization"))
    if key is not None:
        return key
    api_key = header(scope, b"x-api-key")
    if api_key is None:
        return None
    # Compared as Latin-1 text, like a bearer token: no byte sequence fails here.
    return api_key.decode("latin-1").strip(" \t") or None


def authenticate(keys: KeyRing, scope: dict[str, Any]) -> str:
    """The id of the request's key; a 401 when it has none or a wrong one (``invalid_api_key``) or
    the key has expired (``key_expired``)."""
    key = client_key(scope)
    if key is None:
        raise GatewayError(401, MISSING_KEY, code="invalid_api_key")
    key_id = keys.key_id_for(key)
    if key_id is None:
        raise GatewayError(401, "incorrect or revoked API key", code="invalid_api_key")
    refuse_if_expired(keys, key_id)
    return key_id
