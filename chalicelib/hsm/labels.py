"""Labels of the token-resident keys (KEK and bind key), one pair per KEK version."""

from __future__ import annotations

from chalicelib.config import Settings


def kek_label(settings: Settings, version: int | None = None) -> str:
    """Label of the KEK of `version` (default: the version new blobs are wrapped under)."""
    v = settings.kek_version if version is None else version
    return f"{settings.kek_label_prefix}-v{v}"


def bind_key_label(settings: Settings, version: int | None = None) -> str:
    """Label of the HMAC bind key that belongs to the KEK of `version`."""
    v = settings.kek_version if version is None else version
    return f"{settings.bind_key_label_prefix}-v{v}"


def kek_version_of(settings: Settings, label: str) -> int | None:
    """The version encoded in a KEK label recorded in a blob, or None if it is not ours."""
    prefix = f"{settings.kek_label_prefix}-v"
    if not label.startswith(prefix):
        return None
    digits = label[len(prefix):]
    # only short canonical decimals: "v01" must not alias "v1", and a 5000-digit label from
    # a forged backup must not reach int()'s digit limit
    if not 0 < len(digits) <= 9 or not digits.isascii() or not digits.isdigit() \
            or str(int(digits)) != digits:
        return None
    return int(digits)
