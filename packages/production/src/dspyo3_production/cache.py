"""``TieredCache``: DSPy's cache with a native memory tier, a shared Redis tier and DSPy's disk tier.

It *is* a ``dspy.clients.Cache`` (same constructor keywords, same key function, same hit semantics: a fresh copy
every hit, ``usage`` emptied and ``cache_hit`` set on response objects), so it goes where DSPy looks for its
cache::

    from dspyo3_production.cache import TieredCache, install_cache
    install_cache(TieredCache(redis_url="redis://127.0.0.1:6379/0", redis_ttl=86400))   # dspy.cache = ...

Lookup order: memory (``dspyo3_native.LRUCache``), then Redis, then disk; a lower-tier hit is copied into the
tiers above it. Writes go to memory at once and to Redis from a background writer (``flush()`` waits for it), so
a call never waits for Redis on the way out. Plain-data answers (what DSPy's native engine and NativeLM cache)
are held as JSON bytes, so a memory hit is a JSON decode instead of a deep copy.

Redis failures never fail a call: the tier counts the error, stays out of the way for a back-off period
(0.5 s doubling to ``redis_max_backoff``) and then tries again by itself. Values read from Redis are decoded by
:mod:`dspyo3_production.codec` (JSON, or pickle restricted to known response types) and checked against the key
they were read under. An entry is served only if it is within the size limits (``redis_max_entry_bytes`` read at
most; ``redis_max_decoded_bytes`` built at most, estimated in bytes for every entry before decoding: from the
structural bytes of a JSON entry, by a walk of a pickled one) and is the shape the caller reads for that request
(:func:`~dspyo3_production.codec.check_entry`); anything else is a miss, counted as
``dspyo3_cache_requests_total{tier="redis", result="rejected"}``.

Single flight: inside :meth:`TieredCache.call_scope` (the production LM-call wrapper opens one per call), the
first miss on a key makes that call its leader; concurrent calls missing the same key wait for the leader's
answer (up to ``single_flight_timeout``) instead of calling the provider again. Lookups on an event-loop thread
never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dspy
import orjson
from dspy.clients.cache import Cache

from dspyo3_core import spans
from dspyo3_core.lm import current_call
from dspyo3_production.codec import (
    JSON_TAG,
    MAX_DECODED_BYTES,
    MAX_PAYLOAD_BYTES,
    Codec,
    UnsafeValueError,
    check_entry,
    plain_json,
    read_memory_cache_file,
)
from dspyo3_production.metrics import Metrics, default_metrics
from dspyo3_production.redis_tier import RedisTier as RedisTier  # where it was first importable from

logger = logging.getLogger("dspyo3.production.cache")

TIERS = ("memory", "redis", "disk")


class _Scope:
    """One LM call's single-flight scope: the keys it leads, and the last request it looked up (and that request's
    key, which ``put`` reuses when it stores the answer under an equal request)."""

    __slots__ = ("last", "led")

    def __init__(self) -> None:
        self.led: list[str] = []
        self.last: tuple[Any, Any, str] | None = None  # (request, ignored args, key), replaced whole


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("dspyo3_cache_scope", default=None)


class _Json:
    """A memory-tier value held as JSON bytes (decoded afresh on every hit)."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _note_hit(tier: str) -> None:
    call = current_call()
    if call is not None:
        call.note_cache_hit(tier)


class TieredCache(Cache):
    """``dspy.clients.Cache`` with a native memory tier, an optional Redis tier and DSPy's optional disk tier.

    Args:
        enable_disk_cache, enable_memory_cache, disk_cache_dir, disk_size_limit_bytes, memory_max_entries,
            restrict_pickle, safe_types: as for ``dspy.clients.Cache`` (``safe_types`` also widens what the Redis
            tier will decode).
        redis_url: enable the Redis tier (``redis://host:port/db``); None keeps it off.
        redis_ttl: seconds a Redis entry lives (None: no expiry).
        memory_ttl: seconds a memory entry lives (None: until evicted).
        memory_max_bytes: cap on the memory tier's estimated size (None: entries only).
        namespace: Redis key prefix (``<namespace>:cache:<key>``).
        redis_timeout: socket timeout (seconds) for Redis lookups; the most a lookup waits on a dead Redis.
        redis_max_backoff: longest pause between reconnection attempts after Redis fails.
        single_flight_timeout: how long a concurrent miss waits for the leader's answer (seconds).
        metrics: where to count lookups (default: the process-wide :func:`default_metrics`).
        redis_max_entry_bytes: the largest Redis entry read or written (larger ones are not shared, and one
            found in Redis is a miss without being transferred whole).
        redis_max_decoded_bytes: the largest value, in bytes of Python objects, a Redis entry may decode to:
            an upper estimate checked before decoding (counted from a JSON entry's structure; for a pickle with
            shared references expanded), so a small entry cannot build a huge value.
    """

    def __init__(
        self,
        enable_disk_cache: bool = False,
        enable_memory_cache: bool = True,
        disk_cache_dir: str | None = None,
        disk_size_limit_bytes: int | None = 1024 * 1024 * 10,
        memory_max_entries: int = 1_000_000,
        restrict_pickle: bool = False,
        safe_types: list[type[Any]] | None = None,
        *,
        redis_url: str | None = None,
        redis_ttl: float | None = None,
        memory_ttl: float | None = None,
        memory_max_bytes: int | None = None,
        namespace: str = "dspyo3",
        redis_timeout: float = 0.25,
        redis_max_backoff: float = 5.0,
        single_flight_timeout: float = 30.0,
        metrics: Metrics | None = None,
        redis_max_entry_bytes: int = MAX_PAYLOAD_BYTES,
        redis_max_decoded_bytes: int = MAX_DECODED_BYTES,
    ) -> None:
        from dspyo3_native import LRUCache

        if enable_memory_cache:  # as DSPy: the limit is checked only for a memory tier that exists
            if memory_max_entries is None:
                raise ValueError("memory_max_entries cannot be None; use math.inf for an unbounded memory tier")
            if memory_max_entries <= 0:
                raise ValueError(f"memory_max_entries must be a positive number, got {memory_max_entries!r}")
        if memory_ttl is not None and memory_ttl <= 0:
            raise ValueError(f"memory_ttl must be > 0 seconds (or None), got {memory_ttl!r}")
        # DSPy builds the disk tier (and its restricted pickle; a temporary directory when disk_cache_dir is None);
        # the memory tier is ours.
        super().__init__(enable_disk_cache, False, disk_cache_dir, disk_size_limit_bytes, 1, restrict_pickle,
                         safe_types)
        self.enable_memory_cache = enable_memory_cache
        self.memory_max_entries = memory_max_entries
        self._memory_args = (int(min(memory_max_entries, 2**62)) if enable_memory_cache else 1, memory_max_bytes,
                             memory_ttl)
        self._memory: Any = LRUCache(*self._memory_args) if enable_memory_cache else {}
        self._ready = True
        self.namespace = namespace
        self.single_flight_timeout = single_flight_timeout
        self.metrics = metrics if metrics is not None else default_metrics()
        self.codec = Codec(safe_types or (), max_payload_bytes=redis_max_entry_bytes,
                           max_decoded_bytes=redis_max_decoded_bytes)
        self.redis: RedisTier | None = (
            RedisTier(redis_url, namespace=namespace, ttl=redis_ttl, timeout=redis_timeout,
                      max_backoff=redis_max_backoff, metrics=self.metrics, max_entry_bytes=redis_max_entry_bytes)
            if redis_url else None
        )
        self._flights: dict[str, threading.Event | None] = {}
        self._flight_lock = threading.Lock()
        for tier in TIERS:
            for result in ("hit", "miss", "error"):
                self.metrics.count_cache(tier, result, 0)
        self.metrics.count_cache("redis", "rejected", 0)

    # -- DSPy's interface -------------------------------------------------------------------------------------
    @property
    def memory_cache(self) -> Any:
        """The memory tier: a ``dspyo3_native.LRUCache`` (``{}`` while the tier is off).

        Assigning a mapping (DSPy's ``cachetools.LRUCache``, a dict) copies its entries into a native one, so code
        written for ``dspy.clients.Cache`` that replaces its memory cache keeps working.
        """
        return self._memory

    @memory_cache.setter
    def memory_cache(self, value: Any) -> None:
        from dspyo3_native import LRUCache

        if isinstance(value, LRUCache) or not self.__dict__.get("_ready") or not self.enable_memory_cache:
            self._memory = value  # DSPy's own __init__ assigns {} before this class has set its tier up
            return
        if not isinstance(value, Mapping):
            raise TypeError(f"memory_cache must be a mapping of cache keys to answers, got {type(value).__name__}")
        self._memory = self._fill_memory(list(value.items()))

    def _fill_memory(self, entries: Iterable[tuple[Any, Any]]) -> Any:
        from dspyo3_native import LRUCache

        memory = LRUCache(*self._memory_args)
        for key, value in entries:
            if not isinstance(key, str):
                raise TypeError(f"memory cache keys are strings (DSPy's cache_key), got {type(key).__name__}")
            if type(value) is _Json:
                memory.put(key, value, len(value.body))
            elif value is not None:
                memory.put(key, value, 0)
        return memory

    def cache_key(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> str:
        """DSPy's key for ``request`` (same value as ``dspy.clients.Cache.cache_key``).

        When the request is plain JSON data, DSPy's per-value transform changes nothing, so it is skipped; any
        value orjson cannot encode (pydantic models, callables, ...) takes DSPy's own path.
        """
        try:
            params = request
            if ignored_args_for_cache_key:
                params = dict(request)
                for name in ignored_args_for_cache_key:
                    params.pop(name, None)
            return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except TypeError:
            return str(super().cache_key(request, ignored_args_for_cache_key))

    def __contains__(self, key: str) -> bool:
        if self.enable_memory_cache and key in self._memory:
            return True
        if self.redis is not None:
            try:
                if self.redis.get(key) is not None:
                    return True
            except UnsafeValueError:
                pass
        return bool(self.enable_disk_cache and key in self.disk_cache)

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        """The cached answer for ``request`` (a fresh copy, marked as a hit), or None."""
        tracer = spans.TRACER
        if tracer is None:
            return self._get(request, ignored_args_for_cache_key)
        started = time.time_ns()
        value = self._get(request, ignored_args_for_cache_key)
        attrs: dict[str, spans.AttrValue] = {"dspyo3.cache.hit": value is not None}
        call = current_call()
        if value is not None and call is not None and call.cache_tier:
            attrs["dspyo3.cache.tier"] = call.cache_tier
        elif value is None:
            tiers = ["memory"] if self.enable_memory_cache else []
            if self.redis is not None:
                tiers.append("redis")
            if self.enable_disk_cache:
                tiers.append("disk")
            attrs["dspyo3.cache.tiers"] = tiers
            scope = _SCOPE.get()
            if scope is not None and scope.last is not None and scope.led and scope.led[-1] == scope.last[2]:
                attrs["dspyo3.cache.single_flight"] = "leader"
        tracer.record("dspyo3.cache.lookup", started, time.time_ns(), attrs)
        return value

    def _get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None) -> Any:
        if not (self.enable_memory_cache or self.enable_disk_cache or self.redis is not None):
            return None
        try:
            key = self.cache_key(request, ignored_args_for_cache_key)
        except Exception:
            logger.debug("could not compute a cache key for the request; not cached")
            return None
        scope = _SCOPE.get()
        if scope is not None:  # put() in this call will store under the same request: remember its key
            scope.last = (request, ignored_args_for_cache_key, key)
        counts = self.metrics.cache_counts
        if self.enable_memory_cache:  # the memory tier inlined: this runs on every call
            value = self._memory.get(key)
            if value is not None:
                return self._memory_hit(key, value)
            if counts is not None:
                with self.metrics.cache_lock:
                    counts["memory", "miss"] += 1
            else:
                self.metrics.count_cache("memory", "miss")
        if self.redis is not None or self.enable_disk_cache:
            found = self._lookup(key, request, memory=False)
            if found is not None:
                return found
        # A miss: lead this key (inside a call scope) or wait for the call already leading it.
        with self._flight_lock:
            if key in self._flights:  # another call leads this key: wait for its answer (not on an event loop)
                event = self._flights[key]
                if event is None:
                    event = self._flights[key] = threading.Event()
            else:
                event = None
                if scope is not None:
                    self._flights[key] = None  # led by this call; an Event is made only if someone waits
                    scope.led.append(key)
        if event is not None and not _on_event_loop():
            event.wait(self.single_flight_timeout)
            return self._lookup(key, request, count=False)
        return None

    def _memory_hit(self, key: str, value: Any) -> Any:
        self.metrics.count_cache("memory", "hit")
        _note_hit("memory")
        if type(value) is _Json:
            return orjson.loads(value.body)  # a fresh object: nothing shared with the cache, nothing to zero
        body = plain_json(value)
        if body is not None:  # first hit on plain data: keep the JSON form, decode a fresh copy each hit
            self._memory.put(key, _Json(body), len(body))
            return orjson.loads(body)
        return self._prepare_cached_response(value)

    def _lookup(self, key: str, request: Any, count: bool = True, memory: bool = True) -> Any:
        count_ = self.metrics.count_cache
        if memory and self.enable_memory_cache:
            value = self._memory.get(key)
            if value is not None:
                return self._memory_hit(key, value)
            if count:
                count_("memory", "miss")
        redis = self.redis
        if redis is not None and redis.available:
            try:
                payload = redis.get(key)
                if payload is not None:
                    value = self.codec.decode(key, payload)
                    check_entry(request, value)
            except Exception as exc:  # foreign, corrupt, untrusted, too big or the wrong shape: a miss
                count_("redis", "rejected")
                logger.warning("dropping unusable redis cache entry %s: %s", key, exc)
                redis.delete(key)
            else:
                if payload is not None:
                    count_("redis", "hit")
                    _note_hit("redis")
                    self._remember(key, value, payload)
                    if payload.startswith(JSON_TAG):
                        return value  # decoded just now: nothing shared with the cache, no usage to zero
                    return self._prepare_cached_response(value)
                if count and redis.available:
                    count_("redis", "miss")
        if self.enable_disk_cache:
            from dspy.clients.disk_serialization import DeserializationError

            try:
                value = self.disk_cache.get(key)
            except DeserializationError:
                count_("disk", "error")
                self.disk_cache.delete(key)
                return None
            if value is not None:
                count_("disk", "hit")
                _note_hit("disk")
                self._remember(key, value, None)
                if redis is not None:
                    self._to_redis(key, value)
                return self._prepare_cached_response(value)
            if count:
                count_("disk", "miss")
        return None

    def _remember(self, key: str, value: Any, payload: bytes | None) -> None:
        if not self.enable_memory_cache:
            return
        if payload is not None and payload.startswith(JSON_TAG):
            body = payload.partition(b"\n")[2]
            self._memory.put(key, _Json(body), len(body))
        else:
            plain = plain_json(value)
            self._memory.put(key, _Json(plain) if plain is not None else value, len(plain) if plain else 0)

    def _to_redis(self, key: str, value: Any) -> None:
        assert self.redis is not None
        try:
            payload = self.codec.encode(key, value)
        except Exception as exc:  # an answer pickle cannot handle is simply not shared
            logger.debug("not writing %s to redis: %s", key, exc)
            return
        if not self.codec.fits(payload):  # readers would refuse it: not shared
            logger.debug("not writing %s to redis: %d bytes is over redis_max_entry_bytes", key, len(payload))
            return
        self.redis.put(key, payload)

    def put(self, request: dict[str, Any], value: Any, ignored_args_for_cache_key: list[str] | None = None,
            enable_memory_cache: bool = True) -> None:
        """Store ``value`` in every enabled tier (Redis in the background) and wake calls waiting on this key."""
        to_memory = self.enable_memory_cache and enable_memory_cache
        if not (to_memory or self.enable_disk_cache or self.redis is not None):
            return
        scope = _SCOPE.get()
        key = None
        last = scope.last if scope is not None else None
        if last is not None:
            try:  # the request get() just looked up (DSPy rebuilds an equal one to store under): same key
                if last[1] == ignored_args_for_cache_key and last[0] == request:
                    key = last[2]
            except Exception:  # values whose == raises (arrays): compute the key
                pass
        if key is None:
            try:
                key = self.cache_key(request, ignored_args_for_cache_key)
            except Exception:
                logger.debug("could not compute a cache key for the request; not cached")
                return
        try:
            if to_memory:
                # held as given; the first hit turns plain data into JSON (misses-only traffic never pays that)
                self._memory.put(key, value, 0)
            if self.redis is not None and self.redis.available:
                self._to_redis(key, value)
            if self.enable_disk_cache:
                try:
                    self.disk_cache.set(key, value)
                except Exception as exc:
                    logger.debug("could not write %s to the disk cache: %s", key, exc)
        finally:
            if scope is not None and key in scope.led:  # the answer landed: wake the calls waiting on it
                scope.led.remove(key)
                with self._flight_lock:
                    event = self._flights.pop(key, None)
                if event is not None:
                    event.set()

    # -- single flight ----------------------------------------------------------------------------------------
    @contextmanager
    def call_scope(self) -> Iterator[None]:
        """One LM call: misses inside it lead their key until the call puts an answer or ends (then waiters
        look again, and call the provider themselves if the leader failed)."""
        token = self.open_scope()
        try:
            yield
        finally:
            self.close_scope(token)

    def open_scope(self) -> contextvars.Token[_Scope | None]:
        """:meth:`call_scope` without the context manager (for hot paths); pass the token to :meth:`close_scope`."""
        return _SCOPE.set(_Scope())

    def close_scope(self, token: contextvars.Token[_Scope | None]) -> None:
        """End the scope :meth:`open_scope` started, releasing the keys it still leads."""
        scope = _SCOPE.get()
        _SCOPE.reset(token)
        if scope is not None and scope.led:
            self.release_keys(scope.led)

    def release_keys(self, keys: list[str]) -> None:
        """Stop leading ``keys`` (a call ended without an answer for them): their waiters look again, and call the
        provider themselves if nothing landed."""
        with self._flight_lock:
            events = [self._flights.pop(key, None) for key in keys]
        for event in events:
            if event is not None:
                event.set()

    @property
    def in_flight(self) -> int:
        """Keys currently led by a call (misses other calls would wait on)."""
        return len(self._flights)

    # -- housekeeping -----------------------------------------------------------------------------------------
    def save_memory_cache(self, filepath: str) -> None:
        """Write the memory tier to ``filepath`` in DSPy's format: a (cloud)pickled ``cachetools.LRUCache`` of cache
        key -> answer, least recently used first, so ``dspy.clients.Cache.load_memory_cache`` and
        :meth:`load_memory_cache` both read it. Nothing is written while the memory tier is off (as DSPy)."""
        if not self.enable_memory_cache:
            return
        import cloudpickle  # type: ignore[import-untyped]  # what DSPy writes these files with
        from cachetools import LRUCache as DSPyLRUCache

        memory = self._memory
        keys = list(reversed(memory.keys()))  # least recently used first; reading them in this order keeps it
        out: Any = DSPyLRUCache(maxsize=self.memory_max_entries)
        for key, value in zip(keys, memory.get_many(keys), strict=True):
            if value is not None:  # expired meanwhile
                out[key] = orjson.loads(value.body) if type(value) is _Json else value
        path = os.fspath(filepath)
        partial = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with self._lock:
            try:
                with open(partial, "wb") as file:
                    cloudpickle.dump(out, file)
                os.replace(partial, path)  # a reader never sees half a file
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)

    def load_memory_cache(self, filepath: str, allow_pickle: bool = False) -> None:
        """Replace the memory tier with the entries of a file written by :meth:`save_memory_cache` or by
        ``dspy.clients.Cache.save_memory_cache``.

        Such a file is a pickle, so, as with DSPy, ``allow_pickle=True`` is needed. Unlike DSPy, the file is then
        read with a restricted unpickler: the cache's container (``cachetools.LRUCache`` / ``OrderedDict``), plain
        data, ``litellm.types.*`` / ``openai.types.*`` responses and your ``safe_types``, within the same size
        checks as the Redis tier; nothing in the file can run code.

        Raises:
            ValueError: without ``allow_pickle=True``; or the file holds something else, or a class outside the
                allow-list (the message names the file, the class, and ``safe_types=[...]``).
        """
        path = os.fspath(filepath)
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle file (as every DSPy memory cache file is) and loading an untrusted pickle can run "
                "code; pass allow_pickle=True to load it (TieredCache reads it with a restricted unpickler: plain "
                "data, litellm/openai response types and safe_types only)"
            )
        if not self.enable_memory_cache:
            return
        entries = read_memory_cache_file(path, self.codec)
        try:
            memory = self._fill_memory(entries)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from None
        with self._lock:
            self._memory = memory

    def reset_memory_cache(self) -> None:
        """Empty the memory tier."""
        if self.enable_memory_cache:
            self._memory.clear()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for queued Redis writes; True when they are all done."""
        return self.redis.flush(timeout) if self.redis is not None else True

    def close(self) -> None:
        """Flush and close the Redis tier (the memory and disk tiers need nothing)."""
        if self.redis is not None:
            self.redis.close()

    def clear(self, prefix: str = "", tiers: Iterable[str] = TIERS) -> dict[str, int]:
        """Delete entries whose cache key starts with ``prefix`` from ``tiers``; counts per tier."""
        tiers = set(tiers)
        unknown = tiers - set(TIERS)
        if unknown:
            raise ValueError(f"unknown cache tier(s) {sorted(unknown)}; choose from {', '.join(TIERS)}")
        removed: dict[str, int] = {}
        if "memory" in tiers and self.enable_memory_cache:
            keys = [k for k in self._memory.keys() if k.startswith(prefix)]  # noqa: SIM118 (not a dict)
            for k in keys:
                self._memory.pop(k)
            removed["memory"] = len(keys)
        if "redis" in tiers and self.redis is not None:
            removed["redis"] = self.redis.clear(prefix)
        if "disk" in tiers and self.enable_disk_cache:
            keys = [k for k in iter(self.disk_cache) if str(k).startswith(prefix)]
            for k in keys:
                self.disk_cache.delete(k)
            removed["disk"] = len(keys)
        return removed

    def stats(self) -> dict[str, Any]:
        """Entries and counters per tier (hits, misses, errors; Redis entries rejected), as JSON-ready data."""
        out: dict[str, Any] = {}
        for tier in TIERS:
            out[tier] = {result: int(self.metrics.cache_requests_total(tier, result))
                         for result in ("hit", "miss", "error")}
        out["redis"]["rejected"] = int(self.metrics.cache_requests_total("redis", "rejected"))
        if self.enable_memory_cache:
            out["memory"].update(self._memory.stats())
        out["memory"]["enabled"] = self.enable_memory_cache
        out["disk"]["enabled"] = self.enable_disk_cache
        if self.enable_disk_cache:
            out["disk"]["entries"] = len(self.disk_cache)
        out["redis"]["enabled"] = self.redis is not None
        if self.redis is not None:
            out["redis"].update(available=self.redis.available, dropped_writes=self.redis.dropped_writes,
                                pending_writes=self.redis.pending_writes)
        return out


def install_cache(cache: Cache) -> Cache:
    """Make ``cache`` DSPy's cache (``dspy.cache``), as ``dspy.configure_cache`` does for its own; returns the
    cache it replaced."""
    previous: Cache = dspy.cache  # DSPy builds its default lazily, under the lock below: read it first
    lock = getattr(dspy, "_cache_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        dspy.cache = cache
    return previous
