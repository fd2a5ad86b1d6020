"""dspyo3_native.BM25: scores equal a slow reference, updates, filters, persistence, concurrency."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dspyo3_native as native

VARIANTS = ["lucene", "robertson", "atire", "bm25l", "bm25+"]


def reference_scores(
    docs: dict[str, list[str]], query: list[str], variant: str, k1: float, b: float, delta: float
) -> dict[str, float]:
    """BM25 by the formulas in crates/dspyo3-kernels/src/bm25.rs, one document at a time."""
    n = len(docs)
    avgdl = sum(len(tokens) for tokens in docs.values()) / n if n else 1.0
    avgdl = avgdl or 1e-9
    df = Counter(term for tokens in docs.values() for term in set(tokens))
    scores: dict[str, float] = {}
    for doc_id, tokens in docs.items():
        tf = Counter(tokens)
        length = 1 - b + b * len(tokens) / avgdl
        total = 0.0
        for term in query:
            if tf[term] == 0:
                continue
            d = df[term]
            idf = {
                "lucene": math.log(1 + (n - d + 0.5) / (d + 0.5)),
                "robertson": math.log(max(1.0, (n - d + 0.5) / (d + 0.5))),
                "atire": math.log(n / d),
                "bm25l": math.log((n + 1) / (d + 0.5)),
                "bm25+": math.log((n + 1) / d),
            }[variant]
            if idf <= 0:
                continue
            t = tf[term]
            if variant in ("lucene", "robertson"):
                part = t / (t + k1 * length)
            elif variant == "atire":
                part = t * (k1 + 1) / (t + k1 * length)
            elif variant == "bm25l":
                c = t / length
                part = (k1 + 1) * (c + delta) / (k1 + c + delta)
            else:
                part = (k1 + 1) * t / (k1 * length + t) + delta
            total += idf * part
        if total > 0:
            scores[doc_id] = total
    return scores


def plain_index(**kwargs: object) -> native.BM25:
    return native.BM25(stopwords=None, stemmer=None, **kwargs)  # type: ignore[arg-type]


words = st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
corpora = st.lists(st.lists(words, min_size=0, max_size=12), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(
    corpus=corpora,
    query=st.lists(words, min_size=1, max_size=5),
    variant=st.sampled_from(VARIANTS),
    k1=st.floats(0.0, 3.0),
    b=st.floats(0.0, 1.0),
    delta=st.floats(0.0, 2.0),
)
def test_scores_equal_the_slow_reference(
    corpus: list[list[str]], query: list[str], variant: str, k1: float, b: float, delta: float
) -> None:
    docs = {f"d{i}": tokens for i, tokens in enumerate(corpus)}
    index = plain_index(variant=variant, k1=k1, b=b, delta=delta)
    index.add_tokens(list(docs), list(docs.values()))
    expected = reference_scores(docs, query, variant, k1, b, delta)
    got = dict(index.search_tokens(query, k=len(docs)))
    assert set(got) == set(expected)
    for doc_id, score in expected.items():
        assert got[doc_id] == pytest.approx(score, rel=1e-4, abs=1e-5)
    ranked = [score for _, score in index.search_tokens(query, k=len(docs))]
    assert ranked == sorted(ranked, reverse=True)


@settings(max_examples=60, deadline=None)
@given(
    corpus=corpora,
    deletions=st.lists(st.integers(0, 24), max_size=10),
    updates=st.lists(st.tuples(st.integers(0, 30), st.lists(words, max_size=8)), max_size=8),
    query=st.lists(words, min_size=1, max_size=4),
)
def test_updates_and_deletes_equal_a_rebuilt_index(
    corpus: list[list[str]], deletions: list[int], updates: list[tuple[int, list[str]]], query: list[str]
) -> None:
    docs = {f"d{i}": tokens for i, tokens in enumerate(corpus)}
    index = plain_index()
    index.add_tokens(list(docs), list(docs.values()))
    for i in deletions:
        index.delete([f"d{i}"])
        docs.pop(f"d{i}", None)
    for i, tokens in updates:
        index.add_tokens([f"d{i}"], [tokens])
        docs[f"d{i}"] = tokens
    rebuilt = plain_index()
    rebuilt.add_tokens(list(docs), list(docs.values()))
    assert len(index) == len(docs) == len(rebuilt)
    assert sorted(index.ids()) == sorted(docs)
    got = dict(index.search_tokens(query, k=100))
    want = dict(rebuilt.search_tokens(query, k=100))
    assert set(got) == set(want)
    for doc_id in want:
        assert got[doc_id] == pytest.approx(want[doc_id], rel=1e-5)


def test_text_search_batch_and_filters() -> None:
    index = native.BM25()
    index.add(["a", "b", "c"], ["Cats are running in the garden", "A dog sleeps", "The runner's cat ran"])
    assert [doc for doc, _ in index.search("running cats")] == ["a", "c"]
    assert index.search_batch(["running cats", "dogs"], k=1) == [index.search("running cats", k=1),
                                                                  index.search("dogs", k=1)]
    assert [doc for doc, _ in index.search("running cats", allow=["c", "zzz"])] == ["c"]
    assert index.search("nothing matches this") == []
    assert index.tokenize("The Runners RAN") == ["runner", "ran"]
    assert "a" in index and "z" not in index
    assert index.params["variant"] == "lucene"


def test_bad_arguments_say_what_to_do() -> None:
    with pytest.raises(ValueError, match='unknown BM25 variant "bm26"'):
        native.BM25(variant="bm26")
    with pytest.raises(ValueError, match="b must be between 0 and 1"):
        native.BM25(b=1.5)
    with pytest.raises(ValueError, match="unknown stemmer language"):
        native.BM25(stemmer="klingon")
    index = native.BM25()
    with pytest.raises(ValueError, match="got 2 ids but 1 texts"):
        index.add(["a", "b"], ["only one"])
    with pytest.raises(ValueError, match="appears twice in one batch"):
        index.add(["a", "a"], ["x", "y"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    index = native.BM25(variant="bm25+", k1=1.1, b=0.6, stemmer="english")
    index.add([f"d{i}" for i in range(50)], [f"document number {i} about topic {i % 5}" for i in range(50)])
    index.delete(["d3", "d4"])
    folder = tmp_path / "indexes"
    folder.mkdir()
    path = folder / "index.bm25"
    index.save(path)
    index.save(path)  # replaces it
    loaded = native.BM25.load(str(path))
    assert len(loaded) == 48
    assert loaded.params == index.params
    assert loaded.search("topic 3 number", k=5) == index.search("topic 3 number", k=5)
    assert sorted(os.listdir(folder)) == ["index.bm25"]  # no temporary file left behind


def test_loading_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.bm25"
    path.write_bytes(b"definitely not an index")
    with pytest.raises(native.IndexFormatError, match="not a dspyo3 BM25 index"):
        native.BM25.load(path)
    index = native.BM25()
    index.add(["a"], ["some words here"])
    index.save(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(native.IndexFormatError, match="corrupt"):
        native.BM25.load(path)
    data = bytearray(path.read_bytes())
    data[8:12] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(native.IndexFormatError, match="format 7; this build reads formats 1 and 2"):
        native.BM25.load(path)
    with pytest.raises(FileNotFoundError):
        native.BM25.load(tmp_path / "missing.bm25")


def test_mmap_load_searches_like_the_owned_index(tmp_path: Path) -> None:
    index = native.BM25(variant="bm25l", k1=1.3, b=0.7)
    texts = [f"document number {i} about topic {i % 7} and {i % 11}" for i in range(300)]
    index.add([f"d{i}" for i in range(300)], texts)
    index.delete([f"d{i}" for i in range(0, 300, 9)])
    index.add(["d5"], ["an updated document about topic 3"])
    path = tmp_path / "index.bm25"
    index.save(path)
    mapped = native.BM25.load(path, mmap=True)
    assert len(mapped) == len(index)
    assert mapped.params == index.params
    assert mapped.vocabulary_size == index.vocabulary_size
    assert mapped.ids() == index.ids()
    assert "d5" in mapped and "d9" not in mapped and "nope" not in mapped
    assert "mmap=True" in repr(mapped)
    assert mapped.tokenize("Documents ABOUT") == index.tokenize("Documents ABOUT")
    queries = ["topic 3 number", "document", "updated topic", "about 10", "absent words", ""]
    for k in (1, 5, 50):
        for query in queries:
            assert mapped.search(query, k=k) == index.search(query, k=k)
            allow = [f"d{i}" for i in range(0, 300, 4)] + ["missing"]
            assert mapped.search(query, k=k, allow=allow) == index.search(query, k=k, allow=allow)
        assert mapped.search_batch(queries, k=k) == index.search_batch(queries, k=k)
        tokens = index.tokenize("topic 3 document")
        assert mapped.search_tokens(tokens, k=k) == index.search_tokens(tokens, k=k)
    # the full load of the same file agrees too
    assert native.BM25.load(path).search("topic 3 number", k=10) == index.search("topic 3 number", k=10)
    # save on a mapped index copies the file, even over itself
    copy = tmp_path / "copy.bm25"
    mapped.save(copy)
    mapped.save(path)
    assert native.BM25.load(copy, mmap=True).search("document", k=7) == index.search("document", k=7)
    assert mapped.search("document", k=7) == index.search("document", k=7)


def test_mmap_index_is_read_only(tmp_path: Path) -> None:
    index = native.BM25()
    index.add(["a", "b"], ["some words here", "other words"])
    path = tmp_path / "index.bm25"
    index.save(path)
    mapped = native.BM25.load(path, mmap=True)
    for change in (
        lambda: mapped.add(["c"], ["text"]),
        lambda: mapped.add_tokens(["c"], [["text"]]),
        lambda: mapped.delete(["a"]),
        mapped.compact,
    ):
        with pytest.raises(ValueError, match=r"opened read-only \(mmap=True\); load it with BM25.load\(path\)"):
            change()
    assert len(mapped) == 2


def test_mmap_load_of_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.bm25"
    path.write_bytes(b"definitely not an index")
    with pytest.raises(native.IndexFormatError, match="not a dspyo3 BM25 index"):
        native.BM25.load(path, mmap=True)
    index = native.BM25()
    index.add([f"d{i}" for i in range(20)], [f"some words here {i}" for i in range(20)])
    index.save(path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(native.IndexFormatError, match="truncated"):
        native.BM25.load(path, mmap=True)
    data = bytearray(good)
    data[8:12] = (1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(native.IndexFormatError, match=r"format 1.*save it again"):
        native.BM25.load(path, mmap=True)
    data = bytearray(good)
    data[300] ^= 0x55  # inside the metadata
    path.write_bytes(bytes(data))
    with pytest.raises(native.IndexFormatError, match="corrupt"):
        native.BM25.load(path, mmap=True)
    # damage anywhere: a clear error or a working index, never a panic
    for at in range(0, len(good), 7):
        data = bytearray(good)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            mapped = native.BM25.load(path, mmap=True)
        except ValueError:
            continue
        try:
            mapped.search("some words", k=5)
            mapped.ids()
        except ValueError:
            pass


SAVER = """
import sys, dspyo3_native as native
index = native.BM25(stopwords=None, stemmer=None)
n = int(sys.argv[2])
index.add_tokens([f"d{i}" for i in range(n)], [[f"w{i % 997}", f"v{i % 13}", "common"] for i in range(n)])
print("ready", flush=True)
while True:
    index.save(sys.argv[1])
"""


def test_a_process_killed_mid_save_leaves_a_loadable_index(tmp_path: Path) -> None:
    path = tmp_path / "index.bm25"
    old = native.BM25(stopwords=None, stemmer=None)
    old.add_tokens(["only"], [["old"]])
    old.save(path)
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), "200000"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = native.BM25.load(path)  # never a half-written file
        assert len(loaded) in (1, 200000)


def test_concurrent_searches_and_writes() -> None:
    index = native.BM25(stopwords=None, stemmer=None)
    index.add([f"base{i}" for i in range(500)], [f"shared word{i % 17}" for i in range(500)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                hits = index.search_batch(["shared word3", "word5"], k=20)
                assert all(score > 0 for batch in hits for _, score in batch)
                assert len(index.search("shared", k=5)) == 5
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def writer() -> None:
        try:
            for round_ in range(60):
                ids = [f"w{round_}-{i}" for i in range(50)]
                index.add(ids, [f"shared extra{i}" for i in range(50)])
                index.delete(ids[:40])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads[4:]:
        t.start()
    for t in threads[:4]:
        t.start()
    threads[4].join()
    stop.set()
    for t in threads[:4]:
        t.join()
    assert errors == []
    assert len(index) == 500 + 60 * 10


def test_tokenizer() -> None:
    tok = native.Tokenizer()
    assert tok.tokenize("Crème brûlée: the CATS were running!") == ["creme", "brule", "cat", "were", "run"]
    assert native.Tokenizer(stemmer=None, stopwords=None).tokenize("The cats") == ["the", "cats"]
    assert native.Tokenizer(stopwords=["cats"], stemmer=None).tokenize("the cats") == ["the"]
    assert native.Tokenizer(stemmer="french", stopwords=["les"]).tokenize("les chats mangeaient") == ["chat", "mang"]
    texts = [f"text number {i} with Running words" for i in range(2000)]
    assert tok.tokenize_batch(texts) == [tok.tokenize(t) for t in texts]
    assert "english" in native.STEMMER_LANGUAGES
    with pytest.raises(ValueError, match="min_token_len"):
        native.Tokenizer(min_token_len=0)
    with pytest.raises(ValueError, match='unknown stopword list "german"'):
        native.Tokenizer(stopwords="german")


READ_METHODS: dict[str, Callable[[native.BM25], object]] = {
    "len": len,
    "contains": lambda index: "doc-7" in index,
    "ids": lambda index: index.ids(),
    "tokenize": lambda index: index.tokenize("running cats"),
    "vocabulary_size": lambda index: index.vocabulary_size,
    "params": lambda index: index.params,
    "repr": repr,
}


@pytest.mark.parametrize("method", sorted(READ_METHODS))
def test_reads_during_a_large_add_do_not_hold_the_gil(method: str) -> None:
    # A reader calls `method` in a loop while another thread runs a large add(); a third thread ticks. A read
    # that waits for the index lock with the GIL held freezes every Python thread until add() returns, so the
    # ticker would not tick between add() starting and returning.
    read = READ_METHODS[method]
    index = native.BM25()
    count = 50_000
    ids = [f"doc-{i}" for i in range(count)]
    texts = [f"document {i} about cats and dogs running through the forest number {i % 97}" for i in range(count)]
    ticks = 0
    stop = threading.Event()
    reader_running = threading.Event()
    window: list[int] = []

    def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    def reader() -> None:
        while not stop.is_set():
            read(index)
            reader_running.set()

    def writer() -> None:
        assert reader_running.wait(30)
        window.append(ticks)
        index.add(ids, texts)
        window.append(ticks)

    threads = [threading.Thread(target=ticker), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    try:
        writing = threading.Thread(target=writer)
        writing.start()
        writing.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(window) == 2 and len(index) == count
    assert window[1] - window[0] >= 5, f"the ticker ticked {window[1] - window[0]} times while add() ran"
