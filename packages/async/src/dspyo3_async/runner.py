"""Run a DSPy program over many inputs on asyncio: at most ``concurrency`` calls in flight (a number, or an
``asyncio.Semaphore`` shared by several runs), optional rate limit, per-item timeout and retries, results in input
order with per-item errors. Each call runs where it is cheapest for the program's LM (see :func:`choose_executor`):
``acall`` on the event loop, or the synchronous call on a worker thread of the run's own pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

from dspyo3_async.limits import RateLimit
from dspyo3_async.retry import DEFAULT_RETRY, RetryPolicy
from dspyo3_core import spans

__all__ = ["EXECUTORS", "ItemError", "ItemResult", "ItemTimeout", "acall", "choose_executor", "iter_many", "run_many",
           "run_many_sync", "run_sync"]

EXECUTORS = ("auto", "async", "threads")
"""Where ``run_many`` / ``iter_many`` run each call (their ``executor=``): see :func:`choose_executor`."""

_T = TypeVar("_T")


class ItemError(RuntimeError):
    """Raised by :meth:`ItemResult.unwrap` for an item that failed; ``__cause__`` is the original error."""


class ItemTimeout(TimeoutError):
    """An item's attempt ran longer than ``timeout``; its request was cancelled."""


@dataclass
class ItemResult:
    """The outcome of one input.

    Attributes:
        index: the input's position.
        inputs: the input itself.
        prediction: what the program returned (``None`` if it failed).
        error: the last error if every attempt failed, else ``None``.
        attempts: how many attempts were made.
        elapsed: seconds from the first attempt's start to the end (rate-limit waits and backoff included).
    """

    index: int
    inputs: Mapping[str, Any]
    prediction: Any = None
    error: BaseException | None = None
    attempts: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """The item succeeded."""
        return self.error is None

    def unwrap(self) -> Any:
        """The prediction, or :class:`ItemError` (from the item's error) if it failed."""
        if self.error is not None:
            raise ItemError(f"item {self.index} failed after {self.attempts} attempt(s): "
                            f"{type(self.error).__name__}: {self.error}") from self.error
        return self.prediction


def acall(program: Any, inputs: Mapping[str, Any]) -> Awaitable[Any]:
    """Call ``program`` with ``inputs`` on the event loop: ``program.acall`` for DSPy modules with an async path
    (``Predict``, ``ChainOfThought``, ``ReAct``, your modules that define ``aforward``), ``await program(...)`` for
    coroutine functions, and a worker thread (``asyncio.to_thread``, contextvars and ``dspy.context`` carried over)
    for modules that only define ``forward`` and for plain callables. A thread cannot be cancelled: a timeout
    abandons it rather than stopping its HTTP request, so give modules an ``aforward`` when that matters."""
    if hasattr(program, "aforward") and hasattr(program, "acall"):
        result: Awaitable[Any] = program.acall(**inputs)
        return result
    if inspect.iscoroutinefunction(program) or (callable(program) and
                                                inspect.iscoroutinefunction(type(program).__call__)):
        coroutine: Awaitable[Any] = program(**inputs)
        return coroutine
    if not callable(program):
        raise TypeError(f"run_many needs a DSPy module or a callable, got {type(program).__name__}")
    return asyncio.to_thread(program, **inputs)


def _program_lms(program: Any) -> list[Any]:
    """The LMs ``program`` would call: its predictors' own and the configured ``dspy.settings.lm``."""
    import dspy

    found = [dspy.settings.lm]
    named = getattr(program, "named_predictors", None)
    if callable(named):
        try:
            found += [getattr(predictor, "lm", None) for _, predictor in named()]
        except Exception:  # a module whose attributes cannot be walked: the configured LM decides
            pass
    return [lm for lm in found if lm is not None]


def choose_executor(program: Any, executor: str = "auto", concurrency: int | asyncio.Semaphore = 16,
                    timeout: float | None = None) -> str:
    """``"async"`` or ``"threads"``: where :func:`run_many` runs each call of ``program``.

    ``"async"`` awaits ``program.acall`` on the event loop (no thread per call; a late call is cancelled, its HTTP
    request with it). ``"threads"`` runs ``program(**inputs)`` on a worker thread of the run's own pool of
    ``concurrency`` threads, as ``dspy.Parallel`` does (context variables and ``dspy.context`` carried over; a late
    call is abandoned, not stopped). ``"auto"`` picks threads for modules with no async path (only ``forward``) and
    plain callables, and for a module calling a ``dspy.LM`` on one of DSPy's own engines (lm15 or LiteLLM), whose
    async path costs more CPU per call than its sync one (two thread hops per call and HTTP in Python on the
    loop). It picks async for coroutine functions, for modules whose LMs are NativeLM, a ``dspy.LM`` on the native
    engines (:mod:`dspyo3_core.native_engine`) or others, for any module when ``timeout`` is set (a late call must
    stop, its HTTP request with it), and whenever ``concurrency`` is a shared semaphore (a pool per run cannot
    honour a limit shared with other runs; sync-only programs then run through ``asyncio.to_thread``)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor != "auto":
        return executor
    if isinstance(concurrency, asyncio.Semaphore):
        return "async"
    if not (hasattr(program, "aforward") and hasattr(program, "acall")):
        coroutine = inspect.iscoroutinefunction(program) or (
            callable(program) and inspect.iscoroutinefunction(type(program).__call__))
        return "async" if coroutine else "threads"  # a sync-only module or callable runs on a thread either way
    if timeout is not None:
        return "async"
    # an async-only module has no sync call to run (read on the class: DSPy warns when an instance's forward is read)
    if not callable(getattr(type(program), "forward", None)):
        return "async"
    import dspy

    for lm in _program_lms(program):
        if isinstance(lm, dspy.LM) and isinstance(getattr(lm, "engine", None), str):
            return "threads"
    return "async"


_SHARED_BUFFER = 16  # iter_many's default buffer when concurrency is a shared semaphore


async def _until_started(started: asyncio.Event, call: asyncio.Future[Any]) -> None:
    """Wait until a worker thread starts ``call`` (or it is already done); cancelled meanwhile, the queued call is
    withdrawn from the pool."""
    waiting = asyncio.ensure_future(started.wait())
    try:
        await asyncio.wait({waiting, call}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        call.cancel()
        raise
    finally:
        waiting.cancel()


class ItemRunner:
    """Takes an item only once it has a slot: slot, then the item, then (per attempt) the rate token, then the
    call under its timeout; so items waiting for a slot hold no rate token and their timeout has not started.

    ``concurrency`` is a number (slots of this run alone; a slot is held until the result is delivered, so a slow
    ``iter_many`` consumer pauses the run) or an ``asyncio.Semaphore`` shared with other runs (a slot is given
    back as soon as the call is done; at most ``backlog`` finished results wait for delivery before the run
    stops taking items)."""

    def __init__(self, program: Any, *, concurrency: int | asyncio.Semaphore, rate: RateLimit | float | None,
                 timeout: float | None, retries: RetryPolicy | int, progress: bool | str, total: int | None,
                 backlog: int | None = None, executor: str = "async") -> None:
        if isinstance(concurrency, asyncio.Semaphore):
            self.slots, self.shared = concurrency, True
        elif isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
            self.slots, self.shared = asyncio.Semaphore(concurrency), False
        else:
            raise ValueError(f"concurrency must be a positive integer or an asyncio.Semaphore, got {concurrency!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.program = program
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        if choose_executor(program, executor, concurrency, timeout) == "threads":
            if not isinstance(concurrency, int):
                raise ValueError("executor='threads' needs concurrency as a number (its pool's size), not a shared "
                                 "semaphore")
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency,
                                                              thread_name_prefix="dspyo3-run_many")
        self.backlog = backlog
        self.delivering = 0  # finished results waiting for the sink (shared slots only)
        self.room = asyncio.Event()
        self.rate = RateLimit(float(rate)) if isinstance(rate, (int, float)) else rate
        self.timeout = timeout
        self.policy = RetryPolicy.of(retries)
        self.bar: Any = None
        if progress:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=total, desc=progress if isinstance(progress, str) else "run_many",
                            mininterval=0.5, unit="item")

    async def one(self, index: int, inputs: Mapping[str, Any]) -> ItemResult:
        tracer = spans.TRACER
        if tracer is None:
            return await self._one(index, inputs)
        # one span per item: every attempt, its rate-limit wait and the program's own spans nest under it (tasks
        # and worker threads copy the context, so CURRENT follows)
        with tracer.start("dspyo3.run_many.item", attrs={"dspyo3.run_many.index": index}) as span:
            result = await self._one(index, inputs)
            span.set("dspyo3.run_many.attempts", result.attempts)
            if result.error is not None:
                span.fail(result.error)
            return result

    async def _one(self, index: int, inputs: Mapping[str, Any]) -> ItemResult:
        if not isinstance(inputs, Mapping):
            error = TypeError(f"input {index} must be a mapping of input fields (dict or dspy.Example.inputs()), "
                              f"got {type(inputs).__name__}")
            return ItemResult(index, {}, error=error)
        result = ItemResult(index, inputs)
        start = time.monotonic()
        while True:
            result.attempts += 1
            try:
                if self.rate is not None:
                    await self.rate.acquire()
                started = threaded = None
                if self.pool is None:
                    call = acall(self.program, inputs)
                else:
                    started, threaded = self._threaded(inputs)
                    call = threaded
                if self.timeout is None:
                    result.prediction = await call
                else:
                    if started is not None and threaded is not None:  # waiting for a free worker is queueing
                        await _until_started(started, threaded)
                    try:
                        result.prediction = await asyncio.wait_for(call, self.timeout)
                    except asyncio.TimeoutError:
                        raise ItemTimeout(f"item {index} took longer than {self.timeout:g}s; " + (
                            "its request was cancelled" if started is None else
                            "its call was abandoned on its worker thread")) from None
                result.error = None
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                result.error = exc
                if not self.policy.should_retry(exc, result.attempts):
                    break
                await asyncio.sleep(self.policy.delay(exc, result.attempts))
        result.elapsed = time.monotonic() - start
        if self.bar is not None:
            self.bar.update(1)
        return result

    def _threaded(self, inputs: Mapping[str, Any]) -> tuple[asyncio.Event, asyncio.Future[Any]]:
        """The synchronous call on the run's pool, in a copy of this task's context (``dspy.context``, spans), and
        an event set when a worker thread starts it."""
        assert self.pool is not None
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        context = contextvars.copy_context()

        def run() -> Any:
            loop.call_soon_threadsafe(started.set)
            return context.run(functools.partial(self.program, **inputs))

        return started, loop.run_in_executor(self.pool, run)

    def close(self) -> None:
        """Let the pool's threads go (calls still running on them finish on their own)."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _item(self, index: int, inputs: Mapping[str, Any], slot: _Slot,
                    sink: Callable[[ItemResult], Any]) -> None:
        result = await self.one(index, inputs)
        if self.shared:
            slot.release()  # other runs may use it while the result waits for delivery
            self.delivering += 1
            try:
                outcome = sink(result)
                if inspect.isawaitable(outcome):
                    await outcome
            finally:
                self.delivering -= 1
                self.room.set()
        else:
            outcome = sink(result)
            if inspect.isawaitable(outcome):
                await outcome
            slot.release()

    async def drive(self, items: _Serial, sink: Callable[[ItemResult], Any]) -> None:
        tasks: set[asyncio.Future[None]] = set()
        failures: list[BaseException] = []

        def finished(task: asyncio.Future[None], slot: _Slot) -> None:
            tasks.discard(task)
            slot.release()  # a task cancelled before it started, or one that failed, still gives its slot back
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        try:
            try:
                await self._dispatch(items, sink, tasks, failures, finished)
            except StopAsyncIteration:
                pass
            while tasks and not failures:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
            if failures:
                raise failures[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # nothing left running when we return
            self.close()
            if self.bar is not None:
                self.bar.close()

    async def _dispatch(self, items: _Serial, sink: Callable[[ItemResult], Any], tasks: set[asyncio.Future[None]],
                        failures: list[BaseException],
                        finished: Callable[[asyncio.Future[None], _Slot], None]) -> None:
        """Start items until the input ends (``StopAsyncIteration``) or an item's delivery failed."""
        while not failures:
            while self.backlog is not None and self.delivering >= self.backlog:
                self.room.clear()
                await self.room.wait()  # the consumer is behind: take no more items (backpressure)
            await self.slots.acquire()
            slot = _Slot(self.slots)
            try:
                index, inputs = await items.__anext__()
            except BaseException:  # the end of the input (StopAsyncIteration) or its failure
                slot.release()
                raise
            task = asyncio.ensure_future(self._item(index, inputs, slot, sink))
            tasks.add(task)
            task.add_done_callback(lambda t, slot=slot: finished(t, slot))  # type: ignore[misc]


class _Slot:
    """One acquired slot of a semaphore, released at most once (by the item's task or, if the task never ran,
    by its done callback)."""

    __slots__ = ("held", "semaphore")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore, self.held = semaphore, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.semaphore.release()


async def _enumerate(inputs: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]]
                     ) -> AsyncIterator[tuple[int, Mapping[str, Any]]]:
    if isinstance(inputs, AsyncIterable):
        index = 0
        async for item in inputs:
            yield index, item
            index += 1
    else:
        for index, item in enumerate(inputs):
            yield index, item


class _Serial:
    """One async iterator shared by the workers: ``__anext__`` calls never overlap (an async generator refuses
    concurrent ``asend``)."""

    def __init__(self, source: AsyncIterator[tuple[int, Mapping[str, Any]]]) -> None:
        self.source = source
        self.lock = asyncio.Lock()

    async def __anext__(self) -> tuple[int, Mapping[str, Any]]:
        async with self.lock:
            return await self.source.__anext__()


async def run_many(program: Any, inputs: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]], *,
                   concurrency: int | asyncio.Semaphore = 16, rate: RateLimit | float | None = None,
                   timeout: float | None = None,
                   retries: RetryPolicy | int = DEFAULT_RETRY, progress: bool | str = False,
                   executor: str = "auto") -> list[ItemResult]:
    """Run ``program`` on every input, at most ``concurrency`` at a time, on DSPy's native async path.

    Args:
        program: a DSPy module (``program.acall``), a coroutine function, or a sync callable (run in a thread).
        inputs: mappings of input fields (``example.inputs()`` works), sync or async iterable.
        concurrency: calls in flight at once: a number (slots of this call alone), or an ``asyncio.Semaphore``
            shared by several ``run_many`` / ``iter_many`` calls on the same event loop, which together never
            exceed it. An item is taken from ``inputs`` only once it has a slot (at most ``concurrency`` tasks
            exist, not one per input), and keeps it through its retries.
        rate: a :class:`RateLimit` (or requests per second) every attempt waits on, after it has its slot (so
            items queued for a slot do not take tokens and then start in a burst).
        timeout: seconds per attempt, from the moment the call starts (after the slot and the rate token: time
            queued for a slot never counts); a late attempt is cancelled (its HTTP request with it; on the threads
            executor it is abandoned and finishes on its thread) and fails with :class:`ItemTimeout` (not retried by
            the default policy).
        retries: a :class:`RetryPolicy`, or a number of retries. Only ``dspy.is_retryable_lm_error`` errors are
            retried, honouring ``Retry-After``. DSPy's LMs also retry inside a call (``num_retries``); set it to 0 to
            let this policy (and the rate limit) see every attempt.
        progress: show a progress bar (a string sets its label).
        executor: ``"auto"`` (the default), ``"async"`` or ``"threads"``: where each call runs (see
            :func:`choose_executor`; with ``dspy.LM`` on DSPy's engines and no ``timeout``, auto runs calls on a pool
            of ``concurrency`` threads, which serves more calls per second than its async path).

    Returns:
        One :class:`ItemResult` per input, in input order; failures are results with ``error`` set, never raised.
        Cancelling ``run_many`` cancels every call in flight before it returns; calls running on the threads
        executor cannot be stopped, so they are abandoned (they finish on their threads, their results dropped).
    """
    runner = ItemRunner(program, concurrency=concurrency, rate=rate, timeout=timeout, retries=retries,
                     progress=progress, total=len(inputs) if isinstance(inputs, Sized) else None, executor=executor)
    results: dict[int, ItemResult] = {}

    def keep(result: ItemResult) -> None:
        results[result.index] = result

    await runner.drive(_Serial(_enumerate(inputs)), keep)
    return [results[i] for i in range(len(results))]


async def iter_many(program: Any, inputs: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]], *,
                    concurrency: int | asyncio.Semaphore = 16, rate: RateLimit | float | None = None,
                    timeout: float | None = None,
                    retries: RetryPolicy | int = DEFAULT_RETRY, progress: bool | str = False,
                    buffer: int | None = None, executor: str = "auto") -> AsyncIterator[ItemResult]:
    """Like :func:`run_many`, yielding each :class:`ItemResult` as soon as it completes (``result.index`` says
    which input it was). At most ``buffer`` (default ``concurrency``, or 16 with a shared semaphore) finished
    results wait for the consumer; when it falls behind, no more items are started (backpressure; with a shared
    semaphore the finished items give their slots back to the other runs meanwhile). Breaking out of the loop
    cancels the calls in flight (those on worker threads, with ``executor="threads"``, are abandoned).
    ``executor``: as :func:`run_many`'s."""
    size = buffer or (_SHARED_BUFFER if isinstance(concurrency, asyncio.Semaphore) else concurrency)
    runner = ItemRunner(program, concurrency=concurrency, rate=rate, timeout=timeout, retries=retries,
                     progress=progress, total=len(inputs) if isinstance(inputs, Sized) else None, backlog=size,
                     executor=executor)
    queue: asyncio.Queue[ItemResult | None] = asyncio.Queue(maxsize=size)

    async def produce() -> None:
        try:
            await runner.drive(_Serial(_enumerate(inputs)), queue.put)
        finally:
            # the end marker (also after a failure, so the consumer never waits forever); never blocks, so a
            # cancelled producer with a full buffer still finishes
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            if producer.done() and queue.empty():
                break  # finished without room for the end marker: everything was consumed
            item = await queue.get()
            if item is None:
                break
            yield item
        await producer  # re-raise a failure of the input iterator
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


def run_sync(main: Callable[[], Coroutine[Any, Any, _T]], *, name: str, instead: str) -> _T:
    """Run the coroutine ``main()`` to completion on a new event loop, from synchronous code (the ``*_sync``
    twins of async APIs use it). From inside a running event loop, where ``asyncio.run`` cannot work, it raises
    a ``RuntimeError`` saying that ``name`` was called there and to use ``instead`` (e.g. ``"await
    run_many(...)"``) -- before ``main`` is called, so no coroutine is left never awaited."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    raise RuntimeError(f"{name} was called from a running event loop; use `{instead}` there")


def run_many_sync(program: Any, inputs: Iterable[Mapping[str, Any]], **options: Any) -> list[ItemResult]:
    """:func:`run_many` from synchronous code (starts and closes an event loop; not from inside a running one)."""
    return run_sync(lambda: run_many(program, inputs, **options), name="run_many_sync",
                    instead="await run_many(...)")
