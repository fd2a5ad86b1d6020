"""Chroma: a persistent local client (a directory), in memory, or a Chroma server (``chroma run``) by host/port."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dspyo3_rag.stores.base import Filter, Hit, Metadata, StoreError, VectorStore

__all__ = ["ChromaStore"]

_ID = "_dspyo3_id"
_NS = "_dspyo3_ns"
_JSON = "_dspyo3_json"  # keys whose values were JSON-encoded (Chroma metadata holds only scalars)
_DIM = "dspyo3_dim"
_NAMESPACED = "dspyo3_namespaced"  # collection metadata: some point was written to a named namespace
_DISTANCE = "dspyo3_distance"  # the distance, kept in our own key once the metadata was modified
_SPACES = {"cosine": "cosine", "dot": "ip", "euclid": "l2"}


class ChromaStore(VectorStore):
    """Chroma through ``chromadb``.

    Args:
        path: directory of a persistent local store; ``None`` with no ``host``: in memory.
        host, port: a Chroma server (``chroma run --host 127.0.0.1 --port 8000``).

    Embeddings are always given by the caller (no Chroma embedding function runs, so nothing is downloaded) and
    telemetry is off. Chroma has no namespaces: a namespace is a metadata field and part of the stored id.
    Non-scalar metadata values (lists, objects) are stored JSON-encoded and decoded on the way out; they cannot
    be filtered on. Reads of the default namespace pass no ``where`` to Chroma while no point was ever written to a
    named namespace (recorded in the collection's metadata), and counts then use Chroma's own ``count()``.
    """

    name = "chroma"

    def __init__(self, path: str | Path | None = None, *, host: str | None = None, port: int = 8000) -> None:
        try:
            import chromadb
            from chromadb.config import Settings
        except ImportError:
            from dspyo3_core.failures import install_advice

            raise StoreError(f"the Chroma store needs chromadb: {install_advice('dspyo3-rag', 'chroma')}") from None

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if path is not None and host is not None:
            raise StoreError("give a local path or a server host, not both")
        if host is not None:
            self.client = chromadb.HttpClient(host=host, port=port, settings=settings)
            self.where = f"http://{host}:{port}"
        elif path is not None:
            self.client = chromadb.PersistentClient(path=str(path), settings=settings)
            self.where = str(path)
        else:
            self.client = chromadb.EphemeralClient(settings=settings)
            self.where = ":memory:"
        self._namespaced: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"ChromaStore({self.where!r})"

    @staticmethod
    def _key(point_id: str, namespace: str | None) -> str:
        return f"{namespace or ''}\x1f{point_id}"

    def _collection(self, name: str) -> Any:
        return self.client.get_collection(name, embedding_function=None)

    def _scoped(self, collection: str, namespace: str | None) -> bool:
        """Whether reads must filter on the namespace (a named one, or the default one of a collection that also
        holds named namespaces)."""
        return namespace is not None or self._namespaced.get(collection, True)

    def _where(self, collection: str, filter: Filter | None, namespace: str | None) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = [{_NS: namespace or ""}] if self._scoped(collection, namespace) else []
        for key, value in (filter or {}).items():
            clauses.append({key: {"$in": list(value)}} if isinstance(value, (list, tuple)) else {key: value})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    @staticmethod
    def _encode(meta: Metadata, point_id: str, namespace: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {_ID: point_id, _NS: namespace or ""}
        encoded = []
        for key, value in meta.items():
            if isinstance(value, (str, int, float, bool)):
                out[key] = value
            else:  # lists, objects and None: JSON text (Chroma keeps scalars only)
                out[key] = json.dumps(value)
                encoded.append(key)
        if encoded:
            out[_JSON] = json.dumps(encoded)
        return out

    @staticmethod
    def _decode(meta: dict[str, Any] | None) -> Metadata:
        meta = dict(meta or {})
        for key in json.loads(meta.get(_JSON, "[]")):
            meta[key] = json.loads(meta[key])
        return {k: v for k, v in meta.items() if not k.startswith("_dspyo3")}

    def _create(self, collection: str, dim: int, distance: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", collection):
            raise StoreError(f"Chroma collection names are 3-512 characters of letters, digits, '.', '_' and '-', "
                             f"starting and ending with a letter or digit; got {collection!r}")
        self.client.create_collection(collection, embedding_function=None,
                                      metadata={"hnsw:space": _SPACES[distance], _DIM: dim})

    def _describe(self, collection: str) -> tuple[int, str] | None:
        from chromadb.errors import NotFoundError

        try:
            meta = self._collection(collection).metadata or {}
        except NotFoundError:
            self._namespaced.pop(collection, None)
            return None
        if _DIM not in meta:
            return None  # not created through this interface
        self._namespaced[collection] = bool(meta.get(_NAMESPACED))
        if isinstance(meta.get(_DISTANCE), str):
            return int(meta[_DIM]), str(meta[_DISTANCE])
        return int(meta[_DIM]), {"cosine": "cosine", "ip": "dot", "l2": "euclid"}[meta.get("hnsw:space", "l2")]

    def _drop(self, collection: str) -> None:
        self.client.delete_collection(collection)

    def _names(self) -> list[str]:
        names = [item if isinstance(item, str) else item.name for item in self.client.list_collections()]
        return [name for name in names if self._describe(name) is not None]

    def _upsert(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                metadata: Sequence[Metadata], namespace: str | None) -> None:
        col = self._collection(collection)
        if namespace is not None and not self._namespaced.get(collection, False):
            # recorded before the write: from now on default-namespace reads filter on the namespace. Chroma
            # refuses a metadata update naming the (unchangeable) hnsw settings, so the distance moves to our key.
            meta = dict(col.metadata or {})
            space = {"cosine": "cosine", "ip": "dot", "l2": "euclid"}[meta.get("hnsw:space", "l2")]
            meta = {k: v for k, v in meta.items() if not k.startswith("hnsw:")}
            col.modify(metadata={**meta, _DISTANCE: meta.get(_DISTANCE, space), _NAMESPACED: True})
            self._namespaced[collection] = True
        col.upsert(
            ids=[self._key(i, namespace) for i in ids], embeddings=[list(v) for v in vectors],
            metadatas=[self._encode(m, i, namespace) for i, m in zip(ids, metadata, strict=True)])

    def _delete(self, collection: str, ids: Sequence[str], namespace: str | None) -> None:
        if ids:
            self._collection(collection).delete(ids=[self._key(i, namespace) for i in ids])

    def _search(self, collection: str, vector: Sequence[float], k: int, filter: Filter | None,
                namespace: str | None, distance: str) -> list[Hit]:
        col = self._collection(collection)
        # Chroma's own count() when nothing is filtered (cheap); a namespace needs the counting get
        available = self._count(collection, namespace)
        if not available:
            return []
        found = col.query(query_embeddings=[list(vector)], n_results=min(k, available),
                          where=self._where(collection, filter, namespace), include=["metadatas", "distances"])
        hits = []
        for meta, reported in zip(found["metadatas"][0], found["distances"][0], strict=True):
            # Chroma reports distances: squared L2, or 1 - similarity; scores are higher-is-closer everywhere
            raw = float(reported)
            score = -math.sqrt(max(raw, 0.0)) if distance == "euclid" else 1.0 - raw
            hits.append(Hit(str(meta[_ID]), score, self._decode(meta)))
        return hits

    def _count(self, collection: str, namespace: str | None) -> int:
        col = self._collection(collection)
        if not self._scoped(collection, namespace):
            return int(col.count())  # the engine's own count: no ids fetched
        return len(col.get(where=self._where(collection, None, namespace), include=[])["ids"])

    def _has_field(self, collection: str, field: str, namespace: str | None) -> bool:
        return any(field in meta for _, _, meta in self._scroll(collection, namespace, 1000))

    def _scroll(self, collection: str, namespace: str | None,
                batch_size: int) -> Iterator[tuple[str, list[float], Metadata]]:
        col = self._collection(collection)
        offset = 0
        while True:
            page = col.get(where=self._where(collection, None, namespace), include=["embeddings", "metadatas"],
                           limit=batch_size, offset=offset)
            for meta, vector in zip(page["metadatas"], page["embeddings"], strict=True):
                yield str(meta[_ID]), [float(x) for x in vector], self._decode(meta)
            if len(page["ids"]) < batch_size:
                return
            offset += batch_size
