"""Process-wide PKCS#11 state: the loaded module, one lock, one logged-in R/W session per token.

python-pkcs11 calls C_Initialize(NULL), which tells the module that the application does no
multi-threaded access; SoftHSM then disables its own mutexes. So every PKCS#11 call in the
process goes through the one `HSM_LOCK`. A token allows one login per application, so there is
exactly one logged-in session per (module, token) in a process, shared by every `Hsm` instance
and by the bootstrap. The session is opened lazily, reopened in a forked child (pid check) and
reopened once after a session error, with the operation retried.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from chalicelib import errors
from chalicelib.config import Settings

T = TypeVar("T")

HSM_LOCK = threading.RLock()
"""Held around every PKCS#11 call of the process (SoftHSM runs without its own locking)."""

UNWRAPPED_CACHE_SIZE = 1024

# Errors after which the session (or a handle cached with it) is no longer usable: reopen once.
SESSION_ERRORS: tuple[type[Exception], ...] = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceError,
    p11e.DeviceRemoved,
    p11e.DeviceMemory,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
    p11e.KeyHandleInvalid,
    p11e.ObjectHandleInvalid,
    p11e.WrappingKeyHandleInvalid,
    p11e.UnwrappingKeyHandleInvalid,
)


def _hold_lock_over_fork() -> None:
    # No thread may be inside a PKCS#11 call while the process forks: the child would inherit
    # a module in the middle of an operation and a lock nobody will release.
    HSM_LOCK.acquire()


def _release_lock_after_fork() -> None:
    HSM_LOCK.release()


os.register_at_fork(before=_hold_lock_over_fork, after_in_parent=_release_lock_after_fork,
                    after_in_child=_release_lock_after_fork)

# module path -> (lib, pid that initialised it)
_libs: dict[str, tuple[Any, int]] = {}


def load_lib(path: str) -> Any:
    """The PKCS#11 module at `path`, loaded once per process and re-initialised after a fork.

    Call with HSM_LOCK held.
    """
    pid = os.getpid()
    entry = _libs.get(path)
    if entry is not None and entry[1] == pid:
        return entry[0]
    try:
        lib = pkcs11.lib(path)  # python-pkcs11 itself keeps one object per path
        if entry is not None:
            # A forked child inherits the parent's initialised module; PKCS#11 requires the
            # child to initialise it again before any use.
            lib.reinitialize()
    except (p11e.PKCS11Error, OSError) as exc:
        raise errors.Unavailable("the HSM module cannot be loaded") from exc
    _libs[path] = (lib, pid)
    return lib


class UnwrappedCache:
    """A bounded LRU of session objects (unwrapped keys); evicted objects are destroyed."""

    def __init__(self, maxsize: int = UNWRAPPED_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[bytes, Any] = OrderedDict()

    def get(self, key: bytes) -> Any | None:
        """The cached object for `key` (marked most recently used), or None."""
        obj = self._items.get(key)
        if obj is not None:
            self._items.move_to_end(key)
        return obj

    def put(self, key: bytes, obj: Any) -> None:
        """Cache `obj`; destroys the least recently used objects beyond maxsize."""
        old = self._items.pop(key, None)
        if old is not None and old is not obj:
            _destroy_quietly(old)
        self._items[key] = obj
        while len(self._items) > self.maxsize:
            _, evicted = self._items.popitem(last=False)
            # session objects live until the session closes: free them in the HSM now
            _destroy_quietly(evicted)

    def discard(self, key: bytes) -> None:
        """Forget (and destroy) the object cached under `key`, if any."""
        obj = self._items.pop(key, None)
        if obj is not None:
            _destroy_quietly(obj)

    def clear(self) -> None:
        """Forget everything without touching the HSM (the session is gone or going)."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _destroy_quietly(obj: Any) -> None:
    try:
        obj.destroy()
    except p11e.PKCS11Error:
        pass


class SessionState:
    """One open, logged-in session and what is only valid with it (handles)."""

    def __init__(self, session: Any, pid: int) -> None:
        self.session = session
        self.pid = pid
        self.cache = UnwrappedCache()
        # records whose binding tag checked out (message + tag digests): a public read of a
        # key (a JWKS) then costs no HSM call the second time
        self.verified: OrderedDict[bytes, None] = OrderedDict()
        self._keys: dict[tuple[str, KeyType], Any] = {}

    def remember_verified(self, key: bytes) -> None:
        """Remember a binding that checked out (bounded, least recently used forgotten)."""
        self.verified[key] = None
        self.verified.move_to_end(key)
        while len(self.verified) > UNWRAPPED_CACHE_SIZE:
            self.verified.popitem(last=False)

    def secret_key(self, label: str, key_type: KeyType) -> Any:
        """The token secret key with `label` and `key_type` (handle cached for the session).

        Raises pkcs11 NoSuchKey / MultipleObjectsReturned.
        """
        k = (label, key_type)
        obj = self._keys.get(k)
        if obj is None:
            obj = self.session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=key_type,
                                       label=label)
            self._keys[k] = obj
        return obj

    def fresh_secret_keys(self, label: str, key_type: KeyType) -> list[Any]:
        """Every token secret key with `label` and `key_type`, looked up now (not from the
        handle cache: another process may have created or destroyed it)."""
        return list(self.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                              Attribute.TOKEN: True,
                                              Attribute.KEY_TYPE: key_type,
                                              Attribute.LABEL: label}))

    def forget(self, label: str, key_type: KeyType) -> None:
        """Drop the cached handle of a token key (it was destroyed)."""
        self._keys.pop((label, key_type), None)

    def find_secret_key(self, label: str, key_type: KeyType) -> Any | None:
        """Like secret_key, but None when absent."""
        try:
            return self.secret_key(label, key_type)
        except p11e.NoSuchKey:
            return None


class TokenSession:
    """The process-wide session on one token; `run(op)` is how every PKCS#11 call is made."""

    def __init__(self, module: str, token_label: str, pin: str | None,
                 pin_secret_arn: str | None, region: str) -> None:
        self.module = module
        self.token_label = token_label
        self._pin = pin
        self._pin_secret_arn = pin_secret_arn
        self._region = region
        self._state: SessionState | None = None

    def run(self, op: Callable[[SessionState], T]) -> T:
        """Run `op` with the session under HSM_LOCK; reopen once and retry on a session error.

        PKCS#11 errors that escape `op` become errors.Unavailable; KeyfrontErrors pass through.
        """
        with HSM_LOCK:
            for attempt in (1, 2):
                state = self._current()
                try:
                    return op(state)
                except SESSION_ERRORS as exc:
                    self._drop(state)
                    if attempt == 2:
                        raise errors.Unavailable("the HSM session failed") from exc
                except p11e.PKCS11Error as exc:
                    raise errors.Unavailable(
                        f"HSM operation failed ({type(exc).__name__})") from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def reset(self) -> None:
        """Close the session (if any); the next run() opens a fresh one."""
        with HSM_LOCK:
            if self._state is not None:
                self._drop(self._state)

    def _current(self) -> SessionState:
        lib = load_lib(self.module)  # first: re-initialises the module in a forked child
        state = self._state
        if state is not None and state.pid == os.getpid():
            return state
        if state is not None:
            # inherited from the parent: its handles mean nothing after re-initialisation
            state.cache.clear()
            self._state = None
        self._state = self._open(lib)
        return self._state

    def _open(self, lib: Any) -> SessionState:
        pin = self._resolve_pin()
        try:
            # by label, never by slot number: SoftHSM renumbers slots
            token = lib.get_token(token_label=self.token_label)
        except (p11e.NoSuchToken, p11e.MultipleTokensReturned) as exc:
            raise errors.Unavailable("the HSM token is not available") from exc
        except p11e.PKCS11Error as exc:
            raise errors.Unavailable("the HSM token cannot be listed") from exc
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                # the application is already logged in (login is per application, not per
                # session): a plain session shares that login
                session = token.open(rw=True)
        except p11e.PKCS11Error as exc:
            raise errors.Unavailable("cannot log in to the HSM token") from exc
        return SessionState(session, os.getpid())

    def _drop(self, state: SessionState) -> None:
        state.cache.clear()
        if state.pid == os.getpid():
            try:
                state.session.close()
            except p11e.PKCS11Error:
                pass  # already closed or the device is gone; nothing left to release
        if self._state is state:
            self._state = None

    def _resolve_pin(self) -> str:
        if self._pin is not None:
            return self._pin
        if self._pin_secret_arn:
            # lazy: only deployments that keep the PIN in a secret need the store package
            from chalicelib.store.secrets import read_secret

            try:
                return read_secret(self._pin_secret_arn, self._region)
            except errors.KeyfrontError:
                raise
            except Exception as exc:
                raise errors.Unavailable("the HSM PIN cannot be read") from exc
        raise errors.Unavailable("no HSM PIN is configured")


_sessions: dict[tuple[str, str], TokenSession] = {}


def token_session(settings: Settings) -> TokenSession:
    """The process-wide TokenSession for settings' module and token (created on first use)."""
    key = (settings.pkcs11_module, settings.token_label)
    with HSM_LOCK:  # also covered by the fork hooks
        ts = _sessions.get(key)
        if ts is None:
            ts = TokenSession(settings.pkcs11_module, settings.token_label, settings.pin,
                              settings.pin_secret_arn, settings.aws_region)
            _sessions[key] = ts
        return ts


def attr_true(obj: Any, attr: Attribute) -> bool:
    """Read a boolean attribute of an object; False when the token does not know it."""
    try:
        return bool(obj[attr])
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return False
