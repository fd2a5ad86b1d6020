"""Token-budgeted packing (tiktoken, offline through LiteLLM's bundled encodings) and MMR."""

from __future__ import annotations

import pytest

from dspyo3_rag.pack import count_tokens, mmr, pack_context
from dspyo3_rag.retrieve import Passage


def test_pack_context_respects_the_budget_in_rank_order() -> None:
    passages = [Passage(f"p{i}", text, 1.0 - i / 10) for i, text in
                enumerate(["one two three four five", "a " * 50, "six seven", "eight nine ten eleven"])]
    sizes = [count_tokens(p.long_text) for p in passages]
    packed = pack_context(passages, sizes[0] + sizes[2], truncate_last=False)
    assert [p.id for p in packed] == ["p0", "p2"], "the long passage is skipped, a later short one still fits"
    budget = sizes[0] + 10
    packed = pack_context(passages, budget)
    assert [p.id for p in packed] == ["p0", "p1"] and packed[1].metadata["truncated"] is True
    assert sum(count_tokens(p.long_text) for p in packed) <= budget
    with pytest.raises(ValueError, match="max_tokens"):
        pack_context(passages, 0)
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        count_tokens("x", "no_such_encoding")


def test_mmr_prefers_diverse_passages() -> None:
    a, a2, b = Passage("a", "", 0), Passage("a-copy", "", 0), Passage("b", "", 0)
    candidates = [(a, [1.0, 0.0]), (a2, [0.99, 0.01]), (b, [0.6, 0.8])]
    assert [p.id for p in mmr([1.0, 0.0], candidates, k=2, lambda_=1.0)] == ["a", "a-copy"]
    assert [p.id for p in mmr([1.0, 0.0], candidates, k=2, lambda_=0.3)] == ["a", "b"]
