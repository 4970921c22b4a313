"""StoredSafe transparent encryption dialect: `bp` holds its routes."""

from __future__ import annotations

from chalicelib.dialects.storedsafe.routes import bp

__all__ = ["bp"]
