"""Apinizer API Ops dialect: secret, private and public keys per project, deployed to the
project's environments, and the OAuth token endpoint."""

from __future__ import annotations

from chalicelib.dialects.apinizer.routes import bp

__all__ = ["bp"]
