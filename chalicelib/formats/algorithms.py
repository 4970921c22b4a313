"""JOSE signing algorithms and what each needs: key type and size, hash, padding."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class SigningAlg:
    """One JOSE `alg`: RSA (PKCS#1 v1.5 or PSS) or ECDSA on a named curve."""

    name: str  # JOSE name, e.g. RS256
    kty: str  # "RSA" | "EC"
    hash_name: str  # sha256 | sha384 | sha512
    pss: bool = False
    rsa_bits: int | None = None
    curve: str | None = None  # "P-256" | "P-384"

    def hash(self) -> hashes.HashAlgorithm:
        """A fresh cryptography hash object of this algorithm."""
        return _HASHES[self.hash_name]()

    def rsa_padding(self) -> padding.AsymmetricPadding | None:
        """The RSA signature padding (None for EC).

        PSS uses MGF1 with the same hash and a salt as long as the digest: what RFC 7518
        (JWS PS256/PS384) and RFC 4055 (X.509 RSASSA-PSS) both expect.
        """
        if self.kty != "RSA":
            return None
        if self.pss:
            return padding.PSS(mgf=padding.MGF1(self.hash()), salt_length=padding.PSS.DIGEST_LENGTH)
        return padding.PKCS1v15()


SIGNING_ALGS: dict[str, SigningAlg] = {
    a.name: a for a in (
        SigningAlg("RS256", "RSA", "sha256", rsa_bits=2048),
        SigningAlg("RS384", "RSA", "sha384", rsa_bits=2048),
        SigningAlg("RS512", "RSA", "sha512", rsa_bits=2048),
        SigningAlg("PS256", "RSA", "sha256", pss=True, rsa_bits=2048),
        SigningAlg("PS384", "RSA", "sha384", pss=True, rsa_bits=2048),
        SigningAlg("ES256", "EC", "sha256", curve="P-256"),
        SigningAlg("ES384", "EC", "sha384", curve="P-384"),
    )
}
DEFAULT_SIGNING_ALG = "RS256"


def signing_alg(name: str) -> SigningAlg:
    """The algorithm called `name`; ValueError for anything else."""
    try:
        return SIGNING_ALGS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported signing algorithm {name!r}") from None
