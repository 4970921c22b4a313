"""Every ring kind: the permissions a token scope can hold on it, what implies what, and what
each action needs. Ring kinds are token-scope identifiers; they and each kind's permission
words are declared here and nowhere else in the core.

Token scopes name one kind, one ring (or "*") and a subset of that kind's permissions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RingKind:
    """One kind of key ring: its permissions, their implications and what actions need.

    `implies[p]` is the set of permissions that holding `p` also grants (a hierarchy such as
    admin > write > read); `needs[(action, variant)]` are the permissions an action needs,
    every one of them.
    """

    name: str
    permissions: frozenset[str]
    needs: Mapping[tuple[str, str | None], tuple[str, ...]]
    implies: Mapping[str, frozenset[str]] = field(default_factory=dict)
    store_prefix: str = ""  # the first word of the kind's store partitions

    def effective(self, held: frozenset[str]) -> frozenset[str]:
        """The permissions `held` amounts to, implications included."""
        out = set(held)
        for p in held:
            out |= self.implies.get(p, frozenset())
        return frozenset(out)

    def needed(self, action: str, variant: str | None = None) -> tuple[str, ...]:
        """What `action` needs; KeyError for an action this kind does not know (a bug)."""
        return self.needs[(action, variant)]


def _hierarchy(*levels: str) -> dict[str, frozenset[str]]:
    """Each level implies every level after it: ("admin", "write", "read")."""
    return {p: frozenset(levels[i:]) for i, p in enumerate(levels)}


def _actions(kind: str, table: Mapping[str, tuple[str, ...]]) \
        -> dict[tuple[str, str | None], tuple[str, ...]]:
    out: dict[tuple[str, str | None], tuple[str, ...]] = {}
    for name, perms in table.items():
        action, _, variant = name.partition("+")
        out[(f"{kind}.{action}", variant or None)] = perms
    return out


TRANSIT = "storedsafe"
SIGNING = "auth0"
TENANT_KEYS = "miarec"
PROJECT_KEYS = "apinizer"
MASTER_KEYS = "aivault"

KINDS: dict[str, RingKind] = {
    # vault bits Read=1, Write=2, Admin=4, hierarchical
    TRANSIT: RingKind(
        name=TRANSIT, store_prefix="ss",
        permissions=frozenset({"read", "write", "admin"}),
        implies=_hierarchy("admin", "write", "read"),
        needs=_actions(TRANSIT, {
            "key.create": ("write",), "key.list": ("read",), "key.read": ("read",),
            "key.rotate": ("write",), "key.config": ("admin",), "key.delete": ("write",),
            "key.trim": ("admin",),
            "encrypt": ("read",), "decrypt": ("read",), "rewrap": ("read",),
            "datakey": ("read",), "datakey+plaintext": ("write",),
            "key.export": ("admin",), "key.backup": ("admin",), "key.restore": ("write",),
        })),
    # Management API scopes
    SIGNING: RingKind(
        name=SIGNING, store_prefix="auth0",
        permissions=frozenset({
            "read:connections", "create:connections", "delete:connections",
            "read:connections_keys", "create:connections_keys", "update:connections_keys",
            "read:signing_keys", "create:signing_keys", "update:signing_keys",
        }),
        needs=_actions(SIGNING, {
            "connection.create": ("create:connections",),
            "connection.list": ("read:connections",),
            "connection.read": ("read:connections",),
            "connection.delete": ("delete:connections",),
            "connection_key.list": ("read:connections_keys",),
            "connection_key.create": ("create:connections_keys",),
            "connection_key.rotate": ("create:connections_keys", "update:connections_keys"),
            "signing_key.list": ("read:signing_keys",),
            "signing_key.read": ("read:signing_keys",),
            "signing_key.rotate": ("create:signing_keys", "update:signing_keys"),
            "signing_key.revoke": ("update:signing_keys",),
        })),
    # MiaRec: encryption keys per tenant; read, manage (create, update, delete), grant
    TENANT_KEYS: RingKind(
        name=TENANT_KEYS, store_prefix="miarec",
        permissions=frozenset({"read", "manage", "grant"}),
        needs=_actions(TENANT_KEYS, {
            "key.create": ("manage",), "key.list": ("read",), "key.read": ("read",),
            "key.update": ("manage",), "key.delete": ("manage",),
            "grant.create": ("grant",), "grant.list": ("read",), "grant.delete": ("grant",),
            # private-key use: also a grant on the key (or a ring-wide key), see tenant_keys
            "key.decrypt": ("read",), "key.export": ("manage",),
        })),
    # Apinizer: keys per project (ring = project), deployed to the project's environments.
    # Any project permission reads metadata; manage writes; deploy is needed as well by a
    # write that deploys or undeploys. An environment ring "<project>/<environment>" with
    # consume reads the material deployed there, nothing else.
    PROJECT_KEYS: RingKind(
        name=PROJECT_KEYS, store_prefix="apz",
        permissions=frozenset({"read", "manage", "deploy", "consume"}),
        implies={"manage": frozenset({"read"}), "deploy": frozenset({"read"})},
        needs=_actions(PROJECT_KEYS, {
            "key.list": ("read",), "key.read": ("read",), "environment.list": ("read",),
            "key.create": ("manage",), "key.create+deploy": ("manage", "deploy"),
            "key.update": ("manage", "deploy"), "key.delete": ("manage", "deploy"),
            "key.material": ("consume",),
        })),
    # AI-VAULT: master keys and their pre-shared keys per domain; read (query), manage
    # (create, delete); neither implies the other
    MASTER_KEYS: RingKind(
        name=MASTER_KEYS, store_prefix="aivault",
        permissions=frozenset({"read", "manage"}),
        needs=_actions(MASTER_KEYS, {
            "key.create": ("manage",), "key.list": ("read",), "key.delete": ("manage",),
            "secret.create": ("manage",), "secret.list": ("read",),
            "secret.delete": ("manage",),
        })),
}

PERMISSIONS: dict[str, frozenset[str]] = {k: v.permissions for k, v in KINDS.items()}
