"""Pinecone through the official ``pinecone`` SDK (v10): one dense vector index per collection."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from dspyo3_rag.stores.base import Filter, Hit, Metadata, StoreError, VectorStore

__all__ = ["PineconeStore"]

log = logging.getLogger(__name__)

_INT = "_dspyo3_int"  # keys whose integer values Pinecone stores as floats
_JSON = "_dspyo3_json"  # keys whose values were JSON-encoded (None, lists, objects)
_METRICS = {"cosine": "cosine", "dot": "dotproduct", "euclid": "euclidean"}
_DISTANCES = {metric: distance for distance, metric in _METRICS.items()}
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,43}[a-z0-9])?")
_MAX_METADATA_BYTES = 40_960
_MAX_REQUEST_BYTES = 1_800_000  # Pinecone caps an upsert request at 2 MB
_T = TypeVar("_T")


class PineconeStore(VectorStore):
    """Pinecone through the ``pinecone`` SDK: each collection is a dense vector index, namespaces are Pinecone's.

    Args:
        api_key: the API key; default ``PINECONE_API_KEY``. It is sent to the service only, never logged.
        host: the control-plane URL; default Pinecone's (``https://api.pinecone.io``). Tests point it at
            :class:`dspyo3_rag.testing.PineconeStandIn` on loopback.
        cloud, region: where new indexes are created (serverless, on demand).
        prefix: index name prefix; collection ``docs`` is index ``{prefix}docs`` and only prefixed indexes are
            listed, so several applications (or test runs) can share one Pinecone project.
        consistency_timeout: Pinecone reads are eventually consistent. After a write, reads wait (polling) until
            the index reports it has reconciled that write (the LSN headers), for at most this many seconds.
        ready_timeout: seconds to wait for a new index to become ready, or a dropped one to be gone.

    Metadata: strings, numbers and booleans are stored as Pinecone metadata and can be filtered on; integers
    come back as integers. ``None``, lists and objects are stored JSON-encoded (Pinecone keeps only strings,
    numbers, booleans and lists of strings) and decoded on the way out; they cannot be filtered on. Ids are
    ASCII, at most 512 characters; metadata at most 40 KB per point. Index names are lowercase letters, digits
    and ``-``, at most 45 characters. All-zero vectors are refused (a Pinecone rule).
    """

    name = "pinecone"

    def __init__(self, api_key: str | None = None, *, host: str | None = None, cloud: str = "aws",
                 region: str = "us-east-1", prefix: str = "", consistency_timeout: float = 30.0,
                 ready_timeout: int = 300) -> None:
        if prefix and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", prefix):
            raise StoreError(f"the index prefix must be lowercase letters, digits and '-'; got {prefix!r}")
        try:
            from pinecone import Pinecone
        except ImportError:
            from dspyo3_core.failures import install_advice

            advice = install_advice('dspyo3-rag', 'pinecone')
            raise StoreError(f"the Pinecone store needs the pinecone SDK: {advice}") from None
        key = api_key or os.environ.get("PINECONE_API_KEY", "")
        if not key:
            raise StoreError("the Pinecone store needs an API key: pass api_key= or set PINECONE_API_KEY")
        self.client = Pinecone(api_key=key, host=host) if host else Pinecone(api_key=key)
        self.prefix = prefix
        self.where = host or "pinecone.io"
        self.deployment = {"deployment_type": "managed", "cloud": cloud, "region": region}
        self.consistency_timeout = consistency_timeout
        self.ready_timeout = ready_timeout
        self._indexes: dict[str, Any] = {}
        self._committed: dict[tuple[str, str], int] = {}  # (collection, namespace) -> last write's LSN
        self._dims: dict[str, int] = {}  # collection -> dimension, as last described

    def __repr__(self) -> str:
        return f"PineconeStore({self.where!r})"

    def close(self) -> None:
        """Close the HTTP clients."""
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()
        close = getattr(self.client, "close", None)
        if callable(close):
            close()

    # -- helpers -------------------------------------------------------------------------------------------------
    def _index(self, collection: str) -> Any:
        index = self._indexes.get(collection)
        if index is None:
            index = self._indexes[collection] = self.client.index(name=self.prefix + collection)
        return index

    def _read(self, collection: str, namespace: str | None, call: Callable[[], _T]) -> _T:
        """Run a query, repeating it until the namespace has reconciled this store's last write to it (LSNs are
        per namespace, and only query responses report how far the index has caught up)."""
        target = self._committed.get((collection, namespace or ""))
        deadline = time.monotonic() + self.consistency_timeout
        delay = 0.05
        while True:
            result = call()
            info = getattr(result, "response_info", None)
            reconciled = getattr(info, "lsn_reconciled", None)
            if target is None or reconciled is None or reconciled >= target:
                if target is not None and reconciled is not None:
                    self._committed.pop((collection, namespace or ""), None)  # caught up: later reads are fresh
                return result
            if time.monotonic() > deadline:
                log.warning("pinecone index %s has not caught up with the last write after %.0f s; the result may "
                            "be stale", collection, self.consistency_timeout)
                return result
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _call(call: Callable[[], _T]) -> _T:
        """Run an SDK write; a request Pinecone refuses (HTTP 400 / 413, or the SDK's own validation) becomes a
        :class:`StoreError` carrying Pinecone's message."""
        from pinecone.errors.exceptions import ApiError, PineconeValueError

        try:
            return call()
        except PineconeValueError as exc:
            raise StoreError(f"Pinecone refused the request: {exc}") from exc
        except ApiError as exc:
            if getattr(exc, "status_code", None) in (400, 413):
                raise StoreError(f"Pinecone refused the request: {exc}") from exc
            raise

    @staticmethod
    def _encode(meta: Metadata) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ints, encoded = [], []
        for key, value in meta.items():
            if isinstance(value, (bool, str)):
                out[key] = value
            elif isinstance(value, int) and abs(value) <= 2**53:
                out[key] = value
                ints.append(key)
            elif isinstance(value, float) and math.isfinite(value):
                out[key] = value
            else:  # None, lists, objects, huge ints: JSON text
                out[key] = json.dumps(value)
                encoded.append(key)
        if ints:
            out[_INT] = ints
        if encoded:
            out[_JSON] = encoded
        return out

    @staticmethod
    def _decode(meta: dict[str, Any] | None) -> Metadata:
        meta = dict(meta or {})
        for key in meta.get(_INT, []):
            meta[key] = int(meta[key])
        for key in meta.get(_JSON, []):
            meta[key] = json.loads(meta[key])
        return {k: v for k, v in meta.items() if not k.startswith("_dspyo3")}

    @staticmethod
    def _filter(filter: Filter | None) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = []
        for key, value in (filter or {}).items():
            if isinstance(value, (list, tuple)):
                clauses.append({"$or": [{key: {"$eq": v}} for v in value]} if len(value) > 1
                               else {key: {"$eq": value[0]}})
            else:
                clauses.append({key: {"$eq": value}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    # -- primitives ----------------------------------------------------------------------------------------------
    def _create(self, collection: str, dim: int, distance: str) -> None:
        if not _NAME.fullmatch(self.prefix + collection):
            raise StoreError(f"Pinecone index names are 1-45 lowercase letters, digits and '-', starting and ending "
                             f"with a letter or digit; got {self.prefix + collection!r}")
        schema = {"fields": {"_values": {"type": "dense_vector", "dimension": dim, "metric": _METRICS[distance]}}}
        self.client.indexes.create(name=self.prefix + collection, schema=schema, deployment=self.deployment,
                                   timeout=self.ready_timeout)

    def _drop(self, collection: str) -> None:
        index = self._indexes.pop(collection, None)
        if index is not None:
            index.close()
        for key in [key for key in self._committed if key[0] == collection]:
            del self._committed[key]
        self.client.indexes.delete(self.prefix + collection, timeout=self.ready_timeout)

    @staticmethod
    def _dense(model: Any) -> tuple[int, str] | None:
        field = model.schema.fields.get("_values") if model.schema is not None else None
        dimension, metric = getattr(field, "dimension", None), getattr(field, "metric", None)
        if dimension is None or metric not in _DISTANCES:
            return None  # a document / sparse / integrated index: not one of ours
        return int(dimension), _DISTANCES[metric]

    def _names(self) -> list[str]:
        return [model.name[len(self.prefix):] for model in self.client.indexes.list()
                if model.name.startswith(self.prefix) and self._dense(model) is not None]

    def _describe(self, collection: str) -> tuple[int, str] | None:
        from pinecone.errors.exceptions import NotFoundError

        if not _NAME.fullmatch(self.prefix + collection):
            return None
        try:
            model = self.client.indexes.describe(self.prefix + collection)
        except NotFoundError:
            return None
        described = self._dense(model)
        if described is not None:
            self._dims[collection] = described[0]
        return described

    def _validate_points(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                         metadata: Sequence[Metadata], distance: str) -> None:
        for point_id, vector, meta in zip(ids, vectors, metadata, strict=True):
            if not point_id.isascii() or "\x00" in point_id or not 1 <= len(point_id) <= 512:
                raise StoreError(f"Pinecone ids are 1-512 ASCII characters without NUL; got {point_id[:80]!r}")
            if not any(vector):
                raise StoreError(f"vector of {point_id!r} is all zeros; Pinecone refuses dense vectors without a "
                                 "non-zero value (drop the point)")
            bad = [key for key in meta if key.startswith("$")]
            if bad:
                raise StoreError(f"metadata of {point_id!r}: Pinecone keys cannot start with '$': {bad}")
            nonfinite = [key for key, value in meta.items() if isinstance(value, float) and not math.isfinite(value)]
            if nonfinite:
                raise StoreError(f"metadata of {point_id!r}: NaN or infinite numbers in {nonfinite}; Pinecone would "
                                 "drop those keys")
            size = len(json.dumps(self._encode(meta), ensure_ascii=False, separators=(",", ":")).encode())
            if size > _MAX_METADATA_BYTES:
                raise StoreError(f"metadata of {point_id!r} is {size} bytes; Pinecone keeps at most "
                                 f"{_MAX_METADATA_BYTES} per point (store long text elsewhere, e.g. by id)")

    def _upsert(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                metadata: Sequence[Metadata], namespace: str | None) -> None:
        index = self._index(collection)
        batch: list[dict[str, Any]] = []
        size = 0
        requests = []
        for point_id, vector, meta in zip(ids, vectors, metadata, strict=True):
            record = {"id": point_id, "values": list(vector), "metadata": self._encode(meta)}
            record_size = len(json.dumps(record))
            if batch and (size + record_size > _MAX_REQUEST_BYTES or len(batch) == 1000):
                requests.append(batch)
                batch, size = [], 0
            batch.append(record)
            size += record_size
        if batch:
            requests.append(batch)
        key = (collection, namespace or "")
        for records in requests:
            response = self._call(functools.partial(index.upsert, vectors=records, namespace=namespace or ""))
            committed = getattr(getattr(response, "response_info", None), "lsn_committed", None)
            if committed is not None:
                self._committed[key] = max(committed, self._committed.get(key, 0))

    def _delete(self, collection: str, ids: Sequence[str], namespace: str | None) -> None:
        from pinecone.errors.exceptions import NotFoundError

        index = self._index(collection)
        for start in range(0, len(ids), 1000):
            try:
                index.delete(ids=list(ids[start:start + 1000]), namespace=namespace or "")
            except NotFoundError:
                return  # serverless answers 404 for a namespace that does not exist: nothing to delete

    def _search(self, collection: str, vector: Sequence[float], k: int, filter: Filter | None,
                namespace: str | None, distance: str) -> list[Hit]:
        index = self._index(collection)
        found = self._read(collection, namespace, lambda: index.query(
            vector=list(vector), top_k=min(k, 10_000), namespace=namespace or "", filter=self._filter(filter),
            include_metadata=True))
        hits = []
        for match in found.matches:
            # Pinecone reports cosine similarity, the dot product, or the *squared* euclidean distance
            score = -math.sqrt(max(float(match.score), 0.0)) if distance == "euclid" else float(match.score)
            hits.append(Hit(str(match.id), score, self._decode(match.metadata)))
        return hits

    def _count(self, collection: str, namespace: str | None) -> int:
        index = self._index(collection)
        self._catch_up(collection, namespace)
        stats = index.describe_index_stats()
        names = [namespace] if namespace else ["__default__", ""]
        for name in names:
            summary = stats.namespaces.get(name)
            if summary is not None:
                return int(summary.vector_count)
        return 0

    def _probe(self, collection: str, namespace: str | None, filter: dict[str, Any] | None) -> bool:
        """Whether any point (matching ``filter``) exists: one top-1 query, waiting for the last write."""
        index = self._index(collection)
        dim = self._dims.get(collection) or self.dimension(collection)
        probe = [1.0] + [0.0] * (dim - 1)
        found = self._read(collection, namespace, lambda: index.query(
            vector=probe, top_k=1, namespace=namespace or "", filter=filter))
        return bool(found.matches)

    def _catch_up(self, collection: str, namespace: str | None) -> None:
        """Before a read that reports no LSN (stats, list, fetch): wait, through a query, for the last write."""
        if (collection, namespace or "") in self._committed:
            self._probe(collection, namespace, None)

    def _has_field(self, collection: str, field: str, namespace: str | None) -> bool:
        if not self._probe(collection, namespace, {field: {"$exists": True}}):
            return False
        if self._probe(collection, namespace, {_JSON: {"$in": [field]}}):
            raise StoreError(f"filter on {field!r}: its values are stored JSON-encoded (None, lists or objects: "
                             "Pinecone metadata holds strings, numbers and booleans), so it cannot be filtered on")
        return True

    def _scroll(self, collection: str, namespace: str | None,
                batch_size: int) -> Iterator[tuple[str, list[float], Metadata]]:
        index = self._index(collection)
        self._catch_up(collection, namespace)
        token: str | None = None
        while True:
            page = index.list_paginated(limit=min(batch_size, 100), pagination_token=token,
                                        namespace=namespace or "")
            ids = [item.id for item in page.vectors]
            if ids:
                fetched = index.fetch(ids=ids, namespace=namespace or "").vectors
                for point_id in ids:
                    record = fetched.get(point_id)
                    if record is not None:  # deleted between the listing and the fetch
                        yield point_id, [float(x) for x in record.values], self._decode(record.metadata)
            token = page.pagination.next if page.pagination else None
            if not token:
                return
