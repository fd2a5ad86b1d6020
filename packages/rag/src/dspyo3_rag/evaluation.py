"""Retrieval evaluation over a BEIR-layout folder: what ``dspyo3 rag eval`` runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dspyo3_rag.beir import evaluate, load_beir
from dspyo3_rag.embed import LexicalEmbedder
from dspyo3_rag.progress import bar, wanted
from dspyo3_rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, Retriever
from dspyo3_rag.stores.qdrant import QdrantStore

__all__ = ["RETRIEVERS", "evaluate_retriever"]

RETRIEVERS = ("bm25", "dense", "hybrid")


def build_retriever(kind: str, ids: list[str], texts: list[str], *, progress: bool = False) -> Retriever:
    """Index ``texts`` for ``kind``: ``bm25``; ``dense`` (the offline lexical embedder in an in-memory embedded
    Qdrant); ``hybrid`` (both, weighted fusion 0.75 BM25 / 0.25 dense)."""
    if kind not in RETRIEVERS:
        raise ValueError(f"unknown retriever {kind!r}; choose one of {', '.join(RETRIEVERS)}")
    bm25 = dense = None
    if kind in {"bm25", "hybrid"}:
        bm25 = BM25Retriever()
        bm25.add(ids, texts)
    if kind in {"dense", "hybrid"}:
        dense = DenseRetriever(QdrantStore(), "eval", LexicalEmbedder())
        dense.add(ids, texts, batch_size=512, progress=progress)
    if kind == "bm25":
        assert bm25 is not None
        return bm25
    if kind == "dense":
        assert dense is not None
        return dense
    assert bm25 is not None
    assert dense is not None
    return HybridRetriever([bm25, dense], weights=[0.75, 0.25])


def evaluate_retriever(data_dir: str | Path, kind: str, *, split: str = "test", k: int = 100,
                       progress: bool = False) -> dict[str, Any]:
    """Index the corpus, retrieve the top ``k`` for every judged query, and score the run.

    Returns ``{"retriever", "dataset", "ndcg@10", "recall@10", "recall@100", "mrr@10", "queries", "qps"}``;
    ``qps`` counts only the retrieval of all queries (indexing excluded). ``progress=True`` draws bars for
    indexing and retrieval on stderr when it is a terminal.
    """
    data = load_beir(data_dir, split)
    retriever = build_retriever(kind, data.doc_ids, data.doc_texts, progress=progress)
    queries = data.query_texts
    show = wanted(progress)
    # with a bar, queries go in slices so it can move; without one, in one batch
    step = max(16, len(queries) // 50) if show else max(len(queries), 1)
    results: list[list[Any]] = []
    started = time.perf_counter()
    with bar("retrieving", len(queries), show) as shown:
        for start in range(0, len(queries), step):
            results.extend(retriever.search_batch(queries[start:start + step], k=k))
            shown.advance(len(queries[start:start + step]))
    elapsed = time.perf_counter() - started
    run = {qid: [p.id for p in passages] for qid, passages in zip(data.query_ids, results, strict=True)}
    metrics = evaluate(run, {q: data.qrels[q] for q in data.query_ids})
    return {"retriever": kind, "dataset": data.name, **metrics, "queries": len(data.query_ids),
            "qps": round(len(data.query_ids) / elapsed, 1) if elapsed > 0 else None}
