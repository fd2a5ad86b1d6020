from collections.abc import Awaitable, Callable, Iterable, Sequence
from os import PathLike
from typing import Any, Self, final, overload

__all__ = [
    "__version__",
    "IndexFormatError",
    "kernels",
    "build_info",
    "rrf",
    "weighted_fusion",
    "rrf_many",
    "ENGLISH_STOPWORDS",
    "STEMMER_LANGUAGES",
    "Tokenizer",
    "BM25",
    "LRUCache",
    "RateLimiter",
    "LMTransportError",
    "LMTransport",
    "LMStream",
    "CompletionQueue",
    "LMRequest",
    "EventSink",
    "HTMLUnescaper",
    "SpanSink",
    "ChatFormatter",
    "chat_sections",
]

__version__: str
ENGLISH_STOPWORDS: list[str]
STEMMER_LANGUAGES: list[str]

class IndexFormatError(ValueError):
    """An index file is not a dspyo3 index, was written by an incompatible version, or is corrupt."""

def kernels() -> list[str]:
    """Names of the kernels compiled into this build."""

def build_info() -> str:
    """One-line description of the native build: crate version and compiled kernels."""

@final
class Tokenizer:
    """Text -> tokens: Unicode word segmentation, lowercasing, ASCII folding, stopwords, Snowball stemming."""

    def __new__(
        cls,
        *,
        lowercase: bool = True,
        ascii_fold: bool = True,
        stopwords: str | Sequence[str] | None = ...,  # "english"
        stemmer: str | None = ...,  # "english"
        min_token_len: int = 1,
        max_token_len: int = 64,
    ) -> Self: ...
    def tokenize(self, text: str) -> list[str]:
        """Tokens of one text."""
    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of many texts, computed in parallel without the GIL."""

@final
class BM25:
    """A BM25 index with add / update / delete by id, filtered and batch search, and atomic save / load."""

    def __new__(
        cls,
        *,
        variant: str = "lucene",
        k1: float = 1.2,
        b: float = 0.75,
        delta: float = 0.5,
        lowercase: bool = True,
        ascii_fold: bool = True,
        stopwords: str | Sequence[str] | None = ...,  # "english"
        stemmer: str | None = ...,  # "english"
        min_token_len: int = 1,
        max_token_len: int = 64,
    ) -> Self: ...
    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Add (or replace, by id) documents; tokenized in parallel without the GIL."""
    def add_tokens(self, ids: Sequence[str], tokens: Sequence[Sequence[str]]) -> None:
        """Add (or replace, by id) pre-tokenized documents."""
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (unknown ids are ignored); returns how many were deleted."""
    def search(self, query: str, k: int = 10, allow: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Top ``k`` ``(id, score)`` for one query, best first; ``allow`` restricts results to those ids."""
    def search_tokens(
        self, tokens: Sequence[str], k: int = 10, allow: Sequence[str] | None = None
    ) -> list[tuple[str, float]]:
        """Top ``k`` for pre-tokenized query tokens."""
    def search_batch(
        self, queries: Sequence[str], k: int = 10, allow: Sequence[str] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top ``k`` for each query, scored in parallel without the GIL; results follow input order."""
    def tokenize(self, text: str) -> list[str]:
        """Tokens a text becomes under this index's tokenizer."""
    def save(self, path: str | PathLike[str]) -> None:
        """Write the index atomically (a crash mid-save leaves the previous file intact).

        A read-only index (``load(..., mmap=True)``) writes a copy of its file.
        """
    @staticmethod
    def load(path: str | PathLike[str], *, mmap: bool = False) -> BM25:
        """Read an index written by ``save``; a foreign, newer or corrupt file raises ``IndexFormatError``.

        With ``mmap=True`` the file is searched in place from a read-only memory map: opening reads only its
        header and offset tables (milliseconds, whatever the size) and every read method works, but ``add``,
        ``add_tokens``, ``delete`` and ``compact`` raise ``ValueError``. Only files saved by this version
        (format 2) open this way; load an older file with ``mmap=False`` and save it again.
        """
    def compact(self) -> None:
        """Drop deleted documents from memory now (also done automatically)."""
    def ids(self) -> list[str]:
        """Ids of live documents, in insertion order."""
    @property
    def vocabulary_size(self) -> int:
        """Distinct terms in live documents."""
    @property
    def params(self) -> dict[str, Any]:
        """Scoring parameters: ``{"variant", "k1", "b", "delta"}``."""
    def __len__(self) -> int: ...
    def __contains__(self, id: str, /) -> bool: ...

def rrf(
    lists: Sequence[Sequence[str]],
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    top_k: int | None = None,
) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of ranked id lists: ``sum_i w_i / (k + rank)``; best first, ties by id."""

def rrf_many(
    problems: Sequence[Sequence[Sequence[str]]],
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    top_k: int | None = None,
) -> list[list[tuple[str, float]]]:
    """Reciprocal-rank fusion for many queries in one call: ``problems[i]`` is the ranked lists of query ``i``."""

def weighted_fusion(
    lists: Sequence[Sequence[tuple[str, float]]],
    weights: Sequence[float] | None = None,
    normalization: str = "minmax",
    top_k: int | None = None,
) -> list[tuple[str, float]]:
    """Weighted fusion of scored lists after per-list normalisation (``minmax``, ``zscore`` or ``none``)."""

@final
class LRUCache:
    """A thread-safe LRU cache of str keys with optional per-entry TTL and byte accounting."""

    def __new__(cls, max_entries: int, max_bytes: int | None = None, ttl: float | None = None) -> Self: ...
    def get(self, key: str, default: Any = None) -> Any:
        """The value for ``key`` (marking it recently used), or ``default``."""
    def put(self, key: str, value: Any, size: int = 0, ttl: float | None = None) -> bool:
        """Store ``value`` accounting ``size`` bytes; False when larger than ``max_bytes`` (not stored).

        ``ttl`` seconds overrides the default; ``math.inf`` (or a TTL too large for the clock) never expires.
        """
    def get_many(self, keys: Sequence[str], default: Any = None) -> list[Any]:
        """Values for many keys in one call; ``default`` where missing."""
    def put_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """Store many ``(key, value)`` pairs in one call."""
    def pop(self, key: str, default: Any = None) -> Any:
        """Remove ``key`` and return its value, or ``default``."""
    def clear(self) -> None:
        """Remove every entry."""
    def keys(self) -> list[str]:
        """Keys from most to least recently used."""
    def stats(self) -> dict[str, int]:
        """hits, misses, evictions, expirations, rejected, entries, bytes."""
    def __reduce__(self) -> tuple[Any, tuple[int, int | None, float | None], list[tuple[str, Any, int, float | None]]]:
        """Pickle support: limits and live entries (oldest first) with sizes and remaining TTLs."""
    def __setstate__(self, entries: list[tuple[str, Any, int, float | None]]) -> None: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def __setitem__(self, key: str, value: Any, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __contains__(self, key: str, /) -> bool: ...
    def __len__(self) -> int: ...

@final
class RateLimiter:
    """GCRA rate limiter: ``rate`` units of cost per ``per`` seconds, bursts up to ``burst``; thread-safe."""

    def __new__(cls, rate: float, per: float = 1.0, burst: float = 1.0) -> Self: ...
    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` now if allowed."""
    def try_acquire_or_wait(self, cost: float = 1.0) -> float:
        """Take ``cost`` now and return 0.0 if allowed, else seconds until it would be (taking nothing)."""
    def reserve(self, cost: float = 1.0) -> float:
        """Reserve ``cost`` now and return the seconds to wait before using it (0.0 if available now)."""
    def time_to_ready(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` could be taken (0.0 if now); takes nothing."""
    def acquire(self, cost: float = 1.0, timeout: float | None = None) -> bool:
        """Block (without the GIL) until ``cost`` is taken; False if ``timeout`` seconds pass first.

        ``None``, ``math.inf`` or a timeout over 100 years waits as long as it takes.
        """
    @property
    def rate(self) -> float: ...
    @property
    def per(self) -> float: ...
    @property
    def burst(self) -> float: ...
    @property
    def acquired(self) -> int: ...

class LMTransportError(Exception):
    """A request through :class:`LMTransport` failed; ``args`` is ``(message, kind, status, retry_after)``.

    ``kind``: rate_limit, auth, context_length, invalid_request, server, timeout, connect, protocol, config,
    too_large (an answer over ``max_event_bytes`` / ``max_response_bytes``; never retried). A request made with
    ``traceparent=`` adds a 5th element: its HTTP attempts (see :meth:`LMTransport.complete`).
    """

_Choice = tuple[str | None, str | None, list[dict[str, Any]] | None, str | None]
_Answer = tuple[str | None, str | None, list[_Choice], tuple[int, int, int]]
# (span_id_hex, start_unix_ns, end_unix_ns, status, error_kind) of one HTTP attempt
_Attempt = tuple[str, int, int, int | None, str | None]
_TracedAnswer = tuple[str | None, str | None, list[_Choice], tuple[int, int, int], list[_Attempt]]
_Event = tuple[Any, ...]

@final
class LMStream:
    """An open response stream of event tuples (``("start", id, model)`` ... ``("end", finish, usage)``)."""

    def __iter__(self) -> LMStream: ...
    def __next__(self) -> _Event: ...
    def __aiter__(self) -> LMStream: ...
    def __anext__(self) -> Awaitable[_Event]: ...
    @property
    def attempts(self) -> list[_Attempt] | None:
        """The HTTP attempts made to open the stream when it was opened with ``traceparent=``, else ``None``."""
    def close(self) -> None:
        """Stop reading and drop the connection."""

@final
class LMTransport:
    """Pooled HTTP client for one LM endpoint (``wire="openai"`` chat completions or ``"anthropic"`` messages)."""

    def __new__(
        cls,
        api_base: str,
        *,
        api_key: str | None = None,
        wire: str = "openai",
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        http2: bool = False,
        headers: list[tuple[str, str]] | None = None,
        ca_cert: str | PathLike[str] | None = None,
        max_event_bytes: int = ...,  # 16 MiB
        max_response_bytes: int = ...,  # 128 MiB
        max_error_bytes: int = ...,  # 64 KiB
    ) -> Self:
        """``max_event_bytes``: largest stream event; ``max_response_bytes``: largest answer body (a whole stream,
        or a non-streamed answer). Going over either raises :class:`LMTransportError` of kind ``too_large``.
        ``max_error_bytes``: how much of an error answer's body is read for its message (the rest is dropped)."""
    @property
    def url(self) -> str: ...
    @property
    def proxy(self) -> str | None:
        """The proxy in use (from ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` when the transport
        was made), or ``None`` for direct connections."""
    @property
    def wire(self) -> str: ...
    def request_body(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any] | None = None, stream: bool = False
    ) -> bytes:
        """The JSON body :meth:`complete` would send."""
    @overload
    def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        *,
        traceparent: None = None,
    ) -> _Answer: ...
    @overload
    def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any] | None = None, *, traceparent: str
    ) -> _TracedAnswer:
        """Send a request and wait (GIL released); raises :class:`LMTransportError`.

        ``traceparent`` (W3C ``00-<trace>-<span>-<flags>``; malformed raises ``ValueError``): each HTTP attempt sends
        that trace with a fresh span id of its own, and the answer (or the error's ``args``) gains a 5th element,
        the attempts ``[(span_id_hex, start_unix_ns, end_unix_ns, status, error_kind), ...]``."""
    @overload
    def acomplete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        *,
        traceparent: None = None,
    ) -> Awaitable[_Answer]: ...
    @overload
    def acomplete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any] | None = None, *, traceparent: str
    ) -> Awaitable[_TracedAnswer]:
        """:meth:`complete` as an awaitable; cancelling it drops the request."""
    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        *,
        traceparent: str | None = None,
    ) -> LMStream:
        """Open a streaming request; with ``traceparent``, its opening attempts are :attr:`LMStream.attempts`."""
    def astream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        *,
        traceparent: str | None = None,
    ) -> Awaitable[LMStream]:
        """:meth:`stream` as an awaitable."""
    def submit(
        self,
        queue: CompletionQueue,
        token: int,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        *,
        traceparent: str | None = None,
    ) -> LMRequest:
        """Start a request whose result lands in ``queue`` under ``token`` (with the attempts when traced)."""

@final
class LMRequest:
    """A request started with :meth:`LMTransport.submit`."""

    def cancel(self) -> None:
        """Abort it (drops the connection); its result never arrives."""

@final
class CompletionQueue:
    """Finished :meth:`LMTransport.submit` requests for one asyncio loop."""

    def __new__(cls) -> Self: ...
    def fileno(self) -> int:
        """Readable when results are waiting."""
    def drain(self) -> list[tuple[int, bool, Any]]:
        """``[(token, ok, answer or LMTransportError), ...]`` since the last call."""

@final
class EventSink:
    """JSON-lines event writer on a background thread (duplicates ``fd``; masks each value of ``secrets``)."""

    def __new__(cls, fd: int, secrets: Sequence[str] = ...) -> Self: ...
    def emit(self, level: str, logger: str, name: str, fields: dict[str, Any]) -> None:
        """Queue one event (time taken now); fields are str/int/float/bool/None (others written as ``str()``)."""
    def emit_json(self, level: str, logger: str, name: str, fields: bytes) -> None:
        """Queue one event whose fields are a serialized JSON object (``orjson.dumps(dict)``)."""
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event emitted so far is written and flushed; False if the writer did not answer.

        ``math.inf`` waits as long as it takes; NaN raises ``ValueError``.
        """
    @property
    def written(self) -> int: ...

@final
class HTMLUnescaper:
    """Decodes character references exactly as ``html.unescape`` does, in one linear native pass; built once from a
    table of named references (``HTMLUnescaper(html.entities.html5)`` for ``html.unescape``'s behaviour)."""

    def __new__(cls, named: dict[str, str]) -> Self: ...
    def unescape(self, text: str) -> str:
        """``text`` with numeric and named references decoded (the same object when nothing changes)."""
    def __len__(self) -> int: ...

@final
class ChatFormatter:
    """The per-call text of one signature under DSPy's ``ChatAdapter`` (or ``JSONAdapter`` with ``json_outputs``),
    byte-identical to DSPy's: built from ``(name, annotation is str, FieldInfo)`` triples of the input and output
    fields; ``fallback(field_info, value)`` (DSPy's ``format_field_value``) writes values that are not plain JSON
    data, ``json_fallback(outputs)`` the JSON assistant text of such values."""

    def __new__(
        cls,
        inputs: Sequence[tuple[str, bool, Any]],
        outputs: Sequence[tuple[str, bool, Any]],
        fallback: Callable[[Any, Any], str],
        *,
        requirements: str | None = None,
        json_outputs: bool = False,
        json_fallback: Callable[[dict[str, Any]], str] | None = None,
        marker: str | None = None,
    ) -> Self: ...
    def user(self, values: Any, prefix: str = "", suffix: str = "", main_request: bool = False) -> str:
        """The user message of ``values`` (a dict or ``dspy.Example``): input fields present, in order."""
    def assistant(self, values: Any, missing: Any = None) -> str:
        """The assistant message of ``values``: every output field, ``missing`` for absent ones."""
    def demos(self, demos: Iterable[Any]) -> list[dict[str, Any]]:
        """The demo messages: incomplete demos first, then complete ones (as ``Adapter.format_demos``)."""
    def messages(self, system: str, demos: Iterable[Any], inputs: Any) -> tuple[list[dict[str, Any]], bool]:
        """System, demos and main request; the flag says some content holds ``marker``."""

def chat_sections(completion: str, names: Sequence[str]) -> list[tuple[str, str]] | None:
    """The first ``[[ ## name ## ]]`` section of each of ``names`` in a completion, in order of appearance, as
    ``ChatAdapter.parse`` splits it; None when DSPy's own rules are needed."""

# a span attribute value: a scalar, or a list of scalars
_AttrScalar = str | bool | int | float
_AttrValue = _AttrScalar | list[_AttrScalar] | tuple[_AttrScalar, ...]

@final
class SpanSink:
    """Exports finished spans to an OTLP/HTTP collector (``http/protobuf``) from a native background thread.

    ``endpoint`` is the full URL (``http://host:4318/v1/traces``). ``headers`` are sent on every request; their
    values are never shown. ``resource`` and ``scope_name`` / ``scope_version`` describe every span. Spans wait in a
    queue of ``max_queue`` (a push to a full queue is dropped and counted); the thread sends up to ``max_batch``
    spans per request, at least every ``delay_ms``, with ``timeout_s`` per request and one retry on 429, 5xx or a
    connection error (honouring ``Retry-After`` up to ``timeout_s``); a batch that still fails is dropped and
    counted in ``failed_batches``. After ``os.fork()`` the child's sink starts afresh (new thread, empty queue).
    """

    def __new__(
        cls,
        endpoint: str,
        *,
        headers: list[tuple[str, str]] = ...,
        resource: dict[str, _AttrValue] | None = None,
        scope_name: str = "dspyo3",
        scope_version: str = "",
        max_queue: int = 2048,
        max_batch: int = 512,
        delay_ms: int = 5000,
        timeout_s: float = 10.0,
    ) -> Self: ...
    def push(
        self,
        name: str,
        kind: int,
        trace_id: int,
        span_id: int,
        parent_id: int,
        parent_remote: bool,
        start_ns: int,
        end_ns: int,
        attrs: dict[str, _AttrValue],
        events: list[tuple[str, int, dict[str, _AttrValue]]] | None,
        status: str | None,
    ) -> None:
        """Queue one finished span; returns at once.

        ``kind``: 0 internal, 1 server, 2 client. ``trace_id`` < 2**128 and ``span_id`` < 2**64 are non-zero;
        ``parent_id`` 0 means a root span. Times are Unix nanoseconds. ``status``: None = unset, a str = ERROR with
        that message. Wrong types raise ``TypeError``, out-of-range values ``ValueError`` (naming the argument).
        After :meth:`shutdown` a push does nothing.
        """
    def set_secrets(self, pairs: list[tuple[str, str]]) -> None:
        """``(secret, replacement)`` pairs replaced (leftmost-longest) in every string of spans exported from now
        on: names, attribute values and list items, event names and attributes, status messages."""
    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export everything queued so far (the GIL is released meanwhile); False if some of it failed or the
        timeout passed first."""
    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Flush (at most ``timeout_s``), then stop the export thread; later pushes are dropped silently."""
    def stats(self) -> dict[str, int]:
        """``queued`` (spans accepted by push, in total), ``exported`` (accepted by the collector), ``dropped``
        (refused by a full queue), ``failed_batches`` (requests that failed after their retry; their spans are
        lost)."""
