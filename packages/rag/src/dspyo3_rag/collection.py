"""A named, on-disk RAG collection: chunks (the source of truth, a JSONL file written atomically), an embedded
Qdrant store with their vectors, and a BM25 index built from the chunks when the collection is opened.

    collections/<name>/chunks.jsonl     {"id", "text", "source", ...metadata} per chunk
    collections/<name>/qdrant/          embedded Qdrant (local mode)

What ``dspyo3 rag index|search|ask`` use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspyo3_core.files import atomic_write_text
from dspyo3_rag.embed import LexicalEmbedder
from dspyo3_rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, Passage
from dspyo3_rag.stores.base import StoreError
from dspyo3_rag.stores.qdrant import QdrantStore

__all__ = ["Chunk", "RagCollection", "chunk_text", "read_sources"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}


@dataclass(frozen=True)
class Chunk:
    """One indexed piece of text."""

    id: str
    text: str
    metadata: dict[str, Any]


def chunk_text(text: str, words: int = 200, overlap: int = 40) -> list[str]:
    """Split ``text`` into windows of ``words`` words overlapping by ``overlap``."""
    if words < 1 or not 0 <= overlap < words:
        raise ValueError(f"need words >= 1 and 0 <= overlap < words, got words={words}, overlap={overlap}")
    tokens = text.split()
    if not tokens:
        return []
    step = words - overlap
    return [" ".join(tokens[start:start + words]) for start in range(0, max(len(tokens) - overlap, 1), step)]


def read_sources(paths: Iterable[str | Path], *, words: int = 200, overlap: int = 40) -> list[Chunk]:
    """Chunks of text files (``.txt``, ``.md``, ``.rst``; folders are walked) and JSONL files (one record per line:
    ``text`` required, ``id`` optional, other keys kept as metadata). Everything is read before anything is
    written, so an unreadable file fails the whole call with a message naming it."""
    chunks: list[Chunk] = []
    files: list[tuple[Path, str]] = []  # (file, its name in chunk ids: the path below the folder given)
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend((p, p.relative_to(path.parent).as_posix()) for p in sorted(path.rglob("*"))
                         if p.suffix in TEXT_SUFFIXES | {".jsonl"})
        elif path.is_file():
            files.append((path, path.name))
        else:
            raise StoreError(f"{path}: no such file or folder")
    if not files:
        raise StoreError("no .txt/.md/.rst/.jsonl files found in the given paths")
    for path, label in files:
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
        if path.suffix == ".jsonl":
            for line_no, line in enumerate(content.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise StoreError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise StoreError(f"{path}:{line_no}: each line needs a JSON object with a string 'text'")
                base = str(record.pop("id", f"{label}:{line_no}"))
                text = record.pop("text")
                for i, piece in enumerate(chunk_text(text, words, overlap)):
                    chunk_id = base if i == 0 else f"{base}#{i}"
                    chunks.append(Chunk(chunk_id, piece, {**record, "source": str(path)}))
        else:
            for i, piece in enumerate(chunk_text(content, words, overlap)):
                chunks.append(Chunk(f"{label}#{i}", piece, {"source": str(path)}))
    ids = [c.id for c in chunks]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise StoreError(f"chunk ids repeat: {dupes}; JSONL records need unique 'id's, and two files given "
                         "separately must not share a name (give their folder instead)")
    return chunks


class RagCollection:
    """Open (or create) collection ``name`` under ``root``."""

    def __init__(self, root: str | Path, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise StoreError(f"collection names are 1-64 letters, digits, '.', '_' or '-'; got {name!r}")
        self.name = name
        self.dir = Path(root) / name
        self.chunks_file = self.dir / "chunks.jsonl"
        self.embedder = LexicalEmbedder()
        self._store: QdrantStore | None = None

    @property
    def exists(self) -> bool:
        """Whether anything was indexed into it."""
        return self.chunks_file.is_file()

    def store(self) -> QdrantStore:
        if self._store is None:
            self._store = QdrantStore(self.dir / "qdrant")
        return self._store

    def close(self) -> None:
        """Release the embedded Qdrant's directory lock."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def chunks(self) -> dict[str, Chunk]:
        """Every chunk, by id."""
        if not self.exists:
            return {}
        out = {}
        for line in self.chunks_file.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            out[record["id"]] = Chunk(record["id"], record["text"], record.get("metadata", {}))
        return out

    def add(self, chunks: Sequence[Chunk], *, progress: bool = False) -> int:
        """Embed and store ``chunks`` (replacing chunks with the same id); returns how many were added.

        Vectors go in first; the chunks file, written atomically, is what makes them part of the collection.
        """
        existing = self.chunks()
        new_ids = {c.id for c in chunks}
        # a re-indexed source replaces all its chunks: the ones it no longer produces go
        sources = {c.metadata.get("source") for c in chunks}
        stale = [cid for cid, c in existing.items() if c.metadata.get("source") in sources and cid not in new_ids]
        dense = DenseRetriever(self.store(), "chunks", self.embedder)
        try:
            dense.add([c.id for c in chunks], [c.text for c in chunks], [c.metadata for c in chunks],
                      progress=progress)
        except Exception:
            # best effort: take back points this call added, so the store matches chunks.jsonl again
            added = [cid for cid in new_ids if cid not in existing]
            if added and "chunks" in self.store().collections():
                self.store().delete("chunks", added)
            raise
        if stale:
            self.store().delete("chunks", stale)
        merged = {cid: c for cid, c in existing.items() if cid not in set(stale)}
        merged.update((c.id, c) for c in chunks)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.chunks_file, "".join(
            json.dumps({"id": c.id, "text": c.text, "metadata": c.metadata}, ensure_ascii=False) + "\n"
            for c in merged.values()))
        return len(chunks)

    def retriever(self, kind: str = "hybrid") -> Any:
        """``bm25``, ``dense`` or ``hybrid`` over this collection."""
        if not self.exists:
            raise StoreError(f"collection {self.name!r} is empty or does not exist under {self.dir.parent}; "
                             f"create it with: dspyo3 rag index PATH --collection {self.name}")
        chunks = self.chunks()
        bm25 = BM25Retriever()
        bm25.add(list(chunks), [c.text for c in chunks.values()], [c.metadata for c in chunks.values()])
        dense = DenseRetriever(self.store(), "chunks", self.embedder)
        if kind == "bm25":
            return bm25
        if kind == "dense":
            return dense
        if kind == "hybrid":
            return HybridRetriever([bm25, dense], weights=[0.75, 0.25])
        raise StoreError(f"unknown retriever {kind!r}; choose bm25, dense or hybrid")

    def search(self, query: str, k: int = 5, kind: str = "hybrid") -> list[Passage]:
        """Top ``k`` passages for ``query``."""
        if not query.strip():
            raise StoreError("the query is empty")
        return list(self.retriever(kind).search_batch([query], k)[0])
