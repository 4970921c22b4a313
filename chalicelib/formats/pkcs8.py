"""The cost an encrypted PKCS#8 key asks of whoever opens it, read before it is opened.

An EncryptedPrivateKeyInfo names its own key derivation: PBES2 with PBKDF2 (an iteration
count) or scrypt (N, r, p), PBES1 or PKCS#12 PBE (an iteration count). `cryptography` honours
whatever the file says while holding the interpreter lock, so a client-supplied key with an
iteration count of 2**31 would stall the whole process for minutes. `kdf_cost_problem` reads
those numbers from the DER (a few dozen bytes of it) and says what is too much.

Pure: no I/O, no key material touched (only the unencrypted algorithm header is read).
"""

from __future__ import annotations

import base64
import binascii
import re

MAX_ITERATIONS = 1 << 20  # PBKDF2/PBES1/PKCS#12 rounds (OWASP asks 600,000 for SHA-256)
MAX_SCRYPT_N = 1 << 17  # with r <= 16: 256 MiB at most
MAX_SCRYPT_R = 16
MAX_SCRYPT_P = 4
_SCRYPT_OID = bytes.fromhex("2b06010401da47040b")  # 1.3.6.1.4.1.11591.4.11
_PEM = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----(.*?)-----END ENCRYPTED PRIVATE KEY"
                  rb"-----", re.DOTALL)
_SEQUENCE, _INTEGER, _OID = 0x30, 0x02, 0x06


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at pos; ValueError."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _walk(data: bytes, start: int, end: int, depth: int = 0) \
        -> tuple[list[int], list[bytes]]:
    """The INTEGER values and OIDs inside data[start:end], constructed elements descended."""
    if depth > 8:
        raise ValueError("too deep")
    ints: list[int] = []
    oids: list[bytes] = []
    pos = start
    while pos < end:
        tag, body, after = _tlv(data, pos)
        if tag == _INTEGER:
            ints.append(int.from_bytes(data[body:after], "big", signed=True))
        elif tag == _OID:
            oids.append(data[body:after])
        elif tag & 0x20:  # constructed: SEQUENCE, SET, context-specific
            more_ints, more_oids = _walk(data, body, after, depth + 1)
            ints += more_ints
            oids += more_oids
        pos = after
    return ints, oids


def encrypted_der(data: bytes) -> bytes | None:
    """The DER of an encrypted PKCS#8 key given as PEM or DER; None if it is not one."""
    match = _PEM.search(data)
    if match:
        try:
            return base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    if data[:1] == bytes([_SEQUENCE]):
        return data
    return None


def kdf_cost_problem(data: bytes) -> str | None:
    """Why opening this encrypted PKCS#8 key would cost too much (None if it would not, or
    if it is not an encrypted PKCS#8 key: parsing errors are for the key loader to report)."""
    der = encrypted_der(data)
    if der is None:
        return None
    try:
        tag, body, end = _tlv(der, 0)
        if tag != _SEQUENCE:
            return None
        tag, alg_body, alg_end = _tlv(der, body)  # encryptionAlgorithm
        if tag != _SEQUENCE:
            return None
        ints, oids = _walk(der, alg_body, alg_end)
    except ValueError:
        return None
    if _SCRYPT_OID in oids:
        n, r, p = (ints + [0, 0, 0])[:3]
        if not (0 < n <= MAX_SCRYPT_N and 0 < r <= MAX_SCRYPT_R and 0 < p <= MAX_SCRYPT_P):
            return (f"the key's scrypt parameters are too costly (at most N={MAX_SCRYPT_N}, "
                    f"r={MAX_SCRYPT_R}, p={MAX_SCRYPT_P})")
        return None
    if any(i > MAX_ITERATIONS for i in ints):
        return f"the key's password derivation is too costly (at most {MAX_ITERATIONS} rounds)"
    return None
