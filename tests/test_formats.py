"""Vector tests of chalicelib.formats: pure functions, no HSM, no store."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import SignatureAlgorithmOID

from chalicelib.formats.algorithms import DEFAULT_SIGNING_ALG, SIGNING_ALGS, signing_alg
from chalicelib.formats.jwk import b64url, jwk_thumbprint, jwks, kid_from_bytes, public_jwk
from chalicelib.formats.x509cert import (
    build_self_signed,
    certificate_pem,
    der_of,
    load_pem,
    pkcs7_pem,
    sha1_fingerprint,
    sha1_thumbprint,
    subject_dn,
    x5t,
)

# A fixed RSA-2048 test key (generated once for these tests; never used anywhere else).
RSA_PEM = b"""
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCxKVdgx682L1Tq
hpTcR3pAAGRYrbsSN69fNrs7WWGgX/Oy3R3suO9O1iflS7jzIe5ieQvEUyHfe+8x
+8FkUhmxEBXFVRfDzpws6tFuQLWljf8vCnpnJ7wt1vIiPdxfrXH0TlGr8NQ5h/M+
+Ol3D/Pzp3VctvwZuXYfBdbvu8N0RqlNtwztjmjXXPWm80XIzbuzG4SCjoUAfVVC
cIQcL3yDD8JakxNcmlT8RLXn7arIDDMRlcCKN73TIvGkY+5fZEQmdRmD0nxIji7s
+/0zWh7SFi49YlyNeQPU+vv98zYvzVmD3uWRcj9ThGcaxAiSa/A6TCWtC96MWGbz
Q6n3YSM1AgMBAAECggEAIfyA1z+nhLkSzMURtKp/sNyCY6K8gxOssJLi21Fb0bTm
nvcdYQbfXdvmnm3m5rmpLjnzgG/ETUfMzOVzpce8RwQDcS5QV0+BFXrcv45pan+x
pzgW4Eg2qQKVw+zjJHW1KT2HHHmgdQL4Lqn4u88TKTiEYst11IeIOg5YO/hk2B7O
RwaD1uqbBPSKcZI6mVRwldXF8bbC5AccRLpvMM+3jzyeR0UEVqztv0mg6p5ejccY
UWvJD2qfVZKRU4bAuo+FmkDtoLL2U7SbJWsl+79Vk38p5vIVY9dus/oWBdJMZWXN
E+SL/+XdqyDHDPC7WNCu4SmYiq0StA4Wzizg86PrNwKBgQDi5/13Lx5evT+BKthU
4KlVs+RpRAGw03QUUF3LAbqMOqTZArgr2Uaac0f6c4Ah7XsdP8W9bjUVZeOgNQ+t
/Yilz1tdHEFhHt8ySsgtNVlMa48OPELnSQoE82834nohJ9lKzUhxaBegK+I4rJn8
WY7HISeiDs+UJhf5e1cI3hcNpwKBgQDH4IWIUQ3879J5cM0F09SU3UuTGtyYLHdL
JnMzC7d2rCBQu6cnAfZkKms+B9ebPNHvmZdbBI9X5tHvn+QAVnM620d4oJvd6SsQ
q1GK96yjofWXI7+jaK5upjxtCBJcs3KLzXjRtyWWeHirhOxQlhSADo4Q6fq86YI6
3R6GBvn7wwKBgQCvFUUeFux/O9XpjC7a53OiHqnrk78eOztBhXWp9E6Gb6XNkWyc
4Q26laN/nGnNRBqQSioBbi1lsnX+o5LStWQgVSzxXqEQGKsuekeVoqmh7wi2ekdB
gblKcrBp1cZZGQ9wyY/Reflo7ROkmYJEFrK18l5LjNQdQ3uSVNqmjAAL1wKBgA7K
rNcjuHdJgDgAgwu1W3wQzHD8geq5D7L+C3Rxn4gmwNV4rawTVxqekQUsK2aPn7Gt
mifgNIN6z3p+SK9Fto1agPWKXT6U7Nz08LnqDlqlt7kRqjL7oj0KDFq9SC6YERgL
gq9ycFOsYrG+yoZENQwtB5J03ltwpHSavJGKnqFlAoGAAJyJ/LEu/v2lYdyYPc+G
hMMN9tRRiPJj0fLYOV16OEGfwMoVtxYQP4VqY075TXOaNWMJfdmNrfYxQf7yk4dG
q6ZMhKjwE+ztaDN6NMSKpVU+evzQCvoZ0wT/X5Y5rZhx9vgkYrMuLJDRjXdd9oNP
a5du6BfmfBMA8vq0kK8R5Uo=
-----END PRIVATE KEY-----

"""
RSA_KEY = serialization.load_pem_private_key(RSA_PEM.strip(), password=None)
# EC keys from fixed scalars
EC256_KEY = ec.derive_private_key(
    0x1D5A2E7C9B3F4A6D8E0C1B2A3948576E6F5D4C3B2A1908F7E6D5C4B3A2918070, ec.SECP256R1())
EC384_KEY = ec.derive_private_key(int("3" * 60, 16), ec.SECP384R1())
NOT_BEFORE = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
NOT_AFTER = NOT_BEFORE + timedelta(days=3650)

EXPECTED_OID = {
    "RS256": SignatureAlgorithmOID.RSA_WITH_SHA256,
    "RS384": SignatureAlgorithmOID.RSA_WITH_SHA384,
    "RS512": SignatureAlgorithmOID.RSA_WITH_SHA512,
    "PS256": SignatureAlgorithmOID.RSASSA_PSS,
    "PS384": SignatureAlgorithmOID.RSASSA_PSS,
    "ES256": SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "ES384": SignatureAlgorithmOID.ECDSA_WITH_SHA384,
}


def _key_for(alg: str):
    spec = SIGNING_ALGS[alg]
    if spec.kty == "RSA":
        return RSA_KEY
    return EC256_KEY if spec.curve == "P-256" else EC384_KEY


def _cert(alg: str, cn: str = "tenant1") -> x509.Certificate:
    return build_self_signed(_key_for(alg), SIGNING_ALGS[alg], cn, serial=0x1234567890ABCDEF,
                             not_before=NOT_BEFORE, not_after=NOT_AFTER)


# ---- algorithms ------------------------------------------------------------------------------

def test_algorithm_table_matches_the_auth0_enum():
    assert sorted(SIGNING_ALGS) == sorted(
        ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"])
    assert DEFAULT_SIGNING_ALG == "RS256"
    for name in ("RS256", "RS384", "RS512", "PS256", "PS384"):
        a = SIGNING_ALGS[name]
        assert (a.kty, a.rsa_bits, a.curve) == ("RSA", 2048, None)
        assert a.hash().name == "sha" + name[2:]
        assert isinstance(a.rsa_padding(), padding.PSS if name[0] == "P" else padding.PKCS1v15)
    assert (SIGNING_ALGS["ES256"].curve, SIGNING_ALGS["ES256"].hash().name) == ("P-256", "sha256")
    assert (SIGNING_ALGS["ES384"].curve, SIGNING_ALGS["ES384"].hash().name) == ("P-384", "sha384")
    assert SIGNING_ALGS["ES256"].rsa_padding() is None
    with pytest.raises(ValueError):
        signing_alg("HS256")


# ---- fingerprints ----------------------------------------------------------------------------

def test_fingerprint_and_thumbprint_vectors():
    # SHA-1("abc") = a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d (FIPS 180 example)
    assert sha1_thumbprint(b"abc") == "A9993E364706816ABA3E25717850C26C9CD0D89D"
    assert sha1_fingerprint(b"abc") == \
        "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
    assert x5t(b"abc") == "qZk-NkcGgWq6PiVxeFDCbJzQ2J0"


# ---- certificates ----------------------------------------------------------------------------

@pytest.mark.parametrize("alg", sorted(SIGNING_ALGS))
def test_self_signed_certificate_per_algorithm(alg):
    cert = _cert(alg)
    assert cert.signature_algorithm_oid == EXPECTED_OID[alg]
    assert cert.signature_hash_algorithm.name == SIGNING_ALGS[alg].hash().name
    cert.verify_directly_issued_by(cert)  # self-signed: the signature verifies with its own key
    assert cert.subject == cert.issuer
    assert subject_dn(cert) == "CN=tenant1"
    assert cert.serial_number == 0x1234567890ABCDEF
    assert cert.not_valid_before_utc == NOT_BEFORE and cert.not_valid_after_utc == NOT_AFTER
    assert cert.public_key() == _key_for(alg).public_key()
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def test_pss_certificate_parameters():
    cert = _cert("PS384")
    params = cert.signature_algorithm_parameters
    assert isinstance(params, padding.PSS)
    pub = RSA_KEY.public_key()
    # verifies with MGF1-SHA384 and a 48-byte salt, the RFC 4055 / JWS PS384 parameters
    pub.verify(cert.signature, cert.tbs_certificate_bytes,
               padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())


def test_pkcs1_certificate_is_deterministic():
    # PKCS#1 v1.5 signatures are deterministic: same inputs, same DER, same fingerprint
    a, b = der_of(_cert("RS256")), der_of(_cert("RS256"))
    assert a == b and sha1_fingerprint(a) == sha1_fingerprint(b)


def test_pem_uses_crlf_like_auth0_and_round_trips():
    cert = _cert("RS256")
    pem = certificate_pem(cert)
    assert pem.startswith("-----BEGIN CERTIFICATE-----\r\n")
    assert pem.endswith("\r\n-----END CERTIFICATE-----")
    assert "\n" not in pem.replace("\r\n", "")
    assert all(len(line) <= 64 for line in pem.split("\r\n"))
    assert load_pem(pem) == cert


def test_pkcs7_is_certs_only_and_holds_the_certificate():
    cert = _cert("ES256")
    p7 = pkcs7_pem(cert)
    assert p7.startswith("-----BEGIN PKCS7-----\r\n") and p7.endswith("\r\n-----END PKCS7-----")
    assert "\n" not in p7.replace("\r\n", "")
    assert pkcs7.load_pem_pkcs7_certificates(p7.encode()) == [cert]
    assert pkcs7.load_der_pkcs7_certificates(
        base64.b64decode("".join(p7.split("\r\n")[1:-1]))) == [cert]


def test_fingerprint_of_a_certificate_is_sha1_of_its_der():
    cert = _cert("RS512")
    der = der_of(cert)
    digest = hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
    assert sha1_thumbprint(der) == digest
    assert sha1_fingerprint(der).replace(":", "") == digest
    assert len(sha1_fingerprint(der)) == 59 and sha1_fingerprint(der).count(":") == 19


@pytest.mark.parametrize("alg", ["RS512", "ES384"])
def test_every_field_fits_auth0_maximum_lengths(alg):
    cert = _cert(alg, cn="c" * 64)  # the longest common name
    assert len(certificate_pem(cert)) <= 4096
    assert len(pkcs7_pem(cert)) <= 4096
    assert len(subject_dn(cert)) <= 132
    assert len(sha1_thumbprint(der_of(cert))) <= 255


def test_wrong_key_or_name_is_refused():
    with pytest.raises(ValueError):
        build_self_signed(EC256_KEY, SIGNING_ALGS["RS256"], "t", serial=1,
                          not_before=NOT_BEFORE, not_after=NOT_AFTER)
    with pytest.raises(ValueError):
        build_self_signed(EC256_KEY, SIGNING_ALGS["ES384"], "t", serial=1,
                          not_before=NOT_BEFORE, not_after=NOT_AFTER)
    with pytest.raises(ValueError):
        build_self_signed(RSA_KEY, SIGNING_ALGS["ES256"], "t", serial=1,
                          not_before=NOT_BEFORE, not_after=NOT_AFTER)
    for cn in ("", "x" * 65):
        with pytest.raises(ValueError):
            _cert("RS256", cn=cn)


# ---- JWK / JWKS / kid ------------------------------------------------------------------------

# RFC 7638 section 3.1: the example RSA key and its thumbprint
RFC7638_N = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
             "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
             "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrd"
             "kt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKn"
             "qDKgw")
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 7517 appendix A.1: the example P-256 public key
RFC7517_X = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4"
RFC7517_Y = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"


def _b64int(s: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")


def test_rsa_jwk_and_rfc7638_thumbprint_vector():
    pub = rsa.RSAPublicNumbers(65537, _b64int(RFC7638_N)).public_key()
    jwk = public_jwk(pub, kid="2011-04-29", alg="RS256")
    assert jwk == {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "use": "sig", "alg": "RS256",
                   "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == RFC7638_THUMBPRINT
    # SubjectPublicKeyInfo DER in, the same JWK out
    spki = pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public_jwk(spki, kid="2011-04-29", alg="RS256") == jwk


def test_ec_jwk_vector_and_fixed_length_coordinates():
    pub = ec.EllipticCurvePublicNumbers(_b64int(RFC7517_X), _b64int(RFC7517_Y),
                                        ec.SECP256R1()).public_key()
    jwk = public_jwk(pub, kid="1", alg="ES256")
    assert (jwk["kty"], jwk["crv"], jwk["x"], jwk["y"]) == ("EC", "P-256", RFC7517_X, RFC7517_Y)
    # a coordinate with leading zero bytes still takes the curve's full length
    small = ec.derive_private_key(1, ec.SECP384R1()).public_key()
    j384 = public_jwk(small, kid="2", alg="ES384")
    assert j384["crv"] == "P-384" and len(j384["x"]) == len(j384["y"]) == 64
    assert _b64int(j384["x"]) == small.public_numbers().x


def test_jwk_carries_the_certificate():
    cert = _cert("ES384")
    der = der_of(cert)
    jwk = public_jwk(cert.public_key(), kid="k", alg="ES384", cert_der=der)
    assert base64.b64decode(jwk["x5c"][0], validate=True) == der  # standard base64, not url
    assert jwk["x5t"] == b64url(hashlib.sha1(der, usedforsecurity=False).digest())
    assert jwks([jwk]) == {"keys": [jwk]}


def test_kid_vectors():
    assert kid_from_bytes(bytes(16)) == "0" * 22
    assert kid_from_bytes(bytes(15) + b"\x01") == "0" * 21 + "1"
    assert kid_from_bytes(bytes(15) + b"\x3e") == "0" * 20 + "10"  # 62 = "10" in base 62
    assert kid_from_bytes(b"\xff" * 16) == "7n42DGM5Tflk9n8mt7Fhc7"  # 2**128 - 1
    assert kid_from_bytes(bytes(range(16))) == "000SYW7RiJxkEgOGusQGwp"
    with pytest.raises(ValueError):
        kid_from_bytes(b"")
