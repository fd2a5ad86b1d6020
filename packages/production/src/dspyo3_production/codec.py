"""Safe serialization of cached LM responses: JSON for plain data, restricted pickle for known response models.

What DSPy caches is either plain data (the records of DSPy's native engine and of
:class:`~dspyo3_core.native_lm.NativeLM`) or a provider SDK response object (LiteLLM's ``ModelResponse`` on
DSPy's compatibility path). Plain data is stored as JSON. Objects are pickled, and read back with an unpickler
that only resolves classes from ``litellm.types.*`` / ``openai.types.*`` (DSPy's own trust rule for its
restricted disk cache) and the ``safe_types`` you list; anything else is refused, so a value planted in a shared
Redis cannot run code in the reader.

Each payload starts with a format tag and the cache key it was written under; a payload read back under a
different key, or one that does not decode, is treated as a miss (never served).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import Any

import orjson

JSON_TAG = b"d3j1"
"""Format tag of a JSON payload (plain data)."""
_PICKLE = b"d3p1"
_TRUSTED_PREFIXES = ("litellm.types.", "openai.types.")
# plain containers and values a pickled response may hold; no callables (no getattr, eval, os.*, ...)
_BUILTINS = frozenset({
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "bool"), ("builtins", "complex"), ("builtins", "object"),
    ("copyreg", "_reconstructor"), ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"),
})


class UnsafeValueError(ValueError):
    """A cached payload names a class outside the allow-list (or is not a payload this cache wrote)."""


_STRICT = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def plain_json(value: Any) -> bytes | None:
    """``value`` as JSON if it is plain data that reads back equal (``dict`` with str keys, ``list``, ``str``,
    ``int``, ``float``, ``bool``, ``None``; no subclasses, tuples, dataclasses, dates, NaN), else None."""
    try:
        body = orjson.dumps(value, option=_STRICT)
    except TypeError:
        return None
    try:
        return body if orjson.loads(body) == value else None
    except Exception:  # a value whose __eq__ misbehaves is not plain
        return None


def is_plain(value: Any) -> bool:
    """True if :func:`plain_json` accepts ``value``."""
    return plain_json(value) is not None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, allowed: frozenset[tuple[str, str]]) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name:  # a dotted name walks attributes (``x.builtins.eval``): never followed
            if (module, name) in _BUILTINS or (module, name) in self._allowed:
                return super().find_class(module, name)
            if module.startswith(_TRUSTED_PREFIXES):
                found = super().find_class(module, name)
                # only the response models defined there, not whatever those modules happen to import
                if isinstance(found, type) and str(found.__module__).startswith(_TRUSTED_PREFIXES):
                    return found
        raise UnsafeValueError(
            f"refusing to unpickle {module}.{name}: not an allowed cache type "
            "(pass it in safe_types=[...] to TieredCache if you trust it)"
        )


class Codec:
    """Encodes cache values to bytes and back, refusing anything it did not write or does not trust.

    Args:
        safe_types: extra classes (besides ``litellm.types.*`` / ``openai.types.*``) a cached object may contain.
    """

    def __init__(self, safe_types: Iterable[type[Any]] = ()) -> None:
        allowed = set()
        for cls in safe_types:
            if not isinstance(cls, type):
                raise TypeError(f"safe_types entries must be classes, got {cls!r}")
            allowed.add((cls.__module__, cls.__qualname__))
        self.allowed = frozenset(allowed)

    def encode(self, key: str, value: Any) -> bytes:
        """``value`` as bytes bound to ``key``: JSON when it is plain data, else pickle."""
        header = key.encode() + b"\n"
        body = plain_json(value)
        if body is not None:
            return JSON_TAG + header + body
        return _PICKLE + header + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, key: str, payload: bytes) -> Any:
        """The value ``payload`` holds, if it was written under ``key``.

        Raises:
            UnsafeValueError: the payload is foreign, was written under another key, or names an untrusted class.
        """
        tag, rest = payload[:4], payload[4:]
        stored_key, sep, body = rest.partition(b"\n")
        if not sep or stored_key != key.encode():
            raise UnsafeValueError("cache payload was written under a different key (or is not a dspyo3 payload)")
        if tag == JSON_TAG:
            return orjson.loads(body)
        if tag == _PICKLE:
            return _Unpickler(io.BytesIO(body), self.allowed).load()
        raise UnsafeValueError(f"unknown cache payload format {tag!r}")
