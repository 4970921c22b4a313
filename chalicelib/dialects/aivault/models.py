"""Request bodies and query parameters of the AI-VAULT dialect.

Parameter names are case-insensitive (`mkname` is `MKName`), as the vendor's are: `fold`
maps them to their documented spelling first. Every violation is an InvalidInput naming the
parameter (the envelope answers 00002000 with that message).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from chalicelib.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
MAX_NAME_CHARS = 128
MAX_USAGE_CHARS = 128
MAX_REMARKS_CHARS = 256
PASSWORD_CHARS = (40, 64)
_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_TEXT = re.compile(r"[A-Za-z0-9 _-]*\Z")
_CLASSES = (re.compile(r"[0-9]"), re.compile(r"[A-Z]"), re.compile(r"[a-z]"),
            re.compile(r"[^0-9A-Za-z]"))


def _name(value: str) -> str:
    if not 1 <= len(value) <= MAX_NAME_CHARS or not _NAME.match(value):
        raise ValueError(f"1 to {MAX_NAME_CHARS} letters, digits, '_' or '-'")
    return value


def _usage(value: str) -> str:
    if not 1 <= len(value) <= MAX_USAGE_CHARS or not _TEXT.match(value) or not value.strip():
        raise ValueError(f"1 to {MAX_USAGE_CHARS} letters, digits, spaces, '_' or '-', "
                         "not only spaces")
    return value


def _remarks(value: str) -> str:
    if len(value) > MAX_REMARKS_CHARS or not _TEXT.match(value):
        raise ValueError(f"at most {MAX_REMARKS_CHARS} letters, digits, spaces, '_' or '-'")
    return value


def _password(value: str) -> str:
    # The key is derived from the NFC form (core/material.py): the rules judge that form, so
    # decomposed characters cannot pad a short or one-class password past them.
    value = unicodedata.normalize("NFC", value)
    low, high = PASSWORD_CHARS
    if not low <= len(value) <= high:
        raise ValueError(f"{low} to {high} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("no control characters")
    if sum(1 for c in _CLASSES if c.search(value)) < 2:
        raise ValueError("at least two of digits, upper-case, lower-case and special "
                         "characters")
    return value


Name = Annotated[str, AfterValidator(_name)]
Usage = Annotated[str, AfterValidator(_usage)]
Remarks = Annotated[str, AfterValidator(_remarks)]
Password = Annotated[str, AfterValidator(_password)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class CreateMK(_Strict):
    """POST /createMK."""

    MKName: Name
    MKUsage: Usage
    MKRemarks: Remarks = ""
    Password: Password


class CreatePSK(_Strict):
    """POST /createPSK."""

    PSKName: Name
    MKName: Name
    PSKRemarks: Remarks = ""
    Password: Password


class QueryMK(_Strict):
    """GET /queryMK."""

    MKName: Annotated[str, AfterValidator(lambda v: _name(v) if v else v)] = ""
    SortBy: Literal["CreateTime", "MKName"] = "CreateTime"
    SortMode: Literal["asc", "desc"] = "desc"


class QueryPSK(_Strict):
    """GET /queryPSK."""

    PSKName: Annotated[str, AfterValidator(lambda v: _name(v) if v else v)] = ""
    SortBy: Literal["CreateTime", "PSKName"] = "CreateTime"
    SortMode: Literal["asc", "desc"] = "desc"
    BindMKName: Annotated[str, AfterValidator(lambda v: _name(v) if v else v)] = ""


def fold(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its keys spelled as `model`'s fields, matched case-insensitively; an
    unknown key, or one given twice in different cases, is an InvalidInput naming it."""
    names = {f.lower(): f for f in model.model_fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = names.get(key.lower())
        if field is None:
            shown = key[:64]
            raise InvalidInput(f"{shown}: unknown parameter", fields={shown: "unknown parameter"})
        if field in out:
            raise InvalidInput(f"{field}: given more than once",
                               fields={field: "given more than once"})
        out[field] = value
    return out


_MESSAGES = {"string_type": "must be a string", "missing": "is required",
             "extra_forbidden": "unknown parameter"}


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate parameters (names folded first); InvalidInput naming the first bad one."""
    try:
        return model.model_validate(fold(model, data))
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for err in exc.errors(include_url=False, include_input=False):
            name = str(err["loc"][0]) if err["loc"] else "body"
            kind = err["type"]
            if kind in _MESSAGES:
                text = _MESSAGES[kind]
            elif kind == "literal_error":
                text = f"must be one of {err.get('ctx', {}).get('expected', '')}"
            elif kind == "value_error":
                text = str(err.get("ctx", {}).get("error", err["msg"]))
            else:
                text = "is invalid"
            fields.setdefault(name, text)
        first = next(iter(fields.items()))
        raise InvalidInput(f"{first[0]}: {first[1]}", fields=fields) from None


def check_name(value: str, field: str) -> str:
    """A name from the path, checked as one from a body."""
    try:
        return _name(value)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", fields={field: str(exc)}) from None


def check_password(password: str, name: str, field: str = "Password") -> None:
    """The password may not be the key's name or the name reversed (compared in NFKC and
    without case: a compatibility character such as the Kelvin sign is its letter)."""
    def fold(text: str) -> str:
        return unicodedata.normalize("NFKC", text).casefold()

    if fold(password) in (fold(name), fold(name)[::-1]):
        raise InvalidInput(f"{field}: must not be the key name or its reverse",
                           fields={field: "must not be the key name or its reverse"})
