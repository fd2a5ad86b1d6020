"""A recording tracer for tests of instrumented code: it implements :class:`dspyo3_core.spans.Tracer` and keeps
every ended span in a list, so a test can assert names, attributes, parents and errors without OpenTelemetry.

    from dspyo3_core.testing import RecordingTracer

    with RecordingTracer().installed() as tracer:
        my_instrumented_function()
    (span,) = tracer.named("retrieve ")
    assert span.attrs["dspyo3.retrieval.k"] == 5
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dspyo3_core import spans

__all__ = ["RecordedSpan", "RecordingTracer"]


class RecordedSpan:
    """One span a :class:`RecordingTracer` started: its name, kind, attributes, events, parent, error and times."""

    def __init__(self, tracer: RecordingTracer, name: str, kind: int, attrs: dict[str, Any] | None,
                 parent: spans.SpanRef | None, current: bool, start_ns: int | None = None,
                 span_id: int | None = None) -> None:
        self.tracer, self.name, self.kind = tracer, name, kind
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.parent = parent
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        sampled = parent.sampled if parent is not None else True
        self.ref = spans.SpanRef(trace_id, span_id or random.getrandbits(64) or 1, sampled)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | str | None = None
        self.start_ns = start_ns or time.time_ns()
        self.end_ns: int | None = None
        self.thread = threading.get_ident()
        self._token = spans.CURRENT.set(self.ref) if current else None

    def set(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def event(self, name: str, attrs: Any = None) -> None:
        self.events.append((name, dict(attrs or {})))

    def fail(self, error: BaseException | str) -> None:
        self.error = error
        self.attrs["error.type"] = type(error).__name__ if isinstance(error, BaseException) else str(error)

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = end_ns or time.time_ns()
        if self._token is not None:
            try:
                spans.CURRENT.reset(self._token)
            except ValueError:
                pass
        self.tracer.spans.append(self)

    def __enter__(self) -> RecordedSpan:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
        self.end()

    @property
    def trace_hex(self) -> str:
        """The trace id as 32 lower-case hex digits."""
        return f"{self.ref.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        """The span id as 16 lower-case hex digits."""
        return f"{self.ref.span_id:016x}"

    @property
    def parent_id(self) -> int | None:
        """The parent's span id, or None for a root."""
        return None if self.parent is None else self.parent.span_id


class RecordingTracer:
    """Keeps every ended span in :attr:`spans` (in the order they ended).

    Args:
        capture_content: what instrumented code reads as ``tracer.capture_content``.
        trust_incoming: what ``dspyo3 serve`` reads as ``tracer.trust_incoming``.
    """

    def __init__(self, capture_content: bool = False, trust_incoming: bool = True) -> None:
        self.capture_content = capture_content
        self.propagate = True
        self.trust_incoming = trust_incoming
        self.spans: list[RecordedSpan] = []

    def start(self, name: str, kind: int = spans.INTERNAL, attrs: dict[str, Any] | None = None, *,
              current: bool = True, start_ns: int | None = None, span_id: int | None = None,
              parent: spans.SpanRef | None = None) -> RecordedSpan:
        return RecordedSpan(self, name, kind, attrs, parent or spans.CURRENT.get(), current, start_ns, span_id)

    def record(self, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any] | None = None, *,
               kind: int = spans.INTERNAL, error: BaseException | str | None = None, span_id: int | None = None,
               parent: spans.SpanRef | None = None) -> None:
        span = RecordedSpan(self, name, kind, attrs, parent or spans.CURRENT.get(), False, start_ns, span_id)
        if error is not None:
            span.fail(error)
        span.end(end_ns)

    def traceparent(self, span_id: int | None = None) -> str | None:
        ref = spans.CURRENT.get()
        return None if ref is None else spans.format_traceparent(ref, span_id)

    def named(self, prefix: str) -> list[RecordedSpan]:
        """The ended spans whose name starts with ``prefix``."""
        return [s for s in self.spans if s.name.startswith(prefix)]

    def one(self, prefix: str) -> RecordedSpan:
        """The one ended span whose name starts with ``prefix`` (AssertionError naming every span otherwise)."""
        found = self.named(prefix)
        assert len(found) == 1, [s.name for s in self.spans]
        return found[0]

    @contextmanager
    def installed(self) -> Iterator[RecordingTracer]:
        """Install this tracer as :data:`dspyo3_core.spans.TRACER` for the block (then none again)."""
        spans.install(self)
        try:
            yield self
        finally:
            spans.install(None)

