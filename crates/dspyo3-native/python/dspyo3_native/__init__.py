"""Rust kernels for dspyo3, compiled with PyO3 (algorithms in ``crates/dspyo3-kernels``).

* :class:`Tokenizer` — Unicode word segmentation, lowercasing, ASCII folding, stopwords, Snowball stemming.
* :class:`BM25` — a BM25 index (lucene, robertson, atire, bm25l, bm25+) with add/update/delete by id, filtered
  and parallel batch search, and atomic versioned save/load (:class:`IndexFormatError` on a bad file).
* :func:`rrf`, :func:`weighted_fusion` — rank fusion over many lists in one call.
* :class:`LRUCache` — thread-safe LRU with TTL, byte accounting and hit/miss/eviction counters.
* :class:`RateLimiter` — lock-free GCRA limiter; :func:`acquire_async` waits for it without blocking the loop.
"""

from dspyo3_native._native import (
    BM25,
    ENGLISH_STOPWORDS,
    STEMMER_LANGUAGES,
    IndexFormatError,
    LRUCache,
    RateLimiter,
    Tokenizer,
    __version__,
    build_info,
    kernels,
    rrf,
    rrf_many,
    weighted_fusion,
)
from dspyo3_native.ratelimit import acquire_async

__all__ = [
    "BM25",
    "ENGLISH_STOPWORDS",
    "STEMMER_LANGUAGES",
    "IndexFormatError",
    "LRUCache",
    "RateLimiter",
    "Tokenizer",
    "__version__",
    "acquire_async",
    "build_info",
    "kernels",
    "rrf",
    "rrf_many",
    "weighted_fusion",
]
