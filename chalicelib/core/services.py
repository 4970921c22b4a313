"""The process-wide service container: settings, store, HSM, tokens, audit, and the domains
built over them on first use."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from chalicelib.config import Settings
from chalicelib.core.audit import AuditLog
from chalicelib.core.limits import GenerationRate
from chalicelib.core.tokens import TokenService
from chalicelib.errors import KeyfrontError, Unavailable
from chalicelib.hsm import get_hsm
from chalicelib.store import Store, open_store

if TYPE_CHECKING:
    from chalicelib.hsm import Hsm

D = TypeVar("D")


@dataclass
class Services:
    """What a request handler needs; built once per process (Lambda container)."""

    settings: Settings
    store: Store
    hsm: Hsm
    tokens: TokenService
    audit: AuditLog
    rate: GenerationRate
    _domains: dict[Callable[..., Any], Any] = field(default_factory=dict, repr=False)
    _domains_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Services:
        """Open the store and the HSM named by settings (or use `store`: a benchmark's
        counting wrapper around it)."""
        store = open_store(settings) if store is None else store
        return cls(settings, store, get_hsm(settings),
                   TokenService(store, cache_seconds=settings.cache_seconds),
                   AuditLog(store, shards=settings.audit_partitions,
                            batch_max=settings.audit_batch_max),
                   GenerationRate(store, settings))

    def domain(self, factory: Callable[[Services], D]) -> D:
        """The domain `factory(self)` builds, built once per container (domains hold caches).
        A dialect names its factory; the container knows no domain."""
        with self._domains_lock:
            built = self._domains.get(factory)
            if built is None:
                built = self._domains[factory] = factory(self)
            return built  # type: ignore[no-any-return]

    def health(self) -> dict[str, str]:
        """Component states: "ok" or a short reason (never a secret)."""
        out = {}
        for name, probe in (("hsm", self.hsm.ping), ("store", self.store.ping)):
            try:
                probe()
                out[name] = "ok"
            except KeyfrontError as exc:
                out[name] = exc.message
            except Exception:  # noqa: BLE001 - health must answer, whatever broke
                out[name] = "unreachable"
        return out


_lock = threading.Lock()
_services: Services | None = None
_pid: int | None = None


def get_services() -> Services:
    """The process's services, built lazily from the environment (rebuilt after a fork)."""
    global _services, _pid
    with _lock:
        if _services is None or _pid != os.getpid():
            try:
                _services = Services.build(Settings.from_env())
            except KeyfrontError:
                raise
            except Exception as exc:
                raise Unavailable("service components are not reachable") from exc
            _pid = os.getpid()
        return _services


def set_services(services: Services | None) -> None:
    """Replace the process's services (tests and tools that build their own)."""
    global _services, _pid
    with _lock:
        _services, _pid = services, os.getpid()
