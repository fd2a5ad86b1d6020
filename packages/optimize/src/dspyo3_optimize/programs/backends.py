"""Where the program registry keeps its bytes: a local directory (the default), Redis, or any fsspec filesystem.

Every backend stores bytes under ``(program name, key)`` and holds a per-program exclusive write lock
(:class:`Backend`); :func:`open_backend` picks one by URL.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from dspyo3_core.files import atomic_write_bytes, clean_stale_temporaries
from dspyo3_optimize.programs.errors import RegistryError
from dspyo3_optimize.programs.metadata import NAME_PATTERN


class Backend(Protocol):
    """Byte storage under ``(program name, key)`` with a per-program exclusive lock."""

    url: str

    def get(self, name: str, key: str) -> bytes | None:
        """The bytes stored at ``key``, or None."""

    def put(self, name: str, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` atomically (readers see the old value or the new one)."""

    def put_new(self, name: str, key: str, data: bytes) -> bool:
        """Store ``data`` at ``key`` only if nothing is there yet (atomically); False when ``key`` exists."""

    def keys(self, name: str, prefix: str = "") -> list[str]:
        """Keys of program ``name`` starting with ``prefix``."""

    def names(self) -> list[str]:
        """Program names with at least one key."""

    def lock(self, name: str, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive write lock of program ``name`` (across processes)."""

    def where(self, name: str, key: str) -> str:
        """Human-readable location of a key (a file path or URL), for error messages."""


class LocalBackend:
    """A registry in a local directory: atomic file writes and ``fcntl.flock`` locks."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def _path(self, name: str, key: str) -> Path:
        return self.root / name / key

    def where(self, name: str, key: str) -> str:
        """The file path of ``key``."""
        return str(self._path(name, key))

    def get(self, name: str, key: str) -> bytes | None:
        """File contents, or None when the file does not exist."""
        try:
            return self._path(name, key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, name: str, key: str, data: bytes) -> None:
        """Write through a temporary file, fsync, then ``os.replace`` (:func:`dspyo3_core.files.atomic_write_bytes`)."""
        atomic_write_bytes(self._path(name, key), data)

    def put_new(self, name: str, key: str, data: bytes) -> bool:
        """Write a temporary file, then ``os.link`` it to ``key``: the link fails if ``key`` exists (like
        ``O_EXCL``), so an existing file is never replaced, and a reader never sees a partial one."""
        try:
            atomic_write_bytes(self._path(name, key), data, exclusive=True)
        except FileExistsError:
            return False
        return True

    def keys(self, name: str, prefix: str = "") -> list[str]:
        """Relative paths of the program's files (temporary and lock files excluded)."""
        base = self.root / name
        if not base.is_dir():
            return []
        out = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def names(self) -> list[str]:
        """Subdirectories that hold at least one version or stage file."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name)
                      and ((p / "versions").is_dir() or (p / "stages.json").is_file()))

    def exists(self) -> bool:
        """Whether the directory is a registry: it holds at least one program folder (``NAME/versions/`` or
        ``NAME/stages.json``), or nothing else (an empty directory; hidden files aside). A missing path, a file,
        or a directory of other things is not."""
        if not self.root.is_dir():
            return False
        return bool(self.names()) or not any(not p.name.startswith(".") for p in self.root.iterdir())

    def _clean(self, name: str) -> None:
        """Remove the temporary files writers killed mid-write left anywhere in the program's folder (a version
        folder is never written again once its files exist, so the next atomic write would not see them)."""
        base = self.root / name
        for folder in (base, *(p for p in (base / "versions").glob("*") if p.is_dir())):
            clean_stale_temporaries(folder)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        """``flock`` on ``<root>/<name>/.lock`` (a fresh descriptor each time, so threads exclude each other too);
        once held, temporaries that killed writers left in the program's folders are removed."""
        path = self.root / name / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        import fcntl  # POSIX only: imported here so the registry (and its other backends) import on Windows

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(f"timed out after {timeout:g}s waiting for the lock {path}; another "
                                            "process is writing to this program (or died holding it: the lock is "
                                            "released when it exits)") from None
                    time.sleep(0.01)
            try:
                self._clean(name)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class RedisBackend:
    """A registry in Redis: hash ``<namespace>:registry:<name>`` maps keys to bytes; writes under a Redis lock."""

    LOCK_TTL = 6.0
    """Seconds the write lock outlives a holder that stopped renewing it."""

    def __init__(self, url: str, namespace: str = "dspyo3") -> None:
        import redis

        self.url = url
        self.namespace = namespace
        self.client: Any = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)

    def _hash(self, name: str) -> str:
        return f"{self.namespace}:registry:{name}"

    def where(self, name: str, key: str) -> str:
        """``<url>#<hash>/<key>``."""
        return f"{self.url}#{self._hash(name)}/{key}"

    def get(self, name: str, key: str) -> bytes | None:
        """HGET."""
        value = self.client.hget(self._hash(name), key)
        return bytes(value) if value is not None else None

    def put(self, name: str, key: str, data: bytes) -> None:
        """HSET (atomic in Redis) and add the program to the name index."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._hash(name), key, data)
        pipe.sadd(f"{self.namespace}:registry:names", name)
        pipe.execute()

    def put_new(self, name: str, key: str, data: bytes) -> bool:
        """HSETNX (and add the program to the name index)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self._hash(name), key, data)
        pipe.sadd(f"{self.namespace}:registry:names", name)
        created, _ = pipe.execute()
        return bool(created)

    def keys(self, name: str, prefix: str = "") -> list[str]:
        """HKEYS filtered by prefix."""
        return sorted(k.decode() for k in self.client.hkeys(self._hash(name)) if k.decode().startswith(prefix))

    def names(self) -> list[str]:
        """Members of the name index."""
        return sorted(n.decode() for n in self.client.smembers(f"{self.namespace}:registry:names"))

    def exists(self) -> bool:
        """Whether anything was ever registered under this namespace (its name index exists)."""
        return bool(self.client.exists(f"{self.namespace}:registry:names"))

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        """redis-py's ``Lock`` with a short expiry (:attr:`LOCK_TTL`) that a thread of the holder renews while it
        holds it: a holder that dies, or a Redis that restarts from its append-only file with the lock in it,
        blocks other writers for one expiry at most, however long a write takes."""
        import threading

        import redis.exceptions

        lock = self.client.lock(f"{self._hash(name)}:lock", timeout=self.LOCK_TTL, blocking_timeout=timeout)
        if not lock.acquire():
            raise RegistryError(f"timed out after {timeout:g}s waiting for the Redis lock of {name!r} at {self.url}")
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.LOCK_TTL / 3):
                try:
                    lock.reacquire()
                except (redis.exceptions.LockError, redis.exceptions.RedisError):
                    return  # lost (expired or Redis gone): the write's own Redis calls fail or the CAS catches it

        renewer = threading.Thread(target=renew, name="dspyo3-registry-lock", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(redis.exceptions.LockError, redis.exceptions.RedisError):
                lock.release()

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


class FsspecBackend:
    """A registry on any fsspec filesystem (``memory://``, ``s3://bucket/prefix``, ``gs://...``)."""

    def __init__(self, url: str) -> None:
        import importlib

        fsspec: Any = importlib.import_module("fsspec")
        self.url = url
        self.fs: Any
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = str(root).rstrip("/")

    def _path(self, name: str, key: str) -> str:
        return f"{self.root}/{name}/{key}"

    def where(self, name: str, key: str) -> str:
        """``<url>/<name>/<key>``."""
        return f"{self.url.rstrip('/')}/{name}/{key}"

    def get(self, name: str, key: str) -> bytes | None:
        """``fs.cat``."""
        try:
            return bytes(self.fs.cat_file(self._path(name, key)))
        except FileNotFoundError:
            return None

    def put(self, name: str, key: str, data: bytes) -> None:
        """``fs.pipe_file`` (one object PUT: atomic on object stores)."""
        self.fs.pipe_file(self._path(name, key), data)

    def put_new(self, name: str, key: str, data: bytes) -> bool:
        """Create the object in exclusive mode (``"xb"``); False when it exists. Object stores without exclusive
        create cannot refuse an existing key: use one writer, or Redis."""
        try:
            with self.fs.open(self._path(name, key), "xb") as handle:
                handle.write(data)
        except FileExistsError:
            return False
        return True

    def keys(self, name: str, prefix: str = "") -> list[str]:
        """Object keys under the program's prefix."""
        base = f"{self.root}/{name}/"
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        out = []
        for path in found:
            key = str(path).lstrip("/")[len(base.lstrip("/")):]
            if key.startswith(prefix) and not key.rsplit("/", 1)[-1].startswith("."):
                out.append(key)
        return sorted(out)

    def names(self) -> list[str]:
        """Top-level prefixes."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return sorted(n for n in (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries) if NAME_PATTERN.match(n))

    def exists(self) -> bool:
        """Whether the registry's prefix exists (is a directory or holds objects)."""
        try:
            return bool(self.fs.isdir(self.root)) or bool(self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        """A ``.lock`` object created in exclusive mode; removed after use."""
        path = self._path(name, ".lock")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.fs.open(path, "xb") as handle:
                    handle.write(str(os.getpid()).encode())
                break
            except FileExistsError:  # held by another writer
                if time.monotonic() > deadline:
                    raise RegistryError(f"timed out after {timeout:g}s waiting for {self.where(name, '.lock')}; "
                                        "delete it if its writer died") from None
                time.sleep(0.02)
            except OSError as exc:  # permissions, network, no such bucket: waiting will not help
                raise RegistryError(f"cannot create the lock {self.where(name, '.lock')}: {type(exc).__name__}: "
                                    f"{exc}") from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)


def open_backend(url: str | os.PathLike[str]) -> Backend:
    """The backend for ``url``: a path / ``file://`` (directory), ``redis://`` / ``rediss://``, or an fsspec URL."""
    text = os.fspath(url)
    if text.startswith(("redis://", "rediss://", "unix://")):
        return RedisBackend(text)
    if text.startswith("file://"):
        return LocalBackend(text[len("file://"):])
    if "://" in text:
        try:
            return FsspecBackend(text)
        except ImportError as exc:
            raise RegistryError(f"registry URL {text!r} needs fsspec and its driver for that scheme ({exc}); "
                                "pip install fsspec s3fs (or gcsfs, adlfs)") from None
        except ValueError as exc:
            raise RegistryError(f"registry URL {text!r}: {exc}; use a directory, redis://... or an fsspec URL") \
                from None
    return LocalBackend(text)
