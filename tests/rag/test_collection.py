"""On-disk collections: ids from paths below the folder given, re-indexing replaces a source's chunks."""

from __future__ import annotations

from pathlib import Path

from dspyo3_rag.collection import RagCollection, read_sources


def test_same_file_names_in_different_folders_and_reindexing(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "a").mkdir(parents=True)
    (docs / "b").mkdir()
    (docs / "a" / "README.md").write_text("apples are red " * 150)   # 450 words: 3 chunks
    (docs / "b" / "README.md").write_text("bananas are yellow")
    chunks = read_sources([docs])
    assert {c.id for c in chunks} == {"docs/a/README.md#0", "docs/a/README.md#1", "docs/a/README.md#2",
                                      "docs/b/README.md#0"}
    collection = RagCollection(tmp_path / "store", "kb")
    try:
        collection.add(chunks)
        assert len(collection.chunks()) == 4
        (docs / "a" / "README.md").write_text("apples are short now")
        collection.add(read_sources([docs / "a"], words=200))
        remaining = collection.chunks()
        stale = [cid for cid, c in remaining.items() if c.metadata["source"].endswith("a/README.md")
                 and "short" not in c.text]
        assert stale == [], "the re-indexed source's old chunks are gone"
        assert collection.store().count("chunks") == len(remaining), "the store matches chunks.jsonl"
    finally:
        collection.close()
