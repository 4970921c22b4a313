"""Auth0 Management API v2 dialect: connections, connection keys, tenant signing keys, JWKS."""

from __future__ import annotations

from chalicelib.dialects.auth0.routes import bp

__all__ = ["bp"]
