"""Request bodies and query parameters of the Apinizer dialect, and the vendor's enum words.

Bodies are the vendor's KeyCreateDTO (and its partial form for PUT). Fields a client copies
from a read (id, projectId, source) are ignored; wrong types, unknown enum values and
oversized values are each a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from chalicelib.core.project_keys import PRIVATE, PUBLIC, SECRET, EnvironmentContent
from chalicelib.core.tokens import ALL_RINGS
from chalicelib.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
KEY_TYPES = {"SECRET_KEY": SECRET, "PRIVATE_KEY": PRIVATE, "PUBLIC_KEY": PUBLIC}
TYPE_NAMES = {v: k for k, v in KEY_TYPES.items()}
# the vendor's algorithms (case-sensitive) -> the core's; EC is keyfront's, for EC key pairs
ALGORITHMS = {"AES": "aes", "DES": "des", "DESede": "des3", "RSA": "rsa", "EC": "ec"}
ALGORITHM_NAMES = {v: k for k, v in ALGORITHMS.items()}
ENVIRONMENT_TYPES = ("PRODUCTION", "SANDBOX", "TEST")
UPDATE_ACTIONS = ("NULLIFY", "UPDATE")
UPDATE_SCOPES = ("SAME_PROJECT", "ALL_PROJECTS")
DELETE_ACTIONS = ("NULLIFY", "DELETE")
MAX_NAME_CHARS = 255
MAX_DESCRIPTION_CHARS = 4096
MAX_CONTENT_CHARS = 24 * 1024  # base64 of the core's 16 KiB, with line breaks
MAX_ENTRIES = 64  # the core allows fewer; this bounds the work before it says so

MAX_NAME_BYTES = 512  # UTF-8: a store key (a claim's sort key) is at most 1,024 bytes


def check_name(value: object, what: str, *, slash: bool = True) -> str:
    """A project, environment or key name: 1 to 255 characters, at most 512 bytes of UTF-8,
    no control characters, no lone surrogates, "/" only where `slash` (never in a path
    segment: an environment ring is "<project>/<environment>"). InvalidInput otherwise."""
    ok = isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS \
        and value.isprintable() and (slash or "/" not in value)
    if ok:
        try:
            ok = len(str(value).encode("utf-8")) <= MAX_NAME_BYTES
        except UnicodeEncodeError:
            ok = False
    if not ok:
        raise InvalidInput(f"the {what} name is invalid: 1 to {MAX_NAME_CHARS} printable "
                           "characters", field=what)
    return str(value)


def check_project(value: object) -> str:
    """A project name (see check_name, never holding "/"), and never "*": that is the
    scopes' every-ring wildcard, so a project of that name would be every project's."""
    name = check_name(value, "project", slash=False)
    if name == ALL_RINGS:
        raise InvalidInput(f"the project name {ALL_RINGS} is reserved", field="project")
    return name


def _name(value: str) -> str:
    try:
        return check_name(value, "key", slash=False)
    except InvalidInput:
        raise ValueError(f"must be 1 to {MAX_NAME_CHARS} printable characters, "
                         "without '/'") from None


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_name)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, defer_build=True)


class EnvironmentEntry(_Body):
    """One item of cryptoKeyInfoEnvironmentList."""

    environmentName: Name  # noqa: N815 - the vendor's field names
    content: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] | None = None
    alias: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None


class KeyBody(_Body):
    """POST /projects/{p}/keys/ (every field but description required) and PUT (all
    optional): checked for presence by `parse_key`."""

    name: Name | None = None
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    keyType: Literal["SECRET_KEY", "PRIVATE_KEY", "PUBLIC_KEY"] | None = None  # noqa: N815
    algorithm: Literal["AES", "DES", "DESede", "RSA", "EC"] | None = None
    cryptoKeyInfoEnvironmentList: Annotated[  # noqa: N815
        list[EnvironmentEntry], Field(max_length=MAX_ENTRIES)] | None = None


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"unsupported value! Supported values: {err['ctx']['expected']}"
    if kind in ("string_type", "list_type", "model_type", "model_attributes_type",
                "dict_type"):
        return {"string_type": "must be a string", "list_type": "must be a list"}.get(
            kind, "must be an object")
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", "is invalid"))
    if kind in ("string_too_short", "string_too_long", "too_long"):
        return "is too long" if kind != "string_too_short" else "must not be empty"
    return "is invalid"


def parse_key(data: dict[str, Any], *, create: bool) -> KeyBody:
    """The key body; InvalidInput naming the field (cryptoKeyInfoEnvironmentList[0].content
    style) for the first problem."""
    try:
        body = KeyBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ""
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else part)
        raise InvalidInput(f"{where or 'body'} {_message(err)}",
                           field=where or "body") from None
    if create:
        for field in ("name", "keyType", "cryptoKeyInfoEnvironmentList"):
            if getattr(body, field) is None:
                raise InvalidInput(f"{field} is required", field=field)
    if body.keyType is not None and body.keyType != "SECRET_KEY" \
            and body.algorithm in ("AES", "DES", "DESede"):
        raise InvalidInput(f"algorithm {body.algorithm} is only for SECRET_KEY",
                           field="algorithm")
    return body


def is_pem(text: str) -> bool:
    """Is a content field a PEM as it is (rather than base64)? The core accepts one only
    for keys that are PEM structures (PRIVATE_KEY, PUBLIC_KEY, SECRET_KEY RSA)."""
    return text.lstrip().startswith("-----BEGIN")


def content_bytes(text: str, where: str) -> bytes:
    """The material of a content field: base64 of the key (line breaks allowed, as `base64`
    writes it), or a PEM as it is."""
    if is_pem(text):
        return text.encode("utf-8")  # kept byte for byte: what an environment reads back
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}.content is not base64", field=f"{where}.content") \
            from None
    if not data:
        raise InvalidInput(f"{where}.content is empty", field=f"{where}.content")
    return data


def entries(body: KeyBody) -> list[EnvironmentContent] | None:
    """The environment list as the core takes it (material decoded)."""
    if body.cryptoKeyInfoEnvironmentList is None:
        return None
    out = []
    for i, e in enumerate(body.cryptoKeyInfoEnvironmentList):
        where = f"cryptoKeyInfoEnvironmentList[{i}]"
        out.append(EnvironmentContent(
            e.environmentName, e.alias,
            None if e.content is None else content_bytes(e.content, where),
            textual=e.content is not None and is_pem(e.content)))
    return out


def choice(params: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """An optional query parameter of an enum; InvalidInput for another value."""
    value = params.get(name)
    if value is not None and value not in allowed:
        raise InvalidInput(f"Invalid value for {name}! Supported values: "
                           f"{', '.join(allowed)}", field=name)
    return value
