"""``RedisTier``: the shared Redis tier of :class:`~dspyo3_production.cache.TieredCache` (GET on lookups, SET from a
background writer, a back-off while Redis is down) and what ``dspyo3 cache stats|clear`` work on.

It imports neither DSPy nor the rest of the cache, so the ``cache`` commands start fast.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dspyo3_core.globs import delete_prefix, scan_prefix
from dspyo3_production.codec import MAX_PAYLOAD_BYTES, UnsafeValueError

if TYPE_CHECKING:
    from dspyo3_production.metrics import Metrics

__all__ = ["RedisTier"]

logger = logging.getLogger("dspyo3.production.cache")


class RedisTier:
    """The Redis tier: GET on lookups, SET EX from a background writer, and a back-off while Redis is down.

    Args:
        url: ``redis://`` URL.
        namespace: key prefix (``<namespace>:cache:<key>``), so apps sharing a Redis keep apart.
        ttl: seconds an entry lives in Redis (None: no expiry).
        timeout: socket connect/read timeout in seconds: the longest a lookup waits on a dead Redis.
        max_backoff: longest pause (seconds) between reconnection attempts.
        max_pending: writes queued for the writer thread beyond which new ones are dropped (counted).
        max_entry_bytes: the most a lookup reads of one entry (a larger one comes back one byte over, for the
            codec to refuse, and is never transferred whole).
    """

    def __init__(self, url: str, *, namespace: str = "dspyo3", ttl: float | None = None, timeout: float = 0.25,
                 max_backoff: float = 5.0, max_pending: int = 10_000, metrics: Metrics | None = None,
                 max_entry_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        import redis

        if ttl is not None and ttl <= 0:
            raise ValueError(f"redis_ttl must be > 0 seconds (or None for no expiry), got {ttl!r}")
        self.url = url
        self.prefix = f"{namespace}:cache:"
        self.ttl_ms = int(ttl * 1000) if ttl is not None else None
        self.max_backoff = max_backoff
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           health_check_interval=0)
        self._errors = (redis.RedisError, OSError)
        self._response_error = redis.ResponseError
        self.max_entry_bytes = max_entry_bytes
        self._down_until = 0.0
        self._backoff = 0.0
        self._lock = threading.Lock()
        self._pending: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max_pending)
        self._writer: threading.Thread | None = None
        self.metrics = metrics
        self.dropped_writes = 0
        self.errors = 0

    # -- health -----------------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while backing off after a failure (lookups and writes skip Redis meanwhile)."""
        return time.monotonic() >= self._down_until

    @property
    def pending_writes(self) -> int:
        """Writes queued for the writer thread and not yet sent."""
        return self._pending.qsize()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self._backoff = min(self.max_backoff, self._backoff * 2 if self._backoff else 0.5)
            self._down_until = time.monotonic() + self._backoff
        if self.metrics is not None:
            self.metrics.count_cache("redis", "error")
        logger.warning("redis cache tier unavailable (%s: %s); retrying in %.1fs", type(exc).__name__, exc,
                       self._backoff)

    def _ok(self) -> None:
        if self._backoff:
            with self._lock:
                if self._backoff:
                    logger.info("redis cache tier is back")
                self._backoff = 0.0
                self._down_until = 0.0

    # -- operations -------------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """The payload under ``key`` (at most ``max_entry_bytes + 1`` bytes of it), or None on a miss, while down,
        or on an error (counted, then back off).

        Raises:
            UnsafeValueError: the key holds something other than a string (a list, a hash, ...): not an entry.
        """
        if not self.available:
            return None
        try:
            payload = self.client.getrange(self.prefix + key, 0, self.max_entry_bytes)
        except self._response_error as exc:
            if "WRONGTYPE" not in str(exc):
                self._failed(exc)
                return None
            raise UnsafeValueError("the Redis key holds another data type, not a cache entry") from None
        except self._errors as exc:
            self._failed(exc)
            return None
        self._ok()
        return payload or None  # type: ignore[return-value]  # GETRANGE answers b"" for a missing key

    def put(self, key: str, payload: bytes) -> None:
        """Queue a write for the background writer (dropped, and counted, while Redis is down or the queue full)."""
        if not self.available:
            self.dropped_writes += 1
            return
        self._ensure_writer()
        try:
            self._pending.put_nowait((key, payload))
        except queue.Full:
            self.dropped_writes += 1

    def delete(self, key: str) -> None:
        """Remove ``key`` (best effort)."""
        try:
            self.client.delete(self.prefix + key)
        except self._errors as exc:
            self._failed(exc)

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            with self._lock:
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(target=self._write_loop, name="dspyo3-redis-cache-writer",
                                                    daemon=True)
                    self._writer.start()

    def _write_loop(self) -> None:
        while True:
            item = self._pending.get()
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            entries = [entry for entry in batch if entry is not None]
            try:
                if entries and self.available:
                    pipe = self.client.pipeline(transaction=False)
                    for key, payload in entries:
                        pipe.set(self.prefix + key, payload, px=self.ttl_ms)
                    pipe.execute()
                    self._ok()
                elif entries:
                    self.dropped_writes += len(entries)
            except self._errors as exc:
                self.dropped_writes += len(entries)
                self._failed(exc)
            finally:
                for _ in batch:
                    self._pending.task_done()
            if None in batch:
                return

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued writes reached Redis (or were dropped); False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self) -> None:
        """Flush, stop the writer and close the connection pool."""
        if self._writer is not None and self._writer.is_alive():
            self.flush()
            self._pending.put(None)
            self._writer.join(timeout=5)
        self.client.close()

    # -- administration ---------------------------------------------------------------------------------------
    def scan(self, prefix: str = "") -> Iterator[bytes]:
        """Keys of this tier whose cache key starts with ``prefix`` (taken literally: ``*``, ``?``, ``[`` match
        only themselves)."""
        yield from scan_prefix(self.client, self.prefix + prefix)

    def clear(self, prefix: str = "") -> int:
        """Delete this tier's entries whose cache key starts with ``prefix``; the number deleted."""
        return delete_prefix(self.client, self.prefix + prefix)
