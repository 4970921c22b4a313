"""The one timestamp formatter of the core (audit records keep their own, faster one)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_millis(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a "Z": 2026-12-02T11:03:34.123Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
