"""Rerankers: the LM reranker through DSPy against the loopback server; the cross-encoder's missing-extra error."""

from __future__ import annotations

import importlib.util

import dspy
import pytest

from dspyo3_core.testing import LMServer, chat_reply
from dspyo3_rag.rerank import CrossEncoderReranker, LMReranker
from dspyo3_rag.retrieve import Passage

PASSAGES = [Passage("a", "dogs bark", 3.0), Passage("b", "cats purr", 2.0), Passage("c", "birds sing", 1.0)]


def test_lm_reranker_orders_and_repairs_the_ranking() -> None:
    with LMServer() as server:
        lm = dspy.LM("openai/test", api_base=server.api_base, api_key="k", cache=False, num_retries=0)
        server.script(chat_reply(ranking=[1, 7, 1]))  # an invented number and a repeat
        ranked = LMReranker(lm)("which animal purrs", PASSAGES)
        assert [p.id for p in ranked] == ["b", "a", "c"], "ranked first, then the rest in retrieval order"
        assert ranked[0].score > ranked[1].score > ranked[2].score
        assert "[1] cats purr" in server.requests[0]["messages"][-1]["content"]
        server.script(chat_reply(ranking=[2, 0, 1]))
        assert [p.id for p in LMReranker(lm)("q", PASSAGES, k=1)] == ["c"]
    assert LMReranker(lm)("q", []) == []


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is not None, reason="installed here")
def test_cross_encoder_says_which_package_it_needs() -> None:
    with pytest.raises(ImportError, match="pip install sentence-transformers"):
        CrossEncoderReranker()
