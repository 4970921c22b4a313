"""Self-signed X.509 certificates for signing keys, certs-only PKCS#7, fingerprints.

The certificate is signed by whatever private-key object is passed in: in the service an
HSM-backed key whose sign() runs in the HSM, in tests a software key.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from chalicelib.formats.algorithms import SigningAlg

MAX_COMMON_NAME = 64  # X.520 ub-common-name
_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}


def _check_key(private_key: object, alg: SigningAlg) -> None:
    """The key must be of the algorithm's type (and curve): a mismatch is a programming error."""
    if alg.kty == "RSA":
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError(f"{alg.name} needs an RSA key")
        return
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) \
            or not isinstance(private_key.curve, _CURVES[alg.curve or ""]):
        raise ValueError(f"{alg.name} needs an EC key on {alg.curve}")


def build_self_signed(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                      alg: SigningAlg, common_name: str, *, serial: int,
                      not_before: datetime, not_after: datetime) -> x509.Certificate:
    """A v3 self-signed certificate for the key, signed with `alg`'s own scheme.

    RS* -> sha*WithRSAEncryption, PS* -> RSASSA-PSS (MGF1 same hash, salt = digest length),
    ES* -> ecdsa-with-SHA*. Subject = issuer = CN=common_name (1..64 characters).
    """
    _check_key(private_key, alg)
    if not isinstance(common_name, str) or not 0 < len(common_name) <= MAX_COMMON_NAME:
        raise ValueError(f"the common name is 1..{MAX_COMMON_NAME} characters")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = private_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(private_key, alg.hash(), rsa_padding=alg.rsa_padding())


def _crlf(pem: bytes) -> str:
    # Auth0 returns PEM with \r\n line breaks and no trailing newline
    return "\r\n".join(pem.decode("ascii").strip().splitlines())


def certificate_pem(cert: x509.Certificate) -> str:
    """The certificate as PEM with CRLF line endings, as Auth0 returns it."""
    return _crlf(cert.public_bytes(serialization.Encoding.PEM))


def pkcs7_pem(cert: x509.Certificate) -> str:
    """A certs-only (degenerate SignedData) PKCS#7 holding the certificate, PEM with CRLF."""
    return _crlf(pkcs7.serialize_certificates([cert], serialization.Encoding.PEM))


def sha1_thumbprint(der: bytes) -> str:
    """SHA-1 of the DER certificate as upper-case hex (Auth0 `thumbprint`)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def sha1_fingerprint(der: bytes) -> str:
    """SHA-1 of the DER certificate as colon-separated upper-case hex (Auth0 `fingerprint`)."""
    hexed = sha1_thumbprint(der)
    return ":".join(hexed[i:i + 2] for i in range(0, len(hexed), 2))


def x5t(der: bytes) -> str:
    """JWK `x5t`: base64url (unpadded) SHA-1 of the DER certificate."""
    digest = hashlib.sha1(der, usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def subject_dn(cert: x509.Certificate) -> str:
    """The subject as an RFC 4514 string, e.g. CN=tenant1."""
    return cert.subject.rfc4514_string()


def load_pem(pem: str) -> x509.Certificate:
    """Parse a certificate PEM (CRLF or LF)."""
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def der_of(cert: x509.Certificate) -> bytes:
    """The DER encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.DER)
