"""The HSM layer: the only package that talks PKCS#11.

`get_hsm(settings)` gives the process-wide `Hsm`; keys travel as `WrappedKey`.

The PKCS#11 modules (python-pkcs11 and the code over it) load on first use, not when the
package is imported: a Lambda cold start imports every domain, and they only name `Hsm` in
annotations.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from chalicelib.config import Settings
from chalicelib.hsm.types import SignScheme, WrappedKey

if TYPE_CHECKING:
    from chalicelib.hsm.keyobjects import ecdsa_raw_to_der
    from chalicelib.hsm.service import Hsm

__all__ = ["Hsm", "SignScheme", "WrappedKey", "ecdsa_raw_to_der", "get_hsm"]

_instances: dict[Settings, Hsm] = {}
_instances_lock = threading.Lock()


def get_hsm(settings: Settings) -> Hsm:
    """The process-wide Hsm for these settings (all share one session per token)."""
    from chalicelib.hsm.service import Hsm

    with _instances_lock:
        hsm = _instances.get(settings)
        if hsm is None:
            hsm = Hsm(settings)
            _instances[settings] = hsm
        return hsm


def __getattr__(name: str) -> Any:
    # the PKCS#11-backed names, loaded when first asked for
    if name == "Hsm":
        from chalicelib.hsm.service import Hsm

        return Hsm
    if name == "ecdsa_raw_to_der":
        from chalicelib.hsm.keyobjects import ecdsa_raw_to_der

        return ecdsa_raw_to_der
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
