"""Retrievers inside DSPy: as ``dspy.Retrieve``'s ``rm`` and as a ``dspy.Tool`` for agents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

from dspyo3_core import spans
from dspyo3_rag.retrieve import Passage, Retriever

__all__ = ["RetrieverRM", "retriever_tool"]


class RetrieverRM:
    """``dspy.configure(rm=RetrieverRM(retriever))`` makes ``dspy.Retrieve(k)`` search ``retriever``.

    Calling it returns :class:`~dspyo3_rag.retrieve.Passage` objects (``long_text``, ``id``, ``score``,
    ``metadata``), which is what ``dspy.Retrieve`` reads.
    """

    def __init__(self, retriever: Retriever, k: int = 3) -> None:
        self.retriever = retriever
        self.k = k

    def __call__(self, query: str | list[str], k: int | None = None, **_: Any) -> list[Passage]:
        k = k or self.k
        queries = [query] if isinstance(query, str) else list(query)
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError("the retriever needs a non-empty query string")
        tracer = spans.TRACER
        if tracer is None:
            return self._search(queries, k)
        with tracer.start(_span_name(self.retriever), attrs=_span_attrs(tracer, self.retriever, queries, k)) as span:
            passages = self._search(queries, k)
            _span_hits(span, passages)
            return passages

    def _search(self, queries: list[str], k: int) -> list[Passage]:
        if len(queries) == 1:
            return self.retriever.search_batch(queries, k)[0]
        # several queries: fuse by best score per passage, like dspy.Retrieve's multi-query form expects
        best: dict[str, Passage] = {}
        for passages in self.retriever.search_batch(queries, k):
            for p in passages:
                if p.id not in best or p.score > best[p.id].score:
                    best[p.id] = p
        return sorted(best.values(), key=lambda p: -p.score)[:k]


_TOOL_DESC = "Search the document collection; returns the best passages with ids and scores."


def retriever_tool(retriever: Retriever, *, name: str = "search", k: int = 5, desc: str = _TOOL_DESC) -> dspy.Tool:
    """A ``dspy.Tool`` (for ``dspy.ReAct`` and friends) that searches ``retriever``."""

    def search(query: str, k: int = k) -> list[dict[str, Any]]:
        k = max(1, min(int(k), 50))
        tracer = spans.TRACER
        if tracer is None:
            passages = retriever.search_batch([query], k)[0]
        else:
            with tracer.start(_span_name(retriever), attrs=_span_attrs(tracer, retriever, [query], k)) as span:
                passages = retriever.search_batch([query], k)[0]
                _span_hits(span, passages)
        return [{"id": p.id, "text": p.long_text, "score": round(p.score, 4), "metadata": p.metadata}
                for p in passages]

    search.__name__ = name
    return dspy.Tool(search, name=name, desc=desc)


# -- tracing (only when a tracer is installed: dspyo3_core.spans.TRACER) --------------------------------------------
def _span_name(retriever: Retriever) -> str:
    return f"retrieve {type(retriever).__name__}"


def _store_name(retriever: Any) -> str | None:
    """What a retriever searches: the vector store's class, ``bm25``, or ``hybrid(<children>)``."""
    children = getattr(retriever, "retrievers", None)
    if isinstance(children, list):
        return "hybrid(" + ",".join(_store_name(r) or type(r).__name__ for r in children) + ")"
    if getattr(retriever, "index", None) is not None and type(retriever).__name__ == "BM25Retriever":
        return "bm25"
    store = getattr(retriever, "store", None)
    return type(store).__name__ if store is not None else None


def _span_attrs(tracer: spans.Tracer, retriever: Retriever, queries: Sequence[str],
                k: int) -> dict[str, spans.AttrValue]:
    """A ``retrieve`` span's attributes known before the search (query text only when the tracer captures
    content; the tracer masks it on export)."""
    attrs: dict[str, spans.AttrValue] = {"dspyo3.retrieval.retriever": type(retriever).__name__,
                                         "dspyo3.retrieval.k": int(k), "openinference.span.kind": "RETRIEVER"}
    store = _store_name(retriever)
    if store is not None:
        attrs["dspyo3.retrieval.store"] = store
    collection = getattr(retriever, "collection", None)
    if isinstance(collection, str):
        attrs["dspyo3.retrieval.collection"] = collection
    if len(queries) > 1:
        attrs["dspyo3.retrieval.queries"] = len(queries)
    if tracer.capture_content:
        attrs["dspyo3.retrieval.query"] = queries[0] if len(queries) == 1 else list(queries)
    return attrs


def _span_hits(span: spans.Span, passages: Sequence[Passage]) -> None:
    span.set("dspyo3.retrieval.ids", [str(p.id) for p in passages])
    span.set("dspyo3.retrieval.scores", [float(p.score) for p in passages])
