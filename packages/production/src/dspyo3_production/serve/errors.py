"""The one error type of ``dspyo3 serve``: :class:`ServeError` carries the HTTP status, a machine-readable ``type``,
a message safe to show the caller, optional field-level problems (422) and an optional ``Retry-After`` (429, 503).

The app turns it into the JSON error body of the HTTP contract::

    {"error": {"type": "validation_error", "message": "...", "fields": [{"field": "question",
               "problem": "missing", "expected": "string"}]}, "request_id": "..."}
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ServeError"]

_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited",
          500: "internal_error", 503: "overloaded", 504: "timeout"}


class ServeError(Exception):
    """An error answered to the caller with ``status`` and the JSON error body.

    Args:
        status: the HTTP status code (4xx or 5xx).
        message: what went wrong and, where it helps, how to fix it; shown to the caller, so never a secret or
            an internal detail.
        type: a stable machine-readable kind, e.g. ``"validation_error"``, ``"unauthorized"``, ``"rate_limited"``,
            ``"over_budget"``, ``"overloaded"``, ``"timeout"``, ``"not_found"``, ``"payload_too_large"``
            (None: derived from ``status``).
        fields: for 422, one ``{"field", "problem", "expected"}`` dict per wrong or missing input field.
        retry_after: seconds after which a retry may succeed (429, 503); sent as an integer ``Retry-After`` >= 1.
    """

    def __init__(self, status: int, message: str, type: str | None = None, *,
                 fields: list[dict[str, Any]] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.type = type or _TYPES.get(self.status, "error")
        self.fields = fields
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str | None:
        """The ``Retry-After`` header value: whole seconds, rounded up, at least 1 (None: no header)."""
        if self.retry_after is None:
            return None
        seconds = self.retry_after if math.isfinite(self.retry_after) else 60.0
        return str(max(1, math.ceil(seconds)))

    def to_json(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"type", "message", "fields"}, "request_id"}``."""
        return {"error": {"type": self.type, "message": self.message, "fields": self.fields},
                "request_id": request_id}

    def __repr__(self) -> str:
        return f"ServeError({self.status}, {self.message!r}, type={self.type!r})"
