"""A/B routing: send each request key to one program variant, deterministically and by weight.

    router = ABRouter("prompt-v2", {"control": (baseline, 0.9), "candidate": (optimized, 0.1)})
    prediction = router(key=user_id, question="...")      # the same user always gets the same arm
    router.record_score(user_id, 1.0)                       # feed an outcome back (optional)

Assignment hashes ``experiment:key`` (SHA-256) to a point in [0, 1) and picks the arm whose cumulative weight
covers it, so it is stable across processes and restarts and needs no shared state; changing weights moves only
the keys whose point crosses a boundary. Every routed call runs inside the arm's context: LM-call log events carry
``experiment`` and ``arm``, and ``dspyo3_ab_requests_total{experiment,arm,status}`` /
``dspyo3_ab_duration_seconds`` count each arm.
"""

from __future__ import annotations

import bisect
import contextvars
import hashlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dspy

from dspyo3_production.metrics import Metrics, default_metrics

ARM: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("dspyo3_ab_arm", default=None)
"""``(experiment, arm)`` of the routed call running in this context (set by :func:`arm_context`); read it with
:func:`current_arm` (or ``ARM.get()`` on a hot path)."""


def current_arm() -> tuple[str, str] | None:
    """``(experiment, arm)`` of the routed call running in this context, if any."""
    return ARM.get()


@contextmanager
def arm_context(experiment: str, arm: str) -> Iterator[None]:
    """Mark calls made inside this block as belonging to ``arm`` of ``experiment``."""
    token = ARM.set((experiment, arm))
    try:
        yield
    finally:
        ARM.reset(token)


def bucket(experiment: str, key: str) -> float:
    """The point in [0, 1) that ``key`` hashes to within ``experiment``."""
    digest = hashlib.sha256(f"{experiment}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ABRouter(dspy.Module):  # type: ignore[misc]
    """Routes each call to one of several program variants by a request key.

    Args:
        experiment: the experiment's name (part of the hash: two experiments split the same keys independently).
        variants: ``{arm: (program, weight)}``; weights are relative (they need not sum to 1) and must be >= 0
            with at least one > 0.
        metrics: where to count (default: the process-wide metrics).
    """

    def __init__(self, experiment: str, variants: Mapping[str, tuple[Any, float]],
                 metrics: Metrics | None = None) -> None:
        super().__init__()
        if not experiment:
            raise ValueError("ABRouter needs an experiment name")
        if not variants:
            raise ValueError("ABRouter needs at least one variant: {'control': (program, 1.0)}")
        total = 0.0
        for arm, spec in variants.items():
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise TypeError(f"variant {arm!r} must be (program, weight), got {spec!r}")
            if not spec[1] >= 0:
                raise ValueError(f"variant {arm!r} has weight {spec[1]!r}; weights must be >= 0")
            total += float(spec[1])
        if total <= 0:
            raise ValueError("ABRouter weights are all 0; give at least one arm a positive weight")
        self.experiment = experiment
        self.arms = list(variants)
        self.programs = {arm: spec[0] for arm, spec in variants.items()}
        self.weights = {arm: float(spec[1]) / total for arm, spec in variants.items()}
        bounds, acc = [], 0.0
        for arm in self.arms:
            acc += self.weights[arm]
            bounds.append(acc)
        bounds[-1] = 1.0
        self._bounds = bounds
        self._metrics = metrics

    @property
    def metrics(self) -> Metrics:
        """Where this router counts."""
        return self._metrics if self._metrics is not None else default_metrics()

    def assign(self, key: str) -> str:
        """The arm ``key`` goes to (the same answer every time, in every process)."""
        index = bisect.bisect_right(self._bounds, bucket(self.experiment, str(key)))
        index = min(index, len(self.arms) - 1)
        while self.weights[self.arms[index]] == 0:  # a zero-weight arm owns an empty interval; step past it
            index -= 1
        return self.arms[index]

    def forward(self, key: str, **inputs: Any) -> Any:
        """Run the arm ``key`` is assigned to (see :meth:`assign`) on ``inputs``."""
        arm = self.assign(key)
        started = time.perf_counter()
        status = "error"
        try:
            with arm_context(self.experiment, arm):
                prediction = self.programs[arm](**inputs)
            status = "ok"
        finally:
            self._count(arm, status, time.perf_counter() - started)
        return prediction

    async def aforward(self, key: str, **inputs: Any) -> Any:
        """Async :meth:`forward` (the arm's program is called with ``acall``)."""
        arm = self.assign(key)
        started = time.perf_counter()
        status = "error"
        try:
            with arm_context(self.experiment, arm):
                prediction = await self.programs[arm].acall(**inputs)
            status = "ok"
        finally:
            self._count(arm, status, time.perf_counter() - started)
        return prediction

    def record_score(self, key: str, score: float) -> str:
        """Record an outcome (0..1 for the default buckets) for the arm ``key`` is assigned to; returns the arm."""
        arm = self.assign(key)
        m = self.metrics
        m.child(m.ab_score, self.experiment, arm).observe(float(score))
        return arm

    def _count(self, arm: str, status: str, seconds: float) -> None:
        m = self.metrics
        m.child(m.ab_requests, self.experiment, arm, status).inc()
        m.child(m.ab_duration, self.experiment, arm).observe(seconds)
