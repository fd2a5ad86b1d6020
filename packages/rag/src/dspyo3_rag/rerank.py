"""Rerankers: reorder retrieved passages for a query. An LM reranker through DSPy, and a cross-encoder when
``sentence-transformers`` is installed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import dspy

from dspyo3_rag.retrieve import Passage

__all__ = ["CrossEncoderReranker", "LMReranker"]


class RankPassages(dspy.Signature):
    """Order the passages by how well they answer the query, best first, as a list of their numbers."""

    query: str = dspy.InputField()
    passages: list[str] = dspy.InputField(desc="numbered [0], [1], ...")
    ranking: list[int] = dspy.OutputField(desc="passage numbers, best first")


class LMReranker:
    """Ask an LM (the configured one, or ``lm``) to order the passages. Numbers the LM leaves out or invents are
    handled: invalid ones are dropped and missing passages keep their retrieval order after the ranked ones."""

    def __init__(self, lm: Any = None) -> None:
        self.lm = lm
        self.rank = dspy.Predict(RankPassages)

    def __call__(self, query: str, passages: Sequence[Passage], k: int | None = None) -> list[Passage]:
        if not passages:
            return []
        numbered = [f"[{i}] {p.long_text}" for i, p in enumerate(passages)]
        with dspy.context(**({"lm": self.lm} if self.lm is not None else {})):
            ranking = self.rank(query=query, passages=numbered).ranking or []
        order: list[int] = []
        for i in ranking:
            if isinstance(i, int) and 0 <= i < len(passages) and i not in order:
                order.append(i)
        order += [i for i in range(len(passages)) if i not in order]
        ranked = [replace(passages[i], score=float(len(order) - r)) for r, i in enumerate(order)]
        return ranked[:k] if k else ranked


class CrossEncoderReranker:
    """A sentence-transformers cross-encoder (``cross-encoder/ms-marco-MiniLM-L-6-v2`` by default; the model is
    loaded from the local Hugging Face cache or downloaded once)."""

    def __init__(self, model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2") -> None:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError:
            raise ImportError("the cross-encoder reranker needs sentence-transformers: "
                              "pip install sentence-transformers") from None
        self.model = CrossEncoder(model)

    def __call__(self, query: str, passages: Sequence[Passage], k: int | None = None) -> list[Passage]:
        if not passages:
            return []
        scores = self.model.predict([(query, p.long_text) for p in passages])
        ranked = sorted((replace(p, score=float(s)) for p, s in zip(passages, scores, strict=True)),
                        key=lambda p: -p.score)
        return ranked[:k] if k else ranked
