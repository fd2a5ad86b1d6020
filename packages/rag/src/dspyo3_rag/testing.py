"""A loopback stand-in for Pinecone's REST API, so the Pinecone store can be tested with no account or network.

:class:`PineconeStandIn` serves the part of Pinecone's control plane the store uses (``/indexes``: create, list,
describe, delete of dense vector indexes) and the data plane of each index (``/vectors/upsert``, ``/query``,
``/vectors/delete``, ``/describe_index_stats``, ``/vectors/list``, ``/vectors/fetch``) with the wire format of the
real service: camelCase JSON, the ``Api-Key`` header, the same error envelope and status codes, limits (1000
vectors and 2 MB per upsert request, 40 KB of metadata per vector, no all-zero vectors, ids of at most 512
characters), metadata rules (string, number, boolean or list of strings; numbers come back as floats, vector values
as float32), its filter language (``$eq``, ``$ne``, ``$in``, ``$nin``, ``$gt``, ``$gte``, ``$lt``, ``$lte``,
``$exists``, ``$and``, ``$or``), scores (cosine similarity, dot product, squared euclidean distance), the default
namespace reported as ``__default__``, a 404 for deletes in a namespace that does not exist, and read-your-writes
LSN headers per namespace (``x-pinecone-lsn-committed`` on upserts, ``x-pinecone-lsn-reconciled`` on queries only).

It is a test double, exact search over an in-memory dict; it is not Pinecone. ``stale_reads=N`` makes a namespace
lag behind its writes for the next ``N`` queries to it: those queries report an older reconciled LSN and match
nothing, and stats, list and fetch show the namespace as empty, as the real, eventually consistent service can.

    with PineconeStandIn(api_key="test") as pinecone:
        store = PineconeStore(api_key="test", host=pinecone.url)
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["PineconeStandIn"]

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,43}[a-z0-9])?")
_METRICS = {"cosine", "dotproduct", "euclidean"}


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Index:
    def __init__(self, name: str, dimension: int, metric: str, deployment: dict[str, Any]) -> None:
        self.name, self.dimension, self.metric, self.deployment = name, dimension, metric, deployment
        # namespace -> id -> (values, metadata)
        self.namespaces: dict[str, dict[str, tuple[list[float], dict[str, Any]]]] = {}


def _matches(meta: Mapping[str, Any], flt: Mapping[str, Any]) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            if not all(_matches(meta, sub) for sub in cond):
                return False
            continue
        if key == "$or":
            if not any(_matches(meta, sub) for sub in cond):
                return False
            continue
        if key.startswith("$"):
            raise _ApiError(400, "INVALID_ARGUMENT", f"unknown top-level filter operator {key}")
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        present = key in meta
        value = meta.get(key)
        values = value if isinstance(value, list) else [value]
        for op, arg in ops.items():
            if op == "$exists":
                ok = present == bool(arg)
            elif not present:
                ok = op in {"$ne", "$nin"}
            elif op == "$eq":
                ok = arg in values
            elif op == "$ne":
                ok = arg not in values
            elif op == "$in":
                ok = any(v in arg for v in values)
            elif op == "$nin":
                ok = not any(v in arg for v in values)
            elif op in {"$gt", "$gte", "$lt", "$lte"}:
                if not isinstance(arg, (int, float)) or isinstance(arg, bool):
                    raise _ApiError(400, "INVALID_ARGUMENT", f"{op} needs a number, got {arg!r}")
                number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
                ok = number is not None and {"$gt": number > arg, "$gte": number >= arg,
                                             "$lt": number < arg, "$lte": number <= arg}[op]
            else:
                raise _ApiError(400, "INVALID_ARGUMENT", f"unknown filter operator {op} on {key}")
            if not ok:
                return False
    return True


def _check_metadata(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise _ApiError(400, "INVALID_ARGUMENT", "metadata must be an object")
    clean: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, (bool, str)):
            clean[key] = value
        elif isinstance(value, (int, float)):
            clean[key] = float(value)  # Pinecone keeps numbers as 64-bit floats
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            clean[key] = list(value)
        else:
            raise _ApiError(400, "INVALID_ARGUMENT", f"Metadata value must be a string, number, boolean or list of "
                                                     f"strings, got '{json.dumps(value)}' for field '{key}'")
    return clean


class PineconeStandIn:
    """A threaded HTTP server on ``127.0.0.1`` speaking Pinecone's REST API (see the module docstring).

    Args:
        api_key: the key every request must carry in ``Api-Key`` (401 otherwise).
        port: 0 picks a free port.
        stale_reads: how many reads after each write answer as not-yet-caught-up.
    """

    def __init__(self, api_key: str = "pinecone-standin", *, port: int = 0, stale_reads: int = 0) -> None:
        self.api_key = api_key
        self.stale_reads = stale_reads
        self.indexes: dict[str, _Index] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self._lock = threading.Lock()
        self._lsn: dict[tuple[str, str], int] = {}  # (index, namespace) -> last committed LSN
        self._stale: dict[tuple[str, str], int] = {}  # (index, namespace) -> queries still answered stale
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = standin._dispatch(method, self.path, raw, self.headers.get("Api-Key"))
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="pinecone-standin", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The control-plane URL to give the SDK as ``host``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PineconeStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dispatch ------------------------------------------------------------------------------------------------
    def _dispatch(self, method: str, target: str, raw: bytes,
                  key: str | None) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        self.requests.append((method, path))
        try:
            if key != self.api_key:
                raise _ApiError(401, "UNAUTHENTICATED", "Invalid API Key")
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                raise _ApiError(400, "INVALID_ARGUMENT", "request body is not JSON") from None
            with self._lock:
                segments = [unquote(s) for s in path.strip("/").split("/")]
                if segments[0] == "indexes":
                    return self._control(method, segments[1:], body)
                if segments[0] == "index" and len(segments) >= 3:
                    index = self.indexes.get(segments[1])
                    if index is None:
                        raise _ApiError(404, "NOT_FOUND", f"Resource {segments[1]} not found")
                    return self._data(index, method, "/".join(segments[2:]), body, parse_qs(parts.query), len(raw))
                raise _ApiError(404, "NOT_FOUND", f"no route for {method} {path}")
        except _ApiError as exc:
            return exc.status, {"error": {"code": exc.code, "message": exc.message}, "status": exc.status}, {}

    def _model(self, index: _Index) -> dict[str, Any]:
        return {
            "name": index.name,
            "status": {"ready": True, "state": "Ready"},
            "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": index.dimension,
                                              "metric": index.metric}}},
            "deployment": index.deployment,
            "deletion_protection": "disabled",
            "host": f"{self.url}/index/{index.name}",
        }

    def _control(self, method: str, rest: list[str], body: Any) -> tuple[int, Any, dict[str, str]]:
        if not rest and method == "GET":
            return 200, {"indexes": [self._model(i) for i in self.indexes.values()]}, {}
        if not rest and method == "POST":
            name = body.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise _ApiError(400, "INVALID_ARGUMENT", "Name must consist of lower case alphanumeric characters "
                                                         "or '-', and be at most 45 characters")
            if name in self.indexes:
                raise _ApiError(409, "ALREADY_EXISTS", f"Resource {name} already exists")
            field = (body.get("schema") or {}).get("fields", {}).get("_values") or {}
            dimension, metric = field.get("dimension"), field.get("metric", "cosine")
            if field.get("type") != "dense_vector" or not isinstance(dimension, int) or not 1 <= dimension <= 20000:
                raise _ApiError(400, "INVALID_ARGUMENT", "this stand-in serves dense vector indexes: schema.fields."
                                                         "_values must be a dense_vector with a dimension")
            if metric not in _METRICS:
                raise _ApiError(400, "INVALID_ARGUMENT", f"metric must be one of {sorted(_METRICS)}")
            deployment = body.get("deployment") or {"deployment_type": "managed", "cloud": "aws",
                                                    "region": "us-east-1"}
            self.indexes[name] = _Index(name, dimension, metric, deployment)
            return 201, self._model(self.indexes[name]), {}
        if len(rest) == 1:
            index = self.indexes.get(rest[0])
            if index is None:
                raise _ApiError(404, "NOT_FOUND", f"Resource {rest[0]} not found")
            if method == "GET":
                return 200, self._model(index), {}
            if method == "DELETE":
                del self.indexes[rest[0]]
                return 202, None, {}
        raise _ApiError(404, "NOT_FOUND", f"no control-plane route for {method} /indexes/{'/'.join(rest)}")

    def _write(self, index: _Index, namespace: str) -> dict[str, str]:
        key = (index.name, namespace)
        self._lsn[key] = self._lsn.get(key, 0) + 1
        if self.stale_reads:
            self._stale[key] = self.stale_reads
        return {"x-pinecone-lsn-committed": str(self._lsn[key])}

    def _lagging(self, index: _Index, namespace: str) -> bool:
        return self._stale.get((index.name, namespace), 0) > 0

    def _query_read(self, index: _Index, namespace: str) -> tuple[bool, dict[str, str]]:
        """Whether this query is served stale, and its reconciled-LSN header."""
        key = (index.name, namespace)
        lsn = self._lsn.get(key, 0)
        if self._stale.get(key, 0) > 0:
            self._stale[key] -= 1
            return True, {"x-pinecone-lsn-reconciled": str(lsn - 1)}
        return False, {"x-pinecone-lsn-reconciled": str(lsn)}

    def _data(self, index: _Index, method: str, route: str, body: Any,
              query: dict[str, list[str]], size: int) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and route == "vectors/upsert":
            vectors = body.get("vectors")
            if size > 2 * 1024 * 1024:
                raise _ApiError(413, "PAYLOAD_TOO_LARGE", f"request size {size} bytes exceeds the 2 MB limit")
            if not isinstance(vectors, list) or not vectors:
                raise _ApiError(400, "INVALID_ARGUMENT", "vectors must be a non-empty list")
            if len(vectors) > 1000:
                raise _ApiError(400, "INVALID_ARGUMENT", "at most 1000 vectors per upsert request")
            checked = []
            for vector in vectors:
                vid, values = vector.get("id"), vector.get("values")
                if not isinstance(vid, str) or not vid or len(vid) > 512:
                    raise _ApiError(400, "INVALID_ARGUMENT", "vector ids must be 1-512 character strings")
                if not isinstance(values, list) or len(values) != index.dimension:
                    raise _ApiError(400, "INVALID_ARGUMENT", f"Vector dimension {len(values or [])} does not match "
                                                             f"the dimension of the index {index.dimension}")
                if not any(values):
                    raise _ApiError(400, "INVALID_ARGUMENT", "Dense vectors must contain at least one non-zero "
                                                             "value")
                meta_size = len(json.dumps(vector.get("metadata") or {}, ensure_ascii=False,
                                           separators=(",", ":")).encode())
                if meta_size > 40_960:
                    raise _ApiError(400, "INVALID_ARGUMENT", f"Metadata size is {meta_size} bytes, which exceeds "
                                                             "the limit of 40960 bytes per vector")
                float32 = [struct.unpack("f", struct.pack("f", float(v)))[0] for v in values]
                checked.append((vid, float32, _check_metadata(vector.get("metadata") or {})))
            namespace = body.get("namespace") or ""
            space = index.namespaces.setdefault(namespace, {})
            for vid, values, meta in checked:
                space[vid] = (values, meta)
            return 200, {"upsertedCount": len(checked)}, self._write(index, namespace)
        if method == "POST" and route == "vectors/delete":
            namespace = body.get("namespace") or ""
            if namespace not in index.namespaces:
                raise _ApiError(404, "NOT_FOUND", f"Namespace {namespace or '__default__'} not found")
            space = index.namespaces[namespace]
            if body.get("deleteAll"):
                space.clear()
            elif body.get("ids") is not None:
                for vid in body["ids"]:
                    space.pop(vid, None)
            elif body.get("filter"):
                for vid in [v for v, (_, meta) in space.items() if _matches(meta, body["filter"])]:
                    del space[vid]
            else:
                raise _ApiError(400, "INVALID_ARGUMENT", "give ids, deleteAll or filter")
            self._write(index, namespace)
            return 200, {}, {}  # the SDK drops a delete's response (and its LSN)
        if method == "POST" and route == "query":
            stale, headers = self._query_read(index, body.get("namespace") or "")
            vector, top_k = body.get("vector"), body.get("topK")
            if not isinstance(top_k, int) or not 1 <= top_k <= 10000:
                raise _ApiError(400, "INVALID_ARGUMENT", "topK must be between 1 and 10000")
            if not isinstance(vector, list) or len(vector) != index.dimension:
                raise _ApiError(400, "INVALID_ARGUMENT", f"Vector dimension {len(vector or [])} does not match the "
                                                         f"dimension of the index {index.dimension}")
            namespace = body.get("namespace") or ""
            flt = body.get("filter") or {}
            scored = []
            for vid, (values, meta) in ({} if stale else index.namespaces.get(namespace, {})).items():
                if flt and not _matches(meta, flt):
                    continue
                scored.append((self._score(index.metric, vector, values), vid, values, meta))
            scored.sort(key=lambda s: s[0], reverse=index.metric != "euclidean")
            matches = []
            for score, vid, values, meta in scored[:top_k]:
                match: dict[str, Any] = {"id": vid, "score": score, "values": values if body.get("includeValues")
                                         else []}
                if body.get("includeMetadata"):
                    match["metadata"] = meta
                matches.append(match)
            return 200, {"matches": matches, "namespace": namespace, "usage": {"readUnits": 1}}, headers
        if method == "POST" and route == "describe_index_stats":
            counts = {ns or "__default__": {"vectorCount": 0 if self._lagging(index, ns) else len(points)}
                      for ns, points in index.namespaces.items() if points}
            return 200, {"namespaces": counts, "dimension": index.dimension, "indexFullness": 0.0,
                         "totalVectorCount": sum(c["vectorCount"] for c in counts.values()),
                         "metric": index.metric, "vectorType": "dense"}, {}
        if method == "GET" and route == "vectors/list":
            namespace = (query.get("namespace") or [""])[0]
            stale, headers = self._lagging(index, namespace), {}
            prefix = (query.get("prefix") or [""])[0]
            limit = int((query.get("limit") or ["100"])[0])
            after = (query.get("paginationToken") or [""])[0]
            ids = sorted(v for v in ({} if stale else index.namespaces.get(namespace, {})) if v.startswith(prefix))
            if after:
                ids = [v for v in ids if v > after]
            page = ids[:limit]
            out: dict[str, Any] = {"vectors": [{"id": v} for v in page], "namespace": namespace,
                                   "usage": {"readUnits": 1}}
            if len(ids) > limit:
                out["pagination"] = {"next": page[-1]}
            return 200, out, headers
        if method == "GET" and route == "vectors/fetch":
            namespace = (query.get("namespace") or [""])[0]
            stale, headers = self._lagging(index, namespace), {}
            space = {} if stale else index.namespaces.get(namespace, {})
            found = {vid: {"id": vid, "values": space[vid][0], "metadata": space[vid][1]}
                     for vid in query.get("ids", []) if vid in space}
            return 200, {"vectors": found, "namespace": namespace, "usage": {"readUnits": 1}}, headers
        raise _ApiError(404, "NOT_FOUND", f"no data-plane route for {method} /{route}")

    @staticmethod
    def _score(metric: str, query: list[float], values: list[float]) -> float:
        if metric == "dotproduct":
            return sum(a * b for a, b in zip(query, values, strict=True))
        if metric == "euclidean":
            return sum((a - b) ** 2 for a, b in zip(query, values, strict=True))  # squared, lower is closer
        dot = sum(a * b for a, b in zip(query, values, strict=True))
        norms = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in values))
        return dot / norms if norms else 0.0
