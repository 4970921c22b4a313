"""Request bodies of the StoredSafe transparent-encryption endpoints (unknown fields ignored).

The legacy `token` body field is read by the routes before validation, never by these models.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from chalicelib.core.rotation import parse_period
from chalicelib.core.transit import DEFAULT_DATAKEY_BITS, DEFAULT_KEY_TYPE, MAX_INFO_CHARS
from chalicelib.errors import InvalidInput
from chalicelib.formats.ciphertext import MAX_VERSION

MAX_TEXT_CHARS = 1024 * 1024  # the body limit bounds these anyway; a clear message is nicer
_VAULT_RE = re.compile(r"[0-9]{1,20}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def validate_vault(vault: object) -> str:
    """A vault id: 1 to 20 decimal digits; InvalidInput otherwise."""
    if not isinstance(vault, str) or not _VAULT_RE.match(vault):
        raise InvalidInput("vaultid must be a decimal vault id", field="vaultid")
    return vault


def validate_name(name: object) -> str:
    """A key name: 1-128 of A-Z a-z 0-9 _ . - (starting with a letter or digit)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput("name must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-', "
                           "starting with a letter or digit", field="name")
    return name


def _version(value: object) -> object:
    # The vendor documents versions as JSON strings; integers are accepted too. Booleans and
    # floats are not versions.
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be a positive integer")
    if isinstance(value, str):
        if not value.isdecimal() or not value.isascii():
            raise ValueError("must be a positive integer")
        return int(value)
    return value


Version = Annotated[int, BeforeValidator(_version), Field(ge=1, le=MAX_VERSION)]


def _strict_int(value: object) -> object:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be an integer")
    if isinstance(value, str) and value.isdecimal() and value.isascii():
        return int(value)
    return value


def _period(value: object) -> int:
    # Vault's auto_rotate_period: seconds (a number or a string of digits) or a duration
    # string such as "24h"; 0 turns rotation off, otherwise at least an hour
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be a duration such as \"24h\" or a number of seconds")
    try:
        return parse_period(value, "auto_rotate_period")
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


Period = Annotated[int, BeforeValidator(_period)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class CreateKeyBody(_Body):
    """POST /:vaultid/keys/:name."""

    type: str = DEFAULT_KEY_TYPE
    allow_export: bool = False  # as in Vault: exporting key material is an explicit choice
    allow_backup: bool = True
    allow_delete: bool = True
    info: str = Field("", max_length=MAX_INFO_CHARS)


class ConfigBody(_Body):
    """POST /:vaultid/keys/:name/config (beyond the vendor, as Vault's key config)."""

    min_decryption_version: Version | None = None
    allow_delete: bool | None = None
    auto_rotate_period: Period | None = None


class EncryptBody(_Body):
    """POST /:vaultid/encrypt/:name."""

    plaintext: str = Field(max_length=MAX_TEXT_CHARS)
    key_version: Version | None = None
    type: str | None = None


class DecryptBody(_Body):
    """POST /:vaultid/decrypt/:name."""

    ciphertext: str = Field(max_length=MAX_TEXT_CHARS)


class RewrapBody(_Body):
    """POST /rewrap/:vaultid/:name."""

    ciphertext: str = Field(max_length=MAX_TEXT_CHARS)
    to_version: Version | None = None


class DatakeyBody(_Body):
    """POST /:vaultid/datakey/:type/:name."""

    bits: Annotated[int, BeforeValidator(_strict_int)] = DEFAULT_DATAKEY_BITS
    key_version: Version | None = None


class RestoreBody(_Body):
    """POST /restore/:vaultid/:name (its body limit is the largest backup's, not 1 MiB)."""

    backup: str


class TrimBody(_Body):
    """POST /:vaultid/keys/:name/trim (beyond the vendor, as Vault's trim)."""

    min_available_version: Version | None = None
