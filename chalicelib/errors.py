"""The one exception hierarchy every layer raises and every dialect maps to its envelope.

It lives outside core/hsm/store so that the lower layers need not import the core.
Messages are safe to show a client: never key material, plaintext or internals.
"""

from __future__ import annotations


class KeyfrontError(Exception):
    """Base of every expected error; `status` is the default HTTP status.

    `reason` is a neutral, machine-readable word for what went wrong ("key_not_found",
    "export_not_allowed", ...): dialects turn it into their vendor's wording and error code;
    `params` are the safe values that wording may name (ring, key name, version).
    """

    status = 400
    code = "error"

    def __init__(self, message: str = "", *, reason: str | None = None,
                 **params: object) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.reason = reason or self.code
        self.params = params


class InvalidInput(KeyfrontError):
    """The request is malformed or a field is invalid."""

    status = 400
    code = "invalid_input"

    def __init__(self, message: str = "", *, field: str | None = None,
                 fields: dict[str, str] | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.field = field
        # field name -> message, for vendors that report validation errors per field
        self.fields = dict(fields or ({field: message} if field else {}))


class Unauthenticated(KeyfrontError):
    """Missing, unknown, revoked or expired token."""

    status = 401
    code = "unauthenticated"


class Forbidden(KeyfrontError):
    """The token is valid but lacks the permission."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str = "", *, needed: tuple[str, ...] = (),
                 reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.needed = needed


class NotFound(KeyfrontError):
    """The object does not exist (or is not visible to this token)."""

    status = 404
    code = "not_found"


class Conflict(KeyfrontError):
    """The object already exists or a concurrent change won."""

    status = 409
    code = "conflict"


class InvalidState(KeyfrontError):
    """The object exists but its state forbids the operation."""

    status = 400
    code = "invalid_state"


class LimitExceeded(KeyfrontError):
    """A quota or size limit was reached."""

    status = 400
    code = "limit_exceeded"


class TooManyRequests(KeyfrontError):
    """A rate limit was reached; the caller may try again later."""

    status = 429
    code = "rate_limited"


class IntegrityError(KeyfrontError):
    """Stored or supplied protected data failed its integrity check."""

    status = 400
    code = "integrity"


class BindingError(IntegrityError):
    """A wrapped key blob failed its binding check (context, fields, tag or KEK version).

    Raised by the HSM layer for the blob itself, as opposed to a GCM tag failure of the data
    given to it, so that callers can tell their own stored record from a client's input.
    """


class MisplacedRecord(KeyfrontError):
    """One of our own stored records is not what its place says: moved, copied, edited or
    corrupted. Never the client's fault: `detail` goes to the log only, the client gets a
    generic 500 (and the record is left out of lists)."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str, where: tuple[str, str] | None = None) -> None:
        super().__init__("internal error", reason="misplaced_record")
        self.detail = detail
        self.where = where  # the (pk, sk) of the record, for the log and the audit object


class Unavailable(KeyfrontError):
    """A backing component (HSM or store) cannot be reached."""

    status = 503
    code = "unavailable"


class StoreConditionFailed(Conflict):
    """A conditional store write found a different state than expected."""

    code = "condition_failed"


class StoreTransactionCancelled(Conflict):
    """An all-or-nothing write was cancelled; `reasons[i]` says why op i failed (or None)."""

    code = "transaction_cancelled"

    def __init__(self, reasons: list[str | None]) -> None:
        super().__init__("transaction cancelled", reason="transaction_cancelled")
        self.reasons = reasons

    @property
    def failed_index(self) -> int | None:
        """Index of the first operation whose condition failed."""
        for i, r in enumerate(self.reasons):
            if r:
                return i
        return None
