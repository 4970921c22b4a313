"""Every key-ring kind and the permissions a token scope can grant on it.

Token scopes name one kind, one ring (or "*") and a subset of that kind's permissions.
"""

from __future__ import annotations

STOREDSAFE = "storedsafe"
AUTH0 = "auth0"

PERMISSIONS: dict[str, frozenset[str]] = {
    # StoredSafe vault bits: Read=1, Write=2, Admin=4
    STOREDSAFE: frozenset({"read", "write", "admin"}),
    # Auth0 Management API scopes
    AUTH0: frozenset({
        "read:connections", "create:connections", "delete:connections",
        "read:connections_keys", "create:connections_keys", "update:connections_keys",
        "read:signing_keys", "create:signing_keys", "update:signing_keys",
    }),
}
