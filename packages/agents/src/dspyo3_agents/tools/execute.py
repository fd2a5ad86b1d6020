"""One registered tool and how a call of it runs: argument validation, then breaker, concurrency slot, timeout
(sync tools in a thread of their own, async ones on the event loop) and retries."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pydantic

from dspyo3_agents.tools.errors import (
    ArgumentProblem,
    ToolArgumentError,
    ToolError,
    ToolExecutionError,
    ToolTimeoutError,
)
from dspyo3_agents.tools.policy import ConcurrencySlots, ToolBreaker, tool_deadline, tool_retry
from dspyo3_agents.tools.schema import describe_type
from dspyo3_async import RetryPolicy
from dspyo3_core import spans

__all__ = ["MAX_HUNG_CALLS", "RegisteredTool", "current_loop"]

MAX_HUNG_CALLS = 32
"""Timed sync calls of one tool that were abandoned after their timeout and still run; while that many hang,
further calls of the tool fail fast instead of starting yet another thread."""


def current_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop, or ``None`` outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _start_thread(tool: str, func: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Run ``func`` in a daemon thread of its own, with the caller's contextvars (``dspy.context``).

    Not a shared pool: a call abandoned after its timeout keeps its thread until it ends, and in a pool enough of
    them would starve every other tool of workers. The future is *running* once the thread has picked it up."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = context.run(func)
        except BaseException as exc:  # delivered to the caller (or dropped if it gave up)
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=f"dspyo3-tool-{tool}", daemon=True).start()
    return future


def _retry_event(span: spans.Span, error: BaseException, attempt: int, delay: float) -> None:
    """A ``retry`` event on a tool span: the failed attempt, its error class and the wait before the next one."""
    span.event("retry", {"dspyo3.tool.attempt": attempt, "error.type": type(error).__name__, "delay_s": delay})


@dataclass(eq=False)
class RegisteredTool:
    """One tool in a :class:`ToolRegistry` (what :meth:`ToolRegistry.register` returns).

    Attributes:
        name: the name agents call it by.
        func: the callable (sync, or ``async def``).
        description: what the LM reads about it.
        parameters: JSON Schema (``type: object``) of its arguments.
        tags: labels used by allow-lists (``registry.granted(tags=[...])``) and :data:`RISKY_TAGS`.
        timeout: seconds per attempt (``None``: no limit), waiting for a concurrency slot included. A timed sync
            tool runs in a daemon thread of its own and is abandoned there when it times out (Python cannot stop a
            thread); while :data:`MAX_HUNG_CALLS` of them still run, new calls fail fast. An async one is cancelled.
        max_concurrency: calls of this tool in flight at once (``None``: no limit).
        retry: when failed calls are retried.
        enabled: disabled tools raise :class:`ToolDisabledError` when called.
        source: where it came from (a distribution name for plugin tools, ``"mcp"``, ``"dspy.Tool"``, ...).
    """

    name: str
    func: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    tags: frozenset[str] = frozenset()
    timeout: float | None = None
    max_concurrency: int | None = None
    retry: RetryPolicy = field(default_factory=tool_retry)
    enabled: bool = True
    source: str = "in-process"
    breaker: ToolBreaker = field(default_factory=ToolBreaker)
    model: type[pydantic.BaseModel] | None = None
    schema_validator: Any = None
    is_async: bool = False
    loop_bound: bool = False
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    calls: int = 0
    hung: int = 0
    _slots: ConcurrencySlots | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"tool {self.name!r}: timeout must be > 0 seconds or None, got {self.timeout!r}")
        if self.max_concurrency is not None:
            self._slots = ConcurrencySlots(self.max_concurrency)

    @property
    def arg_names(self) -> list[str]:
        """Argument names, in order."""
        return list(self.parameters.get("properties", {}))

    def expected(self) -> str:
        """``a (integer), b (string, optional)``: the arguments as an error message lists them."""
        props: dict[str, Any] = self.parameters.get("properties", {})
        required = set(self.parameters.get("required", []))
        if not props:
            return "none (call it with {})"
        return ", ".join(f"{n} ({describe_type(s)}{'' if n in required else ', optional'})" for n, s in props.items())

    # -- validation

    def validate(self, args: Any) -> dict[str, Any]:
        """Check ``args`` against the schema; the parsed values (Pydantic-coerced) or :class:`ToolArgumentError`."""
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ToolArgumentError(self.name, [ArgumentProblem(
                "*", f"arguments must be a JSON object of name -> value, got {type(args).__name__} {args!r:.80}")],
                self.expected())
        if self.model is not None:
            try:
                parsed = self.model.model_validate(dict(args))
            except pydantic.ValidationError as exc:
                raise ToolArgumentError(self.name, self._problems(exc), self.expected()) from None
            values = {name: getattr(parsed, name) for name in type(parsed).model_fields}
            if parsed.model_extra:
                values.update(parsed.model_extra)
            return values
        if self.schema_validator is not None:
            problems = []
            for error in sorted(self.schema_validator.iter_errors(dict(args)), key=lambda e: list(e.path)):
                if error.path:
                    problems.append(ArgumentProblem(str(error.path[0]), error.message))
                elif error.validator == "required":
                    missing = re.findall(r"'(\w+)' is a required property", error.message)
                    problems.append(ArgumentProblem(missing[0] if missing else "*", "missing (required)"))
                elif error.validator == "additionalProperties":
                    extra = re.findall(r"'(\w+)'", error.message)
                    problems.append(ArgumentProblem(extra[0] if extra else "*",
                                                    f"unexpected argument; {self.name!r} takes {self.expected()}"))
                else:
                    problems.append(ArgumentProblem("*", error.message))
            if problems:
                raise ToolArgumentError(self.name, problems, self.expected())
        return dict(args)

    def _problems(self, exc: pydantic.ValidationError) -> list[ArgumentProblem]:
        problems = []
        for error in exc.errors():
            loc = error.get("loc") or ("*",)
            argument = str(loc[0])
            where = "".join(f"[{part!r}]" for part in loc[1:])
            kind = error.get("type")
            if kind == "missing":
                problem = "missing (required)"
            elif kind == "extra_forbidden":
                problem = f"unexpected argument; {self.name!r} takes only {', '.join(self.arg_names) or 'none'}"
            else:
                problem = f"{error.get('msg', 'invalid')}{where}, got {error.get('input')!r:.80}"
            problems.append(ArgumentProblem(argument, problem))
        return problems

    # -- invocation

    def _timeout(self) -> tuple[float | None, bool]:
        """The seconds this attempt may take, and whether that is what is left of the context's
        :data:`tool_deadline` (the agent's budget) rather than the tool's own timeout."""
        deadline = tool_deadline.get()
        if deadline is None:
            return self.timeout, False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolTimeoutError(self.name, f"tool {self.name!r} was not started: the agent's wall-clock budget "
                                              "is spent", started=False, budget=True)
        if self.timeout is not None and self.timeout <= remaining:
            return self.timeout, False
        return remaining, True

    def _timeout_error(self, timeout: float, budget: bool, *, never_ran: str | None = None) -> ToolTimeoutError:
        limit = "what was left of the agent's wall-clock budget" if budget else "its timeout"
        if never_ran is not None:
            message = f"tool {self.name!r} did not start within {timeout:g}s ({limit}): {never_ran}; it never ran"
        else:
            message = (f"tool {self.name!r} did not finish within {timeout:g}s ({limit}); try simpler arguments or "
                       "another tool")
        with self._lock:
            hung = self.hung
        if hung:
            message += f" ({hung} earlier call(s) of it are still running after timing out)"
        return ToolTimeoutError(self.name, message, started=never_ran is None, budget=budget)

    def _fail(self, error: BaseException) -> ToolError:
        if isinstance(error, ToolError):
            return error
        return ToolExecutionError(self.name, f"tool {self.name!r} failed: {type(error).__name__}: {error}")

    def _after_failure(self, error: Exception, attempt: int) -> float:
        """Called with a failed attempt's error: the seconds to wait before the retry, or the call's error raised,
        after its one outcome was given to the breaker. A retried attempt is not an outcome (the
        breaker counts calls, not attempts), and neither is a timeout cut short by the agent's own budget."""
        if self.retry.should_retry(error, attempt):
            return self.retry.delay(error, attempt)
        if isinstance(error, ToolTimeoutError) and error.budget:
            self.breaker.neutral()
        else:
            self.breaker.failure()
        failure = self._fail(error)
        if failure is error:
            raise failure
        raise failure from error

    def _retry_timeout(self) -> tuple[float | None, bool]:
        try:
            return self._timeout()
        except ToolTimeoutError:  # the budget ran out between attempts: not the tool's fault
            self.breaker.neutral()
            raise

    def invoke(self, values: Mapping[str, Any]) -> Any:
        """Run validated ``values`` through breaker, concurrency limit, timeout and retries (synchronously)."""
        tracer = spans.TRACER
        if tracer is None:
            return self._invoke(values, None)
        with tracer.start(f"execute_tool {self.name}", attrs=self._span_attrs(tracer, values)) as span:
            return self._invoke(values, span)

    def _invoke(self, values: Mapping[str, Any], span: spans.Span | None) -> Any:
        timeout, budget = self._timeout()  # raises before the call when the agent's budget is spent (not a failure)
        self.breaker.before_call(self.name)
        attempt = 0
        while True:
            attempt += 1
            if span is not None:
                span.set("dspyo3.tool.attempts", attempt)
            try:
                result = self._attempt(values, timeout, budget)
            except Exception as exc:
                delay = self._after_failure(exc, attempt)
                if span is not None:
                    _retry_event(span, exc, attempt, delay)
                time.sleep(delay)
                timeout, budget = self._retry_timeout()
                continue
            except BaseException:
                self.breaker.neutral()
                raise
            self.breaker.success()
            return result

    async def ainvoke(self, values: Mapping[str, Any]) -> Any:
        """:meth:`invoke` on the event loop: async tools are awaited (and cancelled on timeout), sync tools run in
        a thread of their own so the loop keeps serving other agents."""
        tracer = spans.TRACER
        if tracer is None:
            return await self._ainvoke(values, None)
        with tracer.start(f"execute_tool {self.name}", attrs=self._span_attrs(tracer, values)) as span:
            return await self._ainvoke(values, span)

    async def _ainvoke(self, values: Mapping[str, Any], span: spans.Span | None) -> Any:
        timeout, budget = self._timeout()
        self.breaker.before_call(self.name)
        attempt = 0
        while True:
            attempt += 1
            if span is not None:
                span.set("dspyo3.tool.attempts", attempt)
            try:
                result = await self._aattempt(values, timeout, budget)
            except Exception as exc:
                delay = self._after_failure(exc, attempt)
                if span is not None:
                    _retry_event(span, exc, attempt, delay)
                await asyncio.sleep(delay)
                timeout, budget = self._retry_timeout()
                continue
            except BaseException:
                self.breaker.neutral()
                raise
            self.breaker.success()
            return result

    def _span_attrs(self, tracer: spans.Tracer, values: Mapping[str, Any]) -> dict[str, spans.AttrValue]:
        """The ``execute_tool`` span's attributes (the arguments only when the tracer captures content; the tracer
        masks them on export)."""
        attrs: dict[str, spans.AttrValue] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": self.name,
                                             "openinference.span.kind": "TOOL"}
        if self.timeout is not None:
            attrs["dspyo3.tool.timeout_s"] = float(self.timeout)
        if tracer.capture_content:
            try:
                attrs["gen_ai.tool.call.arguments"] = json.dumps(dict(values), default=str)
            except (TypeError, ValueError):
                pass
        return attrs

    def _begin_attempt(self) -> None:
        with self._lock:
            self.calls += 1

    def _check_hung(self) -> None:
        with self._lock:
            hung = self.hung
        if hung >= MAX_HUNG_CALLS:
            raise ToolTimeoutError(self.name, f"tool {self.name!r} was not started: {hung} hung calls of it are still "
                                              "running (abandoned after timing out); it is not responding, use "
                                              "another tool", started=False)

    def _thread(self, values: Mapping[str, Any], slots: ConcurrencySlots | None) -> concurrent.futures.Future[Any]:
        """The sync tool started in its own thread; the concurrency slot (if any) is held until the thread ends."""
        self._check_hung()
        future = _start_thread(self.name, lambda: self.func(**values))
        if slots is not None:
            future.add_done_callback(lambda _: slots.release())
        return future

    def _abandon(self, future: concurrent.futures.Future[Any], timeout: float, budget: bool) -> ToolTimeoutError:
        """The error for a timed-out threaded call; a call that did start is counted as hung until it ends."""
        if future.cancel():
            return self._timeout_error(timeout, budget, never_ran="its thread did not start in time")
        error = self._timeout_error(timeout, budget)
        with self._lock:
            self.hung += 1

        def ended(_: object) -> None:
            with self._lock:
                self.hung -= 1

        future.add_done_callback(ended)
        return error

    def _busy(self, slots: ConcurrencySlots) -> str:
        return f"all {slots.limit} of its concurrency slots stayed busy"

    def _attempt(self, values: Mapping[str, Any], timeout: float | None, budget: bool) -> Any:
        self._begin_attempt()
        ends = None if timeout is None else time.monotonic() + timeout
        slots = self._slots
        if slots is not None and not slots.acquire(timeout):
            raise self._timeout_error(cast(float, timeout), budget, never_ran=self._busy(slots))
        threaded = False
        try:
            if self.is_async:
                return self._async_from_sync(values, timeout, budget)
            if ends is None or timeout is None:
                return self.func(**values)
            future = self._thread(values, slots)
            threaded = True
            try:
                return future.result(timeout=max(0.0, ends - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise self._abandon(future, timeout, budget) from None
        finally:
            if slots is not None and not threaded:
                slots.release()

    def _async_from_sync(self, values: Mapping[str, Any], timeout: float | None, budget: bool) -> Any:
        """An async tool called from sync code: on a fresh event loop, or, for a loop-bound tool (an MCP session
        lives on the loop it was opened on), submitted to its loop running in another thread."""
        here = current_loop()
        if not self.loop_bound:
            if here is not None:
                raise ToolError(self.name, f"tool {self.name!r} is async and was called synchronously from a "
                                           "running event loop; use `await registry.acall(...)` there")
            return asyncio.run(self._bounded(self.func(**values), timeout, timeout, budget))
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running() or here is loop:
            why = ("its loop is unknown" if loop is None else "its loop is not running" if here is not loop
                   else "a sync call on the loop's own thread would block it")
            raise ToolError(self.name, f"MCP tool {self.name!r} is bound to an event loop ({why}): call it through "
                                       "agent.acall / registry.acall")
        future = asyncio.run_coroutine_threadsafe(self.func(**values), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._timeout_error(cast(float, timeout), budget) from None

    def _awaitable(self, values: Mapping[str, Any]) -> Awaitable[Any]:
        """The async tool's call, awaitable on the running loop (bridged to the tool's own loop if it is bound to
        another one that runs in another thread)."""
        loop = self.loop
        if not self.loop_bound or loop is None or loop is current_loop():
            return cast(Awaitable[Any], self.func(**values))
        if loop.is_closed() or not loop.is_running():
            raise ToolError(self.name, f"MCP tool {self.name!r} is bound to an event loop that is not running; "
                                       "call it through agent.acall / registry.acall on that loop")
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.func(**values), loop))

    async def _bounded(self, awaitable: Awaitable[Any], wait: float | None, timeout: float | None,
                       budget: bool) -> Any:
        if wait is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, wait)
        except asyncio.TimeoutError:
            raise self._timeout_error(cast(float, timeout), budget) from None

    async def _aattempt(self, values: Mapping[str, Any], timeout: float | None, budget: bool) -> Any:
        self._begin_attempt()
        ends = None if timeout is None else time.monotonic() + timeout
        slots = self._slots
        if slots is not None and not await slots.aacquire(timeout):
            raise self._timeout_error(cast(float, timeout), budget, never_ran=self._busy(slots))
        threaded = False
        try:
            wait = None if ends is None else max(0.0, ends - time.monotonic())
            if self.is_async:
                return await self._bounded(self._awaitable(values), wait, timeout, budget)
            # a thread of its own, not the loop's default pool: asyncio.run() waits for that one's threads at exit,
            # so a sync tool abandoned after a timeout would hold the caller up until it ends
            future = self._thread(values, slots)
            threaded = True
            try:
                return await self._bounded(asyncio.wrap_future(future), wait, timeout, budget)
            except ToolTimeoutError:
                raise self._abandon(future, cast(float, timeout), budget) from None
        finally:
            if slots is not None and not threaded:
                slots.release()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready listing entry (what ``dspyo3 agents tools list --json`` prints)."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "tags": sorted(self.tags),
            "enabled": self.enabled,
            "timeout": self.timeout,
            "max_concurrency": self.max_concurrency,
            "retries": self.retry.attempts - 1,
            "source": self.source,
            "circuit": self.breaker.state,
        }
