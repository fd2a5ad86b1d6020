"""Retrievers inside DSPy: as ``dspy.Retrieve``'s ``rm`` and as a ``dspy.Tool`` for agents."""

from __future__ import annotations

from typing import Any

import dspy

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
        return [{"id": p.id, "text": p.long_text, "score": round(p.score, 4), "metadata": p.metadata}
                for p in retriever.search_batch([query], max(1, min(int(k), 50)))[0]]

    search.__name__ = name
    return dspy.Tool(search, name=name, desc=desc)
