"""Agent and conversation state, versioned with optimistic concurrency: every write names the version it was
based on, and a write based on a stale version raises :class:`StaleStateError` instead of overwriting what
another writer stored. :meth:`StateStore.update` is the read-modify-write loop that retries on conflicts, so two
processes incrementing the same counter never lose an increment.

Backends: :class:`MemoryStateStore` (one process), :class:`SQLiteStateStore` (the embedded default: one file,
transactions, WAL), :class:`RedisStateStore` (shared: a Lua compare-and-set on ``{key, version}``).
:func:`open_store` builds one from a URL (``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspyo3_core.globs import scan_prefix

__all__ = [
    "AgentState",
    "MemoryStateStore",
    "RedisStateStore",
    "SQLiteStateStore",
    "CorruptStateError",
    "StaleStateError",
    "StateStore",
    "open_store",
]


class StaleStateError(RuntimeError):
    """A write was based on an older version than the stored one (another writer got there first)."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"state {key!r} changed underneath this write: it was based on version {expected} but the "
                         f"store holds version {actual}; reload it and apply the change again (StateStore.update "
                         "does this for you)")
        self.key, self.expected, self.actual = key, expected, actual


@dataclass
class AgentState:
    """One stored state: a JSON object ``data`` under ``key`` at ``version`` (0: never written)."""

    key: str
    data: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    updated_at: float = 0.0


class CorruptStateError(ValueError):
    """A stored state is not a JSON object (written by something else, or damaged): the message names the key and
    the store, and how to start over."""


def _decode(key: str, raw: str | bytes, where: str) -> dict[str, Any]:
    """A stored state's data, checked: stores are shared, so what they hold is data, not trusted."""
    from dspyo3_core.files import loads_json

    try:
        data = loads_json(raw, source=f"agent state {key!r} in {where}")
    except ValueError as exc:  # not JSON, not UTF-8, or nested too deeply
        raise CorruptStateError(f"agent state {key!r} in {where} cannot be read ({exc}); delete it (store.delete"
                                f"({key!r})) to start the run over") from None
    if not isinstance(data, dict):
        raise CorruptStateError(f"agent state {key!r} in {where} holds a JSON {type(data).__name__}, not an object; "
                                f"delete it (store.delete({key!r})) to start the run over")
    return data


def _encode(data: Mapping[str, Any]) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"agent state must be JSON-serialisable: {exc}") from None


class StateStore(ABC):
    """A versioned key -> JSON-object store. Subclasses implement :meth:`load`, :meth:`_write`, :meth:`delete`
    and :meth:`keys`.

    Versions only grow, also across :meth:`delete`: a deleted key loads as version 0 (and can be created again
    from version 0), but its next version continues from the deleted one's, so a stale writer holding an old
    version can never overwrite a re-created key (no ABA). Deleted keys leave a small tombstone for that."""

    conflicts: int = 0
    """Conflicts :meth:`update` met and retried in this process (for monitoring and tests)."""

    @abstractmethod
    def load(self, key: str) -> AgentState:
        """The state under ``key`` (version 0 and empty data if there is none)."""

    @abstractmethod
    def _write(self, key: str, data: str, expected: int) -> int:
        """Store ``data`` if the stored version is ``expected``; return the new version or raise
        :class:`StaleStateError`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""

    @abstractmethod
    def keys(self, prefix: str = "") -> list[str]:
        """Stored keys starting with ``prefix``, sorted."""

    def save(self, state: AgentState) -> AgentState:
        """Write ``state.data`` if the store still holds ``state.version``; returns the state at its new version.

        Raises:
            StaleStateError: someone else wrote ``state.key`` since ``state`` was loaded.
        """
        version = self._write(state.key, _encode(state.data), state.version)
        return AgentState(state.key, dict(state.data), version, time.time())

    def update(self, key: str, change: Callable[[dict[str, Any]], dict[str, Any] | None], *,
               attempts: int = 100) -> AgentState:
        """Apply ``change`` to the stored data (it may mutate its argument or return a new dict) and save, retrying
        from a fresh load whenever another writer got in between (at most ``attempts`` times)."""
        for attempt in range(attempts):
            state = self.load(key)
            result = change(state.data)
            if result is not None:
                state.data = result
            try:
                return self.save(state)
            except StaleStateError:
                self.conflicts += 1
                time.sleep(min(0.05, 0.001 * (attempt + 1)))
        raise RuntimeError(f"state {key!r}: gave up after {attempts} conflicting writes; too many writers on one key")

    def close(self) -> None:  # noqa: B027 (optional for subclasses)
        """Release connections (the store can be opened again)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> StateStore:
        """Copies of an agent share its store (a connection, not program state)."""
        return self

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryStateStore(StateStore):
    """In-process store (tests, single-process apps): versioned like the others, thread-safe."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[int, str | None, float]] = {}  # data None: deleted (the version is kept)
        self._lock = threading.Lock()

    def load(self, key: str) -> AgentState:
        with self._lock:
            version, data, at = self._items.get(key, (0, None, 0.0))
        return AgentState(key) if data is None else AgentState(key, _decode(key, data, "memory"), version, at)

    def _write(self, key: str, data: str, expected: int) -> int:
        with self._lock:
            stored, old, _ = self._items.get(key, (0, None, 0.0))
            visible = 0 if old is None else stored
            if visible != expected:
                raise StaleStateError(key, expected, visible)
            self._items[key] = (stored + 1, data, time.time())
            return stored + 1

    def delete(self, key: str) -> None:
        with self._lock:
            if key in self._items:
                self._items[key] = (self._items[key][0], None, time.time())

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k, v in self._items.items() if k.startswith(prefix) and v[1] is not None)


class SQLiteStateStore(StateStore):
    """State in one SQLite file (the embedded default). Writes are single transactions (atomic: a crash leaves
    the old state or the new one); the compare-and-set is one ``UPDATE ... WHERE version = ?``, so processes
    sharing the file never lose an update. One connection per thread; WAL journal."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._generation = 0
        self._connection().execute("CREATE TABLE IF NOT EXISTS dspyo3_agent_state (key TEXT PRIMARY KEY, "
                                   "version INTEGER NOT NULL, data TEXT NOT NULL, updated_at REAL NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", None) != self._generation:
            # each thread uses its own connection; close() (from any thread) closes them all
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            for attempt in range(100):  # switching a new file to WAL is not covered by the busy timeout
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.01)
            conn.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._connections.append(conn)
                self._local.conn, self._local.generation = conn, self._generation
        return conn

    # a deleted key keeps its row and version with data '' (a tombstone; stored data is never ''), see StateStore

    def load(self, key: str) -> AgentState:
        row = self._connection().execute(
            "SELECT version, data, updated_at FROM dspyo3_agent_state WHERE key = ? AND data != ''", (key,)).fetchone()
        if row is None:
            return AgentState(key)
        return AgentState(key, _decode(key, row[1], "SQLite"), int(row[0]), float(row[2]))

    def _write(self, key: str, data: str, expected: int) -> int:
        conn = self._connection()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT version, data FROM dspyo3_agent_state WHERE key = ?", (key,)).fetchone()
            stored, visible = (0, 0) if row is None else (int(row[0]), int(row[0]) if row[1] else 0)
            if visible != expected:
                conn.execute("ROLLBACK")
                raise StaleStateError(key, expected, visible)
            conn.execute("INSERT INTO dspyo3_agent_state VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "version = excluded.version, data = excluded.data, updated_at = excluded.updated_at",
                         (key, stored + 1, data, now))
            conn.execute("COMMIT")
        except StaleStateError:
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return stored + 1

    def delete(self, key: str) -> None:
        self._connection().execute("UPDATE dspyo3_agent_state SET data = '', updated_at = ? WHERE key = ?",
                                   (time.time(), key))

    def keys(self, prefix: str = "") -> list[str]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._connection().execute(
            "SELECT key FROM dspyo3_agent_state WHERE key LIKE ? ESCAPE '\\' AND data != '' ORDER BY key",
            (escaped + "%",))
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        """Close every connection this store opened, in any thread (the next use opens new ones)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        for conn in connections:
            conn.close()


# KEYS[1]: the state hash. ARGV: expected version, data, now, ttl in ms (0: none). Returns the new version, or
# -(visible version) - 1. A deleted key is a tombstone {version, deleted=1} (see StateStore): it loads as version 0
# and its next version continues from the stored one. The TTL is set in the same script (atomic with the write).
_CAS = """
local h = redis.call('HMGET', KEYS[1], 'version', 'deleted')
local stored = tonumber(h[1] or '0')
local visible = stored
if h[2] == '1' then visible = 0 end
if visible ~= tonumber(ARGV[1]) then
  return -visible - 1
end
redis.call('HSET', KEYS[1], 'version', stored + 1, 'data', ARGV[2], 'updated_at', ARGV[3], 'deleted', '0')
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return stored + 1
"""

_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'deleted', '1', 'data', '')
end
return 0
"""


class RedisStateStore(StateStore):
    """State shared through Redis: each key is a hash ``{version, data, updated_at}`` and every write is one Lua
    compare-and-set (atomic on the server), so concurrent writers in any number of processes never lose an update.

    Args:
        url: ``redis://host:port/db``.
        namespace: key prefix (``<namespace>:state:<key>``).
        ttl: seconds a state (or a deleted key's tombstone) lives after its last write (``None``: forever).
    """

    def __init__(self, url: str, *, namespace: str = "dspyo3:agents", ttl: float | None = None,
                 timeout: float = 5.0) -> None:
        import redis

        self.url = url
        self.prefix = f"{namespace}:state:"
        self.ttl = ttl
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._cas = self.client.register_script(_CAS)
        self._delete = self.client.register_script(_DELETE)

    def load(self, key: str) -> AgentState:
        raw = self.client.hgetall(self.prefix + key)
        if not raw or raw.get(b"deleted") == b"1":
            return AgentState(key)
        return AgentState(key, _decode(key, raw[b"data"], "Redis"), int(raw[b"version"]),
                          float(raw.get(b"updated_at", 0)))

    def _write(self, key: str, data: str, expected: int) -> int:
        ttl_ms = 0 if self.ttl is None else max(1, int(self.ttl * 1000))
        result = int(self._cas(keys=[self.prefix + key], args=[expected, data, repr(time.time()), ttl_ms]))
        if result < 0:
            raise StaleStateError(key, expected, -result - 1)
        return result

    def delete(self, key: str) -> None:
        self._delete(keys=[self.prefix + key])

    def keys(self, prefix: str = "") -> list[str]:
        found = sorted(scan_prefix(self.client, self.prefix + prefix, count=500))
        pipe = self.client.pipeline(transaction=False)
        for name in found:
            pipe.hget(name, "deleted")
        flags = pipe.execute()
        return [k.decode()[len(self.prefix):] for k, deleted in zip(found, flags, strict=True) if deleted != b"1"]

    def close(self) -> None:
        self.client.close()


def open_store(url: str) -> StateStore:
    """A store from a URL: ``memory://``, ``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` (or a bare path
    ending in ``.db`` / ``.sqlite``), ``redis://host:port/db`` (``rediss://`` too)."""
    if url.startswith("memory:"):
        return MemoryStateStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStateStore(url)
    if url.startswith("sqlite:///"):
        return SQLiteStateStore(url[len("sqlite:///"):])
    if url.endswith((".db", ".sqlite", ".sqlite3")) and "://" not in url:
        return SQLiteStateStore(url)
    raise ValueError(f"unknown state store URL {url!r}; use memory://, sqlite:///path.db or redis://host:port/0")


def iter_states(store: StateStore, prefix: str = "") -> Iterator[AgentState]:
    """Every stored state under ``prefix``."""
    for key in store.keys(prefix):
        yield store.load(key)
