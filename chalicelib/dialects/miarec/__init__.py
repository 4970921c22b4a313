"""MiaRec REST API v2 dialect: encryption keys per tenant and their authorized users."""

from __future__ import annotations

from chalicelib.dialects.miarec.routes import bp

__all__ = ["bp"]
