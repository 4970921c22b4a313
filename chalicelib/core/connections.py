"""Auth0 connections: just enough of them for connection keys to hang on.

Store layout, one partition per tenant (pk "auth0#<tenant>#connections"):
  sk "con#<id>"    the connection (id, name, strategy, options sealed in the HSM, ...)
  sk "name#<name>" the name claim: written in the same transaction as the connection, so
                   two racing creates of one name leave exactly one (the other gets 409).

`options` may hold client secrets (oidc/okta client_secret), so they are stored encrypted
with AES-GCM under a per-connection key generated in the HSM and kept only wrapped.

The HSM context and AAD of the sealed options always come from where the record was found
(the tenant and connection id it was looked up under), never from fields inside the record:
an item copied to another tenant or id cannot be opened there. A record whose own tenant/id
disagree with its place is treated as absent (and logged); one that agrees but carries a blob
sealed for another place fails the HSM's binding check (IntegrityError).

Connection fields are JSON that the store and strict JSON clients must accept: `json_problem`
refuses non-finite numbers, strings or property names that are not valid Unicode (lone
surrogates) and nesting deeper than MAX_JSON_DEPTH; metadata is Auth0's: at most 10
properties, names of 1-255 characters, string values of at most 255 characters.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from chalicelib.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    StoreTransactionCancelled,
)
from chalicelib.formats.strict_json import json_problem
from chalicelib.hsm import Hsm, WrappedKey
from chalicelib.store import Check, Delete, Op, Put, Store

# Auth0's connection strategies (Management API v2 enum)
STRATEGIES = frozenset({
    "ad", "adfs", "amazon", "apple", "dropbox", "bitbucket", "aol", "auth0-oidc", "auth0",
    "baidu", "bitly", "box", "custom", "daccount", "dwolla", "email", "evernote-sandbox",
    "evernote", "exact", "facebook", "fitbit", "flickr", "github", "google-apps",
    "google-oauth2", "instagram", "ip", "line", "linkedin", "miicard", "oauth1", "oauth2",
    "office365", "oidc", "okta", "paypal", "paypal-sandbox", "pingfederate", "planningcenter",
    "renren", "salesforce-community", "salesforce-sandbox", "salesforce", "samlp",
    "sharepoint", "shopify", "shop", "sms", "soundcloud", "thecity-sandbox", "thecity",
    "thirtysevensignals", "twitter", "untappd", "vkontakte", "waad", "weibo", "windowslive",
    "wordpress", "yahoo", "yammer", "yandex",
})
# Only these strategies have connection keys (private_key_jwt towards the upstream IdP).
KEY_STRATEGIES = frozenset({"okta", "oidc"})
MAX_OPTIONS_BYTES = 64 * 1024
# Auth0: "up to 10 metadata properties, string values of at most 255 characters"; the
# property names are bounded alike (and must not be empty: DynamoDB map keys cannot be).
MAX_METADATA_KEYS = 10
MAX_METADATA_CHARS = 255
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_RE = re.compile(r"con_[A-Za-z0-9]{1,60}\Z")

log = logging.getLogger("keyfront.auth0")


class ConnectionNotFound(NotFound):
    """No such connection in this tenant."""

    code = "inexistent_connection"


class ConnectionNameTaken(Conflict):
    """Another connection of the tenant has this name."""

    code = "connection_conflict"


def _pk(tenant: str) -> str:
    return f"auth0#{tenant}#connections"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_connection_id() -> str:
    """Auth0-style id: "con_" and 16 random alphanumerics."""
    return "con_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def metadata_problem(metadata: Any) -> str | None:
    """Why `metadata` is not Auth0 connection metadata (None if it is, or is absent)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    if len(metadata) > MAX_METADATA_KEYS:
        return f"metadata may have at most {MAX_METADATA_KEYS} properties"
    for k, v in metadata.items():
        if not isinstance(k, str) or not 1 <= len(k) <= MAX_METADATA_CHARS:
            return f"metadata property names are 1-{MAX_METADATA_CHARS} characters"
        if not isinstance(v, str) or len(v) > MAX_METADATA_CHARS:
            return f"metadata values are strings of at most {MAX_METADATA_CHARS} characters"
    return None


def check_fields(fields: dict[str, Any]) -> None:
    """InvalidInput unless every field is storable, strict JSON (see json_problem/metadata)."""
    problem = json_problem(fields)
    if problem is not None:
        where, what = problem
        raise InvalidInput(f"{where or 'body'}: {what}", field=where.split(".")[0] or "body")
    why = metadata_problem(fields.get("metadata"))
    if why is not None:
        raise InvalidInput(why, field="metadata")


class Connections:
    """Create, read, list and delete a tenant's connections."""

    def __init__(self, store: Store, hsm: Hsm, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock

    def create(self, tenant: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Store a new connection (fields already validated); ConnectionNameTaken on a dup."""
        name, strategy = fields["name"], fields["strategy"]
        check_fields(fields)
        if strategy not in STRATEGIES:
            raise InvalidInput(f"unknown strategy {strategy!r}", field="strategy")
        cid = new_connection_id()
        record: dict[str, Any] = {
            "pk": _pk(tenant), "sk": f"con#{cid}", "tenant": tenant, "id": cid, "name": name,
            "strategy": strategy, "created_at": _now(),
            **{k: v for k, v in fields.items()
               if k not in ("name", "strategy", "options") and v is not None},
        }
        record.update(self._seal_options(tenant, cid, fields.get("options") or {}))
        claim = {"pk": _pk(tenant), "sk": f"name#{name}", "id": cid}
        try:
            self._store.transact([Put(claim), Put(record)])
        except StoreTransactionCancelled:
            if self._store.get(_pk(tenant), f"name#{name}") is not None:
                raise ConnectionNameTaken(
                    "A connection with the same name already exists") from None
            raise
        return record

    def get(self, tenant: str, cid: str) -> dict[str, Any]:
        """The stored record (with its version); ConnectionNotFound otherwise.

        The record is the one at (tenant, cid) and says so itself; a record copied or moved
        from elsewhere is not there for this tenant.
        """
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            raise ConnectionNotFound("Connection not found.")
        record = self._store.get(_pk(tenant), f"con#{cid}")
        if record is None or not self._in_place(record, tenant, cid):
            raise ConnectionNotFound("Connection not found.")
        return record

    def list(self, tenant: str) -> list[dict[str, Any]]:
        """Every connection record of the tenant, by id (records out of place left out)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self._store.query(_pk(tenant), "con#", limit=100, cursor=cursor)
            out += [r for r in page.items
                    if self._in_place(r, tenant, str(r["sk"]).removeprefix("con#"))]
            if not page.cursor:
                return out
            cursor = page.cursor

    @staticmethod
    def _in_place(record: dict[str, Any], tenant: str, cid: str) -> bool:
        """Does the record found at (tenant, cid) say it is that tenant's connection cid?"""
        if record.get("tenant") == tenant and record.get("id") == cid:
            return True
        # tampering or a bug, never a client's doing: say where, never what it holds
        log.warning(json.dumps({"level": "warning", "event": "connection_out_of_place",
                                "pk": _pk(tenant), "sk": f"con#{cid}"}))
        return False

    def delete(self, tenant: str, cid: str,
               dependents: Callable[[], Sequence[Op]] = tuple) -> dict[str, Any]:
        """Delete the connection, its name claim and `dependents()` (its keys) atomically."""
        for _ in range(8):
            record = self.get(tenant, cid)
            ops: list[Op] = [Delete(_pk(tenant), record["sk"], int(record["version"])),
                             Delete(_pk(tenant), f"name#{record['name']}"), *dependents()]
            try:
                self._store.transact(ops)
            except StoreTransactionCancelled:
                continue  # a racing key rotation or delete: re-read and try again
            return record
        raise Conflict("The connection is being changed concurrently; retry.")

    @staticmethod
    def exists_check(record: dict[str, Any]) -> Check:
        """A transaction condition: this connection still exists, unchanged."""
        return Check(record["pk"], record["sk"], int(record["version"]))

    def view(self, tenant: str, cid: str, record: dict[str, Any]) -> dict[str, Any]:
        """The connection as Auth0 returns it (options decrypted).

        `tenant` and `cid` are where the record was found (or created): the options are
        opened against that place, whatever the record says.
        """
        out: dict[str, Any] = {
            "id": cid, "name": record["name"],
            "display_name": record.get("display_name"),
            "options": self._open_options(tenant, cid, record), "strategy": record["strategy"],
            "realms": record.get("realms") or [record["name"]],
            "enabled_clients": record.get("enabled_clients") or [],
            "is_domain_connection": bool(record.get("is_domain_connection", False)),
            "show_as_button": record.get("show_as_button"),
            "metadata": record.get("metadata"),
        }
        return {k: v for k, v in out.items() if v is not None}

    # -- sealed options --

    @staticmethod
    def _options_context(tenant: str, cid: str) -> str:
        return f"auth0/{tenant}/connections/{cid}/options"

    def _seal_options(self, tenant: str, cid: str, options: dict[str, Any]) -> dict[str, Any]:
        if not options:
            return {"options_key": None, "options_ct": None}
        # JSON text: any JSON value round-trips (the store refuses floats, DynamoDB-style);
        # strict JSON only: NaN/Infinity or a lone surrogate would come back unreadable
        problem = json_problem(options, "options")
        if problem is not None:
            raise InvalidInput(f"{problem[0]}: {problem[1]}", field="options")
        try:
            data = json.dumps(options, separators=(",", ":"), sort_keys=True,
                              allow_nan=False).encode("utf-8")
        except (ValueError, TypeError) as exc:
            raise InvalidInput("options must be a JSON object", field="options") from exc
        if len(data) > MAX_OPTIONS_BYTES:
            raise InvalidInput(f"options must be at most {MAX_OPTIONS_BYTES} bytes of JSON",
                               field="options")
        context = self._options_context(tenant, cid)
        key = self._hsm.generate_aes(256, context)
        return {"options_key": key.to_dict(),
                "options_ct": self._hsm.encrypt_gcm(key, context, data, context.encode())}

    def _open_options(self, tenant: str, cid: str, record: dict[str, Any]) -> dict[str, Any]:
        if not record.get("options_key"):
            return {}
        context = self._options_context(tenant, cid)
        try:
            key = WrappedKey.from_dict(record["options_key"])
            data = self._hsm.decrypt_gcm(key, context, bytes(record["options_ct"]),
                                         context.encode())
        except IntegrityError:
            # sealed for another place (a copied or edited item): tampering, not the client's
            # doing; the caller gets a generic error, the log says where (never what)
            log.error(json.dumps({"level": "error", "event": "connection_options_integrity",
                                  "pk": _pk(tenant), "sk": f"con#{cid}"}))
            raise
        return json.loads(data)
