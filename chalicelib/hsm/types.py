"""Value types of the HSM layer; free of pkcs11 so that the core can use them."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class SignScheme(enum.Enum):
    """Signature schemes; hashes are always explicit (no SHA-1 defaults)."""

    RSA_PKCS1_SHA256 = "RSA_PKCS1_SHA256"
    RSA_PKCS1_SHA384 = "RSA_PKCS1_SHA384"
    RSA_PKCS1_SHA512 = "RSA_PKCS1_SHA512"
    RSA_PSS_SHA256 = "RSA_PSS_SHA256"
    RSA_PSS_SHA384 = "RSA_PSS_SHA384"
    RSA_PSS_SHA512 = "RSA_PSS_SHA512"
    ECDSA_SHA256 = "ECDSA_SHA256"
    ECDSA_SHA384 = "ECDSA_SHA384"
    ECDSA_SHA512 = "ECDSA_SHA512"


@dataclass(frozen=True)
class WrappedKey:
    """A key as it is stored: material wrapped under an HSM-resident KEK, bound to a context.

    `tag` is an HMAC computed inside the HSM (with the bind key) over every other field, so a
    blob copied to another record (another context), or any edited field, fails to unwrap.
    """

    kind: str  # "aes" | "rsa" | "ec" | "secret"
    size: int  # bits: AES/secret key length, RSA modulus, EC field size
    curve: str | None  # "P-256" | "P-384" for EC
    exportable: bool  # may the raw material leave the HSM (StoredSafe allow_export)
    kek_label: str  # e.g. keyfront-kek-v1
    mechanism: str  # wrap mechanism name, e.g. AES_KEY_WRAP_PAD
    context: str  # owner, e.g. "storedsafe/179/my-key/3"
    blob: bytes
    public_der: bytes | None  # SubjectPublicKeyInfo DER for asymmetric keys
    tag: bytes

    def to_dict(self) -> dict[str, Any]:
        """Store representation (bytes stay bytes; the store encodes them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WrappedKey:
        """Inverse of to_dict; tolerates bytes given as bytearray/memoryview."""
        fields = {k: d[k] for k in cls.__dataclass_fields__}
        for k in ("blob", "public_der", "tag"):
            if fields[k] is not None:
                fields[k] = bytes(fields[k])
        fields["size"] = int(fields["size"])
        fields["exportable"] = bool(fields["exportable"])
        return cls(**fields)
