"""The HSM layer: the only package that talks PKCS#11.

`get_hsm(settings)` gives the process-wide `Hsm`; keys travel as `WrappedKey`.
"""

from __future__ import annotations

from chalicelib.config import Settings
from chalicelib.hsm.keyobjects import ecdsa_raw_to_der
from chalicelib.hsm.service import Hsm
from chalicelib.hsm.session import HSM_LOCK
from chalicelib.hsm.types import SignScheme, WrappedKey

__all__ = ["Hsm", "SignScheme", "WrappedKey", "ecdsa_raw_to_der", "get_hsm"]

_instances: dict[Settings, Hsm] = {}


def get_hsm(settings: Settings) -> Hsm:
    """The process-wide Hsm for these settings (all share one session per token)."""
    with HSM_LOCK:
        hsm = _instances.get(settings)
        if hsm is None:
            hsm = Hsm(settings)
            _instances[settings] = hsm
        return hsm
