"""A versioned registry of compiled DSPy programs.

Each version of a program is stored as DSPy's JSON state (``program.dump_state()``, what ``Module.save("x.json")``
writes) plus a metadata record: semver version, parent version, dataset hash, metric, scores with confidence
intervals, DSPy version, LM profile, optimizer, run id, creation time, the sha256 of the state, and the sha256 of
the metadata itself (``meta_checksum``). Programs are loaded back into a program object the caller gives (a module
or a factory), with both checksums verified first. Nothing is ever unpickled.

Tamper evidence: the checksums catch corruption, not an attacker (anyone who can write the registry can recompute
them). With a signing key (``$DSPYO3_REGISTRY_KEY``, or ``signing_key=``), every version's metadata (which holds the
state's sha256) is signed with HMAC-SHA256 when registered, and a version that is unsigned or whose signature does
not verify is refused when read (``dspyo3 registry verify`` reports it). Loading never applies more than learned
state (:mod:`dspyo3_core.program_state`): a version that carries LM settings, attributes or code is refused.

Trust model: anyone who can write to a registry can write its ``meta.json``, so the factory import path recorded
there (``program``) is only imported and called when the caller trusts it: it is in ``trusted_factories`` /
``[optimize] trusted_programs`` / ``$DSPYO3_TRUSTED_PROGRAMS``, or the caller passes ``trust_registry=True``.

Stages ``dev``, ``staging`` and ``prod`` point at versions; :meth:`ProgramRegistry.promote` moves a version into a
stage and :meth:`ProgramRegistry.rollback` puts the stage back to what it held before.

Storage backends, chosen by URL (:func:`open_registry`):

* a local directory (the default: a path or ``file://``): files written atomically (temp file + ``os.replace``),
  a per-program ``fcntl`` lock around version allocation and stage changes, so concurrent processes registering
  the same program get distinct versions;
* Redis (``redis://`` / ``rediss://``): one hash per program, a Redis lock (``SET NX`` with expiry) around writes;
* any fsspec filesystem (``memory://``, ``s3://``, ``gs://``, ... with the matching fsspec driver installed):
  objects under a prefix, with a lock object created exclusively (object stores without exclusive create give no
  protection against concurrent writers: use one writer, or Redis).

Layout (local directory; the other backends use the same keys)::

    <root>/<name>/versions/<version>/program.json    DSPy JSON state
    <root>/<name>/versions/<version>/meta.json       metadata (+ sha256 of program.json)
    <root>/<name>/stages.json                        {"stages": {"prod": "1.0.2"}, "history": {...}}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from dspyo3_core.files import atomic_write_bytes, clean_stale_temporaries, loads_json
from dspyo3_core.program_state import UnsafeStateError, apply_state, learned_state
from dspyo3_optimize._common import canonical as _canonical
from dspyo3_optimize._common import now as _now
from dspyo3_optimize._common import sha256_hex as sha256_hex
from dspyo3_optimize._common import state_checksum as state_checksum

STAGES: tuple[str, ...] = ("dev", "staging", "prod")
Bump = Literal["major", "minor", "patch"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
BUILTIN_TRUSTED_FACTORIES: tuple[str, ...] = ("dspyo3_optimize.examples:gsm8k_program",
                                              "dspyo3_optimize.examples:qa_program")
"""Factories :meth:`ProgramRegistry.load` calls without further trust: this package's own example programs."""


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the program, version or file and the fix."""


class IntegrityError(RegistryError):
    """A stored artifact does not match its recorded checksum (or cannot be read): it was changed or corrupted."""


class NotFoundError(RegistryError, KeyError):
    """No such program, version or stage."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(f"invalid program name {name!r}: use letters, digits, '.', '_' or '-' (max 128, no "
                            "leading punctuation)")
    return name


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; a clear error otherwise."""
    match = _VERSION.match(version)
    if match is None:
        raise RegistryError(f"invalid version {version!r}: versions are semver MAJOR.MINOR.PATCH without leading "
                            "zeros, e.g. 1.0.0")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def next_version(existing: Sequence[str], bump: Bump = "patch") -> str:
    """The version after the highest of ``existing`` (``1.0.0`` for the first one)."""
    if not existing:
        return "1.0.0"
    major, minor, patch = max(parse_version(v) for v in existing)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise RegistryError(f"unknown bump {bump!r}; use major, minor or patch")


# -- backends ---------------------------------------------------------------------------------------------------


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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)
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
        return sorted(n for n in (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries) if _NAME.match(n))

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


# -- metadata -----------------------------------------------------------------------------------------------------


@dataclass
class Score:
    """A score with its confidence interval: ``value`` in ``[ci_low, ci_high]`` on ``n`` examples."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    dataset: str | None = None


@dataclass
class ProgramVersion:
    """Metadata of one registered version (what ``meta.json`` holds).

    Attributes:
        name, version: the program and its semver version.
        checksum: ``sha256:<hex>`` of the stored DSPy JSON state.
        parent: the version it was derived from (optimized from, or registered after), if any.
        program: import path of a factory that builds an empty program of the right structure (used by
            :meth:`ProgramRegistry.load` when no program object is passed).
        dataset_hash: :func:`dspyo3_optimize.data.dataset_hash` of the training data.
        metric: the metric's import path or name.
        scores: named :class:`Score` entries (``"dev"``, ``"test"``...).
        dspy_version: DSPy version that produced the state.
        lm_profile: the LM profile (or model) it was optimized with.
        optimizer: the optimizer and its options.
        run_id: the optimizer run that produced it.
        created_at: ISO-8601 UTC time of registration.
        notes: free text.
        extra: anything else JSON-serialisable.
    """

    name: str
    version: str
    checksum: str
    parent: str | None = None
    program: str | None = None
    dataset_hash: str | None = None
    metric: str | None = None
    scores: dict[str, Score] = field(default_factory=dict)
    dspy_version: str | None = None
    lm_profile: str | None = None
    optimizer: dict[str, Any] | None = None
    run_id: str | None = None
    created_at: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgramVersion:
        """Inverse of :meth:`to_dict` (unknown keys are kept in ``extra``)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["scores"] = {k: Score(**v) if isinstance(v, Mapping) else Score(float(v))
                            for k, v in (data.get("scores") or {}).items()}
        extra = dict(values.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        values["extra"] = extra
        return cls(**values)


SIGNING_KEY_ENV = "DSPYO3_REGISTRY_KEY"
"""The environment variable holding the registry's signing key (HMAC-SHA256), when versions are signed."""


def _signing_key(key: str | bytes | None) -> bytes | None:
    if key is None:
        key = os.environ.get(SIGNING_KEY_ENV) or None
    if key is None:
        return None
    if isinstance(key, str):
        from dspyo3_core.secrets import register_secret

        register_secret(key)
        key = key.encode()
    if len(key) < 16:
        raise RegistryError(f"the registry signing key ({SIGNING_KEY_ENV} or signing_key=) is {len(key)} bytes; use "
                            "at least 16 random bytes, e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
    return key


def _signature(key: bytes, fields: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of the metadata fields (everything but ``meta_checksum`` and ``signature``): the metadata holds
    the state's sha256, so this signs the program too."""
    import hmac

    body = _canonical({k: v for k, v in fields.items() if k not in ("meta_checksum", "signature")})
    return "hmac-sha256:" + hmac.new(key, body, "sha256").hexdigest()


def _meta_checksum(fields: Mapping[str, Any]) -> str:
    """sha256 of the metadata fields (everything but ``meta_checksum`` itself), in canonical JSON."""
    return "sha256:" + sha256_hex(_canonical({k: v for k, v in fields.items() if k != "meta_checksum"}))


def _trusted(path: str, patterns: Sequence[str]) -> bool:
    """``path`` is one of ``patterns``: an exact ``module:attr``, or ``module:*`` for the module's public
    top-level attributes."""
    module, _, attr = path.partition(":")
    for pattern in patterns:
        if path == pattern:
            return True
        if pattern.endswith(":*") and module == pattern[:-2] and attr.isidentifier() and not attr.startswith("_"):
            return True
    return False


def trusted_factories_from_settings() -> list[str]:
    """``$DSPYO3_TRUSTED_PROGRAMS`` (comma-separated) and ``[optimize] trusted_programs``."""
    from dspyo3_optimize.settings import optimize_settings

    env = [p.strip() for p in os.environ.get("DSPYO3_TRUSTED_PROGRAMS", "").split(",") if p.strip()]
    return env + list(optimize_settings().trusted_programs)


# -- the registry -------------------------------------------------------------------------------------------------


class ProgramRegistry:
    """Register, list, load, promote and roll back compiled DSPy programs.

    Args:
        backend: a :class:`Backend`, or a URL / directory for :func:`open_backend`.
        lock_timeout: seconds to wait for a program's write lock.
        trusted_factories: factory import paths (``module:attr``, or ``module:*``) that :meth:`load` may import
            and call when they are recorded in a version's metadata; added to ``$DSPYO3_TRUSTED_PROGRAMS``,
            ``[optimize] trusted_programs`` and :data:`BUILTIN_TRUSTED_FACTORIES`.
        trust_registry: call whatever factory the metadata records. Only for registries that nobody but you
            can write to: a recorded factory is code that runs in the loading process.
    """

    def __init__(self, backend: Backend | str | os.PathLike[str], *, lock_timeout: float = 30.0,
                 trusted_factories: Sequence[str] = (), trust_registry: bool = False,
                 signing_key: str | bytes | None = None) -> None:
        self.backend: Backend = open_backend(backend) if isinstance(backend, (str, os.PathLike)) else backend
        self.lock_timeout = lock_timeout
        self.trusted_factories = list(trusted_factories)
        self.trust_registry = trust_registry
        self._signing_key = _signing_key(signing_key)

    @property
    def signed(self) -> bool:
        """Whether versions are signed when registered and must verify when read (a signing key is set)."""
        return self._signing_key is not None

    @property
    def url(self) -> str:
        """Where the registry lives."""
        return self.backend.url

    # -- writing ------------------------------------------------------------------------------------------------

    def register(self, name: str, program: Any, *, parent: str | None = None, bump: Bump = "patch",
                 version: str | None = None, stage: str | None = "dev", factory: str | None = None,
                 dataset_hash: str | None = None, metric: str | None = None,
                 scores: Mapping[str, Score | float] | None = None, lm_profile: str | None = None,
                 optimizer: Mapping[str, Any] | None = None, run_id: str | None = None, notes: str = "",
                 extra: Mapping[str, Any] | None = None) -> ProgramVersion:
        """Store ``program`` (a ``dspy.Module``, or its ``dump_state()`` dict) as a new version of ``name``.

        The version is allocated under the program's lock: the next ``bump`` after the highest existing one
        (or ``version`` if given and free). Its files are created exclusively, so a writer that outlived its lock
        can never overwrite a version another writer stored: it moves on to the next free version instead.
        ``stage`` (default ``dev``) is pointed at the new version.
        ``factory`` (the import path of a callable that builds the empty program) defaults to the one recorded
        for the parent or latest version.
        Returns the stored metadata.
        """
        import dspy

        _check_name(name)
        if stage is not None and stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        state = learned_state(program if isinstance(program, Mapping) else program.dump_state())
        blob = _canonical(state)
        checksum = "sha256:" + sha256_hex(blob)  # == state_checksum(state), without serialising it twice
        with self.backend.lock(name, self.lock_timeout):
            keys = self.backend.keys(name, "versions/")  # one listing for both views
            existing = _complete_versions(keys)
            taken = _any_versions(keys)  # also versions a crashed writer left without metadata
            if version is not None:
                parse_version(version)
                if version in taken:
                    raise RegistryError(f"{name} {version} already exists; omit version to get the next one "
                                        f"({next_version(sorted(taken | set(existing)), bump)})")
            if parent is not None and parent not in existing:
                raise NotFoundError(f"parent version {parent!r} of {name!r} does not exist; known: "
                                    f"{', '.join(existing) or 'none'}")
            if factory is None and existing:  # same program name, same structure: keep the factory it had
                with contextlib.suppress(IntegrityError):  # one that does not verify is not carried forward
                    factory = self._meta_at(name, parent or existing[-1]).program
            for _ in range(100):
                the_version = version or next_version(sorted(taken | set(existing)), bump)
                meta = ProgramVersion(
                    name=name, version=the_version, checksum=checksum, parent=parent, program=factory,
                    dataset_hash=dataset_hash, metric=metric,
                    scores={k: v if isinstance(v, Score) else Score(float(v)) for k, v in (scores or {}).items()},
                    dspy_version=getattr(dspy, "__version__", None), lm_profile=lm_profile,
                    optimizer=dict(optimizer) if optimizer else None, run_id=run_id, created_at=_now(),
                    notes=notes, extra=dict(extra or {}),
                )
                fields = meta.to_dict()
                if self._signing_key is not None:
                    fields["signature"] = _signature(self._signing_key, fields)
                fields["meta_checksum"] = _meta_checksum(fields)
                # meta.json last: a version exists once its metadata does; both created exclusively
                if (self.backend.put_new(name, f"versions/{the_version}/program.json", blob)
                        and self.backend.put_new(name, f"versions/{the_version}/meta.json", _canonical(fields))):
                    break
                if version is not None:
                    raise RegistryError(f"{name} {version} was just written by another writer; omit version to "
                                        "get the next free one")
                taken.add(the_version)  # another writer got there first (its lock expired under it?)
            else:  # pragma: no cover - 100 collisions in a row
                raise RegistryError(f"could not allocate a version of {name!r}: every candidate was taken")
            if stage is not None:
                self._set_stage(name, stage, meta.version)
        return meta

    def find(self, name: str, *, run_id: str, checksum: str | None = None) -> ProgramVersion | None:
        """The newest version of ``name`` registered by run ``run_id`` (and with state ``checksum``), or None.
        What lets a resumed run recognise the version it registered before it was killed."""
        for version in reversed(self.versions(name)):
            meta = self._meta_at(name, version)
            if meta.run_id == run_id and (checksum is None or meta.checksum == checksum):
                return meta
        return None

    def _stages_doc(self, name: str) -> dict[str, Any]:
        raw = self.backend.get(_check_name(name), "stages.json")
        if raw is None:
            return {"stages": {}, "history": {}}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"{self.backend.where(name, 'stages.json')} is not valid JSON: the stage file is "
                                 "corrupted; restore it or promote the versions again") from None
        doc.setdefault("stages", {})
        doc.setdefault("history", {})
        return dict(doc)

    def _set_stage(self, name: str, stage: str, version: str) -> str | None:
        doc = self._stages_doc(name)
        previous = doc["stages"].get(stage)
        if previous == version:
            return previous  # type: ignore[no-any-return]
        history = doc["history"].setdefault(stage, [])
        if previous is not None:
            history.append(previous)
        doc["stages"][stage] = version
        doc.setdefault("log", []).append({"at": _now(), "stage": stage, "from": previous, "to": version})
        self.backend.put(name, "stages.json", _canonical(doc))
        return previous  # type: ignore[no-any-return]

    def promote(self, name: str, version: str | None = None, *, to: str = "staging") -> str:
        """Point stage ``to`` at ``version`` (default: the version in the stage below it, ``dev`` for
        ``staging``, ``staging`` for ``prod``). Returns the version promoted."""
        _check_name(name)
        if to not in STAGES:
            raise RegistryError(f"unknown stage {to!r}; stages are {', '.join(STAGES)}")
        with self.backend.lock(name, self.lock_timeout):
            if version is None:
                below = STAGES[max(0, STAGES.index(to) - 1)]
                version = self._stages_doc(name)["stages"].get(below)
                if version is None or below == to:
                    raise RegistryError(f"no version given and stage {below!r} of {name!r} is empty; pass the "
                                        "version to promote")
            else:
                version = self.resolve(name, version)
            self._set_stage(name, to, version)
        return version

    def rollback(self, name: str, stage: str = "prod") -> str:
        """Put ``stage`` back to the version it held before the last promotion; returns that version."""
        _check_name(name)
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        with self.backend.lock(name, self.lock_timeout):
            doc = self._stages_doc(name)
            history = doc["history"].get(stage) or []
            if not history:
                raise RegistryError(f"stage {stage!r} of {name!r} has no earlier version to roll back to")
            current = doc["stages"].get(stage)
            previous = history.pop()
            doc["stages"][stage] = previous
            doc.setdefault("log", []).append({"at": _now(), "stage": stage, "from": current, "to": previous,
                                              "rollback": True})
            self.backend.put(name, "stages.json", _canonical(doc))
        return str(previous)

    # -- reading ------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Registered program names."""
        return self.backend.names()

    def exists(self) -> bool:
        """Whether there is a registry at :attr:`url` at all (possibly an empty one), as opposed to a path or URL
        that holds no registry (a mistyped directory, a command run outside the registry's directory). Backends
        without an ``exists()`` method are assumed to exist."""
        exists = getattr(self.backend, "exists", None)
        return True if exists is None else bool(exists())

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` in semver order (only complete ones: metadata written)."""
        return _complete_versions(self.backend.keys(_check_name(name), "versions/"))

    def stages(self, name: str) -> dict[str, str]:
        """Stage -> version."""
        return dict(self._stages_doc(name)["stages"])

    def resolve(self, name: str, ref: str | None = None) -> str:
        """A version from ``ref``: a version, a stage name, ``"latest"`` or None (latest)."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"no program {name!r} in the registry at {self.url}; registered: {known}")
        if ref is None or ref == "latest":
            return versions[-1]
        if ref in STAGES:
            version = self.stages(name).get(ref)
            if version is None:
                raise NotFoundError(f"stage {ref!r} of {name!r} is empty; promote a version first "
                                    f"(dspyo3 registry promote {name} VERSION --to {ref})")
            return str(version)
        if ref.lstrip("v") in versions:
            return ref.lstrip("v")
        raise NotFoundError(f"{name} has no version {ref!r}; versions: {', '.join(versions)}; stages: "
                            f"{', '.join(STAGES)}")

    def meta(self, name: str, ref: str | None = None) -> ProgramVersion:
        """Metadata of a version (``ref`` as in :meth:`resolve`). An exact version is read directly (no listing
        of the backend); a stage, ``latest`` or a missing version goes through :meth:`resolve`."""
        exact = ref.lstrip("v") if ref is not None else None
        if exact is not None and _VERSION.match(exact):
            with contextlib.suppress(NotFoundError):
                return self._meta_at(_check_name(name), exact)
        return self._meta_at(name, self.resolve(name, ref))

    def _meta_at(self, name: str, version: str) -> ProgramVersion:
        """The verified metadata of ``version`` exactly (no :meth:`resolve`, so no listing of the backend)."""
        key = f"versions/{version}/meta.json"
        where = self.backend.where(name, key)
        raw = self.backend.get(name, key)
        if raw is None:
            raise NotFoundError(f"{where} is missing")
        try:
            fields = loads_json(raw, source=where)
            if not isinstance(fields, dict):
                raise TypeError("not a JSON object")
            recorded = fields.pop("meta_checksum", None)
            meta = ProgramVersion.from_dict({k: v for k, v in fields.items() if k != "signature"})
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"{where} is not valid metadata ({exc}): the file is corrupted; restore it or "
                                 "delete the version") from None
        actual = _meta_checksum(fields)
        if recorded != actual:
            raise IntegrityError(f"metadata checksum mismatch for {where}: expected {recorded}, found {actual}; the "
                                 "metadata was modified or corrupted after registration. Restore it from a backup "
                                 "or register the program again as a new version")
        if self._signing_key is not None:
            import hmac

            signature = fields.get("signature")
            if not isinstance(signature, str):
                raise IntegrityError(f"{where} is not signed, and this registry requires signed versions "
                                     f"({SIGNING_KEY_ENV} is set): register the program again with the key set, "
                                     "or unset the key to read unsigned versions")
            if not hmac.compare_digest(signature, _signature(self._signing_key, fields)):
                raise IntegrityError(f"signature of {where} does not verify with the registry key: the version was "
                                     "modified or registered with another key; do not load it. Register the "
                                     "program again from a trusted source")
        if meta.version != version or meta.name != name:
            raise IntegrityError(f"{where} describes {meta.name} {meta.version}, not {name} {version}: it was "
                                 "copied or moved; restore the right file")
        return meta

    def state(self, name: str, ref: str | None = None) -> tuple[dict[str, Any], ProgramVersion]:
        """The verified DSPy JSON state of a version and its metadata.

        Raises:
            IntegrityError: the stored state's sha256 differs from the one recorded at registration, or it is
                not valid JSON; the message names the file.
        """
        meta = self.meta(name, ref)
        key = f"versions/{meta.version}/program.json"
        where = self.backend.where(name, key)
        blob = self.backend.get(name, key)
        if blob is None:
            raise IntegrityError(f"{where} is missing although {name} {meta.version} is registered; restore it "
                                 "or register the program again")
        actual = "sha256:" + sha256_hex(blob)
        if actual != meta.checksum:
            raise IntegrityError(f"checksum mismatch for {where}: expected {meta.checksum}, found {actual}; the "
                                 "artifact was modified or corrupted after registration. Restore it from a backup "
                                 "or register the program again as a new version")
        try:
            state = loads_json(blob, source=where)
        except ValueError:
            raise IntegrityError(f"{where} is not valid JSON (or nested too deeply to read) although its checksum "
                                 "matches") from None
        if not isinstance(state, dict):
            raise IntegrityError(f"{where} does not hold a DSPy program state (a JSON object)")
        return state, meta

    def load(self, name: str, ref: str | None = None, program: Any = None, *,
             trust_registry: bool | None = None) -> Any:
        """Load a version into ``program``: a ``dspy.Module`` with the same structure (loaded in place), a
        callable that builds one, or the import path (``module:attr``) of either. The checksums are verified
        first; JSON only, never pickle.

        Without ``program``, the factory recorded at registration is used only when it is trusted (see the
        class docstring: ``trusted_factories``, ``[optimize] trusted_programs``, ``$DSPYO3_TRUSTED_PROGRAMS``,
        ``trust_registry``): metadata in a shared registry is not code you chose to run.
        """
        state, meta = self.state(name, ref)
        if program is None:
            program = self._recorded_factory(meta, self.trust_registry if trust_registry is None else trust_registry)
        program = _instantiate(program)
        where = f"{self.backend.where(name, f'versions/{meta.version}/program.json')}"
        try:
            apply_state(program, state, source=where)
        except UnsafeStateError as exc:
            raise IntegrityError(str(exc)) from None
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise RegistryError(f"{name} {meta.version} does not fit the program it is loaded into "
                                f"({type(program).__name__}): {type(exc).__name__}: {exc}; build the same module "
                                "structure it was saved from") from None
        return program

    def _recorded_factory(self, meta: ProgramVersion, trust: bool) -> str:
        if not meta.program:
            raise RegistryError(f"{meta.name} {meta.version} was registered without a program factory; pass "
                                "program=<a module of the same structure, or a factory> (CLI: --program "
                                "module:attr) to load it into")
        patterns = [*BUILTIN_TRUSTED_FACTORIES, *self.trusted_factories, *trusted_factories_from_settings()]
        if not trust and not _trusted(meta.program, patterns):
            raise RegistryError(
                f"{meta.name} {meta.version} records the program factory {meta.program!r}, which is not trusted: "
                f"metadata in {self.url} can be written by anyone with write access to the registry, so its import "
                "paths are not run by default. Either pass the program yourself (program=<module or factory>; "
                f"CLI: --program {meta.program}), or trust this factory (trusted_factories=[{meta.program!r}], "
                f"[optimize] trusted_programs = [\"{meta.program}\"] or DSPYO3_TRUSTED_PROGRAMS={meta.program}), "
                "or, if nobody else can write to this registry, pass trust_registry=True (CLI: --trust-registry)")
        return meta.program

    def diff(self, name: str, a: str, b: str) -> dict[str, Any]:
        """What changed between two versions: metadata fields and, per predictor, instructions and demos."""
        state_a, meta_a = self.state(name, a)
        state_b, meta_b = self.state(name, b)
        da, db = meta_a.to_dict(), meta_b.to_dict()
        ignore = {"version", "checksum", "created_at"}
        meta_changes = {k: {"a": da.get(k), "b": db.get(k)} for k in sorted(set(da) | set(db))
                        if k not in ignore and da.get(k) != db.get(k)}
        state_a, state_b = _by_predictor(state_a), _by_predictor(state_b)
        predictors: dict[str, Any] = {}
        for key in sorted(set(state_a) | set(state_b)):
            pa, pb = state_a.get(key), state_b.get(key)
            if pa == pb or not isinstance(pa, dict) or not isinstance(pb, dict):
                if pa != pb:
                    predictors[key] = {"a": pa, "b": pb}
                continue
            change: dict[str, Any] = {}
            ia = (pa.get("signature") or {}).get("instructions")
            ib = (pb.get("signature") or {}).get("instructions")
            if ia != ib:
                change["instructions"] = {"a": ia, "b": ib}
            demos_a, demos_b = pa.get("demos") or [], pb.get("demos") or []
            if demos_a != demos_b:
                change["demos"] = {"a": len(demos_a), "b": len(demos_b),
                                   "added": sum(d not in demos_a for d in demos_b),
                                   "removed": sum(d not in demos_b for d in demos_a)}
            other = sorted(k for k in set(pa) | set(pb) if k not in ("signature", "demos") and pa.get(k) != pb.get(k))
            if other:
                change["other"] = other
            if change:
                predictors[key] = change
        return {"name": name, "a": meta_a.version, "b": meta_b.version, "metadata": meta_changes,
                "predictors": predictors, "same_program": meta_a.checksum == meta_b.checksum}

    def verify(self, name: str) -> list[str]:
        """Check every version's checksum; returns the problems found (empty when all is well)."""
        problems = []
        for version in self.versions(name):
            try:
                self.state(name, version)
            except RegistryError as exc:
                problems.append(str(exc))
        return problems


def _complete_versions(keys: Sequence[str]) -> list[str]:
    """Versions (semver order) whose metadata is among ``keys`` (a listing under ``versions/``)."""
    found = {k.split("/")[1] for k in keys if k.endswith("/meta.json") and k.count("/") >= 2}
    return sorted((v for v in found if _VERSION.match(v)), key=parse_version)


def _any_versions(keys: Sequence[str]) -> set[str]:
    """Versions with any stored file among ``keys`` (complete or not)."""
    return {k.split("/")[1] for k in keys if k.count("/") >= 2 and _VERSION.match(k.split("/")[1])}


def _instantiate(program: Any) -> Any:
    """A module to load state into from a module (used as is), a factory, or an import path of either."""
    if isinstance(program, str):
        from dspyo3_optimize.metrics import import_object

        program = import_object(program)
        if hasattr(program, "load_state"):  # a module-level instance: never load into the shared object
            return program.deepcopy()
    if hasattr(program, "load_state"):
        return program
    if callable(program):
        made = program()
        if not hasattr(made, "load_state"):
            raise RegistryError(f"the program factory returned a {type(made).__name__}, not a dspy.Module")
        return made
    raise RegistryError(f"program= must be a dspy.Module, a callable that builds one, or its import path; got a "
                        f"{type(program).__name__}")


def _by_predictor(state: dict[str, Any]) -> dict[str, Any]:
    """A program state keyed by predictor name (a bare ``Predict``'s flat state becomes ``{"self": state}``)."""
    return {"self": state} if "signature" in state and "demos" in state else state


def open_registry(url: str | os.PathLike[str] | None = None, **options: Any) -> ProgramRegistry:
    """The registry at ``url``; default: ``$DSPYO3_REGISTRY``, else ``[optimize] registry`` in ``dspyo3.toml``,
    else ``./dspyo3-registry``. ``options`` go to :class:`ProgramRegistry` (``trusted_factories``,
    ``trust_registry``, ``lock_timeout``)."""
    if url is None:
        url = os.environ.get("DSPYO3_REGISTRY")
    if url is None:
        from dspyo3_optimize.settings import optimize_settings

        url = optimize_settings().registry
    return ProgramRegistry(url, **options)
