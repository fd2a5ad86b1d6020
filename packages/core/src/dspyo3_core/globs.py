"""Glob patterns for Redis ``SCAN MATCH`` / ``KEYS``."""

from __future__ import annotations

__all__ = ["escape_glob"]

_SPECIAL = frozenset("\\*?[]")


def escape_glob(text: str) -> str:
    """``text`` with every glob metacharacter (``*``, ``?``, ``[``, ``]`` and ``\\``) backslash-escaped, so a
    Redis glob matches it literally: ``escape_glob(prefix) + "*"`` matches exactly the keys that start with
    ``prefix``, whatever characters a user-chosen namespace or key prefix contains.

    >>> escape_glob("app:*[v1]")
    'app:\\\\*\\\\[v1\\\\]'
    """
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in text)
