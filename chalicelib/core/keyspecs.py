"""The key-spec table: which kinds of key the service holds, and what each can do.

A spec names a key's family and size (or curve) once, in neutral words, so that every domain
maps its own vendor's names onto the same few entries. Capabilities are what the HSM layer
offers for the key, not what the algorithm could do in general: an RSA key signs (the HSM
layer has no RSA decryption call), an AES key encrypts (AES-GCM), a SECRET is only held and,
if exportable, exported. Public-only specs hold no secret material at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chalicelib.errors import InvalidInput
from chalicelib.hsm import WrappedKey

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

FAMILIES = ("aes", "rsa", "ec", "secret", "public")
RSA_PUBLIC_BITS = (1024, 4096)  # inclusive range of public-only RSA keys
SECRET_BYTES = (1, 512)  # inclusive range of imported raw secrets


@dataclass(frozen=True)
class KeySpec:
    """One entry of the table.

    `bits` is the AES key length or the RSA modulus size (None where it varies: SECRET,
    PUBLIC_RSA); `curve` is "P-256" or "P-384" for EC keys (and None for PUBLIC_EC, whose
    curve varies); `public_family` is "rsa" or "ec" for public-only specs.
    """

    name: str
    family: str
    bits: int | None = None
    curve: str | None = None
    public_family: str | None = None
    has_private: bool = True  # secret or private material, held wrapped by the HSM
    can_encrypt: bool = False
    can_sign: bool = False

    @property
    def asymmetric(self) -> bool:
        """Has a public key (RSA, EC, or public-only)."""
        return self.family in ("rsa", "ec", "public")

    @property
    def can_export(self) -> bool:
        """May the material leave the HSM at all (only secret keys, and only if exportable)."""
        return self.family in ("aes", "secret")


_TABLE = (
    KeySpec("AES_128", "aes", bits=128, can_encrypt=True),
    KeySpec("AES_192", "aes", bits=192, can_encrypt=True),
    KeySpec("AES_256", "aes", bits=256, can_encrypt=True),
    KeySpec("RSA_1024", "rsa", bits=1024, can_encrypt=True, can_sign=True),
    KeySpec("RSA_2048", "rsa", bits=2048, can_encrypt=True, can_sign=True),
    KeySpec("RSA_3072", "rsa", bits=3072, can_encrypt=True, can_sign=True),
    KeySpec("RSA_4096", "rsa", bits=4096, can_encrypt=True, can_sign=True),
    KeySpec("EC_P256", "ec", bits=256, curve="P-256", can_sign=True),
    KeySpec("EC_P384", "ec", bits=384, curve="P-384", can_sign=True),
    KeySpec("SECRET", "secret"),
    KeySpec("PUBLIC_RSA", "public", public_family="rsa", has_private=False),
    KeySpec("PUBLIC_EC", "public", public_family="ec", has_private=False),
)
SPECS: Mapping[str, KeySpec] = MappingProxyType({s.name: s for s in _TABLE})

# cryptography's curve names -> ours
_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}


def spec(name: str | KeySpec, *, field: str = "spec") -> KeySpec:
    """The spec called `name` (a KeySpec is returned as is); InvalidInput for any other."""
    if isinstance(name, KeySpec):
        return name
    found = SPECS.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidInput(f"unknown key spec; one of {', '.join(SPECS)}", field=field)
    return found


def _rsa(bits: int) -> KeySpec | None:
    return next((s for s in _TABLE if s.family == "rsa" and s.bits == bits), None)


def _ec(curve: str) -> KeySpec | None:
    return next((s for s in _TABLE if s.family == "ec" and s.curve == curve), None)


def spec_of_public_key(public_key: object, *, has_private: bool = False,
                       field: str = "key") -> KeySpec:
    """The spec of a cryptography public key: PUBLIC_RSA/PUBLIC_EC, or with `has_private`
    the spec of the key pair (RSA_<bits>, EC_P256, EC_P384).

    InvalidInput for other key types (DSA, Ed25519, ...), RSA sizes outside 1024..4096 (a key
    pair must be one of the table's sizes) and curves other than P-256 and P-384.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if has_private:
            found = _rsa(bits)
            if found is None:
                raise InvalidInput("RSA private keys are 1024, 2048, 3072 or 4096 bits",
                                   field=field)
            return found
        if not RSA_PUBLIC_BITS[0] <= bits <= RSA_PUBLIC_BITS[1]:
            raise InvalidInput("RSA keys are 1024 to 4096 bits", field=field)
        return SPECS["PUBLIC_RSA"]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        found = _ec(_EC_CURVES.get(public_key.curve.name, ""))
        if found is None:
            raise InvalidInput("EC keys are on P-256 or P-384", field=field)
        return found if has_private else SPECS["PUBLIC_EC"]
    raise InvalidInput("only RSA and EC (P-256, P-384) keys are supported", field=field)


def spec_of_wrapped(key: WrappedKey) -> KeySpec:
    """The spec of a wrapped key, from its kind, size and curve.

    A raw secret of 16, 24 or 32 bytes is held as an AES key by the HSM layer, so it reads
    back as AES_128/192/256. InvalidInput if the key fits no spec.
    """
    found: KeySpec | None = None
    if isinstance(key, WrappedKey):
        if key.kind == "aes":
            found = next((s for s in _TABLE if s.family == "aes" and s.bits == key.size), None)
        elif key.kind == "rsa":
            found = _rsa(key.size)
        elif key.kind == "ec" and key.curve is not None:
            found = _ec(key.curve)
        elif key.kind == "secret":
            found = SPECS["SECRET"]
    if found is None:
        raise InvalidInput("the key fits no key spec", field="key")
    return found


def generate(hsm: Hsm, key_spec: str | KeySpec, context: str, *,
             exportable: bool = False) -> WrappedKey:
    """Generate a key of `key_spec` in the HSM, wrapped and bound to `context`.

    Only AES keys may be `exportable` (a private key's one exit is the HSM layer's
    password-protected PKCS#8, offered by a domain behind a grant). SECRET and
    public-only specs are imported, not generated (InvalidInput).
    """
    s = spec(key_spec)
    if exportable and s.family != "aes":
        raise InvalidInput("only secret keys can be exportable", field="exportable")
    if s.family == "aes" and s.bits is not None:
        return hsm.generate_aes(s.bits, context, bool(exportable))
    if s.family == "rsa" and s.bits is not None:
        return hsm.generate_rsa(s.bits, context)
    if s.family == "ec" and s.curve is not None:
        return hsm.generate_ec(s.curve, context)
    raise InvalidInput(f"{s.name} keys are imported, not generated", field="spec")
