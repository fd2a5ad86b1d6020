"""Glob patterns for Redis ``SCAN MATCH`` / ``KEYS``, and the key-prefix scans and deletes built on them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["delete_prefix", "escape_glob", "scan_prefix"]

_SPECIAL = frozenset("\\*?[]")


def escape_glob(text: str) -> str:
    """``text`` with every glob metacharacter (``*``, ``?``, ``[``, ``]`` and ``\\``) backslash-escaped, so a
    Redis glob matches it literally: ``escape_glob(prefix) + "*"`` matches exactly the keys that start with
    ``prefix``, whatever characters a user-chosen namespace or key prefix contains.

    >>> escape_glob("app:*[v1]")
    'app:\\\\*\\\\[v1\\\\]'
    """
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in text)


def scan_prefix(client: Any, prefix: str, *, count: int = 1000) -> Iterator[Any]:
    """The keys of the Redis ``client`` that start with ``prefix`` (taken literally), by ``SCAN`` in pages of
    about ``count`` keys: never a blocking ``KEYS``."""
    return iter(client.scan_iter(match=escape_glob(prefix) + "*", count=count))


def delete_prefix(client: Any, prefix: str, *, batch: int = 1000) -> int:
    """``UNLINK`` every key of the Redis ``client`` that starts with ``prefix`` (taken literally), ``batch`` keys
    per command; the number deleted."""
    deleted = 0
    keys: list[Any] = []
    for key in scan_prefix(client, prefix, count=batch):
        keys.append(key)
        if len(keys) >= batch:
            deleted += int(client.unlink(*keys))
            keys = []
    if keys:
        deleted += int(client.unlink(*keys))
    return deleted
