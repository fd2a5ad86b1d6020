"""Vector stores pass the shared contract (dspyo3_core.testing.contracts.VectorStoreContract)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspyo3_core.testing.contracts import VectorStoreContract
from dspyo3_core.testing.services import free_port
from dspyo3_rag.stores.chroma import ChromaStore
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


class TestChromaLocal(VectorStoreContract):
    """Chroma's persistent local client."""

    def make_store(self, tmp_path: Path) -> ChromaStore:
        return ChromaStore(tmp_path / "chroma")


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Chroma server (`chroma run`) on loopback, stopped afterwards."""
    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists():
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen([str(exe), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chroma run did not start") from None
                time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class TestChromaServer(VectorStoreContract):
    """A Chroma server started by the test; each test gets its own collection names through a fresh server
    database, so tests do not see each other's collections."""

    @pytest.fixture(autouse=True)
    def _server(self, chroma_server: tuple[str, int]) -> None:
        self.server = chroma_server

    def make_store(self, tmp_path: Path) -> ChromaStore:
        store = ChromaStore(host=self.server[0], port=self.server[1])
        for name in store.collections():  # a clean slate on the shared server
            store.drop_collection(name)
        return store

    def test_scroll_and_migration(self, filled: ChromaStore, tmp_path: Path) -> None:  # type: ignore[override]
        from dspyo3_rag.stores import migrate

        other = QdrantStore()  # across backends: server Chroma -> embedded Qdrant
        assert migrate(filled, other, "docs", batch_size=2) == 3
        assert [h.id for h in other.search("docs", self._vec(1, 0, 0), k=1)] == ["a"]

    def test_euclid_scores_are_higher_is_closer_and_migration_keeps_the_distance(  # type: ignore[override]
            self, store: ChromaStore, tmp_path: Path) -> None:
        _euclid_migration_into_qdrant(store)  # a second store on the same server would drop the source


def _euclid_migration_into_qdrant(store: ChromaStore) -> None:
    from dspyo3_rag.stores import migrate

    store.create_collection("geo", 2, distance="euclid")
    store.upsert("geo", ["near", "far"], [[0.0, 0.0], [3.0, 4.0]])
    assert [h.id for h in store.search("geo", [0.1, 0.0], k=2)] == ["near", "far"]
    other = QdrantStore()
    migrate(store, other, "geo")
    assert other.distance("geo") == "euclid"
    assert [h.id for h in other.search("geo", [0.1, 0.0], k=2)] == ["near", "far"]


def test_non_scalar_metadata_round_trips_in_chroma(tmp_path: Path) -> None:
    store = ChromaStore(tmp_path / "c")
    with pytest.raises(ValueError, match="Chroma collection names are 3-512 characters"):
        store.create_collection("c", 2)
    store.create_collection("col", 2)
    store.upsert("col", ["x"], [[1.0, 0.0]], [{"tags": ["a", "b"], "n": 1}])
    assert store.search("col", [1.0, 0.0], k=1)[0].metadata == {"tags": ["a", "b"], "n": 1}
