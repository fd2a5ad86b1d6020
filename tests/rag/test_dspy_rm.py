"""Retrievers as dspy.Retrieve's rm and as a dspy.Tool."""

from __future__ import annotations

import dspy
import pytest

from dspyo3_rag.dspy_rm import RetrieverRM, retriever_tool
from dspyo3_rag.retrieve import BM25Retriever

DOCS = {"d1": "cats purr and sleep", "d2": "dogs bark loudly", "d3": "birds sing at dawn"}


@pytest.fixture
def bm25() -> BM25Retriever:
    retriever = BM25Retriever()
    retriever.add(list(DOCS), list(DOCS.values()), [{"topic": k} for k in DOCS])
    return retriever


def test_dspy_retrieve_reads_long_text(bm25: BM25Retriever) -> None:
    with dspy.context(rm=RetrieverRM(bm25)):
        assert dspy.Retrieve(k=1)("which animal purrs").passages == ["cats purr and sleep"]
    passages = RetrieverRM(bm25)("dogs that bark", k=1)
    assert (passages[0].id, passages[0].metadata) == ("d2", {"topic": "d2"}) and passages[0].score > 0
    fused = RetrieverRM(bm25)(["purr", "bark"], k=2)
    assert {p.id for p in fused} == {"d1", "d2"}
    with pytest.raises(ValueError, match="non-empty query"):
        RetrieverRM(bm25)("  ")


def test_retriever_as_a_tool(bm25: BM25Retriever) -> None:
    tool = retriever_tool(bm25, k=2)
    assert tool.name == "search" and set(tool.args) == {"query", "k"}
    hits = tool(query="birds at dawn")
    assert hits[0]["id"] == "d3" and hits[0]["text"] == "birds sing at dawn"
