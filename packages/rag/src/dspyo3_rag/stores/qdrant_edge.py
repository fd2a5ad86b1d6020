"""Qdrant Edge: Qdrant's own Rust engine in-process (``qdrant-edge-py``), with HNSW indexes and on-disk segments.

The embedded store for collections of any size: same data model as the Qdrant server, no server to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dspyo3_rag.stores.base import Filter, Hit, Metadata, StoreCorruptError, StoreError, VectorStore

__all__ = ["QdrantEdgeStore"]

_ID = "_dspyo3_id"
_BOOL = "_dspyo3_bool"  # booleans again, as keywords: the binding passes a bool match value to the engine as 1/0
_META = "collection.json"
_DEFAULT_SHARD = "points"
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}
SEGMENT_BYTES = 1024 * 1024 * 1024
"""Vectors (float32) a shard takes before they are indexed (HNSW) as a segment of their own; also the size up to
which the engine merges segments. Bounds the memory an index build maps besides the stored vectors."""
INDEXING_THRESHOLD_KB: int | None = None
"""A segment below this size (KB) is searched exactly rather than by HNSW; ``None``: the engine's default."""


def _dirname(name: str) -> str:
    """A folder name for a collection or namespace: the name itself when it is a plain file name, else ``~`` and
    its UTF-8 bytes in hex (``~`` never starts a plain name, so the two cannot collide)."""
    return name if _SAFE.fullmatch(name) else "~" + name.encode().hex()


class QdrantEdgeStore(VectorStore):
    """Collections in Qdrant Edge shards under one directory.

    Args:
        path: the store's directory, created if missing; ``None``: a temporary directory removed by :meth:`close`.

    Layout: ``<path>/<collection>/collection.json`` (size and distance, written atomically) and one Edge shard per
    namespace (``points/`` for the default one, ``ns/<namespace>/`` for the others), so a namespace costs no
    filter and ``count`` is the shard's own count. String ids map to UUIDv5 point ids; the original id is kept in
    the payload under ``_dspyo3_id``. Writes go through the shard's write-ahead log, so a killed process loses
    nothing it was told was written. HNSW indexes are built by :meth:`optimize`, which :meth:`close` runs for
    every shard written to (until then new points are searched exactly). Shards whose files cannot be read raise
    :class:`StoreCorruptError` naming the folder; a shard another process (or store object) has open raises
    :class:`StoreError`.
    """

    name = "qdrant-edge"

    def __init__(self, path: str | Path | None = None) -> None:
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._temp = tempfile.TemporaryDirectory(prefix="dspyo3-qdrant-edge-")
            path = self._temp.name
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._shards: dict[tuple[str, str | None], Any] = {}
        self._dirty: set[tuple[str, str | None]] = set()
        self._unindexed: dict[tuple[str, str | None], int] = {}  # vector bytes written since the last optimize
        self._described: dict[str, tuple[int, str]] = {}

    def __repr__(self) -> str:
        return f"QdrantEdgeStore({str(self.path) if self._temp is None else None!r})"

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def optimize(self, collection: str | None = None) -> None:
        """Build the HNSW index of every shard written to since the last call (of ``collection`` only, if given)
        and flush it to disk; blocks until done."""
        for key in sorted(self._dirty, key=lambda item: (item[0], item[1] or "")):
            if collection is None or key[0] == collection:
                shard = self._shards.get(key)
                if shard is not None:
                    shard.optimize()
                    shard.flush()
                self._dirty.discard(key)
                self._unindexed.pop(key, None)

    def close(self) -> None:
        """Index what was written (:meth:`optimize`), flush and close every shard; a temporary store is removed."""
        try:
            self.optimize()
        finally:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
            self._unindexed.clear()
            self._described.clear()
            if self._temp is not None:
                self._temp.cleanup()
                self._temp = None

    # -- layout --------------------------------------------------------------------------------------------------
    def _folder(self, collection: str) -> Path:
        return self.path / _dirname(collection)

    def _shard_folder(self, collection: str, namespace: str | None) -> Path:
        folder = self._folder(collection)
        return folder / _DEFAULT_SHARD if namespace is None else folder / "ns" / _dirname(namespace)

    def _shard(self, collection: str, namespace: str | None, *, create: bool) -> Any:
        """The namespace's shard, opened once and kept; ``None`` when it was never written and ``create`` is
        false."""
        import qdrant_edge as edge

        key = (collection, namespace)
        if key in self._shards:
            return self._shards[key]
        folder = self._shard_folder(collection, namespace)
        if not folder.is_dir():
            if not create:
                return None
            dim, distance = self._require(collection)
            config = edge.EdgeConfig(
                # vectors stay in their files (memory-mapped, read on demand) rather than loaded into memory when a
                # segment opens: a million 1024-dimension vectors are 4 GB, and a search reads a few thousand
                vectors=edge.EdgeVectorParams(size=dim, distance=getattr(edge.Distance, _DISTANCES[distance]),
                                              memory=edge.Memory.Cold),
                # segments stay near SEGMENT_BYTES: merging them back into one would copy every vector again
                optimizers=edge.EdgeOptimizersConfig(max_segment_size=SEGMENT_BYTES // 1024,
                                                     indexing_threshold=INDEXING_THRESHOLD_KB))
            shard = edge.EdgeShard.create(str(folder), config)
        else:
            try:
                shard = edge.EdgeShard.load(str(folder))
            except Exception as exc:  # the folder's files are data: any failure to read them means damage
                first = (str(exc).strip().splitlines() or [""])[0]
                if "WouldBlock" in first:  # the write-ahead log is locked by another open shard
                    raise StoreError(f"the Qdrant Edge shard {folder} is open in another process (or another "
                                     "store object); close that one first") from None
                raise StoreCorruptError(f"the Qdrant Edge shard {folder} cannot be read ({type(exc).__name__}: "
                                        f"{first[:200]}); restore the folder or re-create the collection") from None
        self._shards[key] = shard
        return shard

    # -- backend primitives --------------------------------------------------------------------------------------
    def _create(self, collection: str, dim: int, distance: str) -> None:
        folder = self._folder(collection)
        if folder.exists():  # left by a create that was interrupted before its metadata was written
            shutil.rmtree(folder)
        staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=self.path))
        record = json.dumps({"name": collection, "dim": dim, "distance": distance, "engine": "qdrant-edge"})
        (staging / _META).write_text(record, encoding="utf-8")
        os.replace(staging, folder)  # atomic: the collection exists with its metadata, or not at all
        self._described[collection] = (dim, distance)

    def _drop(self, collection: str) -> None:
        for key in [key for key in self._shards if key[0] == collection]:
            self._shards.pop(key).close()
            self._dirty.discard(key)
            self._unindexed.pop(key, None)
        self._described.pop(collection, None)
        folder = self._folder(collection)
        doomed = self.path / f".dropping-{uuid.uuid4().hex}"
        os.replace(folder, doomed)  # atomic: gone from the listing at once, even if the removal is interrupted
        shutil.rmtree(doomed, ignore_errors=True)

    def _names(self) -> list[str]:
        names = []
        for folder in self.path.iterdir():
            if folder.name.startswith(".") or not (folder / _META).is_file():
                continue
            record = self._read_meta(folder)
            names.append(str(record["name"]))
        return names

    def _read_meta(self, folder: Path) -> dict[str, Any]:
        meta = folder / _META
        try:
            record = json.loads(meta.read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreCorruptError(f"{meta} cannot be read ({type(exc).__name__}); restore it or drop the "
                                    "collection's folder") from None
        if not (isinstance(record, dict) and isinstance(record.get("name"), str)
                and isinstance(record.get("dim"), int) and record.get("distance") in _DISTANCES):
            raise StoreCorruptError(f"{meta} is corrupt (not collection metadata: needs name, dim, distance)")
        return record

    def _describe(self, collection: str) -> tuple[int, str] | None:
        if collection in self._described:
            return self._described[collection]
        folder = self._folder(collection)
        if not (folder / _META).is_file():
            return None
        record = self._read_meta(folder)
        if record["name"] != collection:
            return None
        described = (int(record["dim"]), str(record["distance"]))
        self._described[collection] = described
        return described

    @staticmethod
    def _point_id(point_id: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dspyo3:{point_id}"))

    def _upsert(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                metadata: Sequence[Metadata], namespace: str | None) -> None:
        import qdrant_edge as edge

        shard = self._shard(collection, namespace, create=True)
        rows = vectors.tolist() if hasattr(vectors, "tolist") else vectors  # a NumPy float32 array, in one call
        points = [edge.Point(self._point_id(i), list(v), _payload(i, m))
                  for i, v, m in zip(ids, rows, metadata, strict=True)]
        shard.update(edge.UpdateOperation.upsert_points(points))
        key = (collection, namespace)
        self._dirty.add(key)
        written = self._unindexed.get(key, 0) + 4 * len(rows) * (len(rows[0]) if len(rows) else 0)
        if written >= SEGMENT_BYTES:
            # index what was written as a segment of its own now, so building an index never copies more than
            # SEGMENT_BYTES of vectors at once and a large add is searchable by HNSW as it goes
            shard.optimize()
            shard.flush()  # the segments the optimizer replaced stay on disk, and mapped, until a flush
            self._dirty.discard(key)
            written = 0
        self._unindexed[key] = written

    def _delete(self, collection: str, ids: Sequence[str], namespace: str | None) -> None:
        import qdrant_edge as edge

        shard = self._shard(collection, namespace, create=False)
        if shard is not None and ids:
            shard.update(edge.UpdateOperation.delete_points([self._point_id(i) for i in ids]))
            self._dirty.add((collection, namespace))

    @staticmethod
    def _filter(filter: Filter | None) -> Any:
        import qdrant_edge as edge

        if not filter:
            return None

        def condition(key: str, value: Any) -> Any:
            if isinstance(value, bool):
                return edge.FieldCondition(key=f"{_BOOL}.{key}", match=edge.MatchValue(str(value).lower()))
            if isinstance(value, float) and not value.is_integer():
                return edge.FieldCondition(key=key, range=edge.RangeFloat(gte=value, lte=value))
            if isinstance(value, float):
                value = int(value)
            return edge.FieldCondition(key=key, match=edge.MatchValue(value))

        must: list[Any] = []
        for key, value in filter.items():
            if isinstance(value, (list, tuple)):
                must.append(edge.Filter(should=[condition(key, v) for v in value]))
            else:
                must.append(condition(key, value))
        return edge.Filter(must=must)

    def _search(self, collection: str, vector: Sequence[float], k: int, filter: Filter | None,
                namespace: str | None, distance: str) -> list[Hit]:
        import qdrant_edge as edge

        shard = self._shard(collection, namespace, create=False)
        if shard is None:
            return []
        # a wider HNSW beam than the engine's default: SciFact's hybrid nDCG@10 is then exact search's
        found = shard.query(edge.QueryRequest(limit=k, query=edge.Query.Nearest(list(vector)),
                                              filter=self._filter(filter), with_payload=True,
                                              params=edge.SearchParams(hnsw_ef=max(256, 4 * k))))
        sign = -1.0 if distance == "euclid" else 1.0  # Qdrant reports euclid as a distance
        return [Hit(str((p.payload or {}).get(_ID)), sign * float(p.score), _public(p.payload)) for p in found]

    def _count(self, collection: str, namespace: str | None) -> int:
        import qdrant_edge as edge

        shard = self._shard(collection, namespace, create=False)
        return 0 if shard is None else int(shard.count(edge.CountRequest(exact=True)))

    def _has_field(self, collection: str, field: str, namespace: str | None) -> bool:
        import qdrant_edge as edge

        shard = self._shard(collection, namespace, create=False)
        if shard is None:
            return False
        found, _ = shard.scroll(edge.ScrollRequest(limit=1, filter=edge.Filter(
            must_not=[edge.IsEmptyCondition(field)]), with_payload=False, with_vector=False))
        return bool(found)

    def _scroll(self, collection: str, namespace: str | None,
                batch_size: int) -> Iterator[tuple[str, list[float], Metadata]]:
        import qdrant_edge as edge

        shard = self._shard(collection, namespace, create=False)
        if shard is None:
            return
        offset: Any = None
        while True:
            points, offset = shard.scroll(edge.ScrollRequest(offset=offset, limit=batch_size, with_payload=True,
                                                             with_vector=True))
            for p in points:
                vector = p.vector if isinstance(p.vector, list) else []
                yield str((p.payload or {}).get(_ID)), [float(x) for x in vector], _public(p.payload)
            if offset is None:
                return


def _payload(point_id: str, metadata: Metadata) -> dict[str, Any]:
    payload: dict[str, Any] = {**metadata, _ID: point_id}
    flags = {key: str(value).lower() for key, value in metadata.items() if isinstance(value, bool)}
    if flags:
        payload[_BOOL] = flags
    return payload


def _public(payload: dict[str, Any] | None) -> Metadata:
    return {k: v for k, v in (payload or {}).items() if not k.startswith("_dspyo3")}
