"""Key material in and out of the HSM: import, sealed fields, export under a password.

Import. Public keys come as PEM (SubjectPublicKeyInfo or PKCS#1 "RSA PUBLIC KEY"), as the
base64 body of such a PEM without its armour, or as DER. Private keys come as PEM or DER,
PKCS#8 or traditional, clear or encrypted under a password. Raw secrets come as bytes.
Everything is parsed by `cryptography` here first, so that each problem is an InvalidInput
with a neutral message and the caller's field name; then private keys and secrets go into the
HSM (Hsm.import_private_key / Hsm.import_secret) and come back only as a WrappedKey bound to
the caller's context. The parsed private key object lives only inside `_inspect_private`.

Sealed fields. `seal` encrypts a record's field under a key of its own, generated in the HSM
and kept only wrapped, with AES-GCM in the HSM and the record's context as AAD: the stored
shape is {"key": WrappedKey.to_dict(), "ct": nonce || ciphertext || tag}. A sealed field
copied to another record (another context) fails the HSM's binding check (IntegrityError).

Export. Only secret keys created exportable leave through this module, under a password
(scrypt and AES-256-GCM). The one exit of a private key is the HSM layer's password-protected
PKCS#8 (Hsm.export_private_key_pkcs8), which a domain offers only behind a permission, a grant
and an audit record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from chalicelib.core.keyspecs import (
    SECRET_BYTES,
    KeySpec,
    spec,
    spec_of_public_key,
    spec_of_wrapped,
)
from chalicelib.errors import IntegrityError, InvalidInput, InvalidState
from chalicelib.formats.pkcs8 import kdf_cost_problem
from chalicelib.formats.strict_json import json_problem
from chalicelib.hsm import WrappedKey

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

MAX_INPUT_BYTES = 64 * 1024  # any key or document given to import
MAX_PASSWORD_BYTES = 1024
MAX_SEALED_JSON_BYTES = 64 * 1024  # default bound of seal_json
SEAL_KEY_BITS = 256

EXPORT_FORMAT = "sealed-key-material"
EXPORT_VERSION = 1
EXPORT_CIPHER = "AES-256-GCM"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
# what an imported document may ask of scrypt: enough room for stronger parameters later,
# bounded so that a crafted document cannot take gigabytes or minutes
_SCRYPT_N_RANGE = (2**14, 2**17)
_SCRYPT_MAX_MEMORY = 64 * 1024 * 1024  # 128 * n * r bytes
_SCRYPT_MAX_WORK = 4 * SCRYPT_N * SCRYPT_R * SCRYPT_P  # n * r * p

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Material:
    """What an import (or a generated key) gives: its spec, the wrapped key (None for a
    public-only key), and for asymmetric keys the public key as SubjectPublicKeyInfo PEM and
    its fingerprint (lower-case hex SHA-256 of the SubjectPublicKeyInfo DER)."""

    spec: KeySpec
    wrapped: WrappedKey | None
    public_pem: str | None = None
    fingerprint: str | None = None


# ---- helpers -------------------------------------------------------------------------------


def _input_bytes(data: object, field: str, what: str) -> bytes:
    """Bytes of a key or document given as bytes or text, bounded."""
    if isinstance(data, str):
        try:
            data = data.encode("ascii")  # PEM, base64 and our documents are ASCII
        except UnicodeEncodeError:
            raise InvalidInput(f"{what} cannot be parsed", field=field) from None
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"{what} must be text or bytes", field=field)
    data = bytes(data)
    if not data.strip():
        raise InvalidInput(f"{what} is required", field=field)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidInput(f"{what} is at most {MAX_INPUT_BYTES // 1024} KiB", field=field)
    return data


def _password(password: object, field: str, *, normalize: bool = False) -> bytes | None:
    """A password as bytes (text as UTF-8); None or empty means no password."""
    if password is None:
        return None
    if isinstance(password, str):
        if normalize:
            # the same password typed on another system may arrive decomposed
            password = unicodedata.normalize("NFC", password)
        try:
            password = password.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("the password is not valid Unicode", field=field) from None
    if not isinstance(password, bytes | bytearray | memoryview):
        raise InvalidInput("the password must be text", field=field)
    password = bytes(password)
    if len(password) > MAX_PASSWORD_BYTES:
        raise InvalidInput(f"the password is at most {MAX_PASSWORD_BYTES} bytes", field=field)
    return password or None


def _spki_der(public: PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public_der: bytes) -> str:
    """Lower-case hex SHA-256 of a SubjectPublicKeyInfo DER."""
    return hashlib.sha256(public_der).hexdigest()


def _public_material(key_spec: KeySpec, wrapped: WrappedKey | None,
                     public: PublicKey) -> Material:
    der = _spki_der(public)
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return Material(key_spec, wrapped, pem.decode("ascii"), fingerprint(der))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: object) -> bytes:
    """Canonical padded standard base64; ValueError otherwise (one string, one value)."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64 text")
    data = base64.b64decode(text, validate=True)
    if _b64(data) != text:
        raise ValueError("not canonical base64")
    return data


def _canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False,
                      ensure_ascii=True).encode("ascii")


# ---- import --------------------------------------------------------------------------------


def parse_public_key(data: str | bytes, *, field: str = "public_key") -> PublicKey:
    """Parse a public key: PEM (SubjectPublicKeyInfo or PKCS#1 RSA PUBLIC KEY), the base64
    body of such a PEM without its armour, or DER.

    InvalidInput (with `field`) if it cannot be parsed, is not RSA or EC, or is out of the
    table's range (RSA 1024..4096 bits, P-256 or P-384).
    """
    raw = _input_bytes(data, field, "the public key")
    text = raw.strip()
    public: object = None
    try:
        if text.startswith(b"-----BEGIN"):
            public = serialization.load_pem_public_key(text)
        else:
            if text.isascii():
                try:
                    der = base64.b64decode(b"".join(text.split()), validate=True)
                except binascii.Error:
                    der = raw  # not base64: binary DER is tried below
                else:
                    public = serialization.load_der_public_key(der)
            if public is None:
                public = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput("the public key cannot be parsed (PEM, DER or the base64 body "
                           "of a PEM)", field=field) from None
    spec_of_public_key(public, field=field)
    return public  # type: ignore[return-value]


def import_public_key(data: str | bytes, *, field: str = "public_key") -> Material:
    """A public-only key (PUBLIC_RSA or PUBLIC_EC): nothing goes into the HSM."""
    public = parse_public_key(data, field=field)
    return _public_material(spec_of_public_key(public, field=field), None, public)


def _inspect_private(data: bytes, password: bytes | None, field: str,
                     password_field: str) -> tuple[KeySpec, PublicKey]:
    """Parse a private key only to check it; the spec and public key of it.

    The private key object does not outlive this call: only its public half is returned.
    """
    too_costly = kdf_cost_problem(data)
    if too_costly is not None:  # refused before anything spends that cost
        raise InvalidInput(too_costly, field=field)
    pem = data.lstrip().startswith(b"-----BEGIN")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        private = load(data, password)
    except TypeError:
        # cryptography's way of saying the password and the encryption disagree
        if password is None:
            raise InvalidInput("the private key is encrypted: a password is required",
                               field=password_field) from None
        raise InvalidInput("the private key is not encrypted: give no password",
                           field=password_field) from None
    except UnsupportedAlgorithm:
        raise InvalidInput("the private key's algorithm or encryption is not supported",
                           field=field) from None
    except ValueError:
        private = None
    if private is None:
        # a wrong password and a damaged key both read as ValueError; an encrypted key
        # asks for a password before anything is decrypted, which tells the two apart
        if password is not None and _is_encrypted(load, data):
            raise InvalidInput("wrong password for the private key", field=password_field)
        raise InvalidInput("the private key cannot be parsed (PEM or DER, PKCS#8 or "
                           "traditional)", field=field)
    public = private.public_key()
    del private
    key_spec = spec_of_public_key(public, has_private=True, field=field)
    return key_spec, public  # type: ignore[return-value]


def inspect_private_key(data: str | bytes, *, field: str = "key") -> KeySpec:
    """The spec of a clear private key (PEM or DER, PKCS#8 or traditional), parsed only to
    check it, for a domain that keeps the key sealed instead of importing it; InvalidInput
    naming `field` if it is not one (an encrypted key included: no password is taken)."""
    raw = _input_bytes(data, field, "the private key")
    key_spec, _ = _inspect_private(raw, None, field, field)
    return key_spec


def _is_encrypted(load: Any, data: bytes) -> bool:
    try:
        load(data, None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def import_private_key(hsm: Hsm, data: str | bytes, context: str, *,
                       password: str | bytes | None = None,
                       public_key: str | bytes | None = None, field: str = "key",
                       password_field: str = "password",  # noqa: S107 - a field name
                       public_key_field: str = "public_key") -> Material:
    """Import an RSA (1024/2048/3072/4096) or EC (P-256/P-384) private key into the HSM.

    `data` is PEM or DER, PKCS#8 or traditional, clear or encrypted under `password` (text
    is taken as UTF-8; an empty password is no password). With `public_key`, the private key
    must be its pair. The result's `wrapped` is bound to `context`. Every problem is an
    InvalidInput naming `field`, `password_field` or `public_key_field`; no message holds
    key material or the password.
    """
    raw = _input_bytes(data, field, "the private key")
    secret = _password(password, password_field)
    expected = None if public_key is None else parse_public_key(public_key,
                                                                field=public_key_field)
    key_spec, public = _inspect_private(raw, secret, field, password_field)
    if expected is not None and _spki_der(expected) != _spki_der(public):
        raise InvalidInput("the private key does not match the public key", field=field)
    try:
        wrapped = hsm.import_private_key(raw, context, secret)
    except InvalidInput as exc:
        if exc.field == "context":
            raise
        raise InvalidInput(exc.message, field=field) from None
    return _public_material(key_spec, wrapped, public)


def import_secret(hsm: Hsm, raw: bytes, context: str, *, key_spec: str | KeySpec = "SECRET",
                  exportable: bool = False, field: str = "key") -> Material:
    """Import raw secret bytes into the HSM: SECRET takes 1..512 bytes, AES_128/192/256
    exactly 16/24/32.

    Note that the HSM layer holds any 16, 24 or 32 bytes as an AES key (usable for AES-GCM),
    so such a SECRET reads back from the wrapped key as AES (keyspecs.spec_of_wrapped).
    """
    s = spec(key_spec)
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidInput("the secret must be bytes", field=field)
    raw = bytes(raw)
    if s.family == "secret":
        if not SECRET_BYTES[0] <= len(raw) <= SECRET_BYTES[1]:
            raise InvalidInput(f"secrets are {SECRET_BYTES[0]} to {SECRET_BYTES[1]} bytes",
                               field=field)
    elif s.family == "aes" and s.bits is not None:
        if len(raw) * 8 != s.bits:
            raise InvalidInput(f"{s.name} keys are {s.bits // 8} bytes", field=field)
    else:
        raise InvalidInput(f"{s.name} keys are not imported as raw bytes", field="spec")
    return Material(s, hsm.import_secret(raw, context, bool(exportable)))


def describe(key: WrappedKey) -> Material:
    """The Material of a wrapped key (e.g. a generated one): spec, public PEM, fingerprint."""
    key_spec = spec_of_wrapped(key)
    if key.public_der is None:
        return Material(key_spec, key)
    public = serialization.load_der_public_key(key.public_der)
    return _public_material(key_spec, key, public)  # type: ignore[arg-type]


# ---- sealed fields -------------------------------------------------------------------------


def seal(hsm: Hsm, context: str, data: bytes) -> dict[str, Any]:
    """Encrypt `data` under a fresh AES-256 key generated in the HSM for this record.

    Returns {"key": WrappedKey.to_dict(), "ct": nonce || ciphertext || tag}: AES-GCM in the
    HSM with AAD = the context (UTF-8); the key is bound to the context as well.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput("sealed data must be bytes", field="data")
    key = hsm.generate_aes(SEAL_KEY_BITS, context)
    return {"key": key.to_dict(),
            "ct": hsm.encrypt_gcm(key, context, bytes(data), context.encode("utf-8"))}


def open(hsm: Hsm, context: str, sealed: Mapping[str, Any]) -> bytes:
    """The data `seal` sealed for `context`.

    IntegrityError if it was sealed for another context (a field copied to another record),
    if anything stored was edited, or if the stored shape is malformed: stored data is
    ours, so a bad shape is tampering or a bug, never a client's input.
    """
    try:
        key = sealed["key"]
        key = key if isinstance(key, WrappedKey) else WrappedKey.from_dict(key)
        ct = sealed["ct"]
        if ct is None or isinstance(ct, int | str):
            raise TypeError("ct is not bytes")
        ct = bytes(ct)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise IntegrityError("the sealed data is malformed") from None
    if key.kind != "aes":
        raise IntegrityError("the sealed data is malformed")
    return hsm.decrypt_gcm(key, context, ct, context.encode("utf-8"))


def seal_json(hsm: Hsm, context: str, value: Any, *, max_bytes: int = MAX_SEALED_JSON_BYTES,
              field: str = "value") -> dict[str, Any]:
    """Seal a JSON value as strict, canonical JSON text (sorted keys, no NaN/Infinity).

    InvalidInput (naming `field`, with the path of the problem) for what strict JSON or
    the store cannot hold (see formats.strict_json.json_problem), for values that are not
    JSON, and for more than `max_bytes` of JSON.
    """
    problem = json_problem(value, field)
    if problem is not None:
        raise InvalidInput(f"{problem[0]}: {problem[1]}", field=field)
    try:
        data = json.dumps(value, separators=(",", ":"), sort_keys=True,
                          allow_nan=False).encode("utf-8")
    except (ValueError, TypeError):
        raise InvalidInput(f"{field} must be JSON", field=field) from None
    if len(data) > max_bytes:
        raise InvalidInput(f"{field} must be at most {max_bytes} bytes of JSON", field=field)
    return seal(hsm, context, data)


def open_json(hsm: Hsm, context: str, sealed: Mapping[str, Any]) -> Any:
    """The JSON value `seal_json` sealed for `context` (IntegrityError as `open`)."""
    data = open(hsm, context, sealed)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError("the sealed data is not JSON") from None


# ---- export under a password ---------------------------------------------------------------


def _password_key(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)


def _required_password(password: object, field: str) -> bytes:
    secret = _password(password, field, normalize=True)
    if secret is None:
        raise InvalidInput("a password is required", field=field)
    return secret


def export_under_password(hsm: Hsm, wrapped: WrappedKey, context: str,
                          password: str | bytes, *,
                          password_field: str = "password") -> bytes:  # noqa: S107 - a name
    """The material of an exportable secret key, encrypted under a password.

    The document is canonical JSON (ASCII): format, version, the scrypt parameters
    (n=2**15, r=8, p=1) and 16-byte random salt, the cipher (AES-256-GCM) and nonce in the
    clear, and `ct`: the encrypted JSON {"spec", "kind", "size", "material"}; everything in
    the clear is the AAD, so no field can be edited unnoticed. Text passwords are NFC
    normalised and UTF-8 encoded.

    Private (RSA, EC) keys are InvalidState here (their one exit is the HSM layer's
    password-protected PKCS#8), as are secret keys not created exportable. The HSM checks the
    key's binding to `context` before it releases anything.
    """
    key_spec = spec_of_wrapped(wrapped)
    if not key_spec.can_export:
        raise InvalidState("only secret keys are exported in this format")
    if wrapped.exportable is not True:
        raise InvalidState("this key is not exportable")
    secret = _required_password(password, password_field)
    raw = hsm.export_secret(wrapped, context)
    inner = _canonical({"spec": key_spec.name, "kind": wrapped.kind, "size": wrapped.size,
                        "material": _b64(raw)})
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header: dict[str, Any] = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "cipher": EXPORT_CIPHER,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                "salt": _b64(salt)},
        "nonce": _b64(nonce),
    }
    key = _password_key(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    ct = AESGCM(key).encrypt(nonce, inner, _canonical(header))
    return _canonical({**header, "ct": _b64(ct)})


def _kdf_within_bounds(n: int, r: int, p: int) -> bool:
    """Are scrypt parameters read from a document within what we agree to spend?"""
    return (_SCRYPT_N_RANGE[0] <= n <= _SCRYPT_N_RANGE[1] and n & (n - 1) == 0
            and 1 <= r <= 16 and 1 <= p <= 4 and 128 * n * r <= _SCRYPT_MAX_MEMORY
            and n * r * p <= _SCRYPT_MAX_WORK)


def _int(value: object) -> int:
    if type(value) is not int:
        raise ValueError("not an integer")
    return value


def _parse_document(document: object, field: str) -> tuple[dict[str, Any], bytes, bytes,
                                                           tuple[int, int, int], bytes]:
    """(header, salt, nonce, (n, r, p), ct) of an export document; InvalidInput if malformed."""
    data = _input_bytes(document, field, "the document")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        doc = json.loads(data, parse_constant=no_constants)
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
            raise ValueError("not an export document")
        if doc.get("version") != EXPORT_VERSION or type(doc.get("version")) is not int:
            raise InvalidInput("unsupported export document version", field=field)
        if set(doc) != {"format", "version", "cipher", "kdf", "nonce", "ct"} \
                or doc["cipher"] != EXPORT_CIPHER:
            raise ValueError("unexpected fields")
        kdf = doc["kdf"]
        if not isinstance(kdf, dict) or set(kdf) != {"name", "n", "r", "p", "salt"} \
                or kdf["name"] != "scrypt":
            raise ValueError("unexpected kdf")
        n, r, p = _int(kdf["n"]), _int(kdf["r"]), _int(kdf["p"])
        salt, nonce, ct = _b64decode(kdf["salt"]), _b64decode(doc["nonce"]), \
            _b64decode(doc["ct"])
    except InvalidInput:
        raise
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested JSON exhausts the parser's stack
        raise InvalidInput("the document is not a key export document", field=field) from None
    if not _kdf_within_bounds(n, r, p):
        raise InvalidInput("the document's key derivation parameters are out of range",
                           field=field)
    if not 16 <= len(salt) <= 64 or len(nonce) != NONCE_BYTES or len(ct) < TAG_BYTES:
        raise InvalidInput("the document is not a key export document", field=field)
    header = {k: v for k, v in doc.items() if k != "ct"}
    return header, salt, nonce, (n, r, p), ct


def import_under_password(hsm: Hsm, document: str | bytes, password: str | bytes,
                          context: str, *, exportable: bool, field: str = "document",
                          password_field: str = "password") -> Material:  # noqa: S107
    """Re-import a key exported by `export_under_password` into the HSM, bound to `context`.

    IntegrityError for a wrong password or an edited document (the GCM tag covers the
    material and every field in the clear); InvalidInput (naming `field`) for a malformed
    one or KDF parameters outside sane bounds.
    """
    secret = _required_password(password, password_field)
    header, salt, nonce, (n, r, p), ct = _parse_document(document, field)
    key = _password_key(secret, salt, n, r, p)
    try:
        inner = AESGCM(key).decrypt(nonce, ct, _canonical(header))
    except InvalidTag:
        raise IntegrityError("wrong password, or the document was altered") from None
    try:
        body = json.loads(inner)
        if not isinstance(body, dict) or set(body) != {"spec", "kind", "size", "material"}:
            raise ValueError("unexpected fields")
        key_spec = spec(body["spec"])
        raw = _b64decode(body["material"])
        size = _int(body["size"])
        if not key_spec.can_export or size != len(raw) * 8:
            raise ValueError("inconsistent")
    except (ValueError, TypeError, InvalidInput):
        # authentic (the tag held) yet not ours: written by another program
        raise InvalidInput("the document's content is not a key", field=field) from None
    return import_secret(hsm, raw, context, key_spec=key_spec, exportable=exportable,
                         field=field)


# ---- a secret key wrapped under a password (RFC 5649) --------------------------------------
#
# For keys handed out once in a file: "kf-kwp1$scrypt$n=<N>,r=<r>,p=<p>$<salt>$<wrapped>",
# salt and wrapped in standard padded base64. The password (NFC, UTF-8) and the salt give a
# 256-bit key through scrypt; the HSM wraps the secret key under it with AES key wrap with
# padding (RFC 5649), so any implementation of scrypt and RFC 5649 opens it. The wrap's own
# integrity check tells a wrong password (or an edited string) from the key.

WRAP_PREFIX = "kf-kwp1"
# OWASP's scrypt choices include N=2^15, r=8, p=3 (as strong as N=2^17, r=8, p=1 at a quarter
# of the memory: 32 MiB, which suits a small Lambda container)
WRAP_SCRYPT_N, WRAP_SCRYPT_R, WRAP_SCRYPT_P = 2**15, 8, 3
MAX_WRAPPED_TEXT = 1024


def derive_password_key(password: bytes, salt: bytes, n: int = WRAP_SCRYPT_N,
                        r: int = WRAP_SCRYPT_R, p: int = WRAP_SCRYPT_P) -> bytes:
    """The 256-bit scrypt key of a password (the KDF alone, e.g. to time it)."""
    return _password_key(password, salt, n, r, p)


def check_wrap_cost(n: int, r: int, p: int) -> None:
    """ValueError for a configured scrypt cost that readers would refuse: the service's
    misconfiguration, never the client's bad input."""
    if not _kdf_within_bounds(n, r, p):
        raise ValueError(f"the configured password-wrap scrypt cost n={n}, r={r}, p={p} is "
                         "out of range (n a power of two 2^14..2^17, r 1..16, p 1..4, at most "
                         "64 MiB)")


def wrap_under_password(hsm: Hsm, wrapped: WrappedKey, context: str, password: str | bytes,
                        *, scrypt: tuple[int, int, int] = (WRAP_SCRYPT_N, WRAP_SCRYPT_R,
                                                           WRAP_SCRYPT_P),
                        password_field: str = "password") -> str:  # noqa: S107 - a name
    """An exportable secret key, wrapped by the HSM under a key derived from `password`
    (scrypt with `scrypt` = (n, r, p), within the bounds a reader accepts), as the text
    described above. The password-derived key exists in this process and, as a session
    object that can only wrap, in the HSM; the secret key is never in the clear outside the
    HSM."""
    n, r, p = scrypt
    check_wrap_cost(n, r, p)
    secret = _required_password(password, password_field)
    salt = os.urandom(SALT_BYTES)
    blob = hsm.wrap_secret_under(wrapped, context, _password_key(secret, salt, n, r, p))
    params = f"n={n},r={r},p={p}"
    return "$".join((WRAP_PREFIX, "scrypt", params, _b64(salt), _b64(blob)))


def _parse_wrapped(text: object, field: str) -> tuple[tuple[int, int, int], bytes, bytes]:
    """((n, r, p), salt, wrapped) of a wrapped-key text; InvalidInput if malformed or its
    KDF parameters are out of bounds."""
    problem = InvalidInput("not a password-wrapped key", field=field)
    if not isinstance(text, str) or len(text) > MAX_WRAPPED_TEXT:
        raise problem
    parts = text.strip().split("$")
    if len(parts) != 5 or parts[0] != WRAP_PREFIX or parts[1] != "scrypt":
        raise problem
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        if set(params) != {"n", "r", "p"} or not all(v.isdigit() and len(v) <= 8
                                                     for v in params.values()):
            raise ValueError("bad parameters")
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt, blob = _b64decode(parts[3]), _b64decode(parts[4])
    except ValueError:
        raise problem from None
    if not _kdf_within_bounds(n, r, p):
        raise InvalidInput("the key derivation parameters are out of range", field=field)
    if not 16 <= len(salt) <= 64 or len(blob) < 16 or len(blob) % 8:
        raise problem
    return (n, r, p), salt, blob


def unwrap_under_password(text: str, password: str | bytes, *, field: str = "file",
                          password_field: str = "password") -> bytes:  # noqa: S107
    """The key inside a `wrap_under_password` text, opened in software (for its owner's
    tools). IntegrityError for a wrong password or an edited text; InvalidInput (naming
    `field`) for a malformed one."""
    secret = _required_password(password, password_field)
    (n, r, p), salt, blob = _parse_wrapped(text, field)
    try:
        return aes_key_unwrap_with_padding(_password_key(secret, salt, n, r, p), blob)
    except InvalidUnwrap:
        raise IntegrityError("wrong password, or the key was altered") from None
