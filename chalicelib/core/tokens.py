"""API tokens: 256-bit random secrets stored only as a hash, with a principal, expiry and scopes.

A dialect says where its token comes from; this module decides what it may do.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.core.cache import TtlCache
from chalicelib.core.kinds import PERMISSIONS
from chalicelib.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StoreConditionFailed,
    StoreTransactionCancelled,
    Unauthenticated,
)
from chalicelib.store import Delete, Op, Put, Store, Update

TOKEN_PREFIX = "kf_"
TOKEN_RE = re.compile(r"kf_[A-Za-z0-9_-]{43}")  # prefix + unpadded base64url of 32 bytes
INDEX_PK = "tokens"
ALL_RINGS = "*"
MAX_TTL_SECONDS = 400 * 24 * 3600
REVOKE_ATTEMPTS = 8
MAX_ANCESTORS = 4  # a derived token derives no further; the bound guards a malformed chain


def hash_token(raw: str) -> str:
    """SHA-256 of the raw token: tokens carry 256 bits of entropy, so a fast hash suffices."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _hash_pk(digest: str) -> str:
    return f"token#{digest}"


@dataclass(frozen=True)
class Scope:
    """What a token may do on one kind of key ring: `ring` is an id or "*" for all."""

    kind: str
    ring: str
    perms: frozenset[str]

    def covers(self, kind: str, ring: str) -> bool:
        """Does this scope apply to ring `ring` of kind `kind`?"""
        return self.kind == kind and (self.ring == ALL_RINGS or self.ring == ring)

    def to_dict(self) -> dict[str, Any]:
        """JSON/store form."""
        return {"kind": self.kind, "ring": self.ring, "perms": sorted(self.perms)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scope:
        """Inverse of to_dict, validating the shape."""
        try:
            kind, ring, perms = d["kind"], d["ring"], d["perms"]
        except (KeyError, TypeError) as exc:
            raise InvalidInput("a scope needs kind, ring and perms", field="scopes") from exc
        if not (isinstance(kind, str) and kind and isinstance(ring, str) and ring
                and isinstance(perms, list) and all(isinstance(p, str) and p for p in perms)):
            raise InvalidInput("scope kind and ring are strings, perms a list of strings",
                               field="scopes")
        return cls(kind, ring, frozenset(perms))

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse `KIND:RING:PERM[,PERM...]` (perms may themselves contain colons)."""
        parts = text.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise InvalidInput(f"scope {text!r} is not KIND:RING:PERM[,PERM...]", field="scope")
        return cls(parts[0], parts[1], frozenset(p for p in parts[2].split(",") if p))


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    token_id: str
    name: str
    scopes: tuple[Scope, ...]
    expires_at: int
    raw_token: str = field(repr=False, default="")
    # the token a derived token was derived from ("" for a token the operator minted), and
    # the minted token at the chain's root (the token itself when it is one): limits that
    # must not be escaped by deriving a fresh token count against the root
    parent_token_id: str = ""
    root_token_id: str = ""

    @property
    def root(self) -> str:
        """The id limits are counted against: the root token's."""
        return self.root_token_id or self.token_id

    def perms(self, kind: str, ring: str) -> frozenset[str]:
        """Union of the permissions this principal holds on (kind, ring)."""
        out: set[str] = set()
        for s in self.scopes:
            if s.covers(kind, ring):
                out |= s.perms
        return frozenset(out)

    def can(self, kind: str, ring: str, perm: str) -> bool:
        """Does the principal hold `perm` on (kind, ring)?"""
        return perm in self.perms(kind, ring)

    def knows(self, kind: str, ring: str) -> bool:
        """Does any scope cover (kind, ring)? (Used to answer not-found for foreign rings.)"""
        return any(s.covers(kind, ring) for s in self.scopes)

    def require(self, kind: str, ring: str, *perms: str) -> None:
        """Raise Forbidden unless every one of `perms` is held on (kind, ring)."""
        held = self.perms(kind, ring)
        if not all(p in held for p in perms):
            raise Forbidden("insufficient permission", needed=tuple(perms))


@dataclass(frozen=True)
class Caller:
    """Who is calling and under which request id: what the core needs for audit."""

    principal: Principal
    request_id: str


class TokenService:
    """Create, authenticate, list and revoke tokens; records live in the store."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, *,
                 cache_seconds: float = 0) -> None:
        self._store = store
        self._clock = clock
        # Hash records by hash, for `cache_seconds` (the bound on a revocation made by another
        # process; this process's revocations drop their entry at once). Only tokens found
        # are cached: guessing tokens cannot fill the cache.
        self._cache: TtlCache[str, dict[str, Any]] = TtlCache(cache_seconds)

    def create(self, principal: str, scopes: Iterable[Scope],
               ttl_seconds: int = 30 * 24 * 3600, *,
               parent: Principal | None = None) -> tuple[str, dict[str, Any]]:
        """Mint a token; returns (raw token, public record). The raw token is never stored.
        A token derived from `parent` records the parent's and the root's ids: it is refused
        once any of them is revoked or gone (see authenticate)."""
        scopes = tuple(scopes)
        if not principal or not isinstance(principal, str) or len(principal) > 256:
            raise InvalidInput("principal must be a non-empty string", field="principal")
        if not scopes:
            raise InvalidInput("at least one scope is required", field="scopes")
        for s in scopes:
            known = PERMISSIONS.get(s.kind)
            if known is None:
                raise InvalidInput(f"unknown key-ring kind {s.kind!r}", field="scopes")
            if not s.perms or not s.perms <= known:
                raise InvalidInput(f"perms for {s.kind} are a non-empty subset of "
                                   f"{sorted(known)}", field="scopes")
        if not isinstance(ttl_seconds, int) or not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidInput(f"ttl_seconds must be 1..{MAX_TTL_SECONDS}", field="ttl_seconds")
        raw = TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        digest = hash_token(raw)
        now = int(self._clock())
        record = {
            "token_id": secrets.token_hex(8),
            "principal": principal,
            "scopes": [s.to_dict() for s in scopes],
            "created_at": now,
            "expires_at": now + ttl_seconds,
            "revoked_at": None,
        }
        if parent is not None:
            record["parent_token_id"] = parent.token_id
            record["root_token_id"] = parent.root
        try:
            self._store.transact([
                Put({"pk": _hash_pk(digest), "sk": "token", **record}),
                Put({"pk": INDEX_PK, "sk": record["token_id"], "hash": digest, **record}),
            ])
        except StoreTransactionCancelled:
            # Our own transaction, retried by the store client after a lost response, finds
            # itself written (a store that ignores the request token): that is success.
            # (256 random bits: no other token has this hash.)
            mine = self._store.get(_hash_pk(digest), "token")
            if mine is None or mine.get("token_id") != record["token_id"]:
                raise
        return raw, record

    def authenticate(self, raw: str | None) -> Principal:
        """The principal of a valid token; Unauthenticated otherwise."""
        if not isinstance(raw, str) or not TOKEN_RE.fullmatch(raw):
            # also keeps non-ASCII (lone surrogates) away from the hash
            raise Unauthenticated("missing or malformed token")
        # looked up by its hash: no comparison of secrets happens in Python
        digest = hash_token(raw)
        item = self._cache.get(digest)
        if item is None:
            mark = self._cache.drops()
            item = self._store.get(_hash_pk(digest), "token")
            if item is None:
                raise Unauthenticated("invalid token")
            self._cache.put(digest, item, read_after=mark)
        self._check_live(item)
        self._check_ancestors(item)
        return Principal(
            token_id=item["token_id"],
            name=item["principal"],
            scopes=tuple(Scope.from_dict(s) for s in item["scopes"]),
            expires_at=int(item["expires_at"]),
            raw_token=raw,
            parent_token_id=item.get("parent_token_id") or "",
            root_token_id=item.get("root_token_id") or "",
        )

    def _check_live(self, item: dict[str, Any]) -> None:
        """Unauthenticated unless the record is neither revoked nor expired."""
        if item.get("revoked_at"):
            raise Unauthenticated("token revoked", reason="token_revoked")
        if int(item["expires_at"]) <= int(self._clock()):
            # a reason of its own: some vendors tell an expired token from an invalid one
            raise Unauthenticated("token expired", reason="token_expired")

    def _check_ancestors(self, item: dict[str, Any]) -> None:
        """A derived token is refused once an ancestor is revoked, expired or gone. The
        ancestors' index records go through the same cache as the hash records (keyed by
        id), so a revocation elsewhere reaches a child within the same `cache_seconds`, and
        one in this process (which drops the parent's entries) at once."""
        parent_id = item.get("parent_token_id")
        for _ in range(MAX_ANCESTORS):
            if not parent_id:
                return
            key = _id_key(parent_id)
            parent = self._cache.get(key)
            if parent is None:
                mark = self._cache.drops()
                parent = self._store.get(INDEX_PK, parent_id)
                if parent is None:
                    raise Unauthenticated("the parent token is gone", reason="token_revoked")
                self._cache.put(key, parent, read_after=mark)
            self._check_live(parent)
            parent_id = parent.get("parent_token_id")
        raise Unauthenticated("the token's chain of parents is too long")

    def derive(self, parent: Principal, scopes: Iterable[Scope] | None,
               ttl_seconds: int) -> tuple[str, dict[str, Any]]:
        """A short-lived token for `parent`'s principal with its scopes, or the narrower
        `scopes` asked (each within one of the parent's: same kind, its ring or any ring when
        the parent's is "*", a subset of its permissions); it never outlives the parent.
        Forbidden (scope_not_held) for a scope the parent does not hold. A derived token
        derives no further (Forbidden, token_derived): its lifetime and limits hang on the
        token the operator minted, and a chain of short-lived tokens would only hide that."""
        if parent.parent_token_id:
            raise Forbidden("a derived token cannot derive another", reason="token_derived")
        asked = parent.scopes if scopes is None else tuple(scopes)
        for s in asked:
            if not s.perms or not any(
                    p.kind == s.kind and p.ring in (ALL_RINGS, s.ring) and s.perms <= p.perms
                    for p in parent.scopes):
                raise Forbidden("the token does not hold the scope asked",
                                reason="scope_not_held")
        left = parent.expires_at - int(self._clock())
        return self.create(parent.name, asked, max(1, min(ttl_seconds, left)), parent=parent)

    def list(self) -> list[dict[str, Any]]:
        """Every token's public record (never the hash or the token)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self._store.query(INDEX_PK, limit=100, cursor=cursor)
            out += [_public(it) for it in page.items]
            if not page.cursor:
                return out
            cursor = page.cursor

    def revoke(self, token_id: str) -> dict[str, Any]:
        """Revoke a token: its hash record is deleted, the index keeps when it was revoked."""
        if not isinstance(token_id, str) or not token_id:
            raise InvalidInput("token_id is required", field="token_id")
        for _ in range(REVOKE_ATTEMPTS):
            index = self._store.get(INDEX_PK, token_id)
            if index is None:
                raise NotFound("no such token")
            if index.get("revoked_at"):
                return _public(index)
            updated = {**index, "revoked_at": int(self._clock())}
            ops: list[Op] = [Update(updated, expected_version=int(index["version"]))]
            # the hash record may already be gone (TTL removes expired records on its own)
            hashed = self._store.get(_hash_pk(index["hash"]), "token")
            if hashed is not None:
                ops.append(Delete(hashed["pk"], "token", expected_version=int(hashed["version"])))
            try:
                self._store.transact(ops)
            except (StoreTransactionCancelled, StoreConditionFailed):
                continue  # raced with another revoke: look again
            self._cache.drop(index["hash"])
            # children check this record through the cache (see _check_ancestors)
            self._cache.drop(_id_key(token_id))
            return _public(updated)
        raise Conflict("token is being changed concurrently; try again")


def _id_key(token_id: str) -> str:
    """The cache key of a token's index record (hash keys are hex digests: no clash)."""
    return f"id#{token_id}"


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A token record without store fields or the hash."""
    return {k: v for k, v in record.items() if k not in ("pk", "sk", "hash", "version")}
