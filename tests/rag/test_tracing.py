"""Tracing of retrieval inside DSPy (with a recording fake tracer installed through ``dspyo3_core.spans``): a
``retrieve {retriever}`` span per ``RetrieverRM`` call and per ``retriever_tool`` call, with retriever, store,
collection, k, ids and scores; the query text only when the tracer captures content."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

from dspyo3_core import spans
from dspyo3_rag.dspy_rm import RetrieverRM, retriever_tool
from dspyo3_rag.embed import LexicalEmbedder
from dspyo3_rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever
from dspyo3_rag.stores.qdrant import QdrantStore

DOCS = {"d1": "cats purr and sleep", "d2": "dogs bark loudly", "d3": "birds sing at dawn"}

# -- a recording tracer (the spans.Tracer protocol, spans kept in a list) --------------------------------------------
class FakeSpan:
    def __init__(self, tracer: FakeTracer, name: str, kind: int, attrs: dict[str, Any] | None,
                 parent: spans.SpanRef | None, current: bool, start_ns: int | None = None,
                 span_id: int | None = None) -> None:
        self.tracer, self.name, self.kind = tracer, name, kind
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.parent = parent
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        sampled = parent.sampled if parent is not None else True
        self.ref = spans.SpanRef(trace_id, span_id or random.getrandbits(64) or 1, sampled)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | str | None = None
        self.start_ns = start_ns or time.time_ns()
        self.end_ns: int | None = None
        self.thread = threading.get_ident()
        self._token = spans.CURRENT.set(self.ref) if current else None

    def set(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def event(self, name: str, attrs: Any = None) -> None:
        self.events.append((name, dict(attrs or {})))

    def fail(self, error: BaseException | str) -> None:
        self.error = error
        self.attrs["error.type"] = type(error).__name__ if isinstance(error, BaseException) else str(error)

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = end_ns or time.time_ns()
        if self._token is not None:
            try:
                spans.CURRENT.reset(self._token)
            except ValueError:
                pass
        self.tracer.spans.append(self)

    def __enter__(self) -> FakeSpan:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
        self.end()

    @property
    def trace_hex(self) -> str:
        return f"{self.ref.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        return f"{self.ref.span_id:016x}"

    @property
    def parent_id(self) -> int | None:
        return None if self.parent is None else self.parent.span_id


class FakeTracer:
    def __init__(self, capture_content: bool = False, trust_incoming: bool = True) -> None:
        self.capture_content = capture_content
        self.propagate = True
        self.trust_incoming = trust_incoming
        self.spans: list[FakeSpan] = []

    def start(self, name: str, kind: int = spans.INTERNAL, attrs: dict[str, Any] | None = None, *,
              current: bool = True, start_ns: int | None = None, span_id: int | None = None,
              parent: spans.SpanRef | None = None) -> FakeSpan:
        return FakeSpan(self, name, kind, attrs, parent or spans.CURRENT.get(), current, start_ns, span_id)

    def record(self, name: str, start_ns: int, end_ns: int, attrs: dict[str, Any] | None = None, *,
               kind: int = spans.INTERNAL, error: BaseException | str | None = None, span_id: int | None = None,
               parent: spans.SpanRef | None = None) -> None:
        span = FakeSpan(self, name, kind, attrs, parent or spans.CURRENT.get(), False, start_ns, span_id)
        if error is not None:
            span.fail(error)
        span.end(end_ns)

    def traceparent(self, span_id: int | None = None) -> str | None:
        ref = spans.CURRENT.get()
        return None if ref is None else spans.format_traceparent(ref, span_id)

    def named(self, prefix: str) -> list[FakeSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def one(self, prefix: str) -> FakeSpan:
        found = self.named(prefix)
        assert len(found) == 1, [s.name for s in self.spans]
        return found[0]


@pytest.fixture
def tracer() -> Iterator[FakeTracer]:
    fake = FakeTracer()
    spans.install(fake)
    try:
        yield fake
    finally:
        spans.install(None)


@pytest.fixture
def bm25() -> BM25Retriever:
    retriever = BM25Retriever()
    retriever.add(list(DOCS), list(DOCS.values()))
    return retriever


def test_dspy_retrieve_makes_a_retrieve_span_with_ids_scores_and_k(tracer: FakeTracer, bm25: BM25Retriever) -> None:
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


def test_the_query_is_recorded_only_when_the_tracer_captures_content(tracer: FakeTracer,
                                                                      bm25: BM25Retriever) -> None:
    tracer.capture_content = True
    RetrieverRM(bm25)("dogs that bark", k=1)
    RetrieverRM(bm25)(["purr", "bark"], k=2)
    single, several = tracer.named("retrieve ")
    assert single.attrs["dspyo3.retrieval.query"] == "dogs that bark"
    assert several.attrs["dspyo3.retrieval.query"] == ["purr", "bark"]
    assert several.attrs["dspyo3.retrieval.queries"] == 2
    assert set(several.attrs["dspyo3.retrieval.ids"]) == {"d1", "d2"}


def test_the_retriever_tool_makes_a_retrieve_span(tracer: FakeTracer, bm25: BM25Retriever) -> None:
    hits = retriever_tool(bm25, k=2)(query="birds at dawn")
    span = tracer.one("retrieve BM25Retriever")
    assert span.attrs["dspyo3.retrieval.k"] == 2
    assert span.attrs["dspyo3.retrieval.ids"] == [h["id"] for h in hits]


def test_a_dense_retriever_names_its_store_and_collection(tracer: FakeTracer, bm25: BM25Retriever) -> None:
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


def test_a_failed_search_fails_the_span(tracer: FakeTracer) -> None:
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
