"""The Qdrant Edge store (``qdrant-edge-py``) passes the shared contract and keeps its data across reopen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dspyo3_core.testing.contracts import VectorStoreContract
from dspyo3_rag.stores.base import StoreCorruptError, StoreError
from dspyo3_rag.stores.qdrant_edge import QdrantEdgeStore


class TestQdrantEdgeOnDisk(VectorStoreContract):
    def make_store(self, tmp_path: Path) -> QdrantEdgeStore:
        return QdrantEdgeStore(tmp_path / "edge")


class TestQdrantEdgeTemporary(VectorStoreContract):
    def make_store(self, tmp_path: Path) -> QdrantEdgeStore:
        return QdrantEdgeStore()


def test_reopen_keeps_points_namespaces_and_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [f"p{i}" for i in range(300)]
    store = QdrantEdgeStore(tmp_path / "s")
    store.create_collection("c", 16)
    store.upsert("c", ids, vectors, [{"n": i} for i in range(300)], batch_size=128)
    store.upsert("c", ["t"], vectors[:1], [{"tenant": True}], namespace="tenant one/ü")
    store.delete("c", ["p7"])
    store.close()
    again = QdrantEdgeStore(tmp_path / "s")
    try:
        assert again.collections() == ["c"] and again.dimension("c") == 16 and again.distance("c") == "cosine"
        assert again.count("c") == 299 and again.count("c", namespace="tenant one/ü") == 1
        assert again.search("c", vectors[3].tolist(), k=1)[0].id == "p3"
        assert again.search("c", vectors[3].tolist(), k=1)[0].metadata == {"n": 3}
        assert "p7" not in {h.id for h in again.search("c", vectors[7].tolist(), k=5)}
        assert [h.id for h in again.search("c", vectors[0].tolist(), k=3, namespace="tenant one/ü")] == ["t"]
        assert again.count("c", namespace="nobody") == 0 and again.search("c", vectors[0].tolist(),
                                                                          namespace="nobody") == []
    finally:
        again.close()


def test_default_namespace_points_are_searched_without_a_filter(tmp_path: Path) -> None:
    """Each namespace is its own shard: the default one holds only its own points, so neither search nor count
    needs a namespace condition."""
    store = QdrantEdgeStore(tmp_path / "s")
    try:
        store.create_collection("c", 2)
        store.upsert("c", ["a"], [[1.0, 0.0]])
        store.upsert("c", ["a"], [[0.0, 1.0]], namespace="other")
        assert sorted(p.name for p in (tmp_path / "s" / "c").iterdir()) == ["collection.json", "ns", "points"]
        assert store.count("c") == 1 and store.count("c", namespace="other") == 1
        assert store.search("c", [0.0, 1.0], k=5)[0].score < 0.5
    finally:
        store.close()


def test_corrupt_collection_metadata_is_named(tmp_path: Path) -> None:
    store = QdrantEdgeStore(tmp_path / "s")
    store.create_collection("c", 2)
    store.close()
    (tmp_path / "s" / "c" / "collection.json").write_text("{not json", encoding="utf-8")
    again = QdrantEdgeStore(tmp_path / "s")
    with pytest.raises(StoreCorruptError, match=r"collection\.json"):
        again.count("c")
    (tmp_path / "s" / "c" / "collection.json").write_text(json.dumps({"name": "c"}), encoding="utf-8")
    with pytest.raises(StoreCorruptError, match="not collection metadata"):
        QdrantEdgeStore(tmp_path / "s").collections()


def test_collection_names_that_are_not_file_names(tmp_path: Path) -> None:
    store = QdrantEdgeStore(tmp_path / "s")
    try:
        for name in ["../up", ".hidden", "a/b", "~x"]:
            store.create_collection(name, 2)
        assert store.collections() == sorted(["../up", ".hidden", "a/b", "~x"])
        assert not (tmp_path / "up").exists(), "nothing written outside the store's folder"
        store.drop_collection("a/b")
        assert "a/b" not in store.collections()
    finally:
        store.close()


def test_boolean_filters_match_booleans_only(tmp_path: Path) -> None:
    store = QdrantEdgeStore(tmp_path / "s")
    try:
        store.create_collection("c", 2)
        store.upsert("c", ["yes", "no", "one"], [[1.0, 0.0]] * 3, [{"f": True}, {"f": False}, {"f": 1}])
        assert [h.id for h in store.search("c", [1.0, 0.0], filter={"f": True})] == ["yes"]
        assert [h.id for h in store.search("c", [1.0, 0.0], filter={"f": [False]})] == ["no"]
        assert [h.id for h in store.search("c", [1.0, 0.0], filter={"f": 1})] == ["one"]
        assert {h.id: h.metadata for h in store.search("c", [1.0, 0.0])}["yes"] == {"f": True}
    finally:
        store.close()


def test_writes_survive_a_killed_process(tmp_path: Path) -> None:
    """Points the store accepted are on disk (write-ahead log) even when the process dies without close()."""
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from dspyo3_rag.stores.qdrant_edge import QdrantEdgeStore\n"
        "s = QdrantEdgeStore(sys.argv[1])\n"
        "s.create_collection('c', 2)\n"
        "s.upsert('c', ['a', 'b'], [[1.0, 0.0], [0.0, 1.0]], [{'k': 1}, {'k': 2}])\n"
        "s.upsert('c', ['z'], [[1.0, 1.0]], namespace='t')\n"
        "s.delete('c', ['b'])\n"
        "os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s")], check=False)
    assert done.returncode == 9
    again = QdrantEdgeStore(tmp_path / "s")
    try:
        assert again.count("c") == 1 and again.count("c", namespace="t") == 1
        assert again.search("c", [1.0, 0.0], k=5)[0].metadata == {"k": 1}
    finally:
        again.close()


def test_a_shard_open_elsewhere_is_busy_not_corrupt(tmp_path: Path) -> None:
    first = QdrantEdgeStore(tmp_path / "s")
    try:
        first.create_collection("c", 2)
        first.upsert("c", ["x"], [[1.0, 0.0]])
        second = QdrantEdgeStore(tmp_path / "s")
        with pytest.raises(StoreError, match="open in another process") as caught:
            second.count("c")
        assert not isinstance(caught.value, StoreCorruptError)
    finally:
        first.close()


def test_large_writes_are_indexed_segment_by_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dspyo3_rag.stores.qdrant_edge as edge_store

    # 64 points of 16 float32 dimensions per segment: 640 points make about ten segments, each indexed as written
    monkeypatch.setattr(edge_store, "SEGMENT_BYTES", 64 * 16 * 4)
    monkeypatch.setattr(edge_store, "INDEXING_THRESHOLD_KB", 1)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((640, 16)).astype(np.float32)
    ids = [f"p{i}" for i in range(640)]
    store = QdrantEdgeStore(tmp_path / "s")
    store.create_collection("c", 16)
    for start in range(0, 640, 32):
        store.upsert("c", ids[start:start + 32], vectors[start:start + 32],
                     [{"n": i} for i in range(start, start + 32)])
    segments = [p for p in (tmp_path / "s" / "c" / "points" / "segments").iterdir() if p.is_dir()]
    indexed = [p for p in segments if (p / "vector_storage" / "matrix.dat").exists()]
    assert len(indexed) >= 5, "the points were indexed as several segments while they were written"
    assert len(segments) - len(indexed) <= 1, "the segments the indexed ones replaced are gone (one still takes writes)"
    store.close()
    again = QdrantEdgeStore(tmp_path / "s")
    try:
        assert again.count("c") == 640
        for i in (0, 333, 639):
            assert again.search("c", vectors[i].tolist(), k=1)[0].id == f"p{i}"
    finally:
        again.close()
