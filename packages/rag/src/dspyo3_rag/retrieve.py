"""Retrievers: keyword (native BM25), dense (any store + embedder) and hybrid (fusion of both)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dspyo3_native as native
from dspyo3_rag.stores.base import VectorStore

__all__ = ["BM25Retriever", "DenseRetriever", "HybridRetriever", "Passage", "Retriever"]

Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Passage:
    """A retrieved passage. ``long_text`` is what ``dspy.Retrieve`` and DSPy's RAG examples read."""

    id: str
    long_text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


class Retriever(Protocol):
    """Anything with ``search_batch(queries, k) -> list[list[Passage]]``."""

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]: ...


class BM25Retriever:
    """Keyword retrieval with the native BM25 index (Lucene BM25, English stopwords and stemming by default)."""

    def __init__(self, **bm25_options: Any) -> None:
        options = {"variant": "lucene", "k1": 1.2, "b": 0.75, "stemmer": "english", **bm25_options}
        self.index = native.BM25(**options)
        self.texts: dict[str, str] = {}
        self.metadata: dict[str, dict[str, Any]] = {}

    def add(self, ids: Sequence[str], texts: Sequence[str],
            metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Index (or re-index) documents."""
        ids = [str(i) for i in ids]
        self.index.add(ids, list(texts))
        self.texts.update(zip(ids, texts, strict=True))
        if metadata is not None:
            self.metadata.update((i, dict(m)) for i, m in zip(ids, metadata, strict=True))

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]:
        """Top ``k`` passages for each query (queries run in parallel without the GIL)."""
        return [[Passage(doc, self.texts.get(doc, ""), score, self.metadata.get(doc, {})) for doc, score in hits]
                for hits in self.index.search_batch(list(queries), k=k)]

    def search(self, query: str, k: int = 10) -> list[Passage]:
        """Top ``k`` passages for one query."""
        return self.search_batch([query], k)[0]


class DenseRetriever:
    """Vector retrieval: ``embedder`` turns texts into vectors kept in ``store``'s ``collection``.

    The passage text is stored in the point's metadata under ``text``.
    """

    def __init__(self, store: VectorStore, collection: str, embedder: Embedder, *,
                 namespace: str | None = None) -> None:
        self.store = store
        self.collection = collection
        self.embedder = embedder
        self.namespace = namespace

    def add(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None,
            *, batch_size: int = 256, progress: bool = False) -> None:
        """Embed and upsert documents (the collection is created on first use with the embedder's size).

        Texts are embedded ``batch_size`` at a time; ``progress=True`` draws bars for embedding and storing on
        stderr when it is a terminal."""
        from dspyo3_rag.progress import bar, wanted

        texts = list(texts)
        vectors: list[list[float]] = []
        size = max(batch_size, 1)
        with bar("embedding", len(texts), wanted(progress)) as shown:
            for start in range(0, len(texts), size):
                batch = texts[start:start + size]
                vectors.extend(list(v) for v in self.embedder(batch))
                shown.advance(len(batch))
        if self.collection not in self.store.collections() and vectors:
            self.store.create_collection(self.collection, len(vectors[0]))
        meta = [{**(dict(m) if metadata else {}), "text": t}
                for t, m in zip(texts, metadata or [{}] * len(texts), strict=True)]
        self.store.upsert(self.collection, ids, vectors, meta, namespace=self.namespace, batch_size=batch_size,
                          progress=progress)

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]:
        """Top ``k`` passages for each query."""
        out = []
        for vector in self.embedder(list(queries)):
            hits = self.store.search(self.collection, list(vector), k, namespace=self.namespace)
            out.append([Passage(h.id, str(h.metadata.get("text", "")), h.score,
                                {key: v for key, v in h.metadata.items() if key != "text"}) for h in hits])
        return out

    def search(self, query: str, k: int = 10) -> list[Passage]:
        """Top ``k`` passages for one query."""
        return self.search_batch([query], k)[0]


class HybridRetriever:
    """Fuse several retrievers' rankings: ``weighted`` (min-max normalised scores, weighted sum; the default) or
    ``rrf`` (reciprocal-rank fusion), both native. Each retriever contributes its top ``depth``."""

    def __init__(self, retrievers: Sequence[Retriever], weights: Sequence[float] | None = None, *,
                 method: str = "weighted", depth: int = 100, rrf_k: int = 60) -> None:
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        if method not in {"weighted", "rrf"}:
            raise ValueError(f"method must be 'weighted' or 'rrf', got {method!r}")
        self.retrievers = list(retrievers)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.retrievers)
        if len(self.weights) != len(self.retrievers):
            raise ValueError(f"{len(self.retrievers)} retrievers but {len(self.weights)} weights")
        self.method, self.depth, self.rrf_k = method, depth, rrf_k

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]:
        """Top ``k`` fused passages for each query."""
        per_retriever = [r.search_batch(queries, max(k, self.depth)) for r in self.retrievers]
        out = []
        for qi in range(len(queries)):
            lists = [results[qi] for results in per_retriever]
            by_id: dict[str, Passage] = {}
            for passages in lists:
                for p in passages:
                    by_id.setdefault(p.id, p)
            if self.method == "rrf":
                fused = native.rrf([[p.id for p in ps] for ps in lists], k=self.rrf_k, weights=self.weights)
            else:
                fused = native.weighted_fusion([[(p.id, p.score) for p in ps] for ps in lists], weights=self.weights)
            out.append([Passage(doc, by_id[doc].long_text, float(score), by_id[doc].metadata)
                        for doc, score in fused[:k]])
        return out

    def search(self, query: str, k: int = 10) -> list[Passage]:
        """Top ``k`` fused passages for one query."""
        return self.search_batch([query], k)[0]
