"""The span facade every dspyo3 package codes against; ``dspyo3-production`` supplies the tracer behind it.

Instrumented code reads :data:`TRACER` once and does nothing more when it is ``None`` (tracing off)::

    from dspyo3_core import spans

    tracer = spans.TRACER
    if tracer is None:
        return search(query)
    with tracer.start("retrieve bm25", attrs={"dspyo3.retrieval.k": k}) as span:
        hits = search(query)
        span.set("dspyo3.retrieval.ids", [h.id for h in hits])
        return hits

This module imports nothing from OpenTelemetry: the tracer that production installs turns finished spans into
OpenTelemetry SDK spans and exports them. :data:`CURRENT` is the innermost dspyo3 span of the running context;
asyncio tasks, ``asyncio.to_thread`` and anyio worker threads copy it, so a span started in a task nests under the
span that created the task.

W3C trace context: :func:`parse_traceparent` reads a ``traceparent`` header strictly (anything malformed is ignored,
never an error, since headers come from the network), :func:`format_traceparent` writes one, and
:func:`remote_parent` makes a parent received from elsewhere (an HTTP request, the Rust driver) the current one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import NamedTuple, Protocol, Union
from urllib.parse import urlsplit

__all__ = [
    "CLIENT", "CURRENT", "INTERNAL", "SERVER", "AttrValue", "Span", "SpanRef", "TRACER", "Tracer", "current_ids",
    "format_traceparent", "install", "parse_traceparent", "remote_parent", "server_of",
]

INTERNAL, SERVER, CLIENT = 0, 1, 2
"""Span kinds (production maps them to ``opentelemetry.trace.SpanKind``)."""

AttrValue = Union[str, bool, int, float, Sequence[str], Sequence[bool], Sequence[int], Sequence[float]]
"""An attribute value OpenTelemetry accepts: a scalar or a homogeneous sequence of scalars."""


class SpanRef(NamedTuple):
    """Where a span sits in a trace: enough to parent another span on it or to send it in a ``traceparent``
    (immutable; a named tuple because every span makes one).

    Attributes:
        trace_id: the 128-bit trace id (never 0).
        span_id: the 64-bit span id (never 0).
        sampled: whether the trace is recorded; an unsampled reference still propagates (flags ``00``).
        remote: the span lives in another process (received in a ``traceparent``).
    """

    trace_id: int
    span_id: int
    sampled: bool
    remote: bool = False


class Span(Protocol):
    """A started span. Also a context manager: leaving it with an exception fails it, then it ends."""

    ref: SpanRef

    def set(self, key: str, value: AttrValue) -> None:
        """Set one attribute (a later value for the same key replaces the earlier one)."""

    def event(self, name: str, attrs: Mapping[str, AttrValue] | None = None) -> None:
        """Add a timestamped event."""

    def fail(self, error: BaseException | str) -> None:
        """Mark the span failed: status ERROR, ``error.type`` and an exception event (its text masked)."""

    def end(self, end_ns: int | None = None) -> None:
        """End the span (at ``end_ns``, a ``time.time_ns()`` value, or now); a second call does nothing. If the
        span made itself :data:`CURRENT`, the previous current span is restored."""

    def __enter__(self) -> Span: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Tracer(Protocol):
    """What production installs as :data:`TRACER`.

    Attributes:
        capture_content: whether prompts, completions, queries and tool arguments may be recorded (masked).
        propagate: whether outgoing LM requests carry a ``traceparent``.
    """

    capture_content: bool
    propagate: bool

    def start(self, name: str, kind: int = INTERNAL, attrs: dict[str, AttrValue] | None = None, *,
              current: bool = True, start_ns: int | None = None, span_id: int | None = None,
              parent: SpanRef | None = None) -> Span:
        """Start a span under ``parent`` (else :data:`CURRENT`; else a new trace). ``current=True`` makes it
        :data:`CURRENT` until it ends, so spans started meanwhile in this context nest under it."""

    def record(self, name: str, start_ns: int, end_ns: int, attrs: dict[str, AttrValue] | None = None, *,
               kind: int = INTERNAL, error: BaseException | str | None = None, span_id: int | None = None,
               parent: SpanRef | None = None) -> None:
        """Record a span that already happened (a wait, an HTTP attempt, a cache lookup), under ``parent`` or
        :data:`CURRENT`. ``span_id`` gives it a chosen id (the one an outgoing ``traceparent`` carried)."""

    def traceparent(self, span_id: int | None = None) -> str | None:
        """The W3C ``traceparent`` for :data:`CURRENT` (or for a child with ``span_id``); ``None`` outside any
        span."""


TRACER: Tracer | None = None
"""The installed tracer; ``None`` when tracing is off (the only check instrumented code makes)."""

CURRENT: ContextVar[SpanRef | None] = ContextVar("dspyo3_span", default=None)
"""The innermost dspyo3 span of this context, or a remote parent set by :func:`remote_parent`."""


def install(tracer: Tracer | None) -> None:
    """Make ``tracer`` the process's tracer (``None`` turns tracing off)."""
    global TRACER
    TRACER = tracer


def format_traceparent(ref: SpanRef, span_id: int | None = None) -> str:
    """``ref`` as a W3C ``traceparent`` value; ``span_id`` replaces its span id (a child about to be sent)."""
    return f"00-{ref.trace_id:032x}-{(span_id or ref.span_id):016x}-{'01' if ref.sampled else '00'}"


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(text: str | bytes | None) -> SpanRef | None:
    """The parent a W3C ``traceparent`` names, or ``None`` for anything that is not a valid one (absent, too long,
    upper-case hex, version ``ff``, an all-zero id, extra fields on version ``00``). The result is ``remote``."""
    if text is None:
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = text.strip(" \t")
    if len(text) > 512:
        return None
    found = _TRACEPARENT.fullmatch(text)
    if found is None:
        return None
    version, trace, span, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return SpanRef(trace_id, span_id, bool(int(flags, 16) & 1), remote=True)


@contextmanager
def remote_parent(traceparent: str | bytes | None) -> Iterator[SpanRef | None]:
    """Within the block, :data:`CURRENT` is the parent ``traceparent`` names (nothing changes when it is absent or
    invalid); yields that parent."""
    ref = parse_traceparent(traceparent)
    if ref is None:
        yield None
        return
    token = CURRENT.set(ref)
    try:
        yield ref
    finally:
        try:
            CURRENT.reset(token)
        except ValueError:  # ended in another context (a generator finalised elsewhere): leave that one alone
            pass


_LAST_IDS: tuple[SpanRef | None, tuple[str, str] | None] = (None, None)


def current_ids() -> tuple[str, str] | None:
    """``(trace id, span id)`` of :data:`CURRENT` as lower-case hex (for log lines and exemplars), or ``None``."""
    global _LAST_IDS
    ref = CURRENT.get()
    if ref is None:
        return None
    last = _LAST_IDS  # one span's line, exemplar and header ask in turn: format its ids once (one tuple, race-free)
    if last[0] is ref:
        return last[1]
    ids = f"{ref.trace_id:032x}", f"{ref.span_id:016x}"
    _LAST_IDS = (ref, ids)
    return ids


@functools.lru_cache(maxsize=64)
def server_of(url: str) -> tuple[str, int, str] | None:
    """``(server.address, server.port, url.path)`` of an endpoint URL for span attributes (never its credentials or
    query string; the port defaults by scheme), or ``None`` when it names no host."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host, port or (443 if parts.scheme == "https" else 80), parts.path or "/"
