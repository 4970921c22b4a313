"""The HSM service: generate, import, wrap, bind and use keys through PKCS#11.

Keys live outside the HSM only as `WrappedKey`: material wrapped under a token-resident KEK,
plus a tag (HMAC-SHA256 computed in the HSM with the bind key of the KEK's version) over every
field and the owner's context. Every use verifies the tag against the caller's context before
the blob is unwrapped, so a blob copied to another record, or any edited field, fails with
errors.BindingError (an errors.IntegrityError; a GCM tag failure of the data is a plain
IntegrityError). Unwrapped keys are session objects, cached in a bounded LRU so that a hot
key is unwrapped once per session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import Any

import pkcs11
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.constants import DEFAULT

from chalicelib import errors
from chalicelib.config import Settings
from chalicelib.hsm.bootstrap import check_protected
from chalicelib.hsm.keyobjects import HsmECPrivateKey, HsmRSAPrivateKey
from chalicelib.hsm.labels import bind_key_label, kek_label, kek_version_of
from chalicelib.hsm.session import SessionState, TokenSession, attr_true, token_session
from chalicelib.hsm.types import SignScheme, WrappedKey

GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
AES_BITS = (128, 192, 256)
RSA_BITS = (1024, 2048, 3072, 4096)
RSA_IMPORT_BITS = (1024, 8192)  # inclusive range accepted on import
MAX_SECRET_BYTES = 1024
MAX_RANDOM_BYTES = 64 * 1024
BIND_DOMAIN = b"keyfront/wrapped-key/v1"
log = logging.getLogger("keyfront.hsm")

INTEGRITY_MESSAGE = "key blob does not belong to this record"


@dataclass(frozen=True)
class _Curve:
    name: str  # our name, e.g. P-256
    bits: int
    params_der: bytes  # CKA_EC_PARAMS: DER OBJECT IDENTIFIER of the named curve
    crypto: type[ec.EllipticCurve]
    order: int  # n, the order of the base point (ECDSA r and s lie in [1, n-1])


_CURVES = {
    "P-256": _Curve("P-256", 256, bytes.fromhex("06082a8648ce3d030107"), ec.SECP256R1,
                    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    "P-384": _Curve("P-384", 384, bytes.fromhex("06052b81040022"), ec.SECP384R1,
                    int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
                        "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16)),
}


@dataclass(frozen=True)
class _Hash:
    name: str  # hashlib / cryptography name
    size: int  # digest bytes
    mech: Mechanism  # CKM_SHAxxx (PSS hashAlg)
    mgf: MGF
    rsa_pkcs: Mechanism  # CKM_SHAxxx_RSA_PKCS
    rsa_pss: Mechanism  # CKM_SHAxxx_RSA_PKCS_PSS
    digest_info: bytes  # DER DigestInfo prefix, for PKCS#1 v1.5 over a prehashed digest


_HASHES = {
    "sha224": _Hash("sha224", 28, Mechanism.SHA224, MGF.SHA224, Mechanism.SHA224_RSA_PKCS,
                    Mechanism.SHA224_RSA_PKCS_PSS,
                    bytes.fromhex("302d300d06096086480165030402040500041c")),
    "sha256": _Hash("sha256", 32, Mechanism.SHA256, MGF.SHA256, Mechanism.SHA256_RSA_PKCS,
                    Mechanism.SHA256_RSA_PKCS_PSS,
                    bytes.fromhex("3031300d060960864801650304020105000420")),
    "sha384": _Hash("sha384", 48, Mechanism.SHA384, MGF.SHA384, Mechanism.SHA384_RSA_PKCS,
                    Mechanism.SHA384_RSA_PKCS_PSS,
                    bytes.fromhex("3041300d060960864801650304020205000430")),
    "sha512": _Hash("sha512", 64, Mechanism.SHA512, MGF.SHA512, Mechanism.SHA512_RSA_PKCS,
                    Mechanism.SHA512_RSA_PKCS_PSS,
                    bytes.fromhex("3051300d060960864801650304020305000440")),
}

# RSA-OAEP hashes: name -> (CKM hash, MGF1 with the same hash). The label is always empty.
# python-pkcs11's OAEP defaults are SHA-1: the parameters are always passed explicitly.
OAEP_HASHES: dict[str, tuple[Mechanism, MGF, int]] = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1, 20),
    "sha256": (Mechanism.SHA256, MGF.SHA256, 32),
}

# scheme -> (key kind, padding, hash)
_SCHEMES: dict[SignScheme, tuple[str, str, str]] = {
    SignScheme.RSA_PKCS1_SHA256: ("rsa", "pkcs1", "sha256"),
    SignScheme.RSA_PKCS1_SHA384: ("rsa", "pkcs1", "sha384"),
    SignScheme.RSA_PKCS1_SHA512: ("rsa", "pkcs1", "sha512"),
    SignScheme.RSA_PSS_SHA256: ("rsa", "pss", "sha256"),
    SignScheme.RSA_PSS_SHA384: ("rsa", "pss", "sha384"),
    SignScheme.RSA_PSS_SHA512: ("rsa", "pss", "sha512"),
    SignScheme.ECDSA_SHA256: ("ec", "ecdsa", "sha256"),
    SignScheme.ECDSA_SHA384: ("ec", "ecdsa", "sha384"),
    SignScheme.ECDSA_SHA512: ("ec", "ecdsa", "sha512"),
}

_CAPABILITIES = (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP,
                 Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE)
_PRIVATE_CAPABILITIES = (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.SIGN, Attribute.DERIVE)

# kind -> (object class, key type, capabilities of the usable object)
_KINDS: dict[str, tuple[ObjectClass, KeyType, tuple[Attribute, ...]]] = {
    "aes": (ObjectClass.SECRET_KEY, KeyType.AES, (Attribute.ENCRYPT, Attribute.DECRYPT)),
    "secret": (ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, (Attribute.SIGN, Attribute.VERIFY)),
    "rsa": (ObjectClass.PRIVATE_KEY, KeyType.RSA, (Attribute.SIGN, Attribute.DECRYPT)),
    "ec": (ObjectClass.PRIVATE_KEY, KeyType.EC, (Attribute.SIGN,)),
}


def _object_template(kind: str, *, extractable: bool, sensitive: bool = True,
                     for_unwrap: bool = False) -> dict[Attribute, Any]:
    """Explicit template of a session object of `kind`: every capability set on purpose."""
    object_class, key_type, enabled = _KINDS[kind]
    possible = _CAPABILITIES if object_class == ObjectClass.SECRET_KEY else _PRIVATE_CAPABILITIES
    template: dict[Attribute, Any] = {}
    if for_unwrap:
        # python-pkcs11 fills in all seven capabilities; a private key has no ENCRYPT, VERIFY
        # or WRAP attribute (SoftHSM: AttributeTypeInvalid), so drop those from its template
        template.update({a: DEFAULT for a in _CAPABILITIES})
    else:
        template[Attribute.CLASS] = object_class
        template[Attribute.KEY_TYPE] = key_type
    template.update({a: (a in enabled) for a in possible})
    template.update({
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: sensitive,
        Attribute.EXTRACTABLE: extractable,
    })
    return template


def _as_bytes(value: object, field: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise errors.InvalidInput(f"{field} must be bytes", field=field)
    return bytes(value)


def _require_context(context: str) -> str:
    if not isinstance(context, str) or not context:
        raise errors.InvalidInput("a key context is required", field="context")
    return context


def _der_len(data: bytes, pos: int) -> tuple[int, int]:
    """(length, offset of the content) of the DER length at data[pos]."""
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if n == 0 or n > 4 or pos + 1 + n > len(data):
        raise ValueError("bad DER length")
    return int.from_bytes(data[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def _ec_point(raw: bytes, curve: _Curve) -> bytes:
    """The uncompressed point from CKA_EC_POINT (DER OCTET STRING per the spec, or raw)."""
    point_len = 1 + 2 * ((curve.bits + 7) // 8)
    if len(raw) == point_len and raw[0] == 0x04:
        return raw  # some modules return the bare point
    if raw[0] != 0x04:
        raise ValueError("CKA_EC_POINT is not an OCTET STRING")
    length, start = _der_len(raw, 1)
    if start + length != len(raw):
        raise ValueError("CKA_EC_POINT has trailing data")
    return raw[start:]


def _der_read_len(data: bytes, pos: int) -> tuple[int, int] | None:
    """(length, offset of the content) of the DER length at data[pos]; None unless minimal.

    Strict: definite form only, long form only for lengths >= 128, no leading zero byte.
    """
    if pos >= len(data):
        return None
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if n == 0 or n > 2 or pos + 1 + n > len(data):
        return None  # 0x80 is BER's indefinite form; > 64 KiB is no ECDSA signature
    length = int.from_bytes(data[pos + 1:pos + 1 + n], "big")
    if length < 0x80 or data[pos + 1] == 0:
        return None  # would have fitted a shorter form
    return length, pos + 1 + n


def _der_read_uint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(value, offset after it) of a non-negative, minimally encoded DER INTEGER at data[pos]."""
    if pos >= len(data) or data[pos] != 0x02:
        return None
    header = _der_read_len(data, pos + 1)
    if header is None:
        return None
    length, start = header
    end = start + length
    if length == 0 or end > len(data):
        return None
    content = data[start:end]
    if content[0] & 0x80:
        return None  # negative
    if length > 1 and content[0] == 0 and not content[1] & 0x80:
        return None  # superfluous leading zero
    return int.from_bytes(content, "big"), end


def _ecdsa_der_rs(sig: bytes) -> tuple[int, int] | None:
    """(r, s) of a strictly DER-encoded X9.62 Ecdsa-Sig-Value; None for anything else.

    BER variants (long or indefinite lengths, padded integers), other tags, negative
    integers, missing or extra elements and trailing bytes are all refused: a verifier that
    accepts several encodings of one signature makes signatures malleable.
    """
    if len(sig) < 2 or sig[0] != 0x30:
        return None
    header = _der_read_len(sig, 1)
    if header is None or header[0] + header[1] != len(sig):
        return None
    r_item = _der_read_uint(sig, header[1])
    if r_item is None:
        return None
    s_item = _der_read_uint(sig, r_item[1])
    if s_item is None or s_item[1] != len(sig):
        return None
    return r_item[0], s_item[0]


def _public_key(public_der: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """A SubjectPublicKeyInfo DER parsed (strictly, by cryptography) into an RSA or EC key."""
    public_der = _as_bytes(public_der, "public_key")
    try:
        public = serialization.load_der_public_key(public_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise errors.InvalidInput("the public key cannot be parsed", field="public_key") \
            from exc
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise errors.InvalidInput("only RSA and EC public keys are supported",
                                  field="public_key")
    return public


def _verify_template(key_type: KeyType, values: dict[Attribute, Any]) -> dict[Attribute, Any]:
    """Template of a session public-key object that can verify and do nothing else."""
    return {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
        **values,
    }


def _spki(public: Any) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _bind_message(kind: str, size: int, curve: str | None, exportable: bool, kek: str,
                  mechanism: str, context: str, blob: bytes, public_der: bytes | None) -> bytes:
    """Unambiguous encoding of everything a tag covers: each field length-prefixed."""
    fields: list[bytes | None] = [
        BIND_DOMAIN, kind.encode(), str(int(size)).encode(),
        None if curve is None else curve.encode(), b"1" if exportable else b"0",
        kek.encode(), mechanism.encode(), context.encode(), bytes(blob),
        None if public_der is None else bytes(public_der),
    ]
    out = bytearray()
    for f in fields:
        if f is None:
            out += b"\xff\xff\xff\xff"  # absent differs from empty
        else:
            out += len(f).to_bytes(4, "big") + f
    return bytes(out)


def _key_message(key: WrappedKey, context: str) -> bytes:
    if not isinstance(key, WrappedKey):
        raise errors.InvalidInput("not a wrapped key")
    try:
        if type(key.exportable) is not bool or type(key.size) is not int:
            raise TypeError("field types")
        return _bind_message(key.kind, key.size, key.curve, key.exportable, key.kek_label,
                             key.mechanism, context, key.blob, key.public_der)
    except (AttributeError, TypeError, ValueError) as exc:
        raise errors.BindingError(INTEGRITY_MESSAGE) from exc


class _BoundKey:
    """A wrapped key together with the context it was checked against (for keyobjects)."""

    def __init__(self, hsm: Hsm, key: WrappedKey, context: str) -> None:
        self._hsm = hsm
        self._key = key
        self._context = context

    def rsa_sign(self, data: bytes, hash_name: str, *, pss_salt: int | None,
                 mgf_hash: str | None, prehashed: bool) -> bytes:
        return self._hsm._rsa_sign(self._key, self._context, data, _HASHES[hash_name],
                                   pss_salt=pss_salt,
                                   mgf=None if mgf_hash is None else _HASHES[mgf_hash].mgf,
                                   prehashed=prehashed)

    def ecdsa_sign_digest(self, digest: bytes) -> bytes:
        return self._hsm._ecdsa_sign_digest(self._key, self._context, digest)


class Hsm:
    """Key operations on the configured token; one instance per process and settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self._wrap_mechanism = Mechanism[settings.wrap_mechanism]
        except KeyError as exc:
            raise errors.Unavailable(
                f"unknown wrap mechanism {settings.wrap_mechanism!r}") from exc
        if settings.rsa_sign_hashing not in ("hsm", "host"):
            raise errors.Unavailable(
                f"KEYFRONT_RSA_SIGN_HASHING is hsm or host, not {settings.rsa_sign_hashing!r}")
        self._ts: TokenSession = token_session(settings)

    # ---- health ------------------------------------------------------------------------

    def ping(self) -> None:
        """Check module, token, login, KEK and bind key (present, sensitive and
        non-extractable, the KEK not retired); raise errors.Unavailable if not."""
        kek, bind = kek_label(self.settings), bind_key_label(self.settings)

        def op(state: SessionState) -> None:
            try:
                kek_obj = state.secret_key(kek, KeyType.AES)
                bind_obj = state.secret_key(bind, KeyType.GENERIC_SECRET)
            except (p11e.NoSuchKey, p11e.MultipleObjectsReturned) as exc:
                raise errors.Unavailable("the HSM key-encryption keys are not available") \
                    from exc
            check_protected(kek_obj, kek)
            check_protected(bind_obj, bind)
            _check_wrapping(kek_obj, kek)

        self._ts.run(op)

    # ---- creating keys -----------------------------------------------------------------

    def generate_aes(self, bits: int, context: str, exportable: bool = False) -> WrappedKey:
        """Generate an AES key of 128/192/256 bits in the HSM, wrapped and bound to context."""
        _require_context(context)
        if bits not in AES_BITS or isinstance(bits, bool):
            raise errors.InvalidInput("AES keys are 128, 192 or 256 bits", field="bits")

        def op(state: SessionState) -> WrappedKey:
            obj = state.session.generate_key(
                KeyType.AES, bits, store=False, mechanism=Mechanism.AES_KEY_GEN,
                template=_object_template("aes", extractable=True))
            return self._seal(state, obj, "aes", bits, None, bool(exportable), context, None)

        return self._ts.run(op)

    def generate_rsa(self, bits: int, context: str) -> WrappedKey:
        """Generate an RSA key pair (1024/2048/3072/4096 bits, e=65537) in the HSM."""
        _require_context(context)
        if bits not in RSA_BITS or isinstance(bits, bool):
            raise errors.InvalidInput("RSA keys are 1024, 2048, 3072 or 4096 bits", field="bits")

        def op(state: SessionState) -> WrappedKey:
            pub, priv = state.session.generate_keypair(
                KeyType.RSA, bits, store=False, capabilities=0,
                mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
                public_template={
                    Attribute.TOKEN: False, Attribute.VERIFY: True, Attribute.ENCRYPT: True,
                    Attribute.WRAP: False, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
                },
                private_template=_object_template("rsa", extractable=True))
            try:
                n = int.from_bytes(pub[Attribute.MODULUS], "big")
                e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
            finally:
                pub.destroy()  # the public half is kept as SPKI, not in the HSM
            public_der = _spki(rsa.RSAPublicNumbers(e, n).public_key())
            return self._seal(state, priv, "rsa", bits, None, False, context, public_der)

        return self._ts.run(op)

    def generate_ec(self, curve: str, context: str) -> WrappedKey:
        """Generate an EC key pair on "P-256" or "P-384" in the HSM."""
        _require_context(context)
        c = _CURVES.get(curve) if isinstance(curve, str) else None
        if c is None:
            raise errors.InvalidInput("EC curves are P-256 or P-384", field="curve")

        def op(state: SessionState) -> WrappedKey:
            pub, priv = state.session.generate_keypair(
                KeyType.EC, store=False, capabilities=0, mechanism=Mechanism.EC_KEY_PAIR_GEN,
                public_template={
                    Attribute.TOKEN: False, Attribute.VERIFY: True,
                    Attribute.EC_PARAMS: c.params_der,
                },
                private_template=_object_template("ec", extractable=True))
            try:
                point = _ec_point(pub[Attribute.EC_POINT], c)
            finally:
                pub.destroy()
            public = ec.EllipticCurvePublicKey.from_encoded_point(c.crypto(), point)
            return self._seal(state, priv, "ec", c.bits, c.name, False, context, _spki(public))

        return self._ts.run(op)

    def import_private_key(self, data: bytes, context: str,
                           password: bytes | None = None) -> WrappedKey:
        """Import an RSA or EC (P-256/P-384) private key, PEM or DER, PKCS#8 or traditional.

        The key is created in the HSM as a session object and wrapped on the way in.
        """
        _require_context(context)
        private = _load_private_key(data, password)
        if isinstance(private, rsa.RSAPrivateKey):
            bits = private.key_size
            if not RSA_IMPORT_BITS[0] <= bits <= RSA_IMPORT_BITS[1]:
                raise errors.InvalidInput("RSA keys from 1024 to 8192 bits can be imported",
                                          field="key")
            nums = private.private_numbers()

            def be(i: int) -> bytes:
                return i.to_bytes((i.bit_length() + 7) // 8 or 1, "big")

            values: dict[Attribute, Any] = {
                Attribute.MODULUS: be(nums.public_numbers.n),
                Attribute.PUBLIC_EXPONENT: be(nums.public_numbers.e),
                Attribute.PRIVATE_EXPONENT: be(nums.d),
                Attribute.PRIME_1: be(nums.p),
                Attribute.PRIME_2: be(nums.q),
                Attribute.EXPONENT_1: be(nums.dmp1),
                Attribute.EXPONENT_2: be(nums.dmq1),
                Attribute.COEFFICIENT: be(nums.iqmp),
            }
            kind, size, curve_name = "rsa", bits, None
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            c = next((c for c in _CURVES.values() if c.crypto.name == private.curve.name), None)
            if c is None:
                raise errors.InvalidInput("EC keys on P-256 or P-384 can be imported", field="key")
            scalar = private.private_numbers().private_value
            values = {
                Attribute.EC_PARAMS: c.params_der,
                Attribute.VALUE: scalar.to_bytes((c.bits + 7) // 8, "big"),
            }
            kind, size, curve_name = "ec", c.bits, c.name
        else:
            raise errors.InvalidInput("only RSA and EC private keys can be imported", field="key")
        public_der = _spki(private.public_key())

        def op(state: SessionState) -> WrappedKey:
            obj = state.session.create_object(
                {**_object_template(kind, extractable=True), **values})
            return self._seal(state, obj, kind, size, curve_name, False, context, public_der)

        return self._ts.run(op)

    def import_secret(self, raw: bytes, context: str, exportable: bool = False) -> WrappedKey:
        """Import raw secret material: 16/24/32 bytes become "aes", other lengths "secret"."""
        _require_context(context)
        raw = _as_bytes(raw, "key")
        if not 1 <= len(raw) <= MAX_SECRET_BYTES:
            raise errors.InvalidInput(f"secrets are 1 to {MAX_SECRET_BYTES} bytes", field="key")
        kind = "aes" if len(raw) * 8 in AES_BITS else "secret"

        def op(state: SessionState) -> WrappedKey:
            obj = state.session.create_object(
                {**_object_template(kind, extractable=True), Attribute.VALUE: raw})
            return self._seal(state, obj, kind, len(raw) * 8, None, bool(exportable), context,
                              None)

        return self._ts.run(op)

    def rebind(self, key: WrappedKey, old_context: str, new_context: str) -> WrappedKey:
        """The same key, checked against old_context, bound to new_context and wrapped
        under the configured KEK version (whatever KEK the given blob names: a blob stored
        again, e.g. a restored backup, never brings back a KEK being rolled away from, and
        a retired KEK refuses the wrap)."""
        _require_context(old_context)
        _require_context(new_context)

        def op(state: SessionState) -> WrappedKey:
            self._verify(state, key, old_context, _key_message(key, old_context))
            moved = self._wrapped_again(state, key, kek_label(self.settings))
            moved = dataclasses.replace(moved, context=new_context, tag=b"")
            return dataclasses.replace(moved, tag=self._tag(
                state, moved.kek_label, _key_message(moved, new_context)))

        return self._ts.run(op)

    # ---- KEK versions ------------------------------------------------------------------

    def rewrap(self, key: WrappedKey, context: str, to_version: int) -> WrappedKey:
        """The same key wrapped under the KEK of `to_version` and tagged with that version's
        bind key, still bound to `context` (a KEK roll; the material never leaves the HSM).

        The tag is checked against `context` first (BindingError for a blob that is edited,
        or bound elsewhere: it is never re-tagged into validity). The blob is unwrapped into
        a throw-away session object, sensitive (its value is never readable) and extractable
        only so that the new KEK can wrap it, and destroyed before returning. A blob already
        under `to_version` comes back unchanged. Unavailable when that KEK or its bind key
        is missing.
        """
        _require_context(context)
        target = kek_label(self.settings, to_version)

        def op(state: SessionState) -> WrappedKey:
            self._verify(state, key, context, _key_message(key, context))
            if key.kek_label == target:
                return key
            moved = self._wrapped_again(state, key, target)
            return dataclasses.replace(moved, tag=self._tag(
                state, target, _key_message(moved, context)))

        return self._ts.run(op)

    def kek_exists(self, version: int) -> bool:
        """Whether the token holds the KEK and the bind key of `version` (looked up afresh,
        so a key created or destroyed by another process is seen). Unavailable when one of
        them could leave the HSM (not sensitive, or extractable: the check `hsm init` makes)
        or is ambiguous."""
        labels = ((kek_label(self.settings, version), KeyType.AES),
                  (bind_key_label(self.settings, version), KeyType.GENERIC_SECRET))

        def op(state: SessionState) -> bool:
            found = [(label, state.fresh_secret_keys(label, key_type))
                     for label, key_type in labels]
            for label, objs in found:
                if len(objs) > 1:
                    raise errors.Unavailable(f"token key {label} is ambiguous")
                for obj in objs:
                    check_protected(obj, label)
            return all(objs for _, objs in found)

        return self._ts.run(op)

    def kek_retired(self, version: int) -> bool:
        """Whether the KEK of `version` is retired: present, but refusing to wrap."""
        label = kek_label(self.settings, version)

        def op(state: SessionState) -> bool:
            objs = state.fresh_secret_keys(label, KeyType.AES)
            return bool(objs) and not any(attr_true(obj, Attribute.WRAP) for obj in objs)

        return self._ts.run(op)

    def retire_kek(self, version: int) -> bool:
        """Retire the KEK of `version`: the token refuses to wrap under it from now on, for
        every process (it still unwraps, so its blobs can be rolled away and used until then).
        Never the configured version (InvalidState); False when the token holds no such KEK.
        The barrier before a destroy: no blob can be wrapped (or re-stored, see `rebind`)
        under it any more."""
        if version == self.settings.kek_version:
            raise errors.InvalidState("the KEK new blobs are wrapped under is never retired")
        label = kek_label(self.settings, version)

        def op(state: SessionState) -> bool:
            objs = state.fresh_secret_keys(label, KeyType.AES)
            for obj in objs:
                obj[Attribute.WRAP] = False
            return bool(objs)

        return self._ts.run(op)

    def destroy_kek(self, version: int) -> list[str]:
        """Destroy the KEK and the bind key of `version` on the token; the labels destroyed
        (empty when neither was there). Never the configured version (InvalidState).

        Blobs still wrapped under it can no longer be used: callers check that none remain.
        """
        if version == self.settings.kek_version:
            raise errors.InvalidState("the KEK new blobs are wrapped under is never destroyed")
        labels = ((kek_label(self.settings, version), KeyType.AES),
                  (bind_key_label(self.settings, version), KeyType.GENERIC_SECRET))

        def op(state: SessionState) -> list[str]:
            destroyed = []
            for label, key_type in labels:
                found = state.fresh_secret_keys(label, key_type)
                for obj in found:
                    obj.destroy()
                state.forget(label, key_type)
                if found:
                    destroyed.append(label)
            return destroyed

        return self._ts.run(op)

    # ---- using keys --------------------------------------------------------------------

    def sign(self, key: WrappedKey, context: str, data: bytes, scheme: SignScheme) -> bytes:
        """Sign data in the HSM. RSA: PKCS#1 v1.5 or PSS (salt = hash length, MGF1 same hash).

        ECDSA returns raw r||s (JWS form); ecdsa_raw_to_der converts it for X.509/CMS.
        """
        spec = _SCHEMES.get(scheme) if isinstance(scheme, SignScheme) else None
        if spec is None:
            raise errors.InvalidInput("unknown signature scheme", field="scheme")
        kind, pad, hash_name = spec
        if key.kind != kind:
            raise errors.InvalidInput(f"scheme {scheme.value} needs an {kind.upper()} key",
                                      field="scheme")
        h = _HASHES[hash_name]
        data = _as_bytes(data, "data")
        if pad == "ecdsa":
            return self._ecdsa_sign_digest(key, context, hashlib.new(h.name, data).digest())
        return self._rsa_sign(key, context, data, h, pss_salt=h.size if pad == "pss" else None,
                              mgf=h.mgf, prehashed=False)

    def verify(self, public_der: bytes, data: bytes, signature: bytes, scheme: SignScheme, *,
               ecdsa_encoding: str = "der") -> bool:
        """Verify a signature in the HSM with a public key given as SubjectPublicKeyInfo DER.

        Schemes as for sign: RSA PKCS#1 v1.5 or PSS (salt = hash length, MGF1 same hash);
        ECDSA on P-256/P-384 with the data hashed here. ECDSA signatures are strict DER
        (X9.62 Ecdsa-Sig-Value) or, with ecdsa_encoding="raw", r||s (IEEE P1363, the form
        sign returns) of exactly twice the field size. Returns False for a signature that
        does not verify or is malformed; raises errors.InvalidInput for an unusable public key
        or a scheme that does not fit it.
        """
        spec = _SCHEMES.get(scheme) if isinstance(scheme, SignScheme) else None
        if spec is None:
            raise errors.InvalidInput("unknown signature scheme", field="scheme")
        if ecdsa_encoding not in ("der", "raw"):
            raise errors.InvalidInput('ECDSA signatures are "der" or "raw"',
                                      field="ecdsa_encoding")
        kind, pad, hash_name = spec
        h = _HASHES[hash_name]
        data = _as_bytes(data, "data")
        signature = _as_bytes(signature, "signature")
        public = _public_key(public_der)
        if kind != ("ec" if isinstance(public, ec.EllipticCurvePublicKey) else "rsa"):
            raise errors.InvalidInput(f"scheme {scheme.value} needs an {kind.upper()} key",
                                      field="scheme")
        param: tuple[Mechanism, MGF, int] | None = None
        if isinstance(public, ec.EllipticCurvePublicKey):
            curve = next((c for c in _CURVES.values() if c.crypto.name == public.curve.name),
                         None)
            if curve is None:
                raise errors.InvalidInput("EC public keys are on P-256 or P-384",
                                          field="public_key")
            point = public.public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
            # CKA_EC_POINT is a DER OCTET STRING; P-256/P-384 points are < 128 bytes
            template = _verify_template(KeyType.EC, {
                Attribute.EC_PARAMS: curve.params_der,
                Attribute.EC_POINT: bytes([0x04, len(point)]) + point,
            })
            size = (curve.bits + 7) // 8
            if ecdsa_encoding == "raw":
                rs = None if len(signature) != 2 * size else (
                    int.from_bytes(signature[:size], "big"),
                    int.from_bytes(signature[size:], "big"))
            else:
                rs = _ecdsa_der_rs(signature)
            # X9.62: r and s in [1, n-1]; checked here as well so that nothing out of range
            # reaches the module (and so that r||s always fits 2 * size bytes)
            if rs is None or not all(0 < v < curve.order for v in rs):
                return False
            mech = Mechanism.ECDSA
            # SoftHSM has no CKM_ECDSA_SHAxxx: hash here, verify the digest (as sign does)
            payload = hashlib.new(h.name, data).digest()
            signature = rs[0].to_bytes(size, "big") + rs[1].to_bytes(size, "big")
        else:
            bits = public.key_size
            if not RSA_IMPORT_BITS[0] <= bits <= RSA_IMPORT_BITS[1]:
                raise errors.InvalidInput("RSA public keys from 1024 to 8192 bits are supported",
                                          field="public_key")
            nums = public.public_numbers()
            template = _verify_template(KeyType.RSA, {
                Attribute.MODULUS: nums.n.to_bytes((bits + 7) // 8, "big"),
                Attribute.PUBLIC_EXPONENT: nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"),
            })
            payload = data
            if pad == "pss":
                if (bits + 6) // 8 < 2 * h.size + 2:  # RFC 8017 9.1.1 emLen bound, salt = hLen
                    raise errors.InvalidInput(f"an RSA-{bits} key is too small for PSS with "
                                              f"{h.name.upper()}", field="scheme")
                mech = h.rsa_pss
                # explicit parameters: python-pkcs11's PSS defaults are SHA-1
                param = (h.mech, h.mgf, h.size)
            else:
                mech = h.rsa_pkcs

        def op(state: SessionState) -> bool:
            try:
                obj = state.session.create_object(template)
            except (p11e.AttributeValueInvalid, p11e.TemplateInconsistent,
                    p11e.TemplateIncomplete) as exc:
                raise errors.InvalidInput("the HSM does not accept this public key",
                                          field="public_key") from exc
            try:
                # python-pkcs11 maps CKR_SIGNATURE_INVALID / _LEN_RANGE to False
                return bool(obj.verify(payload, signature, mechanism=mech,
                                       mechanism_param=param))
            finally:
                try:
                    obj.destroy()  # a throw-away session object; do not let them pile up
                except p11e.PKCS11Error:
                    pass

        return self._ts.run(op)

    def encrypt_gcm(self, key: WrappedKey, context: str, plaintext: bytes,
                    aad: bytes = b"") -> bytes:
        """AES-GCM in the HSM: nonce(12) || ciphertext || tag(16), a fresh nonce.

        The nonce is the one the HSM used, read back from the parameter buffer after the call:
        some HSMs (CloudHSM) ignore a supplied IV and write their own into that buffer
        (python-pkcs11 hands the HSM the buffer itself). With `gcm_iv_from_hsm` the buffer
        starts zeroed and a call that leaves it so is refused, never sent out with a fixed
        nonce; otherwise it starts random, so an HSM that keeps it gets a fresh one too.
        """
        self._require_kind(key, "aes")
        plaintext = _as_bytes(plaintext, "plaintext")
        self._check_gcm_size(len(plaintext))
        from_hsm = self.settings.gcm_iv_from_hsm
        # A new buffer per call, written in place by an HSM that makes its own IV.
        nonce = bytearray(GCM_NONCE_BYTES) if from_hsm else bytearray(os.urandom(GCM_NONCE_BYTES))
        params = pkcs11.GCMParams(nonce, _as_bytes(aad, "aad"), GCM_TAG_BYTES * 8)  # type: ignore[arg-type]

        def op(state: SessionState) -> bytes:
            obj = self._usable(state, key, context)
            return bytes(obj.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                     mechanism_param=params))

        sealed = self._ts.run(op)
        used = bytes(params.nonce)
        if from_hsm and used == bytes(GCM_NONCE_BYTES):
            raise errors.Unavailable("the HSM returned no GCM IV (is KEYFRONT_GCM_IV_FROM_HSM "
                                     "right for this HSM?)")
        return used + sealed

    def _check_gcm_size(self, n: int) -> None:
        """The HSM's largest AES-GCM input (`hsm_max_gcm_bytes`; CloudHSM: 16 KiB)."""
        limit = self.settings.hsm_max_gcm_bytes
        if limit and n > limit:
            raise errors.LimitExceeded(f"the HSM takes at most {limit} bytes per AES-GCM call",
                                       limit=limit)

    def decrypt_gcm(self, key: WrappedKey, context: str, data: bytes, aad: bytes = b"") -> bytes:
        """Inverse of encrypt_gcm; a wrong key, aad, tag or truncated input: IntegrityError."""
        self._require_kind(key, "aes")
        data = _as_bytes(data, "ciphertext")
        if len(data) < GCM_NONCE_BYTES + GCM_TAG_BYTES:
            raise errors.IntegrityError("ciphertext is truncated")
        self._check_gcm_size(len(data) - GCM_NONCE_BYTES - GCM_TAG_BYTES)  # its plaintext
        params = pkcs11.GCMParams(data[:GCM_NONCE_BYTES], _as_bytes(aad, "aad"),
                                  GCM_TAG_BYTES * 8)

        def op(state: SessionState) -> bytes:
            obj = self._usable(state, key, context)
            try:
                return bytes(obj.decrypt(data[GCM_NONCE_BYTES:], mechanism=Mechanism.AES_GCM,
                                         mechanism_param=params))
            except (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange,
                    p11e.DataInvalid, p11e.DataLenRange, p11e.FunctionFailed) as exc:
                # SoftHSM reports a failed GCM tag check as CKR_GENERAL_ERROR
                raise errors.IntegrityError("ciphertext failed its integrity check") from exc

        return self._ts.run(op)

    def random_bytes(self, n: int) -> bytes:
        """n bytes from the HSM's RNG."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_RANDOM_BYTES:
            raise errors.InvalidInput(f"0 to {MAX_RANDOM_BYTES} random bytes", field="n")
        if n == 0:
            return b""
        return self._ts.run(lambda state: bytes(state.session.generate_random(n * 8)))

    def check_binding(self, key: WrappedKey, context: str) -> None:
        """BindingError unless the blob is bound to `context` (its tag checks out in the HSM),
        without unwrapping it: for reads that show a key's public parts."""
        _require_context(context)
        message = _key_message(key, context)
        cache_key = _cache_key(message, key.tag if isinstance(key.tag, bytes) else b"")

        def op(state: SessionState) -> None:
            if cache_key in state.verified or state.cache.get(cache_key) is not None:
                return  # this exact record checked out before (or is unwrapped, so did)
            self._verify(state, key, context, message)
            state.remember_verified(cache_key)
        self._ts.run(op)

    def forget(self, key: WrappedKey, context: str) -> None:
        """Destroy this process's session copy of `key` (unwrapped for `context`) if the
        session holds one, and forget that its binding checked out: for a purged key. Other
        processes' copies go when their sessions evict them or close."""
        message = _key_message(key, context)
        cache_key = _cache_key(message, key.tag if isinstance(key.tag, bytes) else b"")

        def op(state: SessionState) -> None:
            state.cache.discard(cache_key)
            state.verified.pop(cache_key, None)
        self._ts.run(op)

    def export_secret(self, key: WrappedKey, context: str) -> bytes:
        """The raw material of an exportable secret key; errors.Forbidden if not exportable."""
        if key.kind not in ("aes", "secret"):
            raise errors.InvalidInput("only secret keys can be exported")
        if key.exportable is not True:
            raise errors.Forbidden("this key is not exportable")
        _require_context(context)

        def op(state: SessionState) -> bytes:
            self._verify(state, key, context, _key_message(key, context))
            # a throw-away non-sensitive copy: the only way CKA_VALUE becomes readable
            obj = self._unwrap(state, key, sensitive=False)
            try:
                value = bytes(obj[Attribute.VALUE])
            finally:
                obj.destroy()
            # SoftHSM's AES_KEY_WRAP_PAD zero-pads to a multiple of 8: the size is authoritative
            return value[: key.size // 8]

        return self._ts.run(op)

    def wrap_secret_under(self, key: WrappedKey, context: str, wrapping_key: bytes) -> bytes:
        """An exportable secret key wrapped by the HSM under a caller's AES key (RFC 5649,
        CKM_AES_KEY_WRAP_PAD), for a file that any RFC 5649 implementation opens.

        `wrapping_key` (16, 24 or 32 bytes, e.g. derived from a password) is imported as a
        session object that can only wrap; the key is unwrapped from its blob into a
        throw-away object that is extractable but stays sensitive (its value is never read
        out in the clear); both are destroyed before returning. The keys this wraps are
        multiples of 8 bytes, where SoftHSM's padding agrees with RFC 5649.
        """
        if key.kind not in ("aes", "secret"):
            raise errors.InvalidInput("only secret keys can be exported")
        if key.exportable is not True:
            raise errors.Forbidden("this key is not exportable")
        if key.size % 64:
            raise errors.InvalidInput("only keys of a multiple of 8 bytes are wrapped out")
        wrapping_key = _as_bytes(wrapping_key, "wrapping_key")
        if len(wrapping_key) * 8 not in AES_BITS:
            raise errors.InvalidInput("the wrapping key is 16, 24 or 32 bytes",
                                      field="wrapping_key")
        _require_context(context)

        def op(state: SessionState) -> bytes:
            self._verify(state, key, context, _key_message(key, context))
            obj = self._unwrap(state, key, sensitive=True, extractable=True)
            try:
                outer = state.session.create_object({
                    Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: wrapping_key, Attribute.TOKEN: False,
                    Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False, Attribute.WRAP: True,
                    Attribute.UNWRAP: False, Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False, Attribute.SIGN: False, Attribute.VERIFY: False,
                    Attribute.DERIVE: False})
                try:
                    return bytes(outer.wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP_PAD))
                finally:
                    outer.destroy()
            finally:
                obj.destroy()

        return self._ts.run(op)

    def decrypt_rsa_oaep(self, key: WrappedKey, context: str, ciphertext: bytes,
                         hash_name: str) -> bytes:
        """RSA-OAEP decryption in the HSM (MGF1 with the same hash, empty label).

        `hash_name` is "sha1" or "sha256". A module that refuses the hash (SoftHSM 2.6.1 does
        OAEP with SHA-1 only: CKR_ARGUMENTS_BAD for SHA-256) is an InvalidInput (reason
        hash_not_supported) naming "hash": the private key never leaves the HSM to do it in
        software instead. A ciphertext that does not decrypt under this key (wrong key,
        wrong hash, damaged, wrong length) is an IntegrityError (reason decrypt_failed).
        """
        self._require_kind(key, "rsa")
        params = OAEP_HASHES.get(hash_name) if isinstance(hash_name, str) else None
        if params is None:
            raise errors.InvalidInput(f"OAEP hashes are {' or '.join(OAEP_HASHES)}",
                                      field="hash")
        ciphertext = _as_bytes(ciphertext, "ciphertext")
        if len(ciphertext) != (key.size + 7) // 8:
            # the module would say the same (CKR_ENCRYPTED_DATA_LEN_RANGE), less clearly
            raise errors.IntegrityError(
                f"an RSA-{key.size} ciphertext is {(key.size + 7) // 8} bytes",
                reason="decrypt_failed")
        hash_mech, mgf, _ = params

        def op(state: SessionState) -> bytes:
            obj = self._usable(state, key, context)
            try:
                return bytes(obj.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                         mechanism_param=(hash_mech, mgf, None)))
            except (p11e.ArgumentsBad, p11e.MechanismParamInvalid,
                    p11e.MechanismInvalid) as exc:
                raise errors.InvalidInput(
                    f"this HSM does not decrypt RSA-OAEP with {hash_name.upper()}",
                    field="hash", reason="hash_not_supported") from exc
            except (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange,
                    p11e.DataInvalid, p11e.DataLenRange, p11e.FunctionFailed) as exc:
                # SoftHSM reports a failed OAEP decoding as CKR_GENERAL_ERROR
                raise errors.IntegrityError("the ciphertext does not decrypt under this key",
                                            reason="decrypt_failed") from exc

        return self._ts.run(op)

    def export_private_key_pkcs8(self, key: WrappedKey, context: str,
                                 password: bytes) -> bytes:
        """The RSA private key as password-encrypted PKCS#8 PEM: the one deliberate exit of
        private material from the HSM layer.

        Callers must have checked permission, grant and audit before calling. The stored
        blob is verified against `context`, then unwrapped into a throw-away session object
        that is non-sensitive and extractable for this call only (the cached, usable object
        stays sensitive); its components are read, the object destroyed, and the key is
        serialized by `cryptography` with BestAvailableEncryption (PBES2, AES-256-CBC),
        which openssl and `cryptography` open with the password. The clear key exists only
        inside this call.
        """
        self._require_kind(key, "rsa")
        _require_context(context)
        password = _as_bytes(password, "password")
        if not password:
            raise errors.InvalidInput("a password is required", field="password")

        def op(state: SessionState) -> dict[Attribute, int]:
            self._verify(state, key, context, _key_message(key, context))
            obj = self._unwrap(state, key, sensitive=False)
            try:
                return {a: int.from_bytes(bytes(obj[a]), "big") for a in (
                    Attribute.MODULUS, Attribute.PUBLIC_EXPONENT, Attribute.PRIVATE_EXPONENT,
                    Attribute.PRIME_1, Attribute.PRIME_2, Attribute.EXPONENT_1,
                    Attribute.EXPONENT_2, Attribute.COEFFICIENT)}
            finally:
                obj.destroy()

        v = self._ts.run(op)
        public = rsa.RSAPublicNumbers(v[Attribute.PUBLIC_EXPONENT], v[Attribute.MODULUS])
        if key.public_der is None or _spki(public.public_key()) != key.public_der:
            raise errors.BindingError(INTEGRITY_MESSAGE)
        private = rsa.RSAPrivateNumbers(
            p=v[Attribute.PRIME_1], q=v[Attribute.PRIME_2], d=v[Attribute.PRIVATE_EXPONENT],
            dmp1=v[Attribute.EXPONENT_1], dmq1=v[Attribute.EXPONENT_2],
            iqmp=v[Attribute.COEFFICIENT], public_numbers=public).private_key()
        return private.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(password))

    def private_key(self, key: WrappedKey,
                    context: str) -> HsmRSAPrivateKey | HsmECPrivateKey:
        """A cryptography private key whose sign() runs in the HSM (for the X.509 builders)."""
        if key.kind not in ("rsa", "ec") or key.public_der is None:
            raise errors.InvalidInput("not an asymmetric key")
        self._ts.run(lambda state: self._usable(state, key, context))  # check the tag now
        public = serialization.load_der_public_key(key.public_der)
        bound = _BoundKey(self, key, context)
        if key.kind == "rsa" and isinstance(public, rsa.RSAPublicKey):
            return HsmRSAPrivateKey(bound, public)
        if key.kind == "ec" and isinstance(public, ec.EllipticCurvePublicKey):
            return HsmECPrivateKey(bound, public)
        raise errors.BindingError(INTEGRITY_MESSAGE)

    def public_key_pem(self, key: WrappedKey) -> bytes:
        """The public key of an asymmetric key as SubjectPublicKeyInfo PEM."""
        if key.public_der is None:
            raise errors.InvalidInput("not an asymmetric key")
        public = serialization.load_der_public_key(key.public_der)
        return public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    # ---- internals ---------------------------------------------------------------------

    def _rsa_sign(self, key: WrappedKey, context: str, data: bytes, h: _Hash, *,
                  pss_salt: int | None, mgf: MGF | None, prehashed: bool) -> bytes:
        self._require_kind(key, "rsa")
        if not prehashed and self.settings.rsa_sign_hashing == "host":
            # For an HSM without the combined SHAxxx_RSA_PKCS[_PSS] mechanisms (or one that
            # caps their input): hash here, sign the digest with CKM_RSA_PKCS[_PSS].
            data, prehashed = hashlib.new(h.name, bytes(data)).digest(), True
        param: tuple[Mechanism, MGF, int] | None = None
        if pss_salt is None:
            mech = Mechanism.RSA_PKCS if prehashed else h.rsa_pkcs
            if prehashed:
                data = h.digest_info + data  # CKM_RSA_PKCS signs a DigestInfo as given
        else:
            if (key.size + 6) // 8 < h.size + pss_salt + 2:  # RFC 8017 9.1.1: emLen bound
                raise errors.InvalidInput(f"an RSA-{key.size} key is too small for PSS with "
                                          f"{h.name.upper()}", field="scheme")
            mech = Mechanism.RSA_PKCS_PSS if prehashed else h.rsa_pss
            # explicit parameters: python-pkcs11's PSS defaults are SHA-1
            param = (h.mech, mgf if mgf is not None else h.mgf, pss_salt)

        def op(state: SessionState) -> bytes:
            obj = self._usable(state, key, context)
            return bytes(obj.sign(data, mechanism=mech, mechanism_param=param))

        return self._ts.run(op)

    def _ecdsa_sign_digest(self, key: WrappedKey, context: str, digest: bytes) -> bytes:
        self._require_kind(key, "ec")

        def op(state: SessionState) -> bytes:
            obj = self._usable(state, key, context)
            # SoftHSM has no CKM_ECDSA_SHAxxx: the digest is computed outside, signed raw
            return bytes(obj.sign(bytes(digest), mechanism=Mechanism.ECDSA))

        return self._ts.run(op)

    @staticmethod
    def _require_kind(key: WrappedKey, kind: str) -> None:
        if not isinstance(key, WrappedKey):
            raise errors.InvalidInput("not a wrapped key")
        if key.kind != kind:
            raise errors.InvalidInput(f"this operation needs an {kind.upper()} key")

    def _seal(self, state: SessionState, obj: Any, kind: str, size: int, curve: str | None,
              exportable: bool, context: str, public_der: bytes | None) -> WrappedKey:
        """Wrap a fresh session object under the current KEK, tag it, cache the object."""
        label = kek_label(self.settings)
        try:
            kek = state.secret_key(label, KeyType.AES)
            _check_wrapping(kek, label)
            blob = bytes(kek.wrap_key(obj, mechanism=self._wrap_mechanism))
            message = _bind_message(kind, size, curve, exportable, label,
                                    self._wrap_mechanism.name, context, blob, public_der)
            tag = self._tag(state, label, message)
        except BaseException:
            try:
                obj.destroy()
            except p11e.PKCS11Error:
                pass
            raise
        # the object is usable as generated: keep it, so first use needs no unwrap
        state.cache.put(_cache_key(message, tag), obj)
        return WrappedKey(kind=kind, size=size, curve=curve, exportable=exportable,
                          kek_label=label, mechanism=self._wrap_mechanism.name, context=context,
                          blob=blob, public_der=public_der, tag=tag)

    def _wrapped_again(self, state: SessionState, key: WrappedKey, target: str) -> WrappedKey:
        """`key` (its tag already checked) unwrapped into a throw-away session object
        (sensitive, extractable only for this wrap) and wrapped under the KEK `target`;
        the tag is left to the caller. Unavailable when that KEK is missing or retired."""
        if key.kind not in _KINDS:
            raise errors.BindingError(INTEGRITY_MESSAGE)
        try:
            kek = state.secret_key(target, KeyType.AES)
        except (p11e.NoSuchKey, p11e.MultipleObjectsReturned) as exc:
            raise errors.Unavailable(f"KEK {target} is not available") from exc
        _check_wrapping(kek, target)
        obj = self._unwrap(state, key, sensitive=True, extractable=True)
        try:
            blob = bytes(kek.wrap_key(obj, mechanism=self._wrap_mechanism))
        finally:
            obj.destroy()
        return dataclasses.replace(key, kek_label=target, mechanism=self._wrap_mechanism.name,
                                   blob=blob, tag=b"")

    def _bind_key(self, state: SessionState, kek: str) -> Any:
        version = kek_version_of(self.settings, kek)
        if version is None:
            raise errors.BindingError(INTEGRITY_MESSAGE)
        try:
            return state.secret_key(bind_key_label(self.settings, version),
                                    KeyType.GENERIC_SECRET)
        except p11e.NoSuchKey as exc:
            # a blob naming a KEK version this token does not have (destroyed, or never
            # created here) cannot be used: the service's failure, not a copied record
            log.error("a key blob names KEK version %s, which the token does not hold",
                      version)
            raise errors.Unavailable(f"KEK version {version} is not on the token: keys "
                                     "wrapped under it cannot be used") from exc
        except p11e.MultipleObjectsReturned as exc:
            raise errors.Unavailable(f"the bind key of KEK version {version} is ambiguous") \
                from exc

    def _tag(self, state: SessionState, kek: str, message: bytes) -> bytes:
        """HMAC-SHA256 of message, computed in the HSM with the bind key of `kek`."""
        return bytes(self._bind_key(state, kek).sign(message, mechanism=Mechanism.SHA256_HMAC))

    def _verify(self, state: SessionState, key: WrappedKey, context: str,
                message: bytes) -> None:
        if key.context != context or not isinstance(key.tag, bytes):
            raise errors.BindingError(INTEGRITY_MESSAGE)
        if not hmac.compare_digest(self._tag(state, key.kek_label, message), key.tag):
            raise errors.BindingError(INTEGRITY_MESSAGE)

    def _usable(self, state: SessionState, key: WrappedKey, context: str) -> Any:
        """The unwrapped session object of key, after its tag checked out against context."""
        _require_context(context)
        if key.context != context:
            raise errors.BindingError(INTEGRITY_MESSAGE)
        message = _key_message(key, context)
        cache_key = _cache_key(message, key.tag if isinstance(key.tag, bytes) else b"")
        obj = state.cache.get(cache_key)
        if obj is not None:
            return obj  # entries are only made after the tag verified (or at creation)
        self._verify(state, key, context, message)
        obj = self._unwrap(state, key, sensitive=True)
        state.cache.put(cache_key, obj)
        return obj

    def _unwrap(self, state: SessionState, key: WrappedKey, *, sensitive: bool,
                extractable: bool | None = None) -> Any:
        if key.kind not in _KINDS:
            raise errors.BindingError(INTEGRITY_MESSAGE)
        object_class, key_type, _ = _KINDS[key.kind]
        try:
            mechanism = Mechanism[key.mechanism]
        except KeyError as exc:
            raise errors.Unavailable(f"unknown wrap mechanism {key.mechanism!r}") from exc
        try:
            kek = state.secret_key(key.kek_label, KeyType.AES)
        except (p11e.NoSuchKey, p11e.MultipleObjectsReturned) as exc:
            raise errors.Unavailable(f"KEK {key.kek_label} is not available") from exc
        return kek.unwrap_key(
            object_class, key_type, key.blob, mechanism=mechanism, store=False, capabilities=0,
            template=_object_template(
                key.kind, extractable=not sensitive if extractable is None else extractable,
                sensitive=sensitive, for_unwrap=True))


def _check_wrapping(kek: Any, label: str) -> None:
    # a retired KEK (see Hsm.retire_kek) refuses the wrap on the token anyway: say why
    if not attr_true(kek, Attribute.WRAP):
        raise errors.Unavailable(f"KEK {label} is retired: nothing is wrapped under it any "
                                 "more (configure the KEK version the store was rolled to)")


def _cache_key(message: bytes, tag: bytes) -> bytes:
    # the message holds every field and the context, so only that exact record hits the entry
    return hashlib.sha256(len(message).to_bytes(4, "big") + message + tag).digest()


def _load_private_key(data: bytes, password: bytes | None) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview) or not data:
        raise errors.InvalidInput("a private key (PEM or DER) is required", field="key")
    if password is not None and not isinstance(password, bytes):
        raise errors.InvalidInput("the password must be bytes", field="password")
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_private_key(data, password)
        return serialization.load_der_private_key(data, password)
    except TypeError as exc:  # password given for a clear key, or missing for an encrypted one
        raise errors.InvalidInput("wrong or missing password for the private key",
                                  field="password") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise errors.InvalidInput("the private key cannot be parsed", field="key") from exc
