"""On-disk collections: ids from paths below the folder given, re-indexing replaces a source's chunks, a killed add
is never served and is repaired, a deleted vector store is reported and rebuilt."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspyo3_rag.collection import Chunk, RagCollection, read_sources


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


# -- consistency after a killed add ------------------------------------------------------------------------------

# adds `n` new chunks (and a new text for one committed chunk) to collection "kb" under `root`
_ADDER = """
import sys
from dspyo3_rag.collection import Chunk, RagCollection

root, n = sys.argv[1], int(sys.argv[2])
collection = RagCollection(root, "kb")
chunks = [Chunk(f"new-{i}", f"zebra quagga stripes savanna herd {i} " * 10, {"source": "new.jsonl"})
          for i in range(n)]
chunks.append(Chunk("old-0", "zebra quagga stripes savanna herd rewritten", {"source": "old.jsonl"}))
collection.store()
print("adding", flush=True)
collection.add(chunks)
print("added", flush=True)
"""


def _committed(root: Path) -> dict[str, str]:
    lines = (root / "kb" / "chunks.jsonl").read_text().splitlines()
    return {record["id"]: record["text"] for record in map(json.loads, lines)}


def _points(root: Path) -> int:
    collection = RagCollection(root, "kb")
    try:
        return collection.store().count("chunks")
    finally:
        collection.close()


def _killed_mid_add(template: Path, work: Path) -> Path:
    """A copy of ``template`` whose add of many chunks was SIGKILLed after some of its vectors were written and
    before it committed them (the kill is retried with other delays until it lands there)."""
    delay = 1.0
    for attempt in range(25):
        root = work / f"attempt-{attempt}"
        shutil.copytree(template, root)
        child = subprocess.Popen([sys.executable, "-c", _ADDER, str(root), "1500"], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "adding"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        committed = _committed(root)
        if "new-0" in committed:  # too late: the add committed
            delay /= 2
        elif _points(root) > len(committed):  # vectors of uncommitted chunks are in the store
            return root
        else:  # too early: nothing written yet
            delay *= 1.5
    pytest.fail("the kill never landed in the middle of an add (25 attempts)")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    root = tmp_path / "template"
    collection = RagCollection(root, "kb")
    try:
        collection.add([Chunk(f"old-{i}", f"apples pears orchard fruit number {i}", {"source": "old.jsonl"})
                        for i in range(40)])
    finally:
        collection.close()
    return root


def test_a_killed_add_is_never_served_and_rag_index_repairs_it(tmp_path: Path, template: Path, cli_env: dict[str, str],
                                                                dspyo3_exe: str) -> None:
    root = _killed_mid_add(template, tmp_path)
    committed = _committed(root)
    assert set(committed) == {f"old-{i}" for i in range(40)}
    collection = RagCollection(root, "kb")
    try:
        for kind in ("dense", "hybrid"):
            passages = collection.search("zebra quagga stripes", k=10, kind=kind)
            assert len(passages) == 10
            served = {(p.id, p.long_text) for p in passages}
            assert served <= set(committed.items()), f"{kind} served uncommitted chunks: {sorted(served)[:3]}"
    finally:
        collection.close()

    done = subprocess.run([dspyo3_exe, "rag", "index", "--collection", "kb", "--dir", str(root)], capture_output=True,
                          text=True, env=cli_env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("repaired 'kb': removed ")
    assert _points(root) == len(committed) == 40
    assert not (root / "kb" / "pending.json").exists()
    collection = RagCollection(root, "kb")
    try:
        top = collection.search("apples pears orchard fruit number 0", k=1, kind="dense")[0]
        assert (top.id, top.long_text) == ("old-0", committed["old-0"]), "the overwritten vector was restored"
        stored = {point_id: meta["text"] for point_id, _, meta in collection.store().scroll("chunks")}
        assert stored == committed
    finally:
        collection.close()
    again = subprocess.run([dspyo3_exe, "rag", "index", "--collection", "kb", "--dir", str(root)],
                           capture_output=True, text=True, env=cli_env, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("'kb' is consistent (40 chunks)"), again.stdout


def test_add_after_a_killed_add_repairs_first(tmp_path: Path, template: Path) -> None:
    root = _killed_mid_add(template, tmp_path)
    collection = RagCollection(root, "kb")
    try:
        collection.add([Chunk("extra", "kiwis are fuzzy", {"source": "extra.md"})])
        chunks = collection.chunks()
        assert len(chunks) == 41 and collection.store().count("chunks") == 41
    finally:
        collection.close()


@pytest.mark.parametrize("store", ["qdrant-edge", "qdrant"])
def test_a_deleted_vector_store_is_reported_and_rebuilt(tmp_path: Path, cli_env: dict[str, str],
                                                       dspyo3_exe: str, store: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.md").write_text("Cats purr when they are content.")
    (docs / "dogs.md").write_text("Dogs bark at strangers.")
    (tmp_path / "birds.md").write_text("Birds sing at dawn.")
    env = {**cli_env, "DSPYO3_RAG_DIR": str(tmp_path / "store")}

    def rag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([dspyo3_exe, "rag", *args], capture_output=True, text=True, env=env, timeout=300)

    assert rag("index", str(docs), "--collection", "pets", "--store", store).returncode == 0
    before = json.loads(rag("search", "cats purr", "--collection", "pets", "--json").stdout)
    qdrant = tmp_path / "store" / "pets" / store
    shutil.rmtree(qdrant)
    for args in (("search", "cats purr", "--collection", "pets"), ("index", str(tmp_path / "birds.md"),
                                                                   "--collection", "pets")):
        failed = rag(*args)
        assert failed.returncode == 1, failed.stdout
        assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("Error: "), failed.stderr
        assert str(qdrant) in failed.stderr and "dspyo3 rag index --rebuild --collection pets" in failed.stderr
    assert not qdrant.exists(), "nothing was half-rebuilt"
    assert len(_committed_at(tmp_path / "store" / "pets")) == 2
    bm25 = rag("search", "cats purr", "--collection", "pets", "--retriever", "bm25", "--json")
    assert bm25.returncode == 0 and json.loads(bm25.stdout)[0]["id"] == "docs/cats.md#0"

    rebuilt = rag("index", "--rebuild", "--collection", "pets")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt the vector store of 'pets' from 2 committed chunks" in rebuilt.stdout
    assert json.loads(rag("search", "cats purr", "--collection", "pets", "--json").stdout) == before


def _committed_at(directory: Path) -> list[str]:
    return (directory / "chunks.jsonl").read_text().splitlines()
