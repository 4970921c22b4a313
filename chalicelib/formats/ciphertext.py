"""StoredSafe ciphertext strings: storedsafe:v<N>:<base64(nonce || ciphertext || tag)>.

Pure and strict (no I/O), so it is tested with vectors alone.
"""

from __future__ import annotations

import base64
import binascii
import re

from chalicelib.errors import InvalidInput

NONCE_BYTES = 12  # AES-GCM 96-bit nonce
TAG_BYTES = 16  # AES-GCM 128-bit tag
MAX_VERSION = 999_999_999  # nine digits: what the version pattern admits
_CIPHERTEXT_RE = re.compile(r"storedsafe:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]*={0,2})\Z")


def b64decode_strict(text: str) -> bytes:
    """Canonical standard base64 (padded, no whitespace); ValueError (binascii.Error) otherwise.

    Canonical means re-encoding gives the same text: excess padding or non-zero padding bits,
    which the lenient decoder ignores, would let two strings name the same bytes.
    """
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return data


def format_ciphertext(version: int, data: bytes) -> str:
    """storedsafe:v<N>:<base64(nonce || ciphertext || tag)>."""
    return f"storedsafe:v{version}:{base64.b64encode(data).decode('ascii')}"


def parse_ciphertext(text: object, field: str = "ciphertext") -> tuple[int, bytes]:
    """(version, nonce || ciphertext || tag) of a ciphertext string; InvalidInput if malformed.

    Strict: the exact prefix, a positive decimal version, canonical padded base64, and at least
    a nonce and a tag's worth of bytes.
    """
    m = _CIPHERTEXT_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidInput(f"{field} is not of the form storedsafe:v<N>:<base64>", field=field)
    try:
        data = b64decode_strict(m.group(2))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid base64", field=field) from exc
    if len(data) < NONCE_BYTES + TAG_BYTES:
        raise InvalidInput(f"{field} is truncated", field=field)
    return int(m.group(1)), data
