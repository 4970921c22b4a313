"""Request bodies and query parameters of the MiaRec dialect, with MiaRec-style messages.

Bodies wrap the object ({"encrypt_key": {...}}, {"user": {...}}); unknown fields, wrong types
and out-of-range values are each a 400 InvalidRecord naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from chalicelib.core.tenant_keys import KEY_BITS, MAX_PAGE, MIN_EXPORT_PASSWORD_CHARS
from chalicelib.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
MAX_NAME_CHARS = 255
MAX_PEM_CHARS = 64 * 1024
MAX_PASSWORD_CHARS = 1024
MAX_CURSOR_CHARS = 2048
MAX_CIPHERTEXT_CHARS = 4 * (4096 // 8)  # base64 of an RSA-4096 ciphertext, with room
DEFAULT_LIMIT = 20
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}\Z")


def is_uuid(value: object) -> bool:
    """Is `value` a UUID in its 8-4-4-4-12 hex form?"""
    return isinstance(value, str) and bool(_UUID_RE.match(value))


def _uuid(value: object) -> object:
    if isinstance(value, str) and not is_uuid(value):
        raise ValueError("Should be UUID")
    return value.lower() if isinstance(value, str) else value


def _key_length(value: object) -> object:
    # JSON integers only: true, 2048.0 and "2048" are not key lengths
    if type(value) is not int or value not in KEY_BITS:
        raise ValueError("key_length should be one of 1024, 2048 or 4096")
    return value


Uuid = Annotated[str, BeforeValidator(_uuid)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
KeyLength = Annotated[int, BeforeValidator(_key_length)]
Pem = Annotated[str, Field(min_length=1, max_length=MAX_PEM_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class NewKey(_Strict):
    """The encrypt_key of POST /encrypt_keys.json."""

    name: Name
    tenant_id: Uuid | None = None
    protection_mode: Literal["user", "app"] = "user"
    add_type: Literal["generate", "import"] = "generate"
    is_active: bool = False
    key_length: KeyLength | None = None
    key_lenght: KeyLength | None = None  # the vendor's own example spells it so
    public_key: Pem | None = None
    private_key: Pem | None = None
    private_key_password: Annotated[str, Field(max_length=MAX_PASSWORD_CHARS)] | None = None


class CreateBody(_Strict):
    """POST /encrypt_keys.json."""

    encrypt_key: NewKey


class KeyChange(_Strict):
    """The encrypt_key of PUT /encrypt_keys/<id>.json: only name and is_active change."""

    name: Name | None = None
    is_active: bool | None = None


class UpdateBody(_Strict):
    """PUT /encrypt_keys/<id>.json."""

    encrypt_key: KeyChange


class User(_Strict):
    """The user of POST /encrypt_keys/<id>/authorized_users.json."""

    user_id: Uuid


class UserBody(_Strict):
    """POST /encrypt_keys/<id>/authorized_users.json."""

    user: User


class DecryptBody(_Strict):
    """POST /encrypt_keys/<id>/decrypt.json (beyond the vendor)."""

    ciphertext: Annotated[str, Field(min_length=1, max_length=MAX_CIPHERTEXT_CHARS)]
    hash: Literal["sha256", "sha1"] = "sha256"


class ExportBody(_Strict):
    """POST /encrypt_keys/<id>/export.json (beyond the vendor)."""

    # PKCS#8 as `cryptography` writes it derives the key with PBKDF2 in 2,048 rounds (not
    # tunable for PKCS#8): the password itself must carry the strength
    password: Annotated[str, Field(min_length=MIN_EXPORT_PASSWORD_CHARS,
                                   max_length=MAX_PASSWORD_CHARS)]


class ListQuery(_Strict):
    """limit (1..1000, default 20), the opaque cursor, and tenant_id."""

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_CHARS)] | None = None
    tenant_id: Uuid | None = None


# pydantic error types -> MiaRec-style messages ("is_active": "Should be boolean type")
_MESSAGES = {
    "bool_type": "Should be boolean type",
    "string_type": "Should be string type",
    "int_type": "Should be integer type",
    "model_type": "Should be an object",
    "model_attributes_type": "Should be an object",
    "dict_type": "Should be an object",
    "missing": "Is required",
    "extra_forbidden": "Unknown field",
}


def _message(err: Any) -> str:
    kind = err["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "literal_error":
        return f"Should be one of {err.get('ctx', {}).get('expected', '')}"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    if kind in ("string_too_short", "string_too_long"):
        ctx = err.get("ctx", {})
        bound = ctx.get("min_length", ctx.get("max_length"))
        return f"Should be {'at least' if kind == 'string_too_short' else 'at most'} " \
            f"{bound} characters"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"Should be an integer from 1 to {MAX_PAGE}"
    return "Is invalid"


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """Validate a body; InvalidInput with one message per field, named by the field itself
    ("name", "is_active", "user_id"), the wrapper left out."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for err in exc.errors(include_url=False, include_input=False):
            loc = [str(p) for p in err["loc"]]
            name = loc[-1] if len(loc) > 1 else (loc[0] if loc else "body")
            fields.setdefault(name[:64], _message(err))
        first = next(iter(fields.items()))
        raise InvalidInput(f"{first[0]}: {first[1]}", fields=fields) from None


def parse_query(params: dict[str, str]) -> ListQuery:
    """The list query: limit must be decimal digits (not "1e3", not "-1")."""
    data: dict[str, Any] = {k: params[k] for k in ("cursor", "tenant_id") if k in params}
    if "limit" in params:
        raw = params["limit"]
        if not (raw.isascii() and raw.isdecimal() and len(raw) <= 6):
            raise InvalidInput("limit: Should be an integer from 1 to 1000",
                               fields={"limit": f"Should be an integer from 1 to {MAX_PAGE}"})
        data["limit"] = int(raw)
    return parse_body(ListQuery, data)
