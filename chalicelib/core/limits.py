"""Limits a shared key service needs beyond any vendor's: per-ring caps (keys per ring,
versions per key) and a rate limit on expensive generation (RSA key pairs, certificates) per
token. Sizes come from Settings; each dialect renders the refusal in its vendor's words
(LimitExceeded for a cap, TooManyRequests for the rate).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chalicelib.config import Settings
from chalicelib.core.records import retry
from chalicelib.core.tokens import Caller
from chalicelib.errors import LimitExceeded, TooManyRequests
from chalicelib.store import Store


def generation_cost(rsa_bits: int | None = None) -> int:
    """What generating one key pair spends of the rate: RSA's cost grows about with the
    square of its size (1024 -> 1, 2048 -> 4, 4096 -> 16, measured 2.6-4.1 s for 4096 in
    SoftHSM); an EC pair, or opening a client's encrypted key, costs 1."""
    return max(1, (rsa_bits or 0) // 1024) ** 2


def cap(count: int, limit: int, what: str, reason: str = "cap_reached") -> None:
    """LimitExceeded (reason cap_reached, or `reason` where a ring has several caps) if
    `count` more would pass `limit`."""
    if count >= limit:
        raise LimitExceeded(f"at most {limit} {what}", reason=reason, limit=limit)


class GenerationRate:
    """A fixed-window counter per root token in the store, so it holds across processes and
    Lambda containers: one conditional write per expensive generation (cheap next to an
    RSA key generation)."""

    def __init__(self, store: Store, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._rate = settings.generation_rate
        self._window = max(1, settings.generation_window_seconds)
        self._attempts = settings.retry_attempts
        self._clock = clock

    def spend(self, caller: Caller | None, cost: int = 1) -> None:
        """Count `cost` generations for the caller's token; TooManyRequests past the rate.
        Service-initiated work (no caller) is not limited. The count is the root token's:
        a token derived from it (and what it derives) spends the same budget, so deriving a
        fresh token does not reset the rate."""
        if caller is None or self._rate <= 0:
            return
        now = int(self._clock())
        window = now - now % self._window
        pk, sk = f"rate#{caller.principal.root}", f"generation#{window}"

        def attempt() -> None:
            item = self._store.get(pk, sk)
            used = int(item["used"]) if item else 0
            if used + cost > self._rate:
                raise TooManyRequests("too many key generations; try again later",
                                      reason="rate_limited",
                                      retry_after=window + self._window - now)
            new = {"pk": pk, "sk": sk, "used": used + cost,
                   "expires_at": window + 2 * self._window}
            if item is None:
                self._store.put_if_absent(new)
            else:
                self._store.update_if_version(new, int(item["version"]))

        retry(attempt, self._attempts, what="the rate counter")
