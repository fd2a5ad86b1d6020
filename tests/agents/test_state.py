"""Versioned agent state with optimistic concurrency: the same contract for memory, SQLite and Redis, and two
real processes updating one key concurrently (SQLite file, redis-server) without losing an update."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspyo3_agents import (
    AgentState,
    MemoryStateStore,
    RedisStateStore,
    SQLiteStateStore,
    StaleStateError,
    StateStore,
    open_store,
)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
    elif request.param == "sqlite":
        with SQLiteStateStore(tmp_path / "state.db") as sqlite:
            yield sqlite
    else:
        url = request.getfixturevalue("redis_url")
        with RedisStateStore(url, namespace=f"t{time.monotonic_ns()}") as redis_store:
            yield redis_store


def test_versions_and_compare_and_set(store: StateStore) -> None:
    assert store.load("a") == AgentState("a", {}, 0, 0.0)
    first = store.save(AgentState("a", {"n": 1}))
    assert first.version == 1 and store.load("a").data == {"n": 1}
    second = store.save(AgentState("a", {"n": 2}, version=1))
    assert second.version == 2
    with pytest.raises(StaleStateError, match=r"state 'a' changed underneath this write: it was based on version 1 "
                                              r"but the store holds version 2"):
        store.save(AgentState("a", {"n": 99}, version=1))
    with pytest.raises(StaleStateError, match="based on version 0 but the store holds version 2"):
        store.save(AgentState("a", {"n": 99}))  # a second "creator"
    assert store.load("a").data == {"n": 2}
    updated = store.update("a", lambda d: {**d, "n": d["n"] + 1})
    assert (updated.version, updated.data) == (3, {"n": 3})
    store.save(AgentState("b_1", {"x": [1, "two"]}))
    store.save(AgentState("b%", {}))
    assert store.keys() == ["a", "b%", "b_1"] and store.keys("b_") == ["b_1"]
    store.delete("a")
    assert store.load("a").version == 0 and store.keys("a") == []
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.save(AgentState("c", {"x": object()}))


def test_versions_keep_growing_across_delete(store: StateStore) -> None:
    store.save(AgentState("z", {"v": 1}))
    stale = store.load("z")  # a writer that loaded version 1 and is slow to write
    store.delete("z")
    assert store.load("z") == AgentState("z", {}, 0, 0.0) and store.keys("z") == []
    store.delete("z")  # deleting twice is fine
    again = store.save(AgentState("z", {"v": "new"}))  # created again, from version 0
    assert again.version == 2 and store.keys("z") == ["z"]
    with pytest.raises(StaleStateError, match="based on version 1 but the store holds version 2"):
        store.save(AgentState("z", {"v": "stale"}, stale.version))  # no ABA: the re-created key is not version 1
    assert store.load("z").data == {"v": "new"}


def test_keys_with_glob_characters(store: StateStore) -> None:
    for key in ("c[1]", "c1", "c*x", "c?y", "d"):
        store.save(AgentState(key, {}))
    assert store.keys("c[") == ["c[1]"] and store.keys("c[1]") == ["c[1]"]
    assert store.keys("c*") == ["c*x"] and store.keys("c?") == ["c?y"]


def test_redis_ttl_is_set_with_the_write(redis_url: str) -> None:
    with RedisStateStore(redis_url, namespace=f"ttl{uuid.uuid4().hex}", ttl=30) as store:
        store.save(AgentState("k", {"a": 1}))
        assert 0 < store.client.pttl(store.prefix + "k") <= 30_000
        store.client.delete(store.prefix + "k")


def test_sqlite_close_closes_every_threads_connection(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "s.db")
    store.save(AgentState("a", {}))
    worker = threading.Thread(target=store.load, args=("a",))
    worker.start()
    worker.join()
    opened = list(store._connections)
    assert len(opened) == 2
    store.close()
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    assert store.load("a").version == 1  # usable again: a new connection


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStateStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.db"), SQLiteStateStore)
    assert isinstance(open_store(str(tmp_path / "y.sqlite")), SQLiteStateStore)
    with pytest.raises(ValueError, match="unknown state store URL 'ftp://x'; use memory://"):
        open_store("ftp://x")


WRITER = r"""
import sys, time
from pathlib import Path
from dspyo3_agents import RedisStateStore, open_store

url, key, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = open_store(url) if not url.startswith("redis") else RedisStateStore(url, namespace=sys.argv[6])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)

def bump(data):
    value = data.get("count", 0)
    time.sleep(0.002)  # widen the read-modify-write window so the writers really collide
    data["count"] = value + 1
    data.setdefault("writers", []).append(sys.argv[5])

for _ in range(count):
    store.update(key, bump)
print(store.conflicts, flush=True)
"""


def _race(url: str, tmp_path: Path, namespace: str = "-", writers: int = 2, count: int = 40) -> int:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), url, "shared", str(count), str(go), f"w{i}",
                               namespace],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(writers)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate()[1][-2000:]
        go.touch()
        conflicts = 0
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            conflicts += int(out.strip())
    finally:
        for proc in procs:
            proc.kill()
    return conflicts


def test_two_processes_never_lose_an_update_in_redis(redis_url: str, tmp_path: Path) -> None:
    namespace = f"race{uuid.uuid4().hex}"  # never shared with another test run on the same server
    with RedisStateStore(redis_url, namespace=namespace) as store:
        try:
            conflicts = _race(redis_url, tmp_path, namespace)
            state = store.load("shared")
            assert state.data["count"] == 80 and state.version == 80
            assert sorted(set(state.data["writers"])) == ["w0", "w1"] and len(state.data["writers"]) == 80
            assert conflicts > 0  # the writers did collide, and every collision was retried instead of overwriting
        finally:
            store.client.delete(*store.client.keys(store.prefix + "*") or [store.prefix + "none"])


def test_two_processes_never_lose_an_update_in_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    conflicts = _race(url, tmp_path)
    state = open_store(url).load("shared")
    assert state.data["count"] == 80 and state.version == 80
    assert conflicts > 0
