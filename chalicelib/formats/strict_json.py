"""Strict JSON: what a request body must be so that the store and strict clients accept it.

`json.loads` lets through NaN/Infinity (and literals such as 1e400 that overflow to it) and
lone surrogates from "\\ud800" escapes: the store cannot encode those, and echoing them back
gives JSON that strict clients refuse. Pure, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

MAX_JSON_DEPTH = 32  # nesting of any request body


def _unicode_ok(text: str) -> bool:
    """Is the text encodable as UTF-8 (no lone surrogates, which json.loads lets through)?"""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, part: str | int) -> str:
    part = str(part)
    if len(part) > 64:
        part = part[:61] + "..."
    return f"{path}.{part}" if path else part


def json_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first (path, problem) that makes `value` unfit for strict JSON or the store.

    Problems: a non-finite number (NaN, Infinity, or a literal like 1e400 that overflows), a
    string or property name that is not valid Unicode (a lone surrogate, which json.loads
    accepts from a "\\ud800" escape), nesting deeper than MAX_JSON_DEPTH. None if fine.
    The path names properties and list indices ("options.a.0"); a bad property name is
    reported at its parent, so the message never echoes it.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        if isinstance(v, str):
            if not _unicode_ok(v):
                return p, "String is not valid Unicode"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return p, "Number must be finite"
        elif isinstance(v, dict | list | tuple):
            if depth >= MAX_JSON_DEPTH:
                return p, f"Nesting is deeper than {MAX_JSON_DEPTH} levels"
            items = list(v.items()) if isinstance(v, dict) else list(enumerate(v))
            for k, _ in items:
                if isinstance(k, str) and not _unicode_ok(k):
                    return p, "Property name is not valid Unicode"
            stack += [(item, _join(p, k), depth + 1) for k, item in reversed(items)]
    return None
