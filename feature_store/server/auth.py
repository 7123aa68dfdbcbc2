"""API keys of the feature server: ``Authorization: Bearer <key>``, with read and write scopes."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from feature_store.config import ApiKeyConfig
from feature_store.errors import AuthenticationError, FeatureStoreError, PermissionDeniedError

WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="feature-store"'}


class KeyRing:
    """The configured keys. Without keys every request is allowed (the server then binds loopback by default)."""

    def __init__(self, keys: Sequence[ApiKeyConfig]) -> None:
        self._keys = [(key.key.encode(), frozenset(key.scopes)) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: bytes | None, scope: str) -> FeatureStoreError | None:
        """None when the Authorization header grants ``scope``; else the error to answer with."""
        if not self._keys:
            return None
        token = _bearer(authorization)
        if token is None:
            return AuthenticationError(
                "this endpoint needs an API key: send 'Authorization: Bearer <key>' with a key from the "
                "server's configuration (server.api_keys or FEATURE_STORE_API_KEYS).", scope=scope,
            )
        # Compare with every key, in constant time each, so timing tells nothing about which key is close.
        granted: frozenset[str] | None = None
        for key, scopes in self._keys:
            if hmac.compare_digest(token, key) and granted is None:
                granted = scopes
        if granted is None:
            return AuthenticationError("unknown API key.", scope=scope)
        if scope not in granted:
            return PermissionDeniedError(
                f"this API key lacks the {scope!r} scope this endpoint needs; it has {sorted(granted)}.",
                scope=scope,
            )
        return None


def _bearer(authorization: bytes | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None
