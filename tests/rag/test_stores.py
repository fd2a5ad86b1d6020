"""Vector stores pass the shared contract (dspyo3_core.testing.contracts.VectorStoreContract)."""

from __future__ import annotations

from pathlib import Path

from dspyo3_core.testing.contracts import VectorStoreContract
from dspyo3_rag.stores.qdrant import QdrantStore


class TestQdrantLocal(VectorStoreContract):
    """Qdrant's embedded local mode, on disk."""

    def make_store(self, tmp_path: Path) -> QdrantStore:
        return QdrantStore(tmp_path / "qdrant")


class TestQdrantMemory(VectorStoreContract):
    def make_store(self, tmp_path: Path) -> QdrantStore:
        return QdrantStore()


def test_local_store_persists_across_reopen(tmp_path: Path) -> None:
    store = QdrantStore(tmp_path / "q")
    store.create_collection("c", 2)
    store.upsert("c", ["x"], [[1.0, 0.0]], [{"t": "hello"}])
    store.close()
    again = QdrantStore(tmp_path / "q")
    try:
        assert again.count("c") == 1 and again.search("c", [1.0, 0.0], k=1)[0].metadata == {"t": "hello"}
    finally:
        again.close()
