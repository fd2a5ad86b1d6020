"""Rust kernels for dspyo3, compiled with PyO3 (algorithms in ``crates/dspyo3-kernels``).

* :class:`Tokenizer` — Unicode word segmentation, lowercasing, ASCII folding, stopwords, Snowball stemming.
* :class:`BM25` — a BM25 index (lucene, robertson, atire, bm25l, bm25+) with add/update/delete by id, filtered
  and parallel batch search, and atomic versioned save/load (:class:`IndexFormatError` on a bad file).
* :func:`rrf`, :func:`weighted_fusion` — rank fusion over many lists in one call.
* :class:`LRUCache` — thread-safe LRU with TTL, byte accounting and hit/miss/eviction counters.
* :class:`RateLimiter` — lock-free GCRA limiter; :func:`acquire_async` waits for it without blocking the loop.
* :class:`LMTransport` — pooled HTTP client for LM APIs (OpenAI chat completions, Anthropic messages) on tokio:
  HTTP/1.1 and HTTP/2, TLS, timeouts, retries honouring ``Retry-After``, SSE streaming (:class:`LMStream`), sync
  and asyncio; failures raise :class:`LMTransportError`. ``dspyo3_core.native_lm.NativeLM`` puts DSPy on it.
* :class:`EventSink` — JSON-lines event writer on its own thread (secret values masked), for structured logs.
* :class:`SpanSink` — OTLP/HTTP (protobuf) span exporter on its own thread: batches, retries, secret masking.
* :class:`ChatFormatter`, :func:`chat_sections` — the per-call text of DSPy's Chat and JSON adapters (messages,
  demos, completion sections), byte-identical to DSPy's; ``dspyo3_types.adapters`` puts DSPy on them.
* :class:`HTMLUnescaper` — ``html.unescape`` (numeric and named character references) in one linear native pass.
"""

from dspyo3_native._native import (
    BM25,
    ENGLISH_STOPWORDS,
    STEMMER_LANGUAGES,
    ChatFormatter,
    CompletionQueue,
    EventSink,
    HTMLUnescaper,
    IndexFormatError,
    LMRequest,
    LMStream,
    LMTransport,
    LMTransportError,
    LRUCache,
    RateLimiter,
    SpanSink,
    Tokenizer,
    __version__,
    build_info,
    chat_sections,
    kernels,
    rrf,
    rrf_many,
    weighted_fusion,
)
from dspyo3_native.ratelimit import acquire_async

__all__ = [
    "BM25",
    "ChatFormatter",
    "CompletionQueue",
    "ENGLISH_STOPWORDS",
    "EventSink",
    "HTMLUnescaper",
    "STEMMER_LANGUAGES",
    "IndexFormatError",
    "LMRequest",
    "LMStream",
    "LMTransport",
    "LMTransportError",
    "LRUCache",
    "RateLimiter",
    "SpanSink",
    "Tokenizer",
    "__version__",
    "acquire_async",
    "build_info",
    "chat_sections",
    "kernels",
    "rrf",
    "rrf_many",
    "weighted_fusion",
]
