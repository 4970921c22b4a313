"""cryptography private-key objects whose `sign()` runs in the HSM.

They let cryptography's X.509 certificate, CSR and PKCS#7 builders sign with a key that never
leaves the HSM. Everything public comes from the stored SubjectPublicKeyInfo; asking for the
private material raises errors.Forbidden.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric import padding as _padding  # `padding`: a param
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding

from chalicelib import errors

SUPPORTED_HASHES = ("sha224", "sha256", "sha384", "sha512")


class RsaSigner(Protocol):
    """What an HSM RSA key offers: sign `data` (or a digest when prehashed)."""

    def rsa_sign(self, data: bytes, hash_name: str, *, pss_salt: int | None,
                 mgf_hash: str | None, prehashed: bool) -> bytes: ...


class EcdsaSigner(Protocol):
    """What an HSM EC key offers: ECDSA over a digest, raw r||s."""

    def ecdsa_sign_digest(self, digest: bytes) -> bytes: ...


def _hash_of(algorithm: Any) -> tuple[hashes.HashAlgorithm, bool]:
    """(hash algorithm, prehashed?) of a cryptography algorithm argument."""
    if isinstance(algorithm, utils.Prehashed):
        h = algorithm._algorithm  # Prehashed exposes no public accessor
        prehashed = True
    else:
        h = algorithm
        prehashed = False
    if not isinstance(h, hashes.HashAlgorithm) or h.name not in SUPPORTED_HASHES:
        name = getattr(h, "name", type(h).__name__)
        raise UnsupportedAlgorithm(f"hash {name} is not supported by the HSM key")
    return h, prehashed


def _private_material_stays() -> NoReturn:
    raise errors.Forbidden("the private key stays in the HSM")


class HsmRSAPrivateKey(rsa.RSAPrivateKey):
    """An RSA private key held in the HSM (PKCS#1 v1.5 and PSS signatures)."""

    def __init__(self, signer: RsaSigner, public_key: rsa.RSAPublicKey) -> None:
        self._signer = signer
        self._public = public_key

    @property
    def key_size(self) -> int:
        """Modulus size in bits."""
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        """The public half (from the stored SPKI)."""
        return self._public

    def sign(self, data: bytes, padding: AsymmetricPadding,
             algorithm: hashes.HashAlgorithm | utils.Prehashed) -> bytes:
        """Sign in the HSM with PKCS1v15 or PSS; `algorithm` may be Prehashed."""
        h, prehashed = _hash_of(algorithm)
        data = bytes(data)
        if prehashed and len(data) != h.digest_size:
            raise ValueError("the digest length does not match the hash algorithm")
        if isinstance(padding, _padding.PKCS1v15):
            return self._signer.rsa_sign(data, h.name, pss_salt=None, mgf_hash=None,
                                         prehashed=prehashed)
        if isinstance(padding, _padding.PSS):
            mgf = padding._mgf  # PSS exposes no public accessor for its MGF
            if not isinstance(mgf, _padding.MGF1):
                raise UnsupportedAlgorithm("only MGF1 is supported")
            mgf_hash, _ = _hash_of(mgf._algorithm)
            return self._signer.rsa_sign(data, h.name, pss_salt=self._salt(padding, h),
                                         mgf_hash=mgf_hash.name, prehashed=prehashed)
        raise UnsupportedAlgorithm(f"padding {padding.name} is not supported for signing")

    def _salt(self, pss: _padding.PSS, h: hashes.HashAlgorithm) -> int:
        # the largest salt RFC 8017 allows for this modulus and hash
        max_salt = (self.key_size - 1 + 7) // 8 - h.digest_size - 2
        salt = pss._salt_length
        if isinstance(salt, _padding._MaxLength):
            return max_salt
        if isinstance(salt, _padding._DigestLength):
            return h.digest_size
        if isinstance(salt, int) and 0 <= salt <= max_salt:
            return salt
        raise ValueError("unsupported PSS salt length for signing")

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        """Not offered: HSM keys here only sign."""
        raise UnsupportedAlgorithm("decryption is not offered for HSM keys")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        """Refused: the private key stays in the HSM."""
        _private_material_stays()

    def private_bytes(self, encoding: serialization.Encoding,
                      format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        """Refused: the private key stays in the HSM."""
        _private_material_stays()

    def __copy__(self) -> HsmRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmRSAPrivateKey:
        return self


class HsmECPrivateKey(ec.EllipticCurvePrivateKey):
    """An EC private key held in the HSM (ECDSA signatures, DER encoded)."""

    def __init__(self, signer: EcdsaSigner, public_key: ec.EllipticCurvePublicKey) -> None:
        self._signer = signer
        self._public = public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        """The named curve."""
        return self._public.curve

    @property
    def key_size(self) -> int:
        """Field size in bits."""
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half (from the stored SPKI)."""
        return self._public

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """ECDSA in the HSM; returns the DER signature cryptography expects."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("only ECDSA is supported")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise UnsupportedAlgorithm("deterministic ECDSA is not offered by the HSM")
        h, prehashed = _hash_of(signature_algorithm.algorithm)
        if prehashed:
            digest = bytes(data)
            if len(digest) != h.digest_size:
                raise ValueError("the digest length does not match the hash algorithm")
        else:
            ctx = hashes.Hash(h)
            ctx.update(bytes(data))
            digest = ctx.finalize()
        raw = self._signer.ecdsa_sign_digest(digest)
        return ecdsa_raw_to_der(raw)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """Not offered: HSM keys here only sign."""
        raise UnsupportedAlgorithm("key agreement is not offered for HSM keys")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        """Refused: the private key stays in the HSM."""
        _private_material_stays()

    def private_bytes(self, encoding: serialization.Encoding,
                      format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        """Refused: the private key stays in the HSM."""
        _private_material_stays()

    def __copy__(self) -> HsmECPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmECPrivateKey:
        return self


def ecdsa_raw_to_der(sig: bytes) -> bytes:
    """Convert a raw r||s ECDSA signature (PKCS#11, JWS) to DER (X.509, CMS)."""
    sig = bytes(sig)
    if not sig or len(sig) % 2:
        raise errors.InvalidInput("an ECDSA signature r||s has an even, non-zero length")
    half = len(sig) // 2
    r = int.from_bytes(sig[:half], "big")
    s = int.from_bytes(sig[half:], "big")
    return utils.encode_dss_signature(r, s)

