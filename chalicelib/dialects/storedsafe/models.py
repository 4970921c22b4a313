"""Request bodies of the StoredSafe transparent-encryption endpoints (unknown fields ignored).

The legacy `token` body field is read by the routes before validation, never by these models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from chalicelib.core.transparent import (
    DEFAULT_DATAKEY_BITS,
    DEFAULT_KEY_TYPE,
    MAX_INFO_CHARS,
)
from chalicelib.formats.ciphertext import MAX_VERSION

MAX_TEXT_CHARS = 1024 * 1024  # the body limit bounds these anyway; a clear message is nicer


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


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateKeyBody(_Body):
    """POST /:vaultid/keys/:name."""

    type: str = DEFAULT_KEY_TYPE
    allow_export: bool = True
    allow_backup: bool = True
    allow_delete: bool = True
    info: str = Field("", max_length=MAX_INFO_CHARS)


class ConfigBody(_Body):
    """POST /:vaultid/keys/:name/config (beyond the vendor, as Vault's key config)."""

    min_decryption_version: Version | None = None
    allow_delete: bool | None = None


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
    """POST /restore/:vaultid/:name."""

    backup: str = Field(max_length=MAX_TEXT_CHARS)
