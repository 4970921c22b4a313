"""Request bodies and query strings of the Auth0 dialect, with Auth0's validation messages."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chalicelib.dialects.auth0.envelope import BodyInvalid, QueryInvalid

M = TypeVar("M", bound=BaseModel)

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
# Auth0: "up to 10 metadata properties, string values of at most 255 characters"; the
# property names are bounded alike (and must not be empty: DynamoDB map keys cannot be).
MAX_METADATA_KEYS = 10
MAX_METADATA_CHARS = 255

SigningAlgName = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"]
# Auth0: starts and ends with an alphanumeric, alphanumerics and '-' inside, at most 128
ConnectionName = Annotated[str, Field(min_length=1, max_length=128,
                                      pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")]
# Auth0 connection metadata: at most 10 properties, string values of at most 255 characters;
# property names 1-255 characters (an empty name cannot be stored: DynamoDB map keys).
MetadataKey = Annotated[str, Field(min_length=1, max_length=MAX_METADATA_CHARS)]
MetadataValue = Annotated[str, Field(max_length=MAX_METADATA_CHARS)]


class KeysBody(BaseModel):
    """POST /connections/{id}/keys and /keys/rotate."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    signing_alg: SigningAlgName | None = None


class EmptyBody(BaseModel):
    """Endpoints that take no body properties (rotate/revoke signing keys)."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class ConnectionCreate(BaseModel):
    """POST /connections (the properties Auth0 documents for create)."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    name: ConnectionName
    strategy: str
    display_name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    options: dict[str, Any] | None = None
    enabled_clients: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = \
        Field(default=None, max_length=1000)
    is_domain_connection: bool | None = None
    show_as_button: bool | None = None
    realms: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = \
        Field(default=None, max_length=50)
    metadata: dict[MetadataKey, MetadataValue] | None = \
        Field(default=None, max_length=MAX_METADATA_KEYS)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"No enum match for: {json.dumps(v)[:80]}")
        return v


class ConnectionQuery(BaseModel):
    """GET /connections query string."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    per_page: Annotated[int, Field(ge=0, le=100)] | None = None
    page: Annotated[int, Field(ge=0)] | None = None
    include_totals: bool | None = None
    strategy: list[str] | None = None
    name: str | None = None
    fields: str | None = None
    include_fields: bool | None = None


class FieldsQuery(BaseModel):
    """GET /connections/{id} query string."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    fields: str | None = None
    include_fields: bool | None = None


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as Auth0's payload-validation wording (inputs echoed only for enums)."""
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if err["loc"] and err["loc"][-1] == "[key]":
        # a property name failed (e.g. metadata's): name the object, do not echo the name
        parent = ".".join(str(p) for p in err["loc"][:-2])
        return f"'Invalid property name: {err['msg']}' on property {parent}"
    if kind == "extra_forbidden":
        return f"'Additional properties not allowed: {loc}'"
    if kind == "missing":
        return f"'Missing required property: {loc}'"
    if kind == "literal_error":
        shown = json.dumps(err.get("input"))[:80]
        return f"'No enum match for: {shown}' on property {loc}"
    if kind == "value_error":
        return f"'{str(err['msg']).removeprefix('Value error, ')}' on property {loc}"
    if kind.endswith("_type") or kind in ("model_type", "dict_type", "list_type"):
        got = _JSON_TYPES.get(type(err.get("input")), "value")
        return f"'Invalid type: {got}' on property {loc}"
    return f"'{err['msg']}' on property {loc}"


def payload_problem(where: str, what: str) -> BodyInvalid:
    """Auth0's "Payload validation error" for a body that is not strict JSON."""
    on = f" on property {where}" if where else ""
    return BodyInvalid(f"Payload validation error: '{what}'{on}.", fields={where or "body": what})


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """Validate a (strict JSON) body; BodyInvalid with Auth0's "Payload validation error"."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        raise BodyInvalid(f"Payload validation error: {_describe(errs[0])}.",
                          fields={".".join(map(str, e["loc"])): e["msg"] for e in errs}) \
            from None


def parse_query(model: type[M], data: dict[str, Any]) -> M:
    """Validate a query string; QueryInvalid with Auth0's "Query validation error" text."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        raise QueryInvalid(f"Query validation error: {_describe(errs[0])}.") from None
