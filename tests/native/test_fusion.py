"""dspyo3_native.rrf / weighted_fusion against slow references, with order-invariance properties."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dspyo3_native as native

ids = st.sampled_from([f"doc{i}" for i in range(12)])
ranked_lists = st.lists(st.lists(ids, max_size=10, unique=True), min_size=1, max_size=5)


def reference_rrf(lists: list[list[str]], k: float, weights: list[float] | None) -> dict[str, float]:
    scores: dict[str, float] = {}
    for i, ranking in enumerate(lists):
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + (weights[i] if weights else 1.0) / (k + rank)
    return scores


@settings(max_examples=200, deadline=None)
@given(lists=ranked_lists, k=st.floats(0.0, 100.0), data=st.data())
def test_rrf_matches_reference_and_ignores_list_order(lists: list[list[str]], k: float, data: st.DataObject) -> None:
    fused = native.rrf(lists, k=k)
    expected = reference_rrf(lists, k, None)
    assert dict(fused) == pytest.approx(expected)
    assert [score for _, score in fused] == sorted((score for _, score in fused), reverse=True)
    shuffled = data.draw(st.permutations(lists))
    assert native.rrf(shuffled, k=k) == fused
    assert native.rrf(lists, k=k, top_k=3) == fused[:3]


@settings(max_examples=100, deadline=None)
@given(lists=ranked_lists, data=st.data())
def test_weighted_rrf(lists: list[list[str]], data: st.DataObject) -> None:
    weights = data.draw(st.lists(st.floats(0.0, 5.0), min_size=len(lists), max_size=len(lists)))
    assert dict(native.rrf(lists, weights=weights)) == pytest.approx(reference_rrf(lists, 60.0, weights))


scored_lists = st.lists(
    st.dictionaries(ids, st.floats(-50, 50, allow_nan=False).map(lambda x: round(x, 3)), max_size=8).map(
        lambda d: list(d.items())
    ),
    min_size=1,
    max_size=4,
)


def reference_weighted(lists: list[list[tuple[str, float]]], weights: list[float], mode: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for weight, pairs in zip(weights, lists, strict=True):
        if not pairs:
            continue
        values = [s for _, s in pairs]
        lo, hi = min(values), max(values)
        mean, std = statistics.fmean(values), statistics.pstdev(values)
        for doc, s in pairs:
            if mode == "minmax":
                norm = (s - lo) / (hi - lo) if hi > lo else 1.0
            elif mode == "zscore":
                norm = (s - mean) / std if std > 0 else 0.0
            else:
                norm = s
            out[doc] = out.get(doc, 0.0) + weight * norm
    return out


@settings(max_examples=200, deadline=None)
@given(lists=scored_lists, mode=st.sampled_from(["minmax", "zscore", "none"]), data=st.data())
def test_weighted_fusion_matches_reference(
    lists: list[list[tuple[str, float]]], mode: str, data: st.DataObject
) -> None:
    weights = data.draw(st.lists(st.floats(0.0, 3.0), min_size=len(lists), max_size=len(lists)))
    fused = native.weighted_fusion(lists, weights=weights, normalization=mode)
    assert dict(fused) == pytest.approx(reference_weighted(lists, weights, mode), abs=1e-9)
    order = data.draw(st.permutations(range(len(lists))))
    permuted = native.weighted_fusion([lists[i] for i in order], weights=[weights[i] for i in order],
                                      normalization=mode)
    assert [doc for doc, _ in permuted] == [doc for doc, _ in fused]


def test_fusion_errors() -> None:
    with pytest.raises(ValueError, match="got 1 weights for 2 lists"):
        native.rrf([["a"], ["b"]], weights=[1.0])
    with pytest.raises(ValueError, match="k must be finite"):
        native.rrf([["a"]], k=-1)
    with pytest.raises(ValueError, match='unknown normalization "l2"'):
        native.weighted_fusion([[("a", 1.0)]], normalization="l2")
    with pytest.raises(ValueError, match="non-finite score"):
        native.weighted_fusion([[("a", float("nan"))]])


def test_rrf_many_equals_one_call_per_query() -> None:
    problems = [[["a", "b"], ["b", "c"]], [["x"], ["y", "x"]], []]
    assert native.rrf_many(problems, k=10, top_k=2) == [native.rrf(p, k=10, top_k=2) for p in problems]
