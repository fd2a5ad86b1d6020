"""Qdrant: embedded local mode (a directory, or in memory) as the default, or a Qdrant server by URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dspyo3_core.files import loads_json
from dspyo3_rag.stores.base import Filter, Hit, Metadata, StoreCorruptError, StoreError, VectorStore

__all__ = ["QdrantStore"]

_ID = "_dspyo3_id"
_NS = "_dspyo3_ns"
_DISTANCES = {"cosine": "COSINE", "dot": "DOT", "euclid": "EUCLID"}
_NAMESPACED = "dspyo3_namespaced"  # collection metadata: some point was written to a named namespace


class QdrantStore(VectorStore):
    """Qdrant through ``qdrant-client``.

    Args:
        path: directory of an embedded (local-mode) store, created if missing; ``None`` with no ``url``: in memory.
        url: a Qdrant server (``http://127.0.0.1:6333``); ``api_key`` for Qdrant Cloud.

    String ids are mapped to UUIDv5 point ids (Qdrant accepts only integers and UUIDs); the original id and the
    namespace are kept in the payload under ``_dspyo3_*`` keys.

    Searches, counts and scrolls of the default namespace send no filter to Qdrant while no point of the collection
    was ever written to a named namespace (recorded in the collection's metadata on the first such write): local
    mode evaluates filters in Python for every point, so the default case costs only the vector search.

    An embedded store whose files cannot be read (a corrupt ``meta.json``, a damaged collection) raises
    :class:`StoreCorruptError` naming the file; one another process has open raises :class:`StoreError`.
    """

    name = "qdrant"

    def __init__(self, path: str | Path | None = None, *, url: str | None = None, api_key: str | None = None) -> None:
        from qdrant_client import QdrantClient

        if path is not None and url is not None:
            raise StoreError("give a local path or a server url, not both")
        if url is not None:
            self.client = QdrantClient(url=url, api_key=api_key)
            self.where = url
        elif path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = _open_local(QdrantClient, Path(path))
            self.where = str(path)
        else:
            self.client = QdrantClient(location=":memory:")
            self.where = ":memory:"
        self._namespaced: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"QdrantStore({self.where!r})"

    def close(self) -> None:
        """Release the local store's lock (local mode allows one client per directory)."""
        self.client.close()

    @staticmethod
    def _point_id(point_id: str, namespace: str | None) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"dspyo3:{namespace or ''}:{point_id}"))

    def _filter(self, collection: str, filter: Filter | None, namespace: str | None) -> Any:
        """The Qdrant filter for ``filter`` in ``namespace``; ``None`` (no filter at all) for the default namespace
        of a collection that has no named namespaces."""
        from qdrant_client import models

        scoped = namespace is not None or self._namespaced.get(collection, True)
        if not filter and not scoped:
            return None

        def condition(key: str, value: Any) -> Any:
            if isinstance(value, float) and not value.is_integer():
                return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
            if isinstance(value, float):
                value = int(value)
            return models.FieldCondition(key=key, match=models.MatchValue(value=value))

        must: list[Any] = [models.FieldCondition(key=_NS, match=models.MatchValue(value=namespace or ""))] if scoped \
            else []
        for key, value in (filter or {}).items():
            if isinstance(value, (list, tuple)):
                must.append(models.Filter(should=[condition(key, v) for v in value]))
            else:
                must.append(condition(key, value))
        return models.Filter(must=must)

    def _create(self, collection: str, dim: int, distance: str) -> None:
        from qdrant_client import models

        self.client.create_collection(
            collection, vectors_config=models.VectorParams(size=dim, distance=getattr(models.Distance,
                                                                                      _DISTANCES[distance])))

    def _describe(self, collection: str) -> tuple[int, str] | None:
        if not self.client.collection_exists(collection):
            self._namespaced.pop(collection, None)
            return None
        config = self.client.get_collection(collection).config
        self._namespaced[collection] = bool((getattr(config, "metadata", None) or {}).get(_NAMESPACED))
        params = config.params.vectors
        name = str(params.distance.value if hasattr(params.distance, "value") else params.distance)  # type: ignore[union-attr]
        return int(params.size), {"Cosine": "cosine", "Dot": "dot", "Euclid": "euclid"}.get(name, name.lower())  # type: ignore[union-attr]

    def _drop(self, collection: str) -> None:
        self.client.delete_collection(collection)

    def _names(self) -> list[str]:
        return [description.name for description in self.client.get_collections().collections]

    def _upsert(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                metadata: Sequence[Metadata], namespace: str | None) -> None:
        from qdrant_client import models

        if namespace is not None and not self._namespaced.get(collection, False):
            # recorded before the write: from now on default-namespace reads filter on the namespace
            self.client.update_collection(collection, metadata={_NAMESPACED: True})
            self._namespaced[collection] = True
        points = [models.PointStruct(id=self._point_id(i, namespace), vector=list(v),
                                     payload={**m, _ID: i, _NS: namespace or ""})
                  for i, v, m in zip(ids, vectors, metadata, strict=True)]
        self.client.upsert(collection, points=points, wait=True)

    def _delete(self, collection: str, ids: Sequence[str], namespace: str | None) -> None:
        from qdrant_client import models

        self.client.delete(collection, points_selector=models.PointIdsList(
            points=[self._point_id(i, namespace) for i in ids]), wait=True)

    def _search(self, collection: str, vector: Sequence[float], k: int, filter: Filter | None,
                namespace: str | None, distance: str) -> list[Hit]:
        found = self.client.query_points(collection, query=list(vector), limit=k,
                                         query_filter=self._filter(collection, filter, namespace),
                                         with_payload=True).points
        sign = -1.0 if distance == "euclid" else 1.0  # Qdrant reports euclid as a distance
        return [Hit(str((p.payload or {}).get(_ID)), sign * float(p.score), _public(p.payload)) for p in found]

    def _count(self, collection: str, namespace: str | None) -> int:
        return int(self.client.count(collection, count_filter=self._filter(collection, None, namespace),
                                     exact=True).count)

    def _has_field(self, collection: str, field: str, namespace: str | None) -> bool:
        from qdrant_client import models

        flt = self._filter(collection, None, namespace) or models.Filter()
        flt.must_not = [models.IsEmptyCondition(is_empty=models.PayloadField(key=field))]
        points, _ = self.client.scroll(collection, scroll_filter=flt, limit=1, with_payload=False)
        return bool(points)

    def _scroll(self, collection: str, namespace: str | None,
                batch_size: int) -> Iterator[tuple[str, list[float], Metadata]]:
        offset = None
        while True:
            points, offset = self.client.scroll(collection, scroll_filter=self._filter(collection, None, namespace),
                                                limit=batch_size, offset=offset, with_payload=True, with_vectors=True)
            for p in points:
                vector = p.vector if isinstance(p.vector, list) else []
                yield str((p.payload or {}).get(_ID)), [float(x) for x in vector], _public(p.payload)  # type: ignore[arg-type]
            if offset is None:
                return


def _open_local(client: Any, path: Path) -> Any:
    """``QdrantClient(path=...)``, with what goes wrong reading the folder said in one line naming the file."""
    try:
        return client(path=str(path))
    except Exception as exc:  # the folder's files are data: json, pydantic, sqlite and OS errors all mean damage
        if isinstance(exc, RuntimeError) and "already accessed" in str(exc):
            raise StoreError(f"the embedded Qdrant store {path} is open in another process (local mode allows one "
                             "client per folder); wait for it to finish, or use a Qdrant server") from None
        meta = path / "meta.json"
        try:
            record = loads_json(meta.read_bytes(), source=str(meta))
        except ValueError as bad:  # JSONDecodeError, UnicodeDecodeError, too deeply nested
            detail = str(bad).removeprefix(f"{meta}: ")
            raise StoreCorruptError(f"{meta} is corrupt (not JSON: {detail})") from None
        except OSError:
            record = None
        if record is not None and not (isinstance(record, dict) and isinstance(record.get("collections"), dict)):
            raise StoreCorruptError(f"{meta} is corrupt (not Qdrant metadata: no 'collections' object)") from None
        first = (str(exc).strip().splitlines() or [""])[0]
        raise StoreCorruptError(f"the embedded Qdrant store {path} cannot be read ({type(exc).__name__}: "
                                f"{first[:200]})") from None


def _public(payload: dict[str, Any] | None) -> Metadata:
    return {k: v for k, v in (payload or {}).items() if not k.startswith("_dspyo3")}
