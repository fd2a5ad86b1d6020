"""Evaluate a program on a dataset: per-example scores (for paired comparison), mean and bootstrap interval.

Two executors run the program over the examples:

* ``"local"`` (default): dspyo3-async's :func:`~dspyo3_async.run_many` on DSPy's ``acall``, ``concurrency`` calls
  in flight on one event loop;
* ``"ray"`` (:class:`RayExecutor`): the examples are cut into chunks evaluated by Ray tasks, each running
  ``run_many`` in its worker, when one machine is not enough (``pip install dspyo3-optimize[ray]``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from dspyo3_optimize.metrics import Metric, metric_name, resolve_metric, score_of
from dspyo3_optimize.stats import bootstrap_ci


@dataclass
class ItemOutcome:
    """One example's result: its score, the prediction's fields, and the error if the program failed."""

    index: int
    score: float
    prediction: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class EvalResult:
    """Scores of a program on a dataset, in dataset order.

    Attributes:
        scores: per-example metric values (a failed example scores 0).
        predictions: per-example prediction fields (None where the program failed).
        errors: per-example error text (None where it succeeded).
        mean: mean score.
        ci_low, ci_high: 95% percentile bootstrap interval of the mean.
        metric: the metric's name.
        seconds: wall time.
    """

    scores: list[float]
    predictions: list[dict[str, Any] | None]
    errors: list[str | None]
    mean: float
    ci_low: float
    ci_high: float
    metric: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self.scores)

    @property
    def failures(self) -> int:
        """Examples whose program call failed."""
        return sum(e is not None for e in self.errors)

    @property
    def first_error(self) -> tuple[int, str] | None:
        """``(index, reason)`` of the first failed example in dataset order (the reason is the first line of its
        error, secrets masked), or None when every example succeeded."""
        from dspyo3_optimize.common import reason_line

        for index, error in enumerate(self.errors):
            if error is not None:
                return index, reason_line(error)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class Executor(Protocol):
    """Runs a program over examples and scores each one."""

    name: str

    def run(self, program: Any, examples: Sequence[Any], metric: Metric, *, lm: Any = None,
            concurrency: int = 8, progress: bool = False) -> list[ItemOutcome]:
        """One :class:`ItemOutcome` per example, in order."""


def _fields(prediction: Any) -> dict[str, Any] | None:
    if prediction is None:
        return None
    try:
        return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                for k, v in dict(prediction.items()).items()}
    except AttributeError:
        return {"value": str(prediction)}


@contextlib.contextmanager
def _lm_context(lm: Any) -> Iterator[None]:
    if lm is None:
        yield
        return
    import dspy

    with dspy.context(lm=lm):
        yield


def run_local(program: Any, examples: Sequence[Any], metric: Metric, *, lm: Any = None, concurrency: int = 8,
              progress: bool = False, offset: int = 0) -> list[ItemOutcome]:
    """Score ``program`` on ``examples`` with dspyo3-async's ``run_many`` in this process."""
    from dspyo3_async.runner import run_many_sync
    from dspyo3_core.secrets import redact

    with _lm_context(lm):
        results = run_many_sync(program, [dict(ex.inputs()) for ex in examples], concurrency=concurrency,
                                retries=0, progress="evaluate" if progress else False)
    outcomes = []
    for i, (example, result) in enumerate(zip(examples, results, strict=True)):
        if result.error is not None:
            outcomes.append(ItemOutcome(offset + i, 0.0, None,
                                        redact(f"{type(result.error).__name__}: {result.error}")))
            continue
        try:
            score = score_of(metric(example, result.prediction, None))
        except Exception as exc:  # a metric that fails on one odd prediction scores it 0 and says why
            outcomes.append(ItemOutcome(offset + i, 0.0, _fields(result.prediction),
                                        redact(f"metric failed: {type(exc).__name__}: {exc}")))
            continue
        outcomes.append(ItemOutcome(offset + i, score, _fields(result.prediction)))
    return outcomes


class LocalExecutor:
    """Evaluate in this process on asyncio (``dspyo3_async.run_many``)."""

    name = "local"

    def run(self, program: Any, examples: Sequence[Any], metric: Metric, *, lm: Any = None,
            concurrency: int = 8, progress: bool = False) -> list[ItemOutcome]:
        """See :func:`run_local`."""
        return run_local(program, examples, metric, lm=lm, concurrency=concurrency, progress=progress)


def _ray_chunk(program: Any, examples: list[Any], metric: Metric, lm: Any, concurrency: int,
               offset: int) -> list[ItemOutcome]:
    return run_local(program, examples, metric, lm=lm, concurrency=concurrency, offset=offset)


class ExecutorUnavailable(RuntimeError):
    """The chosen executor cannot run here (e.g. ``"ray"`` without Ray installed); the message says what to
    install."""


class RayExecutor:
    """Evaluate on a Ray cluster: the examples are split into ``chunks`` Ray tasks, each running ``run_many``.

    Args:
        address: the cluster to connect to (``"auto"``, ``"ray://host:10001"``); None starts a local Ray instance
            (what tests use) unless Ray is already initialised.
        chunks: number of tasks (default: the cluster's CPU count, at most one per example).
        init_kwargs: extra ``ray.init`` arguments (``num_cpus``, ``runtime_env``, ...).

    The program, metric and LM are shipped to the workers with Ray's serializer, so they must be importable
    there (define them in a package, not in ``__main__``), and the LM's endpoint must be reachable from them.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, chunks: int | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.address = address
        self.chunks = chunks
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            from dspyo3_core.failures import install_advice

            advice = install_advice('dspyo3-optimize', 'ray')
            raise ExecutorUnavailable(f"executor = \"ray\" needs Ray: {advice}") from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            kwargs.update(self.init_kwargs)
            ray.init(address=self.address, **kwargs)
            self._started = True
        return ray

    def run(self, program: Any, examples: Sequence[Any], metric: Metric, *, lm: Any = None,
            concurrency: int = 8, progress: bool = False) -> list[ItemOutcome]:
        """Evaluate chunks in Ray tasks and gather the outcomes in order."""
        ray = self._ray()
        items = list(examples)
        if not items:
            return []
        chunks = self.chunks or max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = math.ceil(len(items) / min(chunks, len(items)))
        remote = ray.remote(_ray_chunk)
        program_ref = ray.put(program)
        futures = [remote.remote(program_ref, items[start:start + size], metric, lm, concurrency, start)
                   for start in range(0, len(items), size)]
        outcomes: list[ItemOutcome] = [o for chunk in ray.get(futures) for o in chunk]
        return sorted(outcomes, key=lambda o: o.index)

    def shutdown(self) -> None:
        """Stop the local Ray instance this executor started (a no-op for clusters it only connected to)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(executor: str | Executor | None, **options: Any) -> Executor:
    """An executor from its name (``"local"``, ``"ray"``) or an object with a ``run`` method."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor(**options)
    if isinstance(executor, str):
        from dspyo3_core.config import ConfigError

        raise ConfigError(f"unknown executor {executor!r}; use \"local\" or \"ray\"")
    return executor


def evaluate(program: Any, examples: Sequence[Any], metric: str | Metric, *, lm: Any = None,
             executor: str | Executor | None = None, concurrency: int = 8, progress: bool = False,
             confidence: float = 0.95, seed: int = 0) -> EvalResult:
    """Run ``program`` on every example and score it with ``metric``.

    Args:
        program: a ``dspy.Module`` (or any callable taking the input fields).
        examples: ``dspy.Example`` objects with inputs set.
        metric: a callable, a built-in metric name or an import path.
        lm: run inside ``dspy.context(lm=lm)`` (default: the configured LM).
        executor: ``"local"`` (default), ``"ray"`` or an :class:`Executor`.
        concurrency: calls in flight (per Ray task with the Ray executor).
        progress: show a progress bar.
        confidence: level of the bootstrap interval of the mean.
        seed: bootstrap seed.
    """
    fn = resolve_metric(metric)
    started = time.perf_counter()
    outcomes = make_executor(executor).run(program, examples, fn, lm=lm, concurrency=concurrency, progress=progress)
    scores = [o.score for o in outcomes]
    if scores:
        low, high = bootstrap_ci(scores, confidence=confidence, seed=seed)
        mean = sum(scores) / len(scores)
    else:
        low = high = mean = float("nan")
    return EvalResult(scores, [o.prediction for o in outcomes], [o.error for o in outcomes], mean, low, high,
                      metric_name(metric), round(time.perf_counter() - started, 3))
