"""The Qdrant and Chroma adapters leave the engine alone in the common case: no namespace filter when no
namespace is used (the namespace is still honoured once one is), and Chroma counts through its own count().

The real clients run (Qdrant local mode, Chroma in memory / on disk); a thin recording wrapper around the
third-party client object sees what the adapter sends and forwards every call unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dspyo3_rag.stores.qdrant import QdrantStore


class Recording:
    """Forwards every attribute to ``target``; calls of the names in ``watch`` are recorded with their keyword
    arguments, and objects returned by the names in ``wrap`` are wrapped in turn."""

    def __init__(self, target: Any, calls: list[tuple[str, dict[str, Any]]], watch: set[str],
                 wrap: frozenset[str] = frozenset()) -> None:
        self._target, self._calls, self._watch, self._wrap = target, calls, watch, wrap

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value) or (name not in self._watch and name not in self._wrap):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in self._watch:
                self._calls.append((name, kwargs))
            result = value(*args, **kwargs)
            return Recording(result, self._calls, self._watch) if name in self._wrap else result

        return call


def _filled_qdrant(path: Path | None = None) -> QdrantStore:
    store = QdrantStore(path)
    store.create_collection("docs", 2)
    store.upsert("docs", ["a", "b"], [[1, 0], [0, 1]], [{"lang": "en"}, {"lang": "fr"}])
    return store


def test_qdrant_without_namespace_sends_no_filter(tmp_path: Path) -> None:
    store = _filled_qdrant(tmp_path / "q")
    calls: list[tuple[str, dict[str, Any]]] = []
    store.client = Recording(store.client, calls, {"query_points", "count", "scroll"})
    try:
        assert [h.id for h in store.search("docs", [1, 0], k=1)] == ["a"]
        assert store.count("docs") == 2
        assert sorted(point[0] for point in store.scroll("docs")) == ["a", "b"]
        sent = {name: kwargs.get("query_filter", kwargs.get("count_filter", kwargs.get("scroll_filter")))
                for name, kwargs in calls}
        assert sent == {"query_points": None, "count": None, "scroll": None}
        assert all(kwargs.get("exact") for name, kwargs in calls if name == "count"), "counts are exact"
        calls.clear()  # a metadata filter still goes through, without a namespace condition
        assert [h.id for h in store.search("docs", [1, 1], k=2, filter={"lang": "fr"})] == ["b"]
        flt = next(kwargs["query_filter"] for name, kwargs in calls if name == "query_points")
        assert [c.key for c in flt.must] == ["lang"]
    finally:
        store.close()


@pytest.mark.parametrize("reopen", [False, True])
def test_qdrant_namespaces_still_partition_once_used(tmp_path: Path, reopen: bool) -> None:
    store = _filled_qdrant(tmp_path / "q")
    store.upsert("docs", ["t"], [[1, 0]], [{"lang": "en"}], namespace="tenant")
    if reopen:  # the record that namespaces are in use is kept by Qdrant with the collection
        store.close()
        store = QdrantStore(tmp_path / "q")
    calls: list[tuple[str, dict[str, Any]]] = []
    store.client = Recording(store.client, calls, {"query_points"})
    try:
        assert [h.id for h in store.search("docs", [1, 0], k=3)] == ["a", "b"]
        assert [h.id for h in store.search("docs", [1, 0], k=3, namespace="tenant")] == ["t"]
        assert store.count("docs") == 2 and store.count("docs", namespace="tenant") == 1
        assert all(kwargs["query_filter"] is not None for _, kwargs in calls)
    finally:
        store.close()


def _chroma(path: Path | None = None) -> Any:
    pytest.importorskip("chromadb")
    from dspyo3_rag.stores.chroma import ChromaStore

    return ChromaStore(path)


def test_chroma_counts_with_its_own_count_and_sends_no_namespace_filter() -> None:
    store = _chroma()
    store.create_collection("docs", 2)
    store.upsert("docs", ["a", "b"], [[1, 0], [0, 1]], [{"lang": "en"}, {"lang": "fr"}])
    calls: list[tuple[str, dict[str, Any]]] = []
    store.client = Recording(store.client, calls, {"count", "get", "query"}, wrap=frozenset({"get_collection"}))
    assert store.count("docs") == 2
    assert [h.id for h in store.search("docs", [1, 0], k=1)] == ["a"]
    names = [name for name, _ in calls]
    assert "get" not in names, "no ids fetched to count"
    assert names.count("count") == 2
    assert next(kwargs for name, kwargs in calls if name == "query")["where"] is None


def test_chroma_namespaces_still_partition_and_keep_the_distance(tmp_path: Path) -> None:
    store = _chroma(tmp_path / "c")
    store.create_collection("docs", 2, distance="euclid")
    store.upsert("docs", ["a", "b"], [[1, 0], [0, 1]])
    store.upsert("docs", ["t"], [[1, 0]], namespace="tenant")
    reopened = _chroma(tmp_path / "c")
    for s in (store, reopened):
        assert s.distance("docs") == "euclid"
        assert [h.id for h in s.search("docs", [1, 0], k=3)] == ["a", "b"]
        assert [h.id for h in s.search("docs", [1, 0], k=3, namespace="tenant")] == ["t"]
        assert s.count("docs") == 2 and s.count("docs", namespace="tenant") == 1
        assert s.search("docs", [1, 0], k=1)[0].score == pytest.approx(0.0)
