"""A named, on-disk RAG collection: chunks (the source of truth, a JSONL file written atomically), a vector store
with their vectors (chosen by name when the collection is created, recorded in ``collection.json``), and a keyword
index (BM25 plus a by-id lookup of the chunks) persisted beside them, updated with every add and loaded, not
rebuilt, when the collection is searched.

    collections/<name>/chunks.jsonl         {"id", "text", "source", ...metadata} per chunk
    collections/<name>/collection.json      {"format": 1, "store": "<store name>"}
    collections/<name>/<store name>/        an embedded store's files (``qdrant/`` for Qdrant local mode)
    collections/<name>/keyword/             bm25.bin, chunks.sqlite and manifest.json (derived from chunks.jsonl)

What ``dspyo3 rag index|search|ask`` use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import json
import os
import re
import shutil
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from dspyo3_core.files import atomic_write_text, clean_stale_temporaries, fsync_dir, loads_json, locked_temporary
from dspyo3_rag.embed import LexicalEmbedder
from dspyo3_rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, Passage
from dspyo3_rag.stores.base import StoreCorruptError, StoreError, VectorStore

__all__ = ["DEFAULT_STORE", "Chunk", "CollectionError", "IndexRebuiltWarning", "RagCollection", "Repair", "Skipped",
           "Sources", "chunk_text", "id_clashes", "read_sources", "scan_sources", "source_labels"]

DEFAULT_STORE = "qdrant-edge"
"""The store of collections created without naming one: Qdrant Edge, Qdrant's engine in-process (HNSW, on disk)."""
_LEGACY_STORE = "qdrant"  # collections written before collection.json existed keep their vectors in qdrant/
_META_FORMAT = 1
_INDEX_FORMAT = 1  # of keyword/manifest.json; another value means the index is rebuilt
_ADD_BATCH = 512  # chunks embedded and stored per batch: what bounds an add's memory
_INDEX_BATCH = 10_000  # chunks per batch of a keyword index written afresh

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".mdx", ".rst"})
"""Suffixes read as text when a folder is walked, compared in lower case (``.MD`` counts)."""
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
SUFFIX_HINT = ", ".join(sorted(TEXT_SUFFIXES))
_POINTS = "chunks"  # the Qdrant collection holding the vectors


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


@dataclass(frozen=True)
class Skipped:
    """A file (or hidden folder) met while walking a folder and not indexed, with the reason."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Sources:
    """What :func:`scan_sources` read: the chunks, and what it skipped and why."""

    chunks: list[Chunk]
    skipped: list[Skipped]


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES


def _walk(folder: Path, skipped: list[Skipped]) -> list[Path]:
    """The indexable files below ``folder`` in sorted order; the rest goes to ``skipped``. Hidden files and
    folders (names starting with ``.``, such as ``.git``) and links to folders are skipped without being descended
    into."""
    found: list[Path] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise StoreError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None
    for entry in entries:
        if entry.name.startswith("."):
            skipped.append(Skipped(entry, "hidden folder" if entry.is_dir() else "hidden file"))
        elif entry.is_dir() and entry.is_symlink():  # not followed: a link may loop or leave the tree
            skipped.append(Skipped(entry, "symbolic link to a folder (not followed; give its target instead)"))
        elif entry.is_dir():
            found.extend(_walk(entry, skipped))
        elif not entry.is_file():
            skipped.append(Skipped(entry, "not a regular file"))
        elif entry.suffix.lower() in TEXT_SUFFIXES or _is_jsonl(entry):
            found.append(entry)
        else:
            kind = f"suffix {entry.suffix!r}" if entry.suffix else "no suffix"
            skipped.append(Skipped(entry, f"{kind} is not indexed (indexed: {SUFFIX_HINT})"))
    return found


def _label_of(chunk: Chunk) -> tuple[str, str] | None:
    """``(resolved source, label)`` of a chunk read from a file, from its id and ``source``; None for other ids
    (JSONL records with ids of their own)."""
    source = chunk.metadata.get("source")
    if not isinstance(source, str) or not source:
        return None
    name = Path(source).name
    pattern = r"(.+):\d+(?:#\d+)?" if _is_jsonl(Path(source)) else r"(.+)#\d+"
    match = re.fullmatch(pattern, chunk.id)
    if match is None or match.group(1).rsplit("/", 1)[-1] != name:
        return None
    return str(Path(source).resolve()), match.group(1)


def source_labels(chunks: Iterable[Chunk]) -> dict[str, str]:
    """The name each source file has in the chunk ids of ``chunks``, by the file's resolved path: what
    :func:`scan_sources` reuses so that re-indexing a file keeps its ids however its path is spelled."""
    labels: dict[str, str] = {}
    for chunk in chunks:
        found = _label_of(chunk)
        if found is not None:
            labels.setdefault(*found)
    return labels


def _resolved(source: Any) -> str | None:
    """``source`` metadata as a resolved path (None when it is not a path)."""
    if not isinstance(source, str) or not source:
        return None
    return _resolve_path(source)


@functools.lru_cache(maxsize=4096)
def _resolve_path(source: str) -> str:
    try:
        return str(Path(source).resolve())
    except (OSError, RuntimeError, ValueError):
        return source


def id_clashes(existing: Mapping[str, Chunk], chunks: Iterable[Chunk]) -> list[tuple[str, str, str]]:
    """``(id, existing source, new source)`` for each chunk of a text file whose id already belongs to a different
    file in ``existing`` (two files of the same name given on their own): indexing it would overwrite the other
    file's chunks. Sources stored as relative paths (by earlier versions) are not compared, and a source that no
    longer exists (a folder moved or renamed) is replaced, not a clash."""
    out = []
    for chunk in chunks:
        old = existing.get(chunk.id)
        if old is None:
            continue
        old_source, new_source = old.metadata.get("source"), chunk.metadata.get("source")
        if not (isinstance(old_source, str) and isinstance(new_source, str) and Path(old_source).is_absolute()):
            continue
        if _is_jsonl(Path(old_source)) or _is_jsonl(Path(new_source)):
            continue  # JSONL records carry ids of their own, which may move between files
        if _resolved(old_source) != _resolved(new_source) and Path(old_source).exists():
            out.append((chunk.id, old_source, new_source))  # a file that was moved or deleted is no clash
    return out


def read_sources(paths: Iterable[str | Path], *, words: int = 200, overlap: int = 40,
                 labels: Mapping[str, str] | None = None) -> list[Chunk]:
    """The chunks of :func:`scan_sources` (without the list of skipped files)."""
    return scan_sources(paths, words=words, overlap=overlap, labels=labels).chunks


def scan_sources(paths: Iterable[str | Path], *, words: int = 200, overlap: int = 40,
                 labels: Mapping[str, str] | None = None) -> Sources:
    """Chunks of text files (``.txt``, ``.md``, ``.markdown``, ``.mdx``, ``.rst``, ... in any letter case; folders
    are walked) and JSONL files (one record per line: ``text`` required, ``id`` optional, other keys kept as
    metadata), and the files skipped while walking folders with the reason. A file given by name is read as text
    whatever its suffix. Everything is read before anything is written, so an unreadable file fails the whole call
    with a message naming it.

    Chunk ids are ``<name>#<n>`` (JSONL records without an id: ``<name>:<line>``), where ``<name>`` is the file's
    path below the folder given, starting with that folder's own name (``notes/keys.md``), or the file's name when
    the file was given. Paths are resolved first, so ``notes``, ``./notes/`` and ``/abs/notes`` (or ``.`` inside
    ``notes``) give the same ids. ``labels`` (resolved path -> name, see :func:`source_labels`) keeps the names
    files already have in a collection, so ``notes/keys.md`` indexed again on its own keeps ``notes/keys.md#0``.
    The ``source`` metadata is the file's resolved path.
    """
    chunks: list[Chunk] = []
    skipped: list[Skipped] = []
    files: list[tuple[Path, str]] = []  # (resolved file, its name in chunk ids)
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = path.resolve()
            base = root.parent
            files.extend((p, p.relative_to(base).as_posix()) for p in _walk(root, skipped))
        elif path.is_file():
            resolved = path.resolve()
            files.append((resolved, resolved.name))
        else:
            raise StoreError(f"{path}: no such file or folder")
    if labels:
        files = [(p, labels.get(_resolve_path(str(p)), label)) for p, label in files]
    if not files:
        detail = f"; skipped {_skipped_summary(skipped)}" if skipped else ""
        raise StoreError(f"no files to index in the given paths (indexed: {SUFFIX_HINT}, .jsonl){detail}")
    for path, label in files:
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
        before = len(chunks)
        if _is_jsonl(path):
            for line_no, line in enumerate(content.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = loads_json(line, source=f"{path}:{line_no}")
                except json.JSONDecodeError as exc:
                    raise StoreError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
                except ValueError as exc:  # nested too deeply for Python
                    raise StoreError(str(exc)) from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise StoreError(f"{path}:{line_no}: each line needs a JSON object with a string 'text'")
                base_id = str(record.pop("id", f"{label}:{line_no}"))
                text = record.pop("text")
                for i, piece in enumerate(chunk_text(text, words, overlap)):
                    chunk_id = base_id if i == 0 else f"{base_id}#{i}"
                    chunks.append(Chunk(chunk_id, piece, {**record, "source": str(path)}))
        else:
            for i, piece in enumerate(chunk_text(content, words, overlap)):
                chunks.append(Chunk(f"{label}#{i}", piece, {"source": str(path)}))
        if len(chunks) == before:
            skipped.append(Skipped(path, "no text in it"))
    ids = [c.id for c in chunks]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise StoreError(f"chunk ids repeat: {dupes}; JSONL records need unique 'id's, and two files given "
                         "separately must not share a name (give their folder instead)")
    return Sources(chunks, skipped)


def _skipped_summary(skipped: Sequence[Skipped], limit: int = 5) -> str:
    shown = ", ".join(f"{s.path.name} ({s.reason})" for s in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return shown + more


class CollectionError(StoreError):
    """A collection whose files are damaged or disagree in a way only the user can settle; the message names the
    file (and line) and the command that fixes it."""


@dataclass(frozen=True)
class Repair:
    """What :meth:`RagCollection.repair` did: vectors of uncommitted chunks deleted, committed chunks re-embedded."""

    removed: int = 0
    restored: int = 0

    def __bool__(self) -> bool:
        return bool(self.removed or self.restored)


class IndexRebuiltWarning(UserWarning):
    """The persisted keyword index of a collection was missing, stale (``chunks.jsonl`` changed behind it) or
    corrupt, and was rebuilt from ``chunks.jsonl``."""


class RagCollection:
    """Open (or create) collection ``name`` under ``root``.

    ``chunks.jsonl`` is the commit point: a chunk is part of the collection once the atomic rewrite of that file
    that adds it has landed, and searches read the collection as of that write. :meth:`add` records the ids of
    each batch in ``pending.json`` before the batch reaches the vector store and removes the record after the
    commit, so an add that was killed leaves a record of the vectors that may disagree with the chunks; searches never
    return those (a dense hit counts only if its id and text are committed) and :meth:`repair` (run by every
    :meth:`add`) puts the vector store back in line.

    ``store`` names the vector store (a name registered through ``dspyo3_register_vector_stores``: ``qdrant``,
    ``chroma``, ``pinecone``, ...) of a new collection (default :data:`DEFAULT_STORE`); it is recorded in
    ``collection.json`` by the first add, and an existing collection keeps the store it was made with (one made
    before the record existed: ``qdrant``, embedded). Naming a different store for an existing collection raises
    :class:`StoreError`. Embedded stores keep their files in ``<dir>/<store name>/``.

    The keyword index (BM25 and a lookup of the chunks by id) lives in ``keyword/``: written with every add, loaded
    on the first keyword or hybrid search. One that is missing, was written by another version, is corrupt or
    does not match ``chunks.jsonl`` (edited by hand) is rebuilt from the chunks with an
    :class:`IndexRebuiltWarning`.
    """

    def __init__(self, root: str | Path, name: str, *, store: str | None = None) -> None:
        if not _NAME.fullmatch(name):
            raise StoreError(f"collection names are 1-64 letters, digits, '.', '_' or '-'; got {name!r}")
        self.name = name
        self.dir = Path(root) / name
        self.chunks_file = self.dir / "chunks.jsonl"
        self.meta_file = self.dir / "collection.json"
        self.pending_file = self.dir / "pending.json"
        self.keyword_dir = self.dir / "keyword"
        self.embedder = LexicalEmbedder()
        recorded = self._recorded_store()
        if recorded is not None and store is not None and store != recorded:
            raise StoreError(f"collection {name!r} keeps its vectors in the {recorded!r} store, not {store!r}; leave "
                             f"out the store (--store) to use it, or index into a new collection")
        self.store_name: str = recorded or store or DEFAULT_STORE
        self._factory = _store_factory(self.store_name)
        self._store: VectorStore | None = None
        self._bm25: Any = None  # the native BM25 (opened lazily)
        self._bm25_mapped = False  # whether _bm25 is the read-only memory-mapped file
        self._db: sqlite3.Connection | None = None

    @property
    def store_dir(self) -> Path:
        """Where an embedded store keeps its files: ``<dir>/<store name>``."""
        return self.dir / self.store_name

    @property
    def qdrant_dir(self) -> Path:
        """The embedded Qdrant folder (``<dir>/qdrant``) of a collection on the ``qdrant`` store."""
        return self.dir / "qdrant"

    def _recorded_store(self) -> str | None:
        """The store named in ``collection.json``; ``qdrant`` for a collection made before that file existed;
        ``None`` for a new collection."""
        try:
            record = loads_json(self.meta_file.read_bytes(), source=str(self.meta_file))
        except FileNotFoundError:
            return _LEGACY_STORE if self.chunks_file.exists() or self.qdrant_dir.exists() else None
        except (OSError, ValueError) as exc:
            raise CollectionError(f"{self.meta_file}: cannot be read ({exc}); restore it, or write "
                                  f'{{"format": 1, "store": "{_LEGACY_STORE}"}} into it for a collection on the '
                                  f"{_LEGACY_STORE!r} store") from None
        if not (isinstance(record, dict) and isinstance(record.get("store"), str) and record["store"]):
            raise CollectionError(f"{self.meta_file}: not a collection record (a JSON object with a string 'store'); "
                                  f'restore it, or write {{"format": 1, "store": "{_LEGACY_STORE}"}} into it')
        return str(record["store"])

    def _record_store(self) -> None:
        if not self.meta_file.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.meta_file, json.dumps({"format": _META_FORMAT, "store": self.store_name}) + "\n")

    @property
    def exists(self) -> bool:
        """Whether anything was indexed into it."""
        return self.chunks_file.is_file()

    def _rebuild_hint(self) -> str:
        return f"rebuild it from {self.chunks_file.name} with: dspyo3 rag index --rebuild --collection {self.name}"

    def _embedded(self) -> bool:
        """Whether the store keeps its files in :attr:`store_dir` (its factory takes ``path``)."""
        return "path" in _parameters(self._factory)

    def store(self) -> VectorStore:
        """The collection's vector store (opened once; an embedded store holds its folder's lock until
        :meth:`close`)."""
        if self._store is None:
            params = _parameters(self._factory)
            options: dict[str, Any] = {}
            if "path" in params:
                options["path"] = self.store_dir
            elif "prefix" in params:  # a service shared by several collections (Pinecone): one prefix each
                options["prefix"] = "dspyo3-" + re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") + "-"
            try:
                self._store = self._factory(**options)
            except StoreCorruptError as exc:
                raise CollectionError(f"collection {self.name!r} is damaged: {exc}; {self._rebuild_hint()}") from None
        return self._store

    def close(self) -> None:
        """Release the vector store (an embedded store's directory lock) and the keyword index."""
        if self._store is not None:
            closer = getattr(self._store, "close", None)
            if callable(closer):
                closer()
            self._store = None
        if self._db is not None:
            self._db.close()
            self._db = None
        self._bm25 = None

    def _iter_chunks(self) -> Iterator[Chunk]:
        """The committed chunks in file order, read line by line (memory holds one line). A line of
        ``chunks.jsonl`` that is not a chunk record raises :class:`CollectionError` naming ``file:line``."""
        for _, chunk in self._iter_records():
            yield chunk

    def _iter_records(self) -> Iterator[tuple[bytes, Chunk]]:
        """``(line, chunk)`` of each record of ``chunks.jsonl`` (the raw line, newline included, for copying)."""
        if not self.exists:
            return
        try:
            handle = self.chunks_file.open("rb")
        except OSError as exc:
            raise CollectionError(f"{self.chunks_file}: cannot be read ({exc.strerror or exc})") from None
        with handle:
            number = 0
            while True:
                try:
                    line = handle.readline()
                except OSError as exc:
                    raise CollectionError(f"{self.chunks_file}: cannot be read ({exc.strerror or exc})") from None
                if not line:
                    return
                number += 1
                if not line.strip():
                    continue
                where = f"{self.chunks_file}:{number}"
                try:
                    record = loads_json(line, source=where)
                except ValueError as exc:  # not JSON, not UTF-8, or nested too deeply
                    problem = str(exc).removeprefix(f"{where}: ")
                    raise CollectionError(self._corrupt(where, f"not JSON ({problem})")) from None
                if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                        and isinstance(record.get("text"), str) and isinstance(record.get("metadata", {}), dict)):
                    raise CollectionError(self._corrupt(where, "not a chunk record (a JSON object with string 'id' "
                                                               "and 'text' and an object 'metadata')"))
                if not line.endswith(b"\n"):
                    line += b"\n"
                yield line, Chunk(record["id"], record["text"], record.get("metadata", {}))

    def chunks(self) -> dict[str, Chunk]:
        """Every committed chunk, by id (the whole collection in memory: :meth:`add`, :meth:`repair` and searches
        do without it). A line of ``chunks.jsonl`` that is not a chunk record raises :class:`CollectionError`
        naming ``file:line``."""
        return {chunk.id: chunk for chunk in self._iter_chunks()}

    def _committed_count(self) -> int:
        """How many chunks are committed: the keyword index's manifest when that index is current (no read of
        ``chunks.jsonl``), else the distinct ids of ``chunks.jsonl``, read line by line."""
        if not self.exists:
            return 0
        if self._index_problem() is None:
            count = (self._manifest() or {}).get("count")
            if isinstance(count, int) and count >= 0:
                return count
        return len({chunk.id for chunk in self._iter_chunks()})

    def _corrupt(self, where: str, problem: str) -> str:
        return (f"{where}: {problem}; the chunks file of collection {self.name!r} is corrupt: restore it from a "
                f"backup, or delete that line and run `dspyo3 rag index --collection {self.name}` to drop its "
                f"vectors (or delete {self.dir} and index the sources again)")

    def _check_vectors(self, committed: int) -> None:
        """Raise :class:`CollectionError` when ``committed`` chunks have no vector store to search (its folder or
        its collection was deleted); such a collection is rebuilt, never half-filled by a later add."""
        if not committed:
            return
        where = self.store_dir if self._embedded() else f"{self.store_name} store"
        if self._embedded() and not self.store_dir.is_dir():
            raise CollectionError(f"collection {self.name!r} is damaged: its vector store {where} is "
                                  f"missing ({committed} committed chunks have no vectors); "
                                  f"{self._rebuild_hint()}")
        if _POINTS not in self.store().collections():
            raise CollectionError(f"collection {self.name!r} is damaged: its vector store {where} has no "
                                  f"{_POINTS!r} collection ({committed} committed chunks have no vectors); "
                                  f"{self._rebuild_hint()}")

    def _read_pending(self) -> list[str] | None:
        """The ids an interrupted write recorded (``{"ids": [...]}`` per line: a line per batch sent to the vector
        store, and one for the chunks a commit drops); ``None`` when the record is unreadable (then everything is
        checked)."""
        try:
            data = self.pending_file.read_bytes()
        except OSError:
            return None
        ids: list[str] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = loads_json(line, source=str(self.pending_file))
            except ValueError:
                return None
            batch = record.get("ids") if isinstance(record, dict) else None
            if not isinstance(batch, list) or not all(isinstance(i, str) for i in batch):
                return None
            ids.extend(batch)
        return ids

    def repair(self, *, progress: bool = False) -> Repair:
        """Bring the vector store in line with the committed chunks after an interrupted write: delete the points
        of chunks that were never committed and re-embed committed chunks whose points are missing or were
        overwritten by the uncommitted write. Cheap when nothing was interrupted: with no pending record and as
        many points as the keyword index counts chunks, ``chunks.jsonl`` is not read (one count).

        Raises :class:`CollectionError` when the vector store is missing altogether (use :meth:`rebuild`).
        """
        interrupted = self.pending_file.exists()
        committed = self._committed_count()
        if not committed and self._embedded() and not self.store_dir.is_dir():
            self.pending_file.unlink(missing_ok=True)
            return Repair()
        self._check_vectors(committed)
        store = self.store()
        if _POINTS not in store.collections():  # nothing committed and no vectors: consistent
            self.pending_file.unlink(missing_ok=True)
            return Repair()
        if not interrupted and store.count(_POINTS) == committed:
            return Repair()
        pending = self._read_pending() if interrupted else []
        done = Repair()
        if pending:  # the interrupted write's ids: drop the uncommitted ones, rewrite the committed ones
            done = self._restore_pending(set(pending), progress=progress)
        if pending is None or store.count(_POINTS) != committed:
            # no readable record, or the stores still disagree (e.g. a chunks file edited by hand): compare all
            more = self._restore_all(progress=progress)
            done = Repair(done.removed + more.removed, done.restored + more.restored)
        self.pending_file.unlink(missing_ok=True)
        return done

    def _restore_pending(self, pending: set[str], *, progress: bool = False) -> Repair:
        """Delete the points of the ``pending`` ids that are not committed and re-embed the committed ones (two
        passes over ``chunks.jsonl``; memory holds ids, not chunks)."""
        committed = {chunk.id for chunk in self._iter_chunks() if chunk.id in pending}
        return self._restore([i for i in pending if i not in committed],
                             (chunk for chunk in self._iter_chunks() if chunk.id in committed),
                             total=len(committed), progress=progress)

    def _restore_all(self, *, progress: bool = False) -> Repair:
        """Compare every point with the committed chunks: re-embed the chunks whose point is missing or holds
        another text, delete the points of ids that are not committed. Memory holds an id and a digest a point."""
        store = self.store()
        stored = {point_id: _digest(meta.get("text")) for point_id, _, meta in store.scroll(_POINTS)}

        def changed() -> Iterator[Chunk]:
            for chunk in self._iter_chunks():
                if stored.pop(chunk.id, None) != _digest(chunk.text):
                    yield chunk

        restored = self._restore([], changed(), progress=progress).restored
        removed = self._restore(list(stored), [], progress=progress).removed  # what no committed chunk claimed
        return Repair(removed, restored)

    def _restore(self, remove: Sequence[str], chunks: Iterable[Chunk], *, total: int | None = None,
                 progress: bool = False) -> Repair:
        """Delete the points ``remove`` and (re-)embed ``chunks``; what it did."""
        store = self.store()
        removed = 0
        if remove:
            before = store.count(_POINTS)
            store.delete(_POINTS, list(remove))
            removed = before - store.count(_POINTS)
        return Repair(removed, self._embed_and_store(chunks, total=total, progress=progress))

    def _embed_and_store(self, chunks: Iterable[Chunk], *, total: int | None = None, progress: bool = False,
                         before: Callable[[list[Chunk]], None] | None = None,
                         after: Callable[[list[Chunk]], None] | None = None) -> int:
        """Embed ``chunks`` and upsert their vectors (NumPy float32), :data:`_ADD_BATCH` at a time as they are
        consumed, so memory holds one batch whatever the number of chunks; one progress bar (of ``total``) for the
        whole run. ``before`` sees each batch before it reaches the store, ``after`` once it is there. A batch
        that repeats an id keeps its last chunk. Returns how many chunks were stored."""
        import numpy as np

        from dspyo3_rag.progress import bar, wanted

        if total is None and isinstance(chunks, Sized):
            total = len(chunks)
        if total == 0:
            return 0
        store = self.store()
        exists: bool | None = None
        stored = 0
        # rich draws an open-ended bar for a total of None
        with bar(f"embedding and storing in {self.name}", cast(int, total), wanted(progress)) as shown:
            for batch in _batches(chunks, _ADD_BATCH):
                if before is not None:
                    before(batch)
                vectors = np.asarray(self.embedder([c.text for c in batch]), dtype=np.float32)
                if exists is None:
                    exists = _POINTS in store.collections()
                if not exists:
                    store.create_collection(_POINTS, int(vectors.shape[1]))
                    exists = True
                store.upsert(_POINTS, [c.id for c in batch], vectors,
                             [{**c.metadata, "text": c.text} for c in batch], batch_size=_ADD_BATCH)
                if after is not None:
                    after(batch)
                shown.advance(len(batch))
                stored += len(batch)
        return stored

    def rebuild(self, *, progress: bool = False) -> int:
        """Re-create the vector store from the committed chunks (after its folder was deleted or damaged);
        returns how many chunks were embedded."""
        ids = {chunk.id for chunk in self._iter_chunks()}  # a corrupt chunks file stops here, before any delete
        try:
            store = self.store()
        except CollectionError:  # the store's own files are damaged: start it afresh
            if not self._embedded():
                raise
            shutil.rmtree(self.store_dir)
            store = self.store()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._record_store()
        atomic_write_text(self.pending_file, json.dumps({"ids": sorted(ids)}))
        if _POINTS in store.collections():
            store.drop_collection(_POINTS)
        self._restore([], self._iter_chunks(), total=len(ids), progress=progress)
        self.pending_file.unlink(missing_ok=True)
        return len(ids)

    def add(self, chunks: Iterable[Chunk], *, progress: bool = False, total: int | None = None) -> int:
        """Embed and store ``chunks`` (replacing chunks with the same id; within one call the last chunk of an id
        wins); returns how many were consumed. ``chunks`` may be any iterable, a generator too: it is consumed
        :data:`_ADD_BATCH` at a time and never held whole, nor is the collection (memory holds a batch, the new
        ids and their sources, and the keyword index's BM25). ``total`` sizes the progress bar of an iterable
        without a length.

        A re-indexed source replaces its chunks: committed chunks of a source this call's chunks come from, and
        that the call does not produce, are dropped. Each batch's ids are recorded in ``pending.json`` (fsync'd)
        before the batch reaches the vector store; the new chunks collect in a temporary file; the commit is one
        pass over the committed ``chunks.jsonl`` that keeps what is neither replaced nor dropped, appends the new
        chunks and renames the complete, fsync'd file over it. The vectors of dropped chunks go after the commit.
        An interrupted earlier add is repaired first (:meth:`repair`); an add that fails leaves the collection at
        its previous commit.
        """
        if self._embedded() and not self.store_dir.is_dir():
            self._check_vectors(self._committed_count())  # committed chunks without their vector store: rebuild
        self.store()  # the directory lock first: no other writer between reading the chunks and committing
        self.repair(progress=progress)
        index_current = self.exists and self._index_problem() is None  # checked before the commit changes it
        self.dir.mkdir(parents=True, exist_ok=True)
        self._record_store()
        clean_stale_temporaries(self.dir)  # what a killed add left
        consumed = 0

        def counted() -> Iterator[Chunk]:
            nonlocal consumed
            for chunk in chunks:
                consumed += 1
                yield chunk

        if total is None and isinstance(chunks, Sized):
            total = len(chunks)
        adding = _StreamingAdd(self, index_current)
        try:
            self._embed_and_store(counted(), total=total if total else None, progress=progress,
                                  before=adding.record, after=adding.index)
            adding.commit()
        except BaseException as exc:
            adding.abandon()
            if isinstance(exc, Exception):
                with contextlib.suppress(Exception):  # best effort; the record stays for the next repair otherwise
                    self.repair()
            raise
        return consumed

    # -- the keyword index (keyword/: bm25.bin, chunks.sqlite, manifest.json) -----------------------------------
    @property
    def _manifest_file(self) -> Path:
        return self.keyword_dir / "manifest.json"

    @property
    def _bm25_file(self) -> Path:
        return self.keyword_dir / "bm25.bin"

    @property
    def _db_file(self) -> Path:
        return self.keyword_dir / "chunks.sqlite"

    def _fingerprint(self) -> dict[str, int] | None:
        """What identifies the committed ``chunks.jsonl`` (every commit writes a new file)."""
        try:
            stat = self.chunks_file.stat()
        except OSError:
            return None
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}

    def _manifest(self) -> dict[str, Any] | None:
        try:
            record = loads_json(self._manifest_file.read_bytes(), source=str(self._manifest_file))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _index_problem(self) -> str | None:
        """Why the persisted keyword index cannot serve the committed chunks; ``None`` when it can. Reads only the
        manifest and two ``stat`` calls."""
        manifest = self._manifest()
        if manifest is None:
            return "it is missing" if not self._manifest_file.exists() else "its manifest is unreadable"
        if manifest.get("format") != _INDEX_FORMAT or not isinstance(manifest.get("count"), int):
            return f"it was written by another version (format {manifest.get('format')!r})"
        if manifest.get("chunks") != self._fingerprint():
            return f"{self.chunks_file.name} changed after it was written"
        if not (self._bm25_file.is_file() and self._db_file.is_file()):
            return "some of its files are missing"
        return None

    def _rebuild_index(self, problem: str) -> None:
        self._build_index(self._iter_chunks())  # a corrupt chunks file stops here with its own error
        warnings.warn(f"collection {self.name!r}: the keyword index in {self.keyword_dir} was rebuilt from "
                      f"{self.chunks_file.name} ({problem})", IndexRebuiltWarning, stacklevel=3)

    def _build_index(self, chunks: Iterable[Chunk]) -> None:
        """Write the keyword index of ``chunks`` (the committed ones, streamed: memory holds a batch besides the
        BM25) afresh; the manifest goes last. A repeated id keeps its last chunk."""
        self._drop_index_handles()
        self.keyword_dir.mkdir(parents=True, exist_ok=True)
        self._manifest_file.unlink(missing_ok=True)  # invalid until the new one is complete
        bm25 = BM25Retriever().index
        temp = self._db_file.with_name(f".{self._db_file.name}.{os.getpid()}.tmp")
        temp.unlink(missing_ok=True)
        db = sqlite3.connect(temp)
        try:
            db.execute("CREATE TABLE chunks (id TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL)")
            for batch in _batches(chunks, _INDEX_BATCH):
                bm25.add([c.id for c in batch], [c.text for c in batch])
                db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", _rows(batch))
            db.commit()
        except BaseException:
            db.close()
            temp.unlink(missing_ok=True)
            raise
        db.close()
        os.replace(temp, self._db_file)
        bm25.save(self._bm25_file)
        self._write_manifest(len(bm25))
        self._bm25, self._bm25_mapped = bm25, False

    def _write_manifest(self, count: int) -> None:
        atomic_write_text(self._manifest_file, json.dumps(
            {"format": _INDEX_FORMAT, "count": count, "chunks": self._fingerprint()}) + "\n")

    def _drop_index_handles(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._bm25 = None

    def _load_bm25(self, *, mutable: bool = False) -> Any:
        """The persisted BM25, opened once (``IndexFormatError``, a ``ValueError``, when corrupt or written in an
        older format). For searching it is memory-mapped: opening reads the file's tables, not its postings, so a
        large collection answers at once. ``mutable`` loads it in full, for an add to change it."""
        import dspyo3_native as native

        if self._bm25 is None or (mutable and self._bm25_mapped):
            self._bm25 = native.BM25.load(self._bm25_file, mmap=not mutable)
            self._bm25_mapped = not mutable
        return self._bm25

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if not self._db_file.is_file():
                raise sqlite3.OperationalError(f"{self._db_file} is missing")
            self._db = sqlite3.connect(self._db_file, check_same_thread=False)
        return self._db

    def _ready_index(self) -> int:
        """Make sure the keyword index serves the committed chunks (rebuilding it, with a warning, when it does
        not); returns how many chunks are committed."""
        problem = self._index_problem()
        if problem is not None:
            self._rebuild_index(problem)
        manifest = self._manifest() or {}
        return int(manifest.get("count", 0))

    def keyword_index(self) -> Any:
        """The collection's native BM25 (``dspyo3_native.BM25``), loaded from ``keyword/bm25.bin``; rebuilt with
        an :class:`IndexRebuiltWarning` when that file is stale or corrupt."""
        self._ready_index()
        try:
            bm25 = self._load_bm25()
            expected = (self._manifest() or {}).get("count")
            if len(bm25) != expected:
                raise ValueError(f"it holds {len(bm25)} documents, the manifest says {expected}")
        except (OSError, ValueError) as exc:  # IndexFormatError is a ValueError
            self._bm25 = None
            self._rebuild_index(f"{self._bm25_file.name} cannot be used: {str(exc)[:200]}")
            bm25 = self._load_bm25()
        return bm25

    def lookup(self, ids: Sequence[str]) -> dict[str, Chunk]:
        """The committed chunks among ``ids``, read from the keyword index's lookup (not ``chunks.jsonl``)."""
        for attempt in range(2):
            try:
                db = self._connect()
                out: dict[str, Chunk] = {}
                for start in range(0, len(ids), 500):
                    batch = list(ids[start:start + 500])
                    rows = db.execute(f"SELECT id, text, metadata FROM chunks WHERE id IN "
                                      f"({','.join('?' * len(batch))})", batch).fetchall()
                    for chunk_id, text, metadata in rows:
                        out[chunk_id] = Chunk(chunk_id, text, json.loads(metadata))
                return out
            except (sqlite3.Error, ValueError) as exc:
                if attempt:
                    raise CollectionError(f"{self._db_file}: cannot be read ({exc}); delete {self.keyword_dir} "
                                          "to have it rebuilt") from None
                self._drop_index_handles()
                self._rebuild_index(f"{self._db_file.name} cannot be read: {str(exc)[:200]}")
        return {}

    def retriever(self, kind: str = "hybrid") -> Any:
        """``bm25``, ``dense`` or ``hybrid`` over the committed chunks of this collection."""
        if kind not in {"bm25", "dense", "hybrid"}:
            raise StoreError(f"unknown retriever {kind!r}; choose bm25, dense or hybrid")
        if not self.exists:
            raise StoreError(f"collection {self.name!r} is empty or does not exist under {self.dir.parent}; "
                             f"create it with: dspyo3 rag index PATH --collection {self.name}")
        count = self._ready_index()
        if kind == "bm25":
            return _PersistedBM25(self)
        self._check_vectors(count)
        dense = _CommittedDense(DenseRetriever(self.store(), _POINTS, self.embedder) if count else None, self.lookup)
        if kind == "dense":
            return dense
        return HybridRetriever([_PersistedBM25(self), dense], weights=[0.75, 0.25])

    def search(self, query: str, k: int = 5, kind: str = "hybrid") -> list[Passage]:
        """Top ``k`` passages for ``query``."""
        if not query.strip():
            raise StoreError("the query is empty")
        return list(self.retriever(kind).search_batch([query], k)[0])


class _StreamingAdd:
    """One :meth:`RagCollection.add` while its chunks stream through: the pending record, the new chunks' file,
    their ids and sources, and the keyword index updated batch by batch (in memory and in an open sqlite
    transaction, so nothing on disk changes before the commit)."""

    def __init__(self, collection: RagCollection, index_current: bool) -> None:
        self.collection = collection
        self.new: dict[str, int] = {}  # id -> its line in the new chunks' file
        self.overwritten: set[int] = set()  # lines of ids the call gives again later
        self.sources: set[str] = set()  # resolved sources of the new chunks
        self.lines = 0
        self.pending = collection.pending_file.open("w", encoding="utf-8")
        fsync_dir(collection.dir)
        fd, self.fresh_path = locked_temporary(collection.dir, "chunks-new.jsonl")
        self.fresh = os.fdopen(fd, "w+b")
        self.bm25: Any = None
        self.db: sqlite3.Connection | None = None
        if index_current:  # updated as the batches go; otherwise written afresh after the commit
            try:
                self.bm25 = collection._load_bm25(mutable=True)
                self.db = collection._connect()
            except (OSError, ValueError, sqlite3.Error):
                self._drop_index()

    def _record_pending(self, ids: list[str]) -> None:
        self.pending.write(json.dumps({"ids": ids}, ensure_ascii=False) + "\n")
        self.pending.flush()
        os.fsync(self.pending.fileno())

    def record(self, batch: list[Chunk]) -> None:
        """Before ``batch`` reaches the vector store: its ids to the pending record (fsync'd), its chunks to the
        new chunks' file."""
        self._record_pending([c.id for c in batch])
        for chunk in batch:
            previous = self.new.get(chunk.id)
            if previous is not None:
                self.overwritten.add(previous)
            self.new[chunk.id] = self.lines
            self.lines += 1
            source = _resolved(chunk.metadata.get("source"))
            if source is not None:
                self.sources.add(source)
            self.fresh.write(_line(chunk))

    def index(self, batch: list[Chunk]) -> None:
        """Once ``batch`` is in the vector store: into the BM25 (in memory) and the lookup (uncommitted)."""
        if self.bm25 is None or self.db is None:
            return
        try:
            self.bm25.add([c.id for c in batch], [c.text for c in batch])
            self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", _rows(batch))
        except (OSError, ValueError, sqlite3.Error):  # a damaged index: written afresh after the commit
            self._drop_index()

    def commit(self) -> None:
        """Write the new ``chunks.jsonl`` (kept committed chunks, then the new ones) and rename it into place; then
        drop the vectors of the chunks it dropped and finish the keyword index."""
        collection = self.collection
        fd, path = locked_temporary(collection.dir, collection.chunks_file.name)
        stale: list[str] = []
        count = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for line, chunk in collection._iter_records():
                    if chunk.id in self.new:
                        continue  # replaced
                    if self.sources and _resolved(chunk.metadata.get("source")) in self.sources:
                        stale.append(chunk.id)  # its source was indexed again and no longer produces it
                        continue
                    out.write(line)
                    count += 1
                self.fresh.flush()
                self.fresh.seek(0)
                for number, line in enumerate(self.fresh):
                    if number not in self.overwritten:
                        out.write(line)
                        count += 1
                if stale:
                    self._record_pending(stale)  # their vectors go after the commit
                out.flush()
                os.fsync(out.fileno())
                os.replace(path, collection.chunks_file)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        fsync_dir(collection.dir)
        if stale:
            collection.store().delete(_POINTS, stale)
        self.pending.close()
        collection.pending_file.unlink(missing_ok=True)
        self._close_fresh()
        self._finish_index(stale, count)

    def _finish_index(self, stale: list[str], count: int) -> None:
        collection = self.collection
        if self.bm25 is not None and self.db is not None:
            try:
                collection.keyword_dir.mkdir(parents=True, exist_ok=True)
                collection._manifest_file.unlink(missing_ok=True)  # invalid until the update is complete
                if stale:
                    self.bm25.delete(stale)
                self.db.executemany("DELETE FROM chunks WHERE id = ?", ((i,) for i in stale))
                self.db.commit()
                self.bm25.save(collection._bm25_file)
                if len(self.bm25) != count:
                    raise ValueError(f"{len(self.bm25)} documents in BM25, {count} chunks")
            except (OSError, ValueError, sqlite3.Error):  # a damaged index: write it afresh from what was committed
                self._drop_index()
            else:
                collection._write_manifest(count)
                return
        collection._build_index(collection._iter_chunks())

    def _drop_index(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.rollback()
        self.collection._drop_index_handles()  # the BM25 in memory holds uncommitted changes: reloaded when used
        self.bm25 = self.db = None

    def _close_fresh(self) -> None:
        self.fresh.close()
        Path(self.fresh_path).unlink(missing_ok=True)

    def abandon(self) -> None:
        """After a failure: the previous commit stands; the pending record stays for :meth:`RagCollection.repair`."""
        with contextlib.suppress(OSError):
            self.pending.close()
        with contextlib.suppress(OSError):
            self._close_fresh()
        self._drop_index()


def _batches(chunks: Iterable[Chunk], size: int) -> Iterator[list[Chunk]]:
    """``chunks`` ``size`` at a time as they are consumed; a batch that repeats an id keeps its last chunk."""
    source = iter(chunks)
    while batch := list(itertools.islice(source, size)):
        if len({c.id for c in batch}) != len(batch):
            batch = list({c.id: c for c in batch}.values())
        yield batch


def _line(chunk: Chunk) -> bytes:
    """The ``chunks.jsonl`` line of ``chunk``."""
    record = {"id": chunk.id, "text": chunk.text, "metadata": chunk.metadata}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def _rows(batch: Iterable[Chunk]) -> Iterator[tuple[str, str, str]]:
    """The lookup's rows of ``batch``."""
    return ((c.id, c.text, json.dumps(c.metadata, ensure_ascii=False)) for c in batch)


def _digest(text: Any) -> bytes | None:
    """What identifies a point's text (``None`` when it has none)."""
    if not isinstance(text, str):
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _parameters(factory: Any) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}


def _store_factory(name: str) -> Any:
    """The factory of the vector store registered as ``name``; :class:`StoreError` naming the known ones."""
    from dspyo3_core.plugins import get_plugin_manager

    registry = get_plugin_manager().registry("dspyo3_register_vector_stores")
    try:
        return registry.get(name).factory
    except KeyError:
        if name == _LEGACY_STORE:  # collections on it open even with the rag plugin disabled
            from dspyo3_rag.stores.qdrant import QdrantStore

            return QdrantStore
        known = ", ".join(registry.names()) or "none"
        raise StoreError(f"unknown vector store {name!r}; registered stores: {known}") from None


class _PersistedBM25:
    """Keyword retrieval over a collection's persisted BM25; passage texts come from the by-id lookup."""

    def __init__(self, collection: RagCollection) -> None:
        self.collection = collection

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]:
        """Top ``k`` passages for each query."""
        results = self.collection.keyword_index().search_batch(list(queries), k=k)
        chunks = self.collection.lookup(sorted({doc for hits in results for doc, _ in hits}))
        return [[Passage(doc, chunks[doc].text, float(score), dict(chunks[doc].metadata))
                 for doc, score in hits if doc in chunks] for hits in results]

    def search(self, query: str, k: int = 10) -> list[Passage]:
        """Top ``k`` passages for one query."""
        return self.search_batch([query], k)[0]


class _CommittedDense:
    """Dense retrieval that returns only committed chunks: a hit counts when its id is in the chunks file with the
    text its vector was made from (vectors are a function of the text). Queries short of ``k`` after dropping
    uncommitted hits ask the store again for twice as many, until it has no more."""

    def __init__(self, dense: DenseRetriever | None, lookup: Any) -> None:
        self.dense = dense
        self.lookup = lookup

    def _keep(self, passages: Sequence[Passage]) -> list[Passage]:
        committed = self.lookup([p.id for p in passages])
        out = []
        for p in passages:
            chunk = committed.get(p.id)
            if chunk is not None and chunk.text == p.long_text:
                out.append(Passage(p.id, chunk.text, p.score, dict(chunk.metadata)))
        return out

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]:
        """Top ``k`` committed passages for each query."""
        if self.dense is None:
            return [[] for _ in queries]
        out = []
        for query, hits in zip(queries, self.dense.search_batch(queries, k), strict=True):
            fetched, kept = k, self._keep(hits)
            while len(kept) < k and len(hits) == fetched:  # uncommitted points took places; the store has more
                fetched *= 2
                hits = self.dense.search(query, fetched)
                kept = self._keep(hits)
            out.append(kept[:k])
        return out
