"""Create the token-resident keys the service needs: the KEK and the bind key of a version.

Both are sensitive, non-extractable token objects: key material never leaves the HSM.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from chalicelib import errors
from chalicelib.config import Settings
from chalicelib.hsm.labels import bind_key_label, kek_label
from chalicelib.hsm.session import SessionState, attr_true, token_session

# Every capability attribute is set explicitly: token defaults differ between HSMs.
_NO_CAPABILITIES: dict[Attribute, bool] = {
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}

_TOKEN_SECRET: dict[Attribute, Any] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}


def kek_template(label: str) -> dict[Attribute, Any]:
    """Template of a KEK: AES-256, wrap/unwrap only."""
    return {
        **_TOKEN_SECRET, **_NO_CAPABILITIES,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.LABEL: label,
        Attribute.VALUE_LEN: 32,
        Attribute.WRAP: True,
        Attribute.UNWRAP: True,
    }


def bind_key_template(label: str) -> dict[Attribute, Any]:
    """Template of a bind key: 256-bit generic secret for CKM_SHA256_HMAC sign/verify."""
    return {
        **_TOKEN_SECRET, **_NO_CAPABILITIES,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.LABEL: label,
        Attribute.VALUE_LEN: 32,
        Attribute.SIGN: True,
        Attribute.VERIFY: True,
    }


def check_protected(obj: Any, label: str) -> None:
    # An existing key of ours that could leave the HSM must not be used silently.
    if not attr_true(obj, Attribute.SENSITIVE) or attr_true(obj, Attribute.EXTRACTABLE):
        raise errors.Unavailable(f"token key {label} is not sensitive and non-extractable")


def ensure_keys(settings: Settings) -> list[str]:
    """Create the KEK and bind key of settings.kek_version on the token if absent.

    The token is found by settings.token_label and logged in with the configured PIN.
    Idempotent: returns the labels created by this call (empty when both existed).
    """
    wanted = [
        (kek_label(settings), KeyType.AES, Mechanism.AES_KEY_GEN, kek_template),
        (bind_key_label(settings), KeyType.GENERIC_SECRET, Mechanism.GENERIC_SECRET_KEY_GEN,
         bind_key_template),
    ]

    def op(state: SessionState) -> list[str]:
        created: list[str] = []
        for label, key_type, mechanism, template in wanted:
            existing = state.find_secret_key(label, key_type)
            if existing is not None:
                check_protected(existing, label)
                continue
            state.session.generate_key(key_type, 256, label=label, store=True,
                                       mechanism=mechanism, template=template(label))
            created.append(label)
        return created

    return token_session(settings).run(op)
