"""Tracing of retrieval inside DSPy (with a recording fake tracer installed through ``dspyo3_core.spans``): a
``retrieve {retriever}`` span per ``RetrieverRM`` call and per ``retriever_tool`` call, with retriever, store,
collection, k, ids and scores; the query text only when the tracer captures content."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspyo3_core import spans
from dspyo3_core.testing import RecordingTracer
from dspyo3_rag.dspy_rm import RetrieverRM, retriever_tool
from dspyo3_rag.embed import LexicalEmbedder
from dspyo3_rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever
from dspyo3_rag.stores.qdrant import QdrantStore

DOCS = {"d1": "cats purr and sleep", "d2": "dogs bark loudly", "d3": "birds sing at dawn"}

@pytest.fixture
def tracer() -> Iterator[RecordingTracer]:
    with RecordingTracer().installed() as recording:
        yield recording


@pytest.fixture
def bm25() -> BM25Retriever:
    retriever = BM25Retriever()
    retriever.add(list(DOCS), list(DOCS.values()))
    return retriever


def test_dspy_retrieve_makes_a_retrieve_span_with_ids_scores_and_k(tracer: RecordingTracer,
                                                                   bm25: BM25Retriever) -> None:
    with tracer.start("program") as program, dspy.context(rm=RetrieverRM(bm25)):
        assert dspy.Retrieve(k=2)("which animal purrs").passages[0] == "cats purr and sleep"
    span = tracer.one("retrieve BM25Retriever")
    assert span.parent_id == program.ref.span_id
    assert span.attrs["dspyo3.retrieval.retriever"] == "BM25Retriever"
    assert span.attrs["dspyo3.retrieval.store"] == "bm25"
    assert span.attrs["dspyo3.retrieval.k"] == 2
    assert span.attrs["dspyo3.retrieval.ids"][0] == "d1"
    assert len(span.attrs["dspyo3.retrieval.scores"]) == len(span.attrs["dspyo3.retrieval.ids"])
    assert span.attrs["dspyo3.retrieval.scores"][0] > 0
    assert "dspyo3.retrieval.query" not in span.attrs, "queries are content: off unless captured"
    assert "dspyo3.retrieval.collection" not in span.attrs


def test_the_query_is_recorded_only_when_the_tracer_captures_content(tracer: RecordingTracer,
                                                                      bm25: BM25Retriever) -> None:
    tracer.capture_content = True
    RetrieverRM(bm25)("dogs that bark", k=1)
    RetrieverRM(bm25)(["purr", "bark"], k=2)
    single, several = tracer.named("retrieve ")
    assert single.attrs["dspyo3.retrieval.query"] == "dogs that bark"
    assert several.attrs["dspyo3.retrieval.query"] == ["purr", "bark"]
    assert several.attrs["dspyo3.retrieval.queries"] == 2
    assert set(several.attrs["dspyo3.retrieval.ids"]) == {"d1", "d2"}


def test_the_retriever_tool_makes_a_retrieve_span(tracer: RecordingTracer, bm25: BM25Retriever) -> None:
    hits = retriever_tool(bm25, k=2)(query="birds at dawn")
    span = tracer.one("retrieve BM25Retriever")
    assert span.attrs["dspyo3.retrieval.k"] == 2
    assert span.attrs["dspyo3.retrieval.ids"] == [h["id"] for h in hits]


def test_a_dense_retriever_names_its_store_and_collection(tracer: RecordingTracer, bm25: BM25Retriever) -> None:
    dense = DenseRetriever(QdrantStore(), "animals", LexicalEmbedder(dim=64))
    dense.add(list(DOCS), list(DOCS.values()))
    RetrieverRM(dense)("dogs bark", k=1)
    span = tracer.one("retrieve DenseRetriever")
    assert span.attrs["dspyo3.retrieval.store"] == "QdrantStore"
    assert span.attrs["dspyo3.retrieval.collection"] == "animals"
    assert span.attrs["dspyo3.retrieval.ids"] == ["d2"]

    RetrieverRM(HybridRetriever([bm25, dense]))("dogs bark", k=1)
    hybrid = tracer.one("retrieve HybridRetriever")
    assert hybrid.attrs["dspyo3.retrieval.store"] == "hybrid(bm25,QdrantStore)"


def test_a_failed_search_fails_the_span(tracer: RecordingTracer) -> None:
    class Broken:
        def search_batch(self, queries: Any, k: int = 10) -> Any:
            raise ConnectionError("store unreachable")

    with pytest.raises(ConnectionError):
        RetrieverRM(Broken())("anything")
    span = tracer.one("retrieve Broken")
    assert span.attrs["error.type"] == "ConnectionError" and "dspyo3.retrieval.ids" not in span.attrs


def test_no_tracer_no_spans(bm25: BM25Retriever) -> None:
    assert spans.TRACER is None
    assert RetrieverRM(bm25)("dogs", k=1)[0].id == "d2"
