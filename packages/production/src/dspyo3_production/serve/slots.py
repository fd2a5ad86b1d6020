"""One served program: :class:`ProgramSlot` holds its current version (and an optional B arm), picks the arm of a
caller (a weighted, sticky split by caller key), bounds the requests running and waiting, and switches versions
atomically (requests already running finish on the module they started with).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from dspyo3_core import spans
from dspyo3_production.serve.errors import ServeError
from dspyo3_production.serve.schema import ProgramSchema, program_schema

__all__ = ["Arm", "ProgramSlot", "arm_share"]


@dataclass(frozen=True)
class Arm:
    """One version of a program as served: ``version``, the loaded ``module``, its :class:`ProgramSchema`, and
    ``arm`` (``"a"`` or ``"b"``)."""

    arm: str
    version: str
    module: Any
    schema: ProgramSchema


def arm_share(program: str, caller: str) -> float:
    """The caller's stable position in [0, 1) for ``program`` (a hash, the same in every process): callers below
    the B weight get arm B."""
    digest = hashlib.blake2b(f"{program}\x00{caller}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class ProgramSlot:
    """A served program.

    Args:
        name: the URL name (``/v1/programs/{name}``).
        version: the version of ``module``.
        module: the loaded ``dspy.Module``.
        stage: the registry stage served (None for a fixed version or a local module).
        max_in_flight: requests running at once; more wait.
        max_queue: requests waiting at most; more are refused with 503 and ``Retry-After``.
        b_version, b_module, b_weight: an optional B arm served to ``b_weight`` (0 < w < 1) of callers.

    Raises:
        ValueError: the module has no fields to serve, or ``b_weight`` is out of range.
    """

    def __init__(self, name: str, version: str, module: Any, *, stage: str | None = None, max_in_flight: int = 64,
                 max_queue: int = 256, b_version: str | None = None, b_module: Any = None,
                 b_weight: float | None = None) -> None:
        if max_in_flight < 1 or max_queue < 0:
            raise ValueError("max_in_flight must be >= 1 and max_queue >= 0")
        self.name = name
        self.stage = stage
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.a = Arm("a", version, module, program_schema(name, module))
        self.b: Arm | None = None
        self.b_weight = 0.0
        if b_module is not None:
            if b_weight is None or not 0 < b_weight < 1:
                raise ValueError("b_weight must be between 0 and 1 (exclusive) when a B arm is served")
            self.b = Arm("b", b_version or "unknown", b_module, program_schema(name, b_module))
            self.b_weight = float(b_weight)
        self.problem: str | None = None
        self.problem_version: str | None = None
        self.swapped_at = time.time()
        self.running = 0
        self.waiting = 0
        self.served = 0
        self.refused = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._mean_seconds = 1.0

    # -- versions -------------------------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The main (A) version."""
        return self.a.version

    def swap(self, version: str, module: Any, arm: str = "a") -> None:
        """Serve ``module`` as ``version`` on ``arm`` (``"a"`` or ``"b"``) from now on; running requests finish on
        the module they started with. The schema is built first, so a module without fields leaves the slot as
        it was (ValueError) and clears no recorded problem."""
        if arm not in ("a", "b"):
            raise ValueError(f"arm must be 'a' or 'b', not {arm!r}")
        new = Arm(arm, version, module, program_schema(self.name, module))
        if arm == "a":
            self.a = new
        else:
            if self.b is None:
                raise ValueError(f"{self.name} serves no B arm; configure ab = {{ target, weight }}")
            self.b = new
        self.problem = None
        self.problem_version = None
        self.swapped_at = time.time()

    def report(self, problem: str | None, version: str | None = None) -> None:
        """Record why ``version`` could not be switched to (a failed load or smoke check; the old version keeps
        serving), or clear it with None. Readiness (:attr:`status`) shows it."""
        self.problem = problem
        self.problem_version = version if problem is not None else None

    def pick(self, caller: str | None) -> Arm:
        """The arm serving ``caller`` (sticky: the same caller always gets the same arm while the weight holds);
        callers with no key get A unless a B arm is served, then a random one with the B weight."""
        b = self.b
        if b is None:
            return self.a
        if caller is None:
            import random

            return b if random.random() < self.b_weight else self.a
        return b if arm_share(self.name, caller) < self.b_weight else self.a

    # -- admission ------------------------------------------------------------------------------------------------
    def retry_after(self) -> float:
        """Seconds a refused caller should wait: about the time the queue ahead takes to drain (at least 1)."""
        return max(1.0, self._mean_seconds * (self.waiting + 1) / self.max_in_flight)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the ``max_in_flight`` places while the block runs, waiting in the bounded queue for one.

        Raises:
            ServeError: 503 ``overloaded`` with ``retry_after`` when ``max_queue`` requests are already waiting.
        """
        semaphore = self._semaphore
        if semaphore is None:  # created on first use, on the serving loop
            semaphore = self._semaphore = asyncio.Semaphore(self.max_in_flight)
        if semaphore.locked():
            tracer = spans.TRACER
            if self.waiting >= self.max_queue:
                self.refused += 1
                error = ServeError(503, f"{self.name} is overloaded ({self.running} running, {self.waiting} "
                                   "waiting); retry after the Retry-After seconds", "overloaded",
                                   retry_after=self.retry_after())
                if tracer is not None:
                    now = time.time_ns()
                    tracer.record("dspyo3.queue.wait", now, now, self._wait_attrs(0.0), error=error)
                raise error
            self.waiting += 1
            began = time.time_ns()
            try:
                await semaphore.acquire()
            finally:
                self.waiting -= 1
                if tracer is not None:  # only a request that had to queue gets a span
                    ended = time.time_ns()
                    tracer.record("dspyo3.queue.wait", began, ended, self._wait_attrs((ended - began) / 1e9))
        else:
            await semaphore.acquire()
        self.running += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.running -= 1
            semaphore.release()
            self.served += 1
            self._mean_seconds += (time.perf_counter() - started - self._mean_seconds) * 0.1

    def _wait_attrs(self, waited: float) -> dict[str, spans.AttrValue]:
        return {"dspyo3.queue.waited_s": waited, "dspyo3.program.name": self.name,
                "dspyo3.queue.max_in_flight": self.max_in_flight, "dspyo3.queue.max_queue": self.max_queue}

    # -- readiness ------------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """The slot serves a loaded version (a recorded problem with a newer version does not unready it)."""
        return self.a.module is not None

    @property
    def status(self) -> dict[str, Any]:
        """What readiness and the programs listing report: versions, load problem, running/waiting counts."""
        return {
            "ready": self.ready,
            "version": self.a.version,
            "b_version": self.b.version if self.b is not None else None,
            "b_weight": self.b_weight if self.b is not None else None,
            "problem": self.problem,
            "problem_version": self.problem_version,
            "running": self.running,
            "waiting": self.waiting,
            "served": self.served,
            "refused": self.refused,
            "swapped_at": self.swapped_at,
        }
