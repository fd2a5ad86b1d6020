"""Many agents at once on asyncio, through ``dspyo3_async.run_many``: one shared concurrency limit (agents in
flight), an optional shared rate limit on their LM calls, per-run timeouts, results in input order with per-run
errors; and a small coordinator that fans a task out to workers and merges what they return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspyo3_async import ItemResult, RateLimit, run_many, run_sync

__all__ = ["Coordinator", "FanOutResult", "run_agents", "run_agents_sync"]


async def run_agents(agent: Any, inputs: Iterable[Mapping[str, Any]], *, concurrency: int | asyncio.Semaphore = 8,
                     rate: RateLimit | float | None = None, timeout: float | None = None,
                     retries: int = 0) -> list[ItemResult]:
    """Run ``agent`` (a :class:`~dspyo3_agents.ReActAgent`, or any DSPy module) on every input, at most
    ``concurrency`` runs in flight, on DSPy's async path (``acall``: tools run in threads of their own or are
    awaited, so one slow tool does not stall the other agents).

    Args:
        agent: the agent; one instance serves every run (runs share its registry, so per-tool concurrency
            limits and circuit breakers hold across all of them).
        inputs: mappings of input fields; add ``run_id`` to make a run resumable under that id.
        concurrency: agent runs in flight at once: a number (a limit for this call only), or an
            ``asyncio.Semaphore`` shared by several ``run_agents`` calls / coordinators (and any
            ``dspyo3_async.run_many``) on the same event loop, so that together they never exceed it.
        rate: a ``dspyo3_async.RateLimit`` (or requests/s) each run waits on once it has its slot.
        timeout: seconds per run attempt (a late run is cancelled), from when it starts: waiting for a slot
            never counts.
        retries: retries of a run that failed with a retryable LM error.

    Returns:
        One ``dspyo3_async.ItemResult`` per input, in order (``.prediction`` or ``.error``).
    """
    return await run_many(agent, inputs, concurrency=concurrency, rate=rate, timeout=timeout, retries=retries)


def run_agents_sync(agent: Any, inputs: Iterable[Mapping[str, Any]], **options: Any) -> list[ItemResult]:
    """:func:`run_agents` from synchronous code (not from inside a running event loop)."""
    return run_sync(lambda: run_agents(agent, inputs, **options), name="run_agents_sync",
                    instead="await run_agents(...)")


@dataclass
class FanOutResult:
    """What :meth:`Coordinator.run` returns: the merged answer and every worker's result.

    Attributes:
        merged: what the merge step produced.
        subtasks: the inputs each worker got.
        results: one ``ItemResult`` per subtask (``.prediction`` or ``.error``).
    """

    merged: Any
    subtasks: list[dict[str, Any]]
    results: list[ItemResult]

    @property
    def failed(self) -> list[ItemResult]:
        """The workers that failed."""
        return [r for r in self.results if not r.ok]


Split = Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
Merge = Callable[[Mapping[str, Any], list[ItemResult]], Any]


class Coordinator:
    """Fan a task out to worker agents and merge their results.

    Args:
        worker: the agent (or DSPy module) that handles one subtask.
        split: ``task -> subtasks`` (input mappings for the worker). Default: the task's ``subtasks`` list.
        merge: ``(task, results) -> merged`` (a function, sync or async), or a DSPy module called with the
            task's fields plus ``results`` (a list of the workers' outputs as dicts). Default: the list of
            successful workers' output dicts.
        concurrency: workers in flight at once (a number, or an ``asyncio.Semaphore`` shared with other
            coordinators and :func:`run_agents` calls); ``rate``, ``timeout``: as for :func:`run_agents`.

    >>> coordinator = Coordinator(agent, split=lambda t: [{"question": q} for q in t["questions"]])  # doctest: +SKIP
    >>> result = await coordinator.run({"questions": ["2+2?", "3*3?"]})                                # doctest: +SKIP
    """

    def __init__(self, worker: Any, *, split: Split | None = None, merge: Merge | dspy.Module | None = None,
                 concurrency: int | asyncio.Semaphore = 8, rate: RateLimit | float | None = None,
                 timeout: float | None = None) -> None:
        self.worker = worker
        self.split = split or _default_split
        self.merge = merge
        self.concurrency, self.rate, self.timeout = concurrency, rate, timeout

    async def run(self, task: Mapping[str, Any]) -> FanOutResult:
        """Split ``task``, run the workers concurrently, merge (failed workers are passed to ``merge`` too)."""
        subtasks = [dict(s) for s in self.split(task)]
        results = await run_agents(self.worker, subtasks, concurrency=self.concurrency, rate=self.rate,
                                   timeout=self.timeout)
        merged: Any
        if self.merge is None:
            merged = [_outputs(r.prediction) for r in results if r.ok]
        elif isinstance(self.merge, dspy.Module):
            fields = {k: v for k, v in task.items() if k in _input_names(self.merge)}
            merged = await self.merge.acall(**fields, results=[_outputs(r.prediction) for r in results if r.ok])
        else:
            outcome = self.merge(task, results)
            merged = await outcome if isinstance(outcome, Awaitable) else outcome
        return FanOutResult(merged, subtasks, results)

    def run_sync(self, task: Mapping[str, Any]) -> FanOutResult:
        """:meth:`run` from synchronous code (not from inside a running event loop)."""
        return run_sync(lambda: self.run(task), name="Coordinator.run_sync", instead="await coordinator.run(...)")


def _default_split(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    subtasks = task.get("subtasks")
    if not isinstance(subtasks, list):
        raise ValueError("Coordinator: the task has no 'subtasks' list; pass split=task -> [worker inputs, ...]")
    return subtasks


def _outputs(prediction: Any) -> dict[str, Any]:
    if isinstance(prediction, dspy.Prediction):
        skip = {"trajectory", "steps", "tokens", "stopped", "run_id"}
        return {k: v for k, v in prediction.items() if k not in skip}
    return {"result": prediction}


def _input_names(module: dspy.Module) -> set[str]:
    names: set[str] = set()
    for _, predictor in module.named_predictors():
        names.update(predictor.signature.input_fields)
    return names
