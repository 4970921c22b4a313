"""Huawei AI-VAULT dialect: master keys and pre-shared keys per domain."""

from __future__ import annotations

from chalicelib.dialects.aivault.routes import bp

__all__ = ["bp"]
