"""JWK / JWKS (RFC 7517, 7518) for public signing keys, RFC 7638 thumbprints, key ids."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chalicelib.formats.x509cert import x5t

_EC_CRV = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _uint(n: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (n.bit_length() + 7) // 8)
    return b64url(n.to_bytes(size, "big"))


def public_jwk(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | bytes, *,
               kid: str, alg: str, cert_der: bytes | None = None) -> dict[str, Any]:
    """The public JWK of a signing key (`use` sig); with a certificate, x5c and x5t too.

    `public_key` may be a cryptography public key or SubjectPublicKeyInfo DER.
    """
    if isinstance(public_key, bytes | bytearray):
        public_key = serialization.load_der_public_key(bytes(public_key))  # type: ignore[assignment]
    jwk: dict[str, Any]
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        jwk = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _EC_CRV:
        crv, size = _EC_CRV[public_key.curve.name]
        numbers = public_key.public_numbers()
        # coordinates are fixed-length octet strings (RFC 7518 section 6.2.1.2)
        jwk = {"kty": "EC", "crv": crv, "x": _uint(numbers.x, size), "y": _uint(numbers.y, size)}
    else:
        raise ValueError("only RSA and P-256/P-384 EC public keys have a JWK here")
    jwk.update({"use": "sig", "alg": alg, "kid": kid})
    if cert_der is not None:
        # x5c entries are standard base64 (not base64url) DER, RFC 7517 section 4.7
        jwk["x5c"] = [base64.b64encode(cert_der).decode("ascii")]
        jwk["x5t"] = x5t(cert_der)
    return jwk


def jwks(keys: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A JWK Set document."""
    return {"keys": list(keys)}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) over the key's required members."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}.get(jwk.get("kty", ""))
    if required is None:
        raise ValueError("unsupported kty")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"),
                           sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def kid_from_bytes(raw: bytes, length: int = 22) -> str:
    """A key id: `raw` (random bytes, 16 give ~128 bits) as `length` base62 characters.

    Alphanumeric like Auth0's kids, URL-safe without escaping, far below the 255 limit.
    """
    if not raw or length < 1:
        raise ValueError("kid needs random bytes and a positive length")
    n = int.from_bytes(raw, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(reversed(out))
