"""Streaming adds: a collection takes its chunks from any iterable a batch at a time (memory bounded by the batch),
keeps the semantics of a list add (replacement, stale-source removal, last chunk of a repeated id wins), stays at
its previous commit when an add fails midway, and repairs without reading chunks.jsonl when nothing was
interrupted."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspyo3_rag import collection as collection_module
from dspyo3_rag.collection import Chunk, IndexRebuiltWarning, RagCollection

BATCH = 8  # a small _ADD_BATCH, so that a few dozen chunks make several batches


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(collection_module, "_ADD_BATCH", BATCH)
    return BATCH


def _doc(i: int, source: str = "docs.jsonl", topic: str = "") -> Chunk:
    return Chunk(f"d{i}", f"document {i} speaks of topic{i % 5} and word{i} {topic}".strip(), {"source": source})


def _generate(n: int, **kwargs: Any) -> Iterator[Chunk]:
    for i in range(n):
        yield _doc(i, **kwargs)


def _stored(collection: RagCollection) -> dict[str, str]:
    return {point_id: meta["text"] for point_id, _, meta in collection.store().scroll("chunks")}


def _texts(collection: RagCollection) -> dict[str, str]:
    return {cid: c.text for cid, c in collection.chunks().items()}


def _results(collection: RagCollection, queries: list[str]) -> list[list[tuple[str, str]]]:
    """BM25's top 5 and the dense and hybrid top hit (below it, ties among equal vectors fall in the order the
    vector index was built in)."""
    return [[(p.id, p.long_text) for p in collection.search(q, 5 if kind == "bm25" else 1, kind)]
            for q in queries for kind in ("bm25", "dense", "hybrid")]


def test_an_add_from_a_generator_is_searchable(tmp_path: Path) -> None:
    collection = RagCollection(tmp_path, "kb")
    try:
        assert collection.add(_generate(1200), total=1200) == 1200
        assert len(collection.chunks()) == 1200 and collection.store().count("chunks") == 1200
        assert collection.search("word1111 topic1", 1, "bm25")[0].id == "d1111"
        assert collection.search("document 77 speaks of topic2 and word77", 1, "dense")[0].id == "d77"
    finally:
        collection.close()
    reopened = RagCollection(tmp_path, "kb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", IndexRebuiltWarning)
            assert reopened.search("word1111", 1, "hybrid")[0].id == "d1111"
    finally:
        reopened.close()


def test_one_add_equals_the_same_chunks_in_several_adds(tmp_path: Path, small_batches: int) -> None:
    chunks = [_doc(i, source=f"s{i // 20}.jsonl") for i in range(60)]
    queries = ["word7", "topic3 document word13", "speaks of word42", "word59 topic4"]
    one = RagCollection(tmp_path, "one")
    several = RagCollection(tmp_path, "several")
    try:
        one.add(iter(chunks))
        for start in range(0, 60, 20):  # a part per source: none drops another's chunks as stale
            several.add(chunks[start:start + 20])
        assert _texts(one) == _texts(several) == {c.id: c.text for c in chunks}
        assert _stored(one) == _stored(several) == _texts(one)
        assert sorted(one.keyword_index().ids()) == sorted(several.keyword_index().ids())
        assert _results(one, queries) == _results(several, queries)
    finally:
        one.close()
        several.close()


def test_a_generator_replaces_chunks_and_drops_a_reindexed_sources_stale_ones(tmp_path: Path,
                                                                              small_batches: int) -> None:
    collection = RagCollection(tmp_path, "kb")
    try:
        collection.add([*(_doc(i, source="a.jsonl") for i in range(20)),
                        Chunk("b0", "bees hum", {"source": "b.jsonl"})])

        def again() -> Iterator[Chunk]:  # a.jsonl indexed again: d0-d11 (d3 twice, last wins), new d100; d12-d19 go
            for i in range(12):
                yield _doc(i, source="a.jsonl", topic="revised")
            yield Chunk("d3", "the last text of d3 wins", {"source": "a.jsonl"})
            yield Chunk("d100", "a new record about zebras", {"source": "a.jsonl"})

        assert collection.add(again()) == 14
        texts = _texts(collection)
        expected = {f"d{i}": _doc(i, topic="revised").text for i in range(12)}
        expected.update({"d3": "the last text of d3 wins", "d100": "a new record about zebras", "b0": "bees hum"})
        assert texts == expected
        assert _stored(collection) == expected, "the vectors of dropped chunks are gone, replaced ones rewritten"
        assert collection.search("zebras", 1, "bm25")[0].id == "d100"
        assert collection.search("last text wins", 1, "hybrid")[0].id == "d3"
        assert "d15" not in {p.id for p in collection.search("word15", 5, "bm25")}
        assert sorted(collection.keyword_index().ids()) == sorted(expected)
        assert not collection.pending_file.exists()
    finally:
        collection.close()


class _Killed(BaseException):
    """Stands for the process being killed: no cleanup or repair runs in the add."""


def _interrupted(after: int, error: BaseException) -> Iterator[Chunk]:
    """New chunks (and a new text for committed ``d0``), failing with ``error`` after ``after`` chunks."""
    yield Chunk("d0", "zebra quagga rewritten", {"source": "old.jsonl"})
    for i in range(1, after):
        yield Chunk(f"new{i}", f"zebra quagga stripes {i}", {"source": "new.jsonl"})
    raise error


@pytest.fixture
def committed(tmp_path: Path, small_batches: int) -> dict[str, str]:
    collection = RagCollection(tmp_path, "kb")
    try:
        collection.add([_doc(i, source="old.jsonl") for i in range(20)])
        return _texts(collection)
    finally:
        collection.close()


@pytest.mark.parametrize("pending", ["kept", "unreadable"])
def test_an_add_killed_midway_stays_at_its_commit_and_repair_fixes_the_vectors(
        tmp_path: Path, committed: dict[str, str], pending: str) -> None:
    collection = RagCollection(tmp_path, "kb")
    try:
        with pytest.raises(_Killed):
            collection.add(_interrupted(2 * BATCH, _Killed()))
        assert _texts(collection) == committed
        assert _stored(collection) != committed, "two batches of uncommitted vectors are in the store"
        assert collection.pending_file.exists()
        with warnings.catch_warnings():  # the keyword index still serves the previous commit
            warnings.simplefilter("error", IndexRebuiltWarning)
            served = {(p.id, p.long_text) for kind in ("bm25", "dense", "hybrid")
                      for p in collection.search("zebra quagga stripes", 10, kind)}
        assert served <= set(committed.items()), "uncommitted chunks are never served"
    finally:
        collection.close()
    if pending == "unreadable":
        collection.pending_file.write_text('{"ids": ["d0", ')  # a record cut short: everything is compared
    reopened = RagCollection(tmp_path, "kb")
    try:
        done = reopened.repair()
        assert (done.removed, done.restored) == (2 * BATCH - 1, 1)
        assert _stored(reopened) == _texts(reopened) == committed
        assert not reopened.pending_file.exists()
        assert not reopened.repair()
    finally:
        reopened.close()


def test_the_next_add_repairs_a_killed_one(tmp_path: Path, committed: dict[str, str]) -> None:
    collection = RagCollection(tmp_path, "kb")
    try:
        with pytest.raises(_Killed):
            collection.add(_interrupted(2 * BATCH + 3, _Killed()))
        collection.add([Chunk("kiwi", "kiwis are fuzzy", {"source": "k.md"})])
        assert _stored(collection) == _texts(collection) == {**committed, "kiwi": "kiwis are fuzzy"}
    finally:
        collection.close()


def test_a_failing_iterator_leaves_the_previous_commit_and_consistent_vectors(
        tmp_path: Path, committed: dict[str, str]) -> None:
    collection = RagCollection(tmp_path, "kb")
    try:
        with pytest.raises(RuntimeError, match="source went away"):
            collection.add(_interrupted(2 * BATCH, RuntimeError("source went away")))
        assert _texts(collection) == committed
        assert _stored(collection) == committed, "the add repaired what it had stored"
        assert not collection.pending_file.exists()
        assert [p.name for p in collection.dir.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        collection.close()


def test_a_store_failing_midway_leaves_the_previous_commit(tmp_path: Path, committed: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    collection = RagCollection(tmp_path, "kb")
    try:
        store = collection.store()
        upsert = store.upsert
        calls = []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise OSError("disk full")
            return upsert(*args, **kwargs)

        monkeypatch.setattr(store, "upsert", failing)
        with pytest.raises(OSError, match="disk full"):
            collection.add(_generate(5 * BATCH, source="new.jsonl", topic="zebra"))
        assert _texts(collection) == committed
        assert _stored(collection) == committed
        collection.add(_generate(5 * BATCH, source="new.jsonl", topic="zebra"))  # the store works again
        assert len(_texts(collection)) == 20 + 5 * BATCH - 20  # new d0-d19 replace the old ones
        assert _stored(collection) == _texts(collection)
    finally:
        collection.close()


def test_repair_of_a_healthy_collection_does_not_read_the_chunks(tmp_path: Path, committed: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: RagCollection) -> Any:
        raise AssertionError("chunks.jsonl was read")

    monkeypatch.setattr(RagCollection, "_iter_records", refuse)
    monkeypatch.setattr(RagCollection, "chunks", refuse)
    collection = RagCollection(tmp_path, "kb")
    try:
        assert not collection.repair()
        assert collection.search("word3", 1, "bm25")[0].id == "d3"
    finally:
        collection.close()


def test_a_generator_is_consumed_a_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    produced = 0
    total = 5 * collection_module._ADD_BATCH

    def lazy() -> Iterator[Chunk]:
        nonlocal produced
        for i in range(total):
            produced += 1
            yield _doc(i)

    collection = RagCollection(tmp_path, "kb")
    try:
        store = collection.store()
        upsert = store.upsert
        seen: list[int] = []

        def spy(*args: Any, **kwargs: Any) -> Any:
            seen.append(produced)
            return upsert(*args, **kwargs)

        monkeypatch.setattr(store, "upsert", spy)
        assert collection.add(lazy()) == total
        assert seen[0] == collection_module._ADD_BATCH, "the first batch was stored before more was read"
        assert seen == [collection_module._ADD_BATCH * (n + 1) for n in range(5)]
        assert len(collection.chunks()) == total
    finally:
        collection.close()
