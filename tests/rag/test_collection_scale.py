"""Collections at scale: the keyword index (BM25 + a by-id lookup) is persisted beside the vectors, loaded rather
than rebuilt when a collection is reopened, rebuilt with a warning when stale or corrupt, kept in line with adds
and deletes; the vector store is chosen by name and recorded in the collection."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest

from dspyo3_rag.collection import Chunk, IndexRebuiltWarning, RagCollection
from dspyo3_rag.stores.base import StoreError

CHUNKS = [Chunk("cats", "cats purr and sleep on the warm sofa", {"source": "a.jsonl"}),
          Chunk("dogs", "dogs bark loudly at the mail carrier", {"source": "a.jsonl"}),
          Chunk("owls", "owls hunt mice at night in silence", {"source": "b.jsonl"})]


def _cli(exe: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "rag", *args], capture_output=True, text=True, env=env, timeout=300)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _indexed(root: Path, store: str | None = None) -> RagCollection:
    collection = RagCollection(root, "kb", store=store)
    try:
        collection.add(CHUNKS)
    finally:
        collection.close()
    return collection


def _search(root: Path, query: str, kind: str = "hybrid") -> list[str]:
    collection = RagCollection(root, "kb")
    try:
        return [p.id for p in collection.search(query, 3, kind)]
    finally:
        collection.close()


def test_a_reopened_collection_loads_its_keyword_index_instead_of_rebuilding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _indexed(tmp_path)
    files = [written.keyword_dir / "bm25.bin", written.keyword_dir / "chunks.sqlite",
             written.keyword_dir / "manifest.json"]
    before = [_stamp(f) for f in files]
    reads = []
    original = RagCollection.chunks

    def counted(self: RagCollection) -> dict[str, Chunk]:
        reads.append(self.name)
        return original(self)

    monkeypatch.setattr(RagCollection, "chunks", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexRebuiltWarning)
        for kind in ("bm25", "hybrid", "dense", "bm25"):
            assert _search(tmp_path, "which animal purrs", kind)[0] == "cats"
    assert reads == [], "searching a reopened collection never reads chunks.jsonl"
    assert [_stamp(f) for f in files] == before, "the index files were neither rewritten nor replaced"


def test_cli_search_does_not_rebuild_the_index(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    docs = tmp_path / "notes.jsonl"
    docs.write_text("".join(json.dumps({"id": c.id, "text": c.text}) + "\n" for c in CHUNKS))
    env = {**cli_env, "DSPYO3_RAG_DIR": str(tmp_path / "rag")}
    result = _cli(dspyo3_exe, env, "index", str(docs), "--collection", "kb", "--no-progress")
    assert result.returncode == 0, result.stderr
    bm25 = tmp_path / "rag" / "kb" / "keyword" / "bm25.bin"
    before = _stamp(bm25)
    for retriever in ("bm25", "hybrid"):
        result = _cli(dspyo3_exe, env, "search", "barking dogs", "--collection", "kb", "--json",
                      "--retriever", retriever)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)[0]["id"] == "dogs"
        assert "warning" not in result.stderr.lower()
    assert _stamp(bm25) == before


@pytest.mark.parametrize("damage", ["bm25", "manifest", "sqlite", "format", "missing"])
def test_a_corrupt_keyword_index_is_rebuilt_with_a_warning(tmp_path: Path, damage: str) -> None:
    collection = _indexed(tmp_path)
    folder = collection.keyword_dir
    if damage == "bm25":
        (folder / "bm25.bin").write_bytes(b"not an index at all" * 10)
    elif damage == "manifest":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "sqlite":
        (folder / "chunks.sqlite").write_bytes(b"garbage" * 100)
    elif damage == "format":
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 999}))
    else:
        (folder / "bm25.bin").unlink()
    with pytest.warns(IndexRebuiltWarning, match="rebuilt from chunks.jsonl"):
        assert _search(tmp_path, "night hunting owls", "bm25")[0] == "owls"
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexRebuiltWarning)
        assert _search(tmp_path, "mail carrier", "hybrid")[0] == "dogs", "rebuilt once, then loaded"


def test_a_stale_index_is_rebuilt_when_chunks_jsonl_was_edited(tmp_path: Path) -> None:
    collection = _indexed(tmp_path)
    with collection.chunks_file.open("a") as handle:
        handle.write(json.dumps({"id": "bees", "text": "bees make honey in hives", "metadata": {}}) + "\n")
    with pytest.warns(IndexRebuiltWarning, match="changed after it was written"):
        assert _search(tmp_path, "honey", "bm25") == ["bees"]


def test_the_cli_reports_a_rebuilt_index_as_one_warning_line(tmp_path: Path, cli_env: dict[str, str],
                                                              dspyo3_exe: str) -> None:
    collection = _indexed(tmp_path)
    (collection.keyword_dir / "bm25.bin").write_bytes(b"\x00" * 64)
    result = _cli(dspyo3_exe, cli_env, "search", "owls", "--collection", "kb", "--retriever", "bm25",
                  "--dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["id"] == "owls"
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "keyword index" in lines[0] and "Traceback" not in result.stderr


def test_adds_and_deletes_keep_the_persisted_index_in_line(tmp_path: Path) -> None:
    _indexed(tmp_path)
    collection = RagCollection(tmp_path, "kb")
    try:  # a.jsonl indexed again with one record: "dogs" goes, "cats" changes, "bees" is new
        collection.add([Chunk("cats", "cats chase red laser dots", {"source": "a.jsonl"}),
                        Chunk("bees", "bees make honey in hives", {"source": "c.jsonl"})])
    finally:
        collection.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexRebuiltWarning)
        assert _search(tmp_path, "laser", "bm25") == ["cats"]
        assert "dogs" not in _search(tmp_path, "dogs bark mail carrier", "bm25")
        assert _search(tmp_path, "honey hives", "bm25") == ["bees"]
        reopened = RagCollection(tmp_path, "kb")
        try:
            assert sorted(reopened.keyword_index().ids()) == sorted(reopened.chunks())
        finally:
            reopened.close()


def test_searches_map_the_keyword_index_and_an_add_after_them_still_lands(tmp_path: Path) -> None:
    _indexed(tmp_path)
    collection = RagCollection(tmp_path, "kb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", IndexRebuiltWarning)
            assert [p.id for p in collection.search("which animal purrs", 1, "bm25")] == ["cats"]
            assert "mmap=True" in repr(collection.keyword_index()), "a search opens the file memory-mapped"
            # the same object adds next: the index is loaded in full to change, and searches see the change
            collection.add([Chunk("bees", "bees make honey in hives", {"source": "c.jsonl"})])
            assert [p.id for p in collection.search("honey hives", 1, "bm25")] == ["bees"]
    finally:
        collection.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexRebuiltWarning)
        assert _search(tmp_path, "honey hives", "bm25") == ["bees"]
        assert _search(tmp_path, "which animal purrs", "bm25")[0] == "cats"


def test_an_index_file_marked_with_another_format_is_rebuilt_with_a_warning(tmp_path: Path) -> None:
    import dspyo3_native

    collection = _indexed(tmp_path)
    bm25_file = collection.keyword_dir / "bm25.bin"
    # a file whose header names another format (format 1, what earlier versions wrote, is never memory-mapped)
    # is not served: rebuilt once, in the current format
    original = bm25_file.read_bytes()
    assert original[8:12] == (2).to_bytes(4, "little")
    assert dspyo3_native.BM25.load(bm25_file).ids(), "the full load reads the file"
    bm25_file.write_bytes(original[:8] + (1).to_bytes(4, "little") + original[12:])
    with pytest.warns(IndexRebuiltWarning, match="rebuilt from chunks.jsonl"):
        assert _search(tmp_path, "night hunting owls", "bm25")[0] == "owls"
    assert bm25_file.read_bytes()[8:12] == (2).to_bytes(4, "little")


def test_large_adds_go_in_batches(tmp_path: Path) -> None:
    chunks = [Chunk(f"c{i}", f"document number {i} about topic {i % 7}", {}) for i in range(1300)]
    collection = RagCollection(tmp_path, "kb")
    try:
        collection.add(chunks)
        assert collection.store().count("chunks") == 1300
        assert len(collection.keyword_index()) == 1300
        assert collection.search("topic 3 document number 1234", 1, "bm25")[0].id == "c1234"
    finally:
        collection.close()


# -- the store, by name ------------------------------------------------------------------------------------------

def test_the_store_is_chosen_by_name_and_recorded(tmp_path: Path) -> None:
    pytest.importorskip("chromadb")
    collection = _indexed(tmp_path, store="chroma")
    assert json.loads(collection.meta_file.read_text())["store"] == "chroma"
    assert (tmp_path / "kb" / "chroma").is_dir() and not (tmp_path / "kb" / "qdrant").exists()
    reopened = RagCollection(tmp_path, "kb")
    try:
        assert reopened.store_name == "chroma"
        assert type(reopened.store()).__name__ == "ChromaStore"
        assert [p.id for p in reopened.search("barking", 1, "dense")] == ["dogs"]
    finally:
        reopened.close()
    with pytest.raises(StoreError, match="keeps its vectors in the 'chroma' store"):
        RagCollection(tmp_path, "kb", store="qdrant")


def test_an_unknown_store_name_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"unknown vector store 'nosuch'.*qdrant"):
        RagCollection(tmp_path, "kb", store="nosuch")


def test_a_collection_without_a_record_is_on_the_old_default_qdrant(tmp_path: Path) -> None:
    collection = _indexed(tmp_path, store="qdrant")
    collection.meta_file.unlink()
    os.sync()
    reopened = RagCollection(tmp_path, "kb")
    try:
        assert reopened.store_name == "qdrant"
        assert reopened.search("purring cats", 1, "dense")[0].id == "cats"
    finally:
        reopened.close()


def test_cli_store_option(tmp_path: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    pytest.importorskip("chromadb")
    docs = tmp_path / "notes.jsonl"
    docs.write_text("".join(json.dumps({"id": c.id, "text": c.text}) + "\n" for c in CHUNKS))
    base = ["--collection", "kb", "--dir", str(tmp_path / "rag")]
    result = _cli(dspyo3_exe, cli_env, "index", str(docs), "--store", "chroma", "--no-progress", *base)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "rag" / "kb" / "collection.json").read_text())["store"] == "chroma"
    result = _cli(dspyo3_exe, cli_env, "search", "owls at night", "--json", *base)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["id"] == "owls"
    result = _cli(dspyo3_exe, cli_env, "search", "owls", "--store", "qdrant", *base)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: collection 'kb' keeps its vectors in the "
                                                             "'chroma' store")
    result = _cli(dspyo3_exe, cli_env, "index", str(docs), "--store", "nosuch", "--collection", "other",
                  "--dir", str(tmp_path / "rag"))
    assert result.returncode == 1 and "unknown vector store 'nosuch'" in result.stderr


def test_new_collections_default_to_qdrant_edge(tmp_path: Path) -> None:
    collection = _indexed(tmp_path)
    assert json.loads(collection.meta_file.read_text())["store"] == "qdrant-edge"
    assert (tmp_path / "kb" / "qdrant-edge").is_dir() and not (tmp_path / "kb" / "qdrant").exists()
    assert _search(tmp_path, "purring cats", "dense")[0] == "cats"
