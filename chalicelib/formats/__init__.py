"""Pure, I/O-free formats: X.509 and PKCS#7 building, fingerprints, JWK/JWKS, key ids.

Nothing here talks to the HSM or the store: signing goes through whatever cryptography
private-key object the caller passes (an HSM-backed one in the service, a software key in
the vector tests).
"""
