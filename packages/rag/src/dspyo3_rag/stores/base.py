"""The vector-store interface. Backends implement the ``_``-prefixed primitives; the public methods validate
everything first, so a bad call raises :class:`StoreError` and leaves the collection as it was."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["Hit", "StoreCorruptError", "StoreError", "VectorStore", "migrate"]

Metadata = dict[str, Any]
Filter = Mapping[str, Any]
Vectors: TypeAlias = "Sequence[Sequence[float]] | npt.NDArray[Any]"


class StoreError(ValueError):
    """A call a store cannot do (unknown collection, wrong vector size, bad filter, bad metadata); the message
    names the problem and the fix."""


class StoreCorruptError(StoreError):
    """A store whose own files cannot be read (an embedded store's metadata or data damaged on disk); the message
    names the file."""


@dataclass(frozen=True)
class Hit:
    """One search result: the point's id, its similarity score (higher is closer) and its metadata."""

    id: str
    score: float
    metadata: Metadata = field(default_factory=dict)


class VectorStore(ABC):
    """Collections of ``(id, vector, metadata)`` points with top-k similarity search.

    Ids are strings (unique per collection and namespace; upserting an existing id replaces the point).
    Metadata values are JSON values; filters are ``{field: value}`` (equality, all must hold) or
    ``{field: [v1, v2]}`` (any of). Namespaces partition a collection (tenants); ``None`` is the default one.
    """

    name: str = "store"

    # -- backend primitives ------------------------------------------------------------------------------------
    @abstractmethod
    def _create(self, collection: str, dim: int, distance: str) -> None: ...

    @abstractmethod
    def _drop(self, collection: str) -> None: ...

    @abstractmethod
    def _names(self) -> list[str]:
        """Names of the collections this interface manages."""

    @abstractmethod
    def _describe(self, collection: str) -> tuple[int, str] | None:
        """``(vector size, distance)`` of a collection (distance: ``cosine``, ``dot`` or ``euclid``), ``None`` when
        it does not exist. One backend lookup: every public call goes through it."""

    @abstractmethod
    def _upsert(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                metadata: Sequence[Metadata], namespace: str | None) -> None: ...

    @abstractmethod
    def _delete(self, collection: str, ids: Sequence[str], namespace: str | None) -> None: ...

    @abstractmethod
    def _search(self, collection: str, vector: Sequence[float], k: int, filter: Filter | None,
                namespace: str | None, distance: str) -> list[Hit]:
        """Top ``k``; scores higher-is-closer for ``distance`` (the backend converts distances it reports)."""

    @abstractmethod
    def _count(self, collection: str, namespace: str | None) -> int: ...

    @abstractmethod
    def _has_field(self, collection: str, field: str, namespace: str | None) -> bool:
        """Whether any point has metadata ``field``."""

    @abstractmethod
    def _scroll(self, collection: str, namespace: str | None,
                batch_size: int) -> Iterator[tuple[str, list[float], Metadata]]: ...

    def _validate_points(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
                         metadata: Sequence[Metadata], distance: str) -> None:
        """Backend rules checked before the first write of an upsert (raise :class:`StoreError`); none by
        default."""
        return None

    # -- public API ----------------------------------------------------------------------------------------------
    def create_collection(self, collection: str, dim: int, *, distance: str = "cosine",
                          exist_ok: bool = False) -> None:
        """Create ``collection`` for ``dim``-dimensional vectors (``distance``: cosine, dot or euclid)."""
        if not collection or not isinstance(collection, str):
            raise StoreError("a collection needs a non-empty name")
        if not isinstance(dim, int) or dim < 1:
            raise StoreError(f"collection {collection!r}: dim must be a positive integer, got {dim!r}")
        if distance not in {"cosine", "dot", "euclid"}:
            raise StoreError(f"distance must be cosine, dot or euclid, got {distance!r}")
        existing = self._describe(collection)
        if existing is not None:
            if exist_ok and existing[0] == dim:
                return
            raise StoreError(f"collection {collection!r} already exists ({existing[0]}-dimensional); "
                             "drop it first or pass exist_ok=True with the same dim")
        self._create(collection, dim, distance)

    def drop_collection(self, collection: str) -> None:
        """Delete ``collection`` and its points."""
        self._require(collection)
        self._drop(collection)

    def collections(self) -> list[str]:
        """Collection names."""
        return sorted(self._names())

    def dimension(self, collection: str) -> int:
        """The vector size of ``collection``."""
        return self._require(collection)[0]

    def distance(self, collection: str) -> str:
        """The collection's distance: ``cosine``, ``dot`` or ``euclid`` (scores are always higher-is-closer:
        cosine similarity, dot product, or minus the euclidean distance)."""
        return self._require(collection)[1]

    def upsert(self, collection: str, ids: Sequence[str], vectors: Vectors,
               metadata: Sequence[Metadata] | None = None, *, namespace: str | None = None, batch_size: int = 256,
               progress: bool = False) -> int:
        """Insert or replace points, in batches; returns the count. ``progress=True`` draws a bar on stderr when it
        is a terminal. ``vectors`` may be a NumPy array (``float32`` ``(n, dim)`` is what embedders give): it is
        validated as an array and turned into Python numbers one batch at a time.

        Everything is validated before the first write: one bad vector or metadata value and nothing is written.
        """
        import numpy as np

        dim, distance = self._require(collection)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise StoreError(f"{len(ids)} ids but {len(vectors)} vectors")
        metadata = list(metadata) if metadata is not None else [{} for _ in ids]
        if len(metadata) != len(ids):
            raise StoreError(f"{len(ids)} ids but {len(metadata)} metadata entries")
        if len(set(ids)) != len(ids):
            raise StoreError("ids repeat within one upsert call; each point needs its own id")
        array = vectors if isinstance(vectors, np.ndarray) and vectors.ndim == 2 else None
        if array is not None:
            if array.shape[1] != dim:
                raise StoreError(f"vector 0 (id {ids[0]!r}) has {array.shape[1]} numbers; collection "
                                 f"{collection!r} holds {dim}-dimensional vectors")
            finite = np.isfinite(array).all(axis=1)
            if not finite.all():
                i = int(np.argmin(finite))
                raise StoreError(f"vector {i} (id {ids[i]!r}) has a NaN or infinite value")
        else:
            for i, (point_id, vector) in enumerate(zip(ids, vectors, strict=True)):
                values = [float(v) for v in vector]
                if len(values) != dim:
                    raise StoreError(f"vector {i} (id {point_id!r}) has {len(values)} numbers; collection "
                                     f"{collection!r} holds {dim}-dimensional vectors")
                if not all(math.isfinite(v) for v in values):
                    raise StoreError(f"vector {i} (id {point_id!r}) has a NaN or infinite value")
        for point_id, meta in zip(ids, metadata, strict=True):
            if not isinstance(meta, Mapping):
                raise StoreError(f"metadata of {point_id!r} must be a dict, got {type(meta).__name__}")
            bad = [key for key in meta if not isinstance(key, str) or key.startswith("_dspyo3")]
            if bad:
                raise StoreError(f"metadata of {point_id!r}: keys must be strings not starting with _dspyo3: {bad}")
            try:
                json.dumps(meta)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"metadata of {point_id!r} is not JSON: {exc}") from None
        if batch_size < 1:
            raise StoreError(f"batch_size must be >= 1, got {batch_size}")
        def rows(start: int, end: int) -> list[list[float]]:  # Python floats, one batch at a time
            if array is not None:
                converted: list[list[float]] = array[start:end].astype(np.float64).tolist()
                return converted
            return [[float(v) for v in vector] for vector in vectors[start:end]]

        self._validate_points(collection, ids, _Rows(len(ids), rows), metadata, distance)
        from dspyo3_rag.progress import bar, wanted

        with bar(f"storing in {collection}", len(ids), wanted(progress)) as shown:
            for start in range(0, len(ids), batch_size):
                end = start + batch_size
                self._upsert(collection, ids[start:end], rows(start, end),
                             [dict(m) for m in metadata[start:end]], namespace)
                shown.advance(len(ids[start:end]))
        return len(ids)

    def delete(self, collection: str, ids: Sequence[str], *, namespace: str | None = None) -> None:
        """Delete points by id (ids that do not exist are ignored)."""
        self._require(collection)
        self._delete(collection, [str(i) for i in ids], namespace)

    def search(self, collection: str, vector: Sequence[float], k: int = 10, *, filter: Filter | None = None,
               namespace: str | None = None) -> list[Hit]:
        """The ``k`` closest points (highest score first), optionally only those matching ``filter``."""
        dim, distance = self._require(collection)
        if len(vector) != dim:
            raise StoreError(f"query vector has {len(vector)} numbers; collection {collection!r} holds "
                             f"{dim}-dimensional vectors (embed the query with the collection's embedder)")
        if k < 1:
            raise StoreError(f"k must be >= 1, got {k}")
        query = [float(v) for v in vector]
        if not all(math.isfinite(v) for v in query):
            raise StoreError("the query vector has a NaN or infinite value")
        if filter:
            for key, value in filter.items():
                values = value if isinstance(value, (list, tuple)) else [value]
                if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
                    raise StoreError(f"filter on {key!r}: use a string, number or bool, or a non-empty list of "
                                     f"them; got {value!r}")
                if not self._has_field(collection, key, namespace):
                    raise StoreError(f"filter on {key!r}: no point in collection {collection!r} has that "
                                     "metadata field (check the spelling)")
        if not any(query) and distance == "cosine":
            return []  # a zero vector has no direction: nothing is similar to it (e.g. a stopword-only query)
        return self._search(collection, query, k, filter, namespace, distance)

    def count(self, collection: str, *, namespace: str | None = None) -> int:
        """Number of points (in ``namespace``)."""
        self._require(collection)
        return self._count(collection, namespace)

    def scroll(self, collection: str, *, namespace: str | None = None,
               batch_size: int = 256) -> Iterator[tuple[str, list[float], Metadata]]:
        """Every ``(id, vector, metadata)`` of the collection (for migration and export)."""
        self._require(collection)
        return self._scroll(collection, namespace, batch_size)

    def _require(self, collection: str) -> tuple[int, str]:
        described = self._describe(collection)
        if described is None:
            known = ", ".join(sorted(self._names())) or "none"
            raise StoreError(f"unknown collection {collection!r} in {self.name}; existing collections: {known}")
        return described


class _Rows(Sequence[Sequence[float]]):
    """The vectors of an upsert as a sequence of float lists, made a batch at a time (for backend validation)."""

    def __init__(self, size: int, rows: Any) -> None:
        self._size, self._rows = size, rows

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._rows(*index.indices(self._size)[:2])
        if not -self._size <= index < self._size:
            raise IndexError(index)
        index %= self._size
        return self._rows(index, index + 1)[0]


def migrate(source: VectorStore, target: VectorStore, collection: str, *, into: str | None = None,
            namespace: str | None = None, batch_size: int = 256) -> int:
    """Copy a collection (one namespace of it) from ``source`` to ``target`` (created if missing); returns the
    number of points copied. The target collection must not already hold points of that namespace."""
    into = into or collection
    dim = source.dimension(collection)
    if into in target.collections():
        if target.dimension(into) != dim:
            raise StoreError(f"target collection {into!r} is {target.dimension(into)}-dimensional, the source "
                             f"{dim}-dimensional")
        if target.count(into, namespace=namespace):
            raise StoreError(f"target collection {into!r} already has points; migrate into an empty one")
    else:
        target.create_collection(into, dim, distance=source.distance(collection))
    copied = 0
    batch: list[tuple[str, list[float], Metadata]] = []
    for point in source.scroll(collection, namespace=namespace, batch_size=batch_size):
        batch.append(point)
        if len(batch) == batch_size:
            copied += target.upsert(into, *zip(*batch, strict=True), namespace=namespace)
            batch = []
    if batch:
        copied += target.upsert(into, *zip(*batch, strict=True), namespace=namespace)
    return copied
