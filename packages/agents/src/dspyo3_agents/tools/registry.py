"""The tool registry: Python callables (sync or async) as agent tools, with a JSON Schema from type hints and
docstrings, arguments validated by Pydantic before the call, per-tool timeout, concurrency limit, retries and
circuit breaker, tag allow-lists, and conversion to ``dspy.Tool`` (and from ``dspy.Tool`` / MCP tools).

>>> registry = ToolRegistry()
>>> @registry.tool(tags=["math"])
... def add(a: int, b: int) -> int:
...     '''Add two integers.
...
...     Args:
...         a: the first addend.
...         b: the second addend.
...     '''
...     return a + b
>>> registry.call("add", {"a": 2, "b": "3"})
5

Tools tagged ``code``, ``files`` or ``network`` (:data:`RISKY_TAGS`) are registered *disabled*: calling one raises
:class:`ToolDisabledError` until it is enabled by name (``registry.enable("read_file")``, or
``DSPYO3_AGENTS_ENABLE_TOOLS=read_file`` for registries built with :meth:`ToolRegistry.from_plugins`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib
import inspect
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_type_hints, overload

import pydantic

from dspyo3_async import RetryPolicy

if TYPE_CHECKING:
    import dspy

    from dspyo3_agents.dspy_tool import RegistryTool

__all__ = [
    "RISKY_TAGS",
    "ArgumentProblem",
    "RegisteredTool",
    "RegistryTool",
    "ToolArgumentError",
    "ToolBreaker",
    "ToolCircuitOpenError",
    "ToolDisabledError",
    "ToolError",
    "ToolExecutionError",
    "ToolNotGrantedError",
    "ToolOptions",
    "ToolRegistry",
    "ToolTimeoutError",
    "UnknownToolError",
    "tool_deadline",
    "tool_options",
    "tool_retry",
]

RISKY_TAGS = frozenset({"code", "files", "network"})
"""Tags that mark a tool as running code, touching files or reaching the network: such tools start disabled."""

ENABLE_ENV = "DSPYO3_AGENTS_ENABLE_TOOLS"

tool_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dspyo3_tool_deadline", default=None)
"""A ``time.monotonic()`` deadline that caps every tool timeout in this context (an agent's wall-clock budget)."""

F = TypeVar("F", bound=Callable[..., Any])


# -- errors ------------------------------------------------------------------------------------------------------


class ToolError(RuntimeError):
    """Base class of every registry error; ``tool`` is the tool's name."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool


class UnknownToolError(ToolError, KeyError):
    """No tool of that name is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ToolNotGrantedError(ToolError):
    """The tool exists but this registry view (an agent's allow-list) was not granted it."""


class ToolDisabledError(ToolError):
    """The tool is registered disabled (it runs code, touches files or the network, or came from MCP)."""


@dataclass(frozen=True)
class ArgumentProblem:
    """One invalid argument: its name (``"*"`` for the arguments as a whole) and what is wrong with it."""

    argument: str
    problem: str


class ToolArgumentError(ToolError, ValueError):
    """The arguments do not match the tool's schema; the message names the tool, each argument and its problem.

    Attributes:
        argument: the first invalid argument's name.
        problem: what is wrong with it.
        problems: every invalid argument.
    """

    def __init__(self, tool: str, problems: Sequence[ArgumentProblem], expected: str) -> None:
        self.problems = list(problems)
        self.argument = self.problems[0].argument
        self.problem = self.problems[0].problem
        listed = "; ".join(f"argument {p.argument!r}: {p.problem}" for p in self.problems)
        super().__init__(tool, f"tool {tool!r}: {listed}. Expected arguments: {expected}")


class ToolTimeoutError(ToolError, TimeoutError):
    """The tool ran longer than its timeout, or could not start in time.

    Attributes:
        started: the tool began running (``False``: it never ran, e.g. its concurrency slots stayed busy).
        budget: the limit was what was left of the agent's wall-clock budget, not the tool's own timeout (such
            timeouts do not count against the tool's circuit breaker).
    """

    def __init__(self, tool: str, message: str, *, started: bool = True, budget: bool = False) -> None:
        super().__init__(tool, message)
        self.started, self.budget = started, budget


class ToolCircuitOpenError(ToolError):
    """The tool failed too often in a row; calls fail fast until its circuit's reset timeout has passed."""


class ToolExecutionError(ToolError):
    """The tool itself raised (after its retries); ``__cause__`` is the tool's exception."""


# -- policies ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RetryOn:
    """Which tool failures a :func:`tool_retry` policy retries (a ``RetryPolicy.retry_on`` predicate)."""

    types: tuple[type[BaseException], ...] = (Exception,)
    timeouts: bool = False

    def __call__(self, error: BaseException) -> bool:
        if isinstance(error, ToolTimeoutError):
            return self.timeouts
        return isinstance(error, self.types)


def tool_retry(retries: int = 0, *, backoff: float = 0.05, max_backoff: float = 2.0,
               retry_on: tuple[type[BaseException], ...] = (Exception,), retry_timeouts: bool = False,
               jitter: str = "full") -> RetryPolicy:
    """A ``dspyo3_async.RetryPolicy`` for a tool (what ``retry=`` takes; ``retry=2`` is ``tool_retry(2)``).

    ``RetryPolicy`` itself is reused for the attempt count and the (jittered, capped, exponential) backoff; only
    its default ``retry_on`` does not fit tools (it retries DSPy's retryable *LM* errors), so this builds one that
    retries the tool's own exceptions of ``retry_on`` types, and timeouts only if ``retry_timeouts``.

    Args:
        retries: extra attempts after the first (0: no retry).
        backoff: the first backoff ceiling in seconds; it doubles per attempt up to ``max_backoff``.
        max_backoff: the longest wait between attempts.
        retry_on: exception types that are retried (argument errors never are: they come before the call).
        retry_timeouts: also retry attempts that timed out.
        jitter: ``"full"`` or ``"none"`` (as for ``RetryPolicy``).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    return RetryPolicy(attempts=retries + 1, base_delay=backoff, max_delay=max_backoff, jitter=jitter,
                       retry_on=_RetryOn(tuple(retry_on), retry_timeouts))


def _retry_policy(retry: RetryPolicy | int | None) -> RetryPolicy:
    return tool_retry(retry) if isinstance(retry, int) else retry or tool_retry()


class ToolBreaker:
    """A circuit breaker for one tool: after ``failure_threshold`` failed calls in a row the circuit opens and
    calls fail fast with :class:`ToolCircuitOpenError`; after ``reset_timeout`` seconds one trial call goes
    through (half-open) and its outcome closes or re-opens the circuit. Argument errors do not count (they are
    the caller's fault, not the tool's). Thread-safe.
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 30.0) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False
        self._trial_at = 0.0
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        with self._lock:
            if self.opened_at is None:
                return "closed"
            return "half-open" if time.monotonic() - self.opened_at >= self.reset_timeout else "open"

    def before_call(self, tool: str) -> None:
        """Raise :class:`ToolCircuitOpenError` if the circuit is open (or its one trial call is in flight)."""
        with self._lock:
            if self.opened_at is None:
                return
            now = time.monotonic()
            waited = now - self.opened_at
            # one trial at a time; a trial that never reported back (cancelled) is replaced after reset_timeout
            if waited >= self.reset_timeout and (not self._trial or now - self._trial_at >= self.reset_timeout):
                self._trial, self._trial_at = True, now
                return
            why = f"it failed {self.failures} times in a row, so its circuit is open"
            if waited >= self.reset_timeout:
                when = f"{why}; a trial call is in progress; retry shortly"
            else:
                when = f"{why} for {self.reset_timeout - waited:.1f}s more"
            raise ToolCircuitOpenError(tool, f"tool {tool!r} is unavailable: {when}; use another tool or answer "
                                             "without it")

    def success(self) -> None:
        """Record a successful call: the circuit closes."""
        with self._lock:
            self.failures, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        """Record a failed call: the circuit opens at the threshold (or again after a failed trial)."""
        with self._lock:
            self.failures += 1
            if self._trial or self.failures >= self.failure_threshold:
                self.opened_at = time.monotonic()
                self._trial = False

    def neutral(self) -> None:
        """Record a call that says nothing about the tool's health (cut short by the caller's own budget,
        cancelled): counts nothing, but a trial call it was is over, so the next call may be the trial."""
        with self._lock:
            self._trial = False


class _Slots:
    """A per-tool concurrency limit usable from threads and from event loops alike."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {limit}")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def acquire(self, timeout: float | None) -> bool:
        return self._sem.acquire(timeout=timeout)

    async def aacquire(self, timeout: float | None) -> bool:
        pause = 0.0005
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._sem.acquire(blocking=False):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        return True

    def release(self) -> None:
        self._sem.release()


@dataclass(frozen=True)
class ToolOptions:
    """Registration options a plugin attaches to a tool function with :func:`tool_options` (the core
    ``ToolSpec`` carries only name, function and description)."""

    tags: tuple[str, ...] = ()
    timeout: float | None = None
    max_concurrency: int | None = None
    retry: RetryPolicy | int | None = None
    enabled: bool | None = None


def tool_options(*, tags: Iterable[str] = (), timeout: float | None = None, max_concurrency: int | None = None,
                 retry: RetryPolicy | int | None = None, enabled: bool | None = None) -> Callable[[F], F]:
    """Attach registry options to a tool function, for tools contributed through ``dspyo3_register_tools``::

        @tool_options(tags=["files"], timeout=5)
        def read_file(path: str) -> str: ...

        @hookimpl
        def dspyo3_register_tools(register):
            register(ToolSpec("read_file", read_file))
    """

    def mark(func: F) -> F:
        func.__dspyo3_tool__ = ToolOptions(tuple(tags), timeout, max_concurrency, retry, enabled)  # type: ignore[attr-defined]
        return func

    return mark


# -- schema ------------------------------------------------------------------------------------------------------

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_SECTION_HEADER = re.compile(r"^\s*(Returns?|Raises|Yields|Examples?|Notes?|Attributes)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (the docstring before its sections) and Google-style ``Args:`` descriptions."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section = "description"
    current: str | None = None
    indent = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            section, current, indent = "args", None, None
            continue
        if _SECTION_HEADER.match(line):
            section = "other"
            continue
        if section == "description":
            description.append(line)
        elif section == "args" and line.strip():
            line_indent = len(line) - len(line.lstrip())
            match = _ARG_LINE.match(line)
            if match and (indent is None or line_indent <= indent):
                indent = line_indent
                current = match.group(1)
                args[current] = match.group(2).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    text = "\n".join(description).strip()
    return text, args


def _describe_type(schema: Mapping[str, Any]) -> str:
    if "type" in schema:
        return str(schema["type"])
    if "anyOf" in schema:
        return " | ".join(_describe_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    return "any"


def _model_for(func: Callable[..., Any], name: str, arg_docs: Mapping[str, str]
               ) -> tuple[type[pydantic.BaseModel], bool]:
    """A Pydantic model of ``func``'s parameters (extra arguments forbidden unless it takes ``**kwargs``)."""
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else getattr(func, "__call__", func)  # noqa: B004
    signature = inspect.signature(target)
    try:
        hints = get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    fields: dict[str, Any] = {}
    var_kwargs = False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var_kwargs = True
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, pydantic.Field(default, description=arg_docs.get(param.name) or None))
    config = pydantic.ConfigDict(extra="allow" if var_kwargs else "forbid", arbitrary_types_allowed=True)
    safe = re.sub(r"\W", "_", name) or "tool"
    model = pydantic.create_model(f"{safe}_arguments", __config__=config, **fields)
    return model, var_kwargs


# -- registered tools --------------------------------------------------------------------------------------------

MAX_HUNG_CALLS = 32
"""Timed sync calls of one tool that were abandoned after their timeout and still run; while that many hang,
further calls of the tool fail fast instead of starting yet another thread."""


def _current_loop() -> asyncio.AbstractEventLoop | None:
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
    _slots: _Slots | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"tool {self.name!r}: timeout must be > 0 seconds or None, got {self.timeout!r}")
        if self.max_concurrency is not None:
            self._slots = _Slots(self.max_concurrency)

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
        return ", ".join(f"{n} ({_describe_type(s)}{'' if n in required else ', optional'})" for n, s in props.items())

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
        timeout, budget = self._timeout()  # raises before the call when the agent's budget is spent (not a failure)
        self.breaker.before_call(self.name)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._attempt(values, timeout, budget)
            except Exception as exc:
                time.sleep(self._after_failure(exc, attempt))
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
        timeout, budget = self._timeout()
        self.breaker.before_call(self.name)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._aattempt(values, timeout, budget)
            except Exception as exc:
                await asyncio.sleep(self._after_failure(exc, attempt))
                timeout, budget = self._retry_timeout()
                continue
            except BaseException:
                self.breaker.neutral()
                raise
            self.breaker.success()
            return result

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

    def _thread(self, values: Mapping[str, Any], slots: _Slots | None) -> concurrent.futures.Future[Any]:
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

    def _busy(self, slots: _Slots) -> str:
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
        here = _current_loop()
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
        if not self.loop_bound or loop is None or loop is _current_loop():
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


class _Dispatch:
    """The ``func`` of a :class:`RegistryTool`: calls go through the registry (validation, policies)."""

    def __init__(self, registry: ToolRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    def __call__(self, **kwargs: Any) -> Any:
        return self.registry.call(self.name, kwargs)

    async def acall(self, kwargs: Mapping[str, Any]) -> Any:
        return await self.registry.acall(self.name, kwargs)


# -- the registry ------------------------------------------------------------------------------------------------


class ToolRegistry:
    """Named tools with validated arguments and per-tool policies.

    Args:
        default_timeout: timeout for tools registered without one (``None``: no limit).
        failure_threshold: failed calls in a row that open a tool's circuit.
        reset_timeout: seconds an open circuit waits before one trial call.
    """

    def __init__(self, *, default_timeout: float | None = None, failure_threshold: int = 5,
                 reset_timeout: float = 30.0) -> None:
        self.default_timeout = default_timeout
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._tools: dict[str, RegisteredTool] = {}
        self._granted: frozenset[str] | None = None  # None: every tool (a root registry)
        self._root: ToolRegistry = self

    def __deepcopy__(self, memo: dict[int, Any]) -> ToolRegistry:
        """Copies of an agent (``module.deepcopy()``, optimizers) share the registry: its tools, breakers and
        concurrency limits are process-wide resources, not program state."""
        return self

    # -- registration

    @overload
    def register(self, func: F, *, name: str | None = ..., description: str | None = ...,
                 timeout: float | None = ..., tags: Iterable[str] = ..., max_concurrency: int | None = ...,
                 retry: RetryPolicy | int | None = ..., enabled: bool | None = ..., replace: bool = ...,
                 source: str = ...) -> RegisteredTool: ...

    @overload
    def register(self, func: None = ..., *, name: str | None = ..., description: str | None = ...,
                 timeout: float | None = ..., tags: Iterable[str] = ..., max_concurrency: int | None = ...,
                 retry: RetryPolicy | int | None = ..., enabled: bool | None = ..., replace: bool = ...,
                 source: str = ...) -> Callable[[F], F]: ...

    def register(self, func: Callable[..., Any] | None = None, *, name: str | None = None,
                 description: str | None = None, timeout: float | None = None, tags: Iterable[str] = (),
                 max_concurrency: int | None = None, retry: RetryPolicy | int | None = None,
                 enabled: bool | None = None, replace: bool = False, source: str = "in-process"
                 ) -> RegisteredTool | Callable[[F], F]:
        """Register ``func`` (sync or ``async def``) as a tool; without ``func``, return a decorator.

        Args:
            func: the callable. Its type hints give the JSON Schema and the Pydantic validation; its docstring
                gives the description (text before the sections) and argument descriptions (``Args:``).
            name: tool name (default: the function's ``__name__``).
            description: overrides the docstring's.
            timeout: seconds per attempt (default: the registry's ``default_timeout``).
            tags: labels for allow-lists; ``code`` / ``files`` / ``network`` make the tool start disabled.
            max_concurrency: calls in flight at once.
            retry: a ``dspyo3_async.RetryPolicy`` (build one with :func:`tool_retry`), or a number of retries.
            enabled: ``None`` (default): enabled unless a risky tag is present.
            replace: replace a tool of the same name instead of raising ``ValueError``.
            source: where the tool comes from (shown by ``dspyo3 agents tools list``).
        """
        if func is None:
            def decorate(f: F) -> F:
                self.register(f, name=name, description=description, timeout=timeout, tags=tags,
                              max_concurrency=max_concurrency, retry=retry, enabled=enabled, replace=replace,
                              source=source)
                return f

            return decorate
        if not callable(func):
            raise TypeError(f"register() needs a callable, got {type(func).__name__}")
        dspy_module = sys.modules.get("dspy")  # DSPy is imported only where a dspy.Tool can exist
        if dspy_module is not None and isinstance(func, dspy_module.Tool):
            return self.register_dspy_tool(func, name=name, timeout=timeout, tags=tags,
                                           max_concurrency=max_concurrency, retry=retry, enabled=enabled,
                                           replace=replace)
        tool_name = name or getattr(func, "__name__", None) or type(func).__name__
        doc_text, arg_docs = parse_docstring(inspect.getdoc(func))
        model, _ = _model_for(func, tool_name, arg_docs)
        parameters = _resolve_refs(model.model_json_schema())
        parameters.pop("title", None)
        for prop in parameters.get("properties", {}).values():
            prop.pop("title", None)
        parameters.setdefault("properties", {})
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004
        return self._add(RegisteredTool(
            name=tool_name, func=func, description=description or doc_text or tool_name, parameters=parameters,
            model=model, is_async=is_async, **self._policy(tool_name, timeout, tags, max_concurrency, retry,
                                                           enabled, source)), replace)

    def tool(self, *, name: str | None = None, description: str | None = None, timeout: float | None = None,
             tags: Iterable[str] = (), max_concurrency: int | None = None, retry: RetryPolicy | int | None = None,
             enabled: bool | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register` (returns the function unchanged)."""
        return self.register(name=name, description=description, timeout=timeout, tags=tags,
                             max_concurrency=max_concurrency, retry=retry, enabled=enabled)

    def register_dspy_tool(self, tool: dspy.Tool, *, name: str | None = None, timeout: float | None = None,
                           tags: Iterable[str] = (), max_concurrency: int | None = None,
                           retry: RetryPolicy | int | None = None, enabled: bool | None = None,
                           replace: bool = False, source: str = "dspy.Tool") -> RegisteredTool:
        """Register an existing ``dspy.Tool`` (e.g. from ``dspy.Tool.from_langchain``); its JSON Schema
        ``args`` validate the arguments."""
        jsonschema = importlib.import_module("jsonschema")  # untyped (no stubs in the env)
        args = dict(tool.args or {})
        parameters: dict[str, Any] = {"type": "object", "properties": args,
                      "required": [k for k, v in args.items() if "default" not in v]}
        if not tool.has_kwargs:
            parameters["additionalProperties"] = False
        func = tool.func
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004
        tool_name = name or str(tool.name)
        return self._add(RegisteredTool(
            name=tool_name, func=func, description=str(tool.desc or tool_name), parameters=parameters,
            schema_validator=jsonschema.Draft202012Validator(parameters), is_async=is_async,
            **self._policy(tool_name, timeout, tags, max_concurrency, retry, enabled, source)), replace)

    def register_mcp_tool(self, session: Any, tool: Any, *, name: str | None = None, tags: Iterable[str] = ("mcp",),
                          timeout: float | None = None, max_concurrency: int | None = None,
                          retry: RetryPolicy | int | None = None, enabled: bool = False,
                          replace: bool = False, loop: asyncio.AbstractEventLoop | None = None) -> RegisteredTool:
        """Register one MCP tool (an item of ``(await session.list_tools()).tools``) called through ``session``
        (an MCP ``ClientSession``: anything with ``async call_tool(name, arguments=...)``; ``pip install
        'dspyo3-agents[mcp]'``). The arguments are validated against the tool's ``inputSchema`` before the call.

        A ``ClientSession`` is bound to the event loop it was opened on (``loop``; default: the running one). Calls
        from coroutines on another loop, and sync calls from other threads, are submitted to that loop (which must
        keep running, e.g. in a background thread); a sync call on the loop's own thread, or when the loop is
        unknown or stopped, raises :class:`ToolError` (use ``agent.acall`` / ``registry.acall`` there). A call that
        times out is cancelled (the session stays usable).

        An MCP server can do anything, so MCP tools start disabled unless ``enabled=True``. The result is the
        structured content if the server sent some (a value the server wrapped as ``{"result": value}``, as
        ``MCPServer`` / ``FastMCP`` do for non-object return types, is unwrapped), else the content blocks as
        text (one string if there is one block; images, audio and resource links as a short placeholder). A result
        flagged ``isError`` raises :class:`ToolExecutionError` (an observation for the agent).
        """
        jsonschema = importlib.import_module("jsonschema")
        schema = dict(_field(tool, "input_schema", "inputSchema") or {"type": "object", "properties": {}})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        output_schema = _field(tool, "output_schema", "outputSchema")
        remote = str(tool.name)
        tool_name = name or remote

        async def call_mcp(**arguments: Any) -> Any:
            result = await session.call_tool(remote, arguments=arguments)
            return _mcp_result(tool_name, result, output_schema)

        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        return self._add(RegisteredTool(
            name=tool_name, func=call_mcp, description=str(getattr(tool, "description", None) or tool_name),
            parameters=schema, schema_validator=validator(schema), is_async=True,
            loop_bound=True, loop=loop or _current_loop(),
            **self._policy(tool_name, timeout, tags, max_concurrency, retry, enabled, "mcp")), replace)

    async def register_mcp_session(self, session: Any, **options: Any) -> list[RegisteredTool]:
        """Register every tool an MCP session lists (every page of ``tools/list``; ``options`` as for
        :meth:`register_mcp_tool`); they are bound to the running loop (the session's)."""
        options.setdefault("loop", asyncio.get_running_loop())
        return [self.register_mcp_tool(session, tool, **options) for tool in await _list_mcp_tools(session)]

    @classmethod
    def from_plugins(cls, manager: Any = None, *, enable: Iterable[str] = (), **options: Any) -> ToolRegistry:
        """A registry of every tool contributed through ``dspyo3_register_tools`` (options from
        :func:`tool_options` on the function), with the names in ``enable`` and in ``$DSPYO3_AGENTS_ENABLE_TOOLS``
        (comma-separated) enabled."""
        from dspyo3_core.plugins import get_plugin_manager

        pm = manager or get_plugin_manager()
        registry = cls(**options)
        specs = pm.registry("dspyo3_register_tools")
        for spec in specs:
            meta: ToolOptions = getattr(spec.func, "__dspyo3_tool__", None) or ToolOptions()
            registry.register(spec.func, name=spec.name, description=spec.description or None,
                              timeout=meta.timeout, tags=meta.tags, max_concurrency=meta.max_concurrency,
                              retry=meta.retry, enabled=meta.enabled, source=specs.distribution_of(spec.name))
        names = [*enable, *(n.strip() for n in os.environ.get(ENABLE_ENV, "").split(",") if n.strip())]
        if names:
            registry.enable(*names)
        return registry

    def _policy(self, name: str, timeout: float | None, tags: Iterable[str], max_concurrency: int | None,
                retry: RetryPolicy | int | None, enabled: bool | None, source: str) -> dict[str, Any]:
        if self._granted is not None:
            raise TypeError("register tools on the root registry, not on a granted view of it")
        tag_set = frozenset(tags)
        return {
            "tags": tag_set,
            "timeout": timeout if timeout is not None else self.default_timeout,
            "max_concurrency": max_concurrency,
            "retry": _retry_policy(retry),
            "enabled": (not tag_set & RISKY_TAGS) if enabled is None else enabled,
            "source": source,
            "breaker": ToolBreaker(self.failure_threshold, self.reset_timeout),
        }

    def _add(self, tool: RegisteredTool, replace: bool) -> RegisteredTool:
        if not re.fullmatch(r"[A-Za-z_][\w.-]*", tool.name):
            raise ValueError(f"tool name {tool.name!r} is not usable by an LM; use letters, digits, _ . -")
        if tool.name == "finish":
            raise ValueError("'finish' is reserved by ReAct for ending a run; give the tool another name")
        if tool.name in self._tools and not replace:
            raise ValueError(f"a tool named {tool.name!r} is already registered (from {self._tools[tool.name].source});"
                             " pass replace=True or another name")
        self._tools[tool.name] = tool
        return tool

    # -- lookup and allow-lists

    def enable(self, *names: str) -> None:
        """Enable tools by name (risky and MCP tools start disabled)."""
        for name in names:
            self._lookup(name).enabled = True

    def disable(self, *names: str) -> None:
        """Disable tools by name."""
        for name in names:
            self._lookup(name).enabled = False

    def granted(self, names: Iterable[str] | None = None, tags: Iterable[str] | None = None) -> ToolRegistry:
        """A view that only sees the tools named in ``names`` plus those carrying one of ``tags`` (both ``None``:
        every tool this registry sees). Views share the tools (their breakers, limits and counters)."""
        visible = [t for t in self._root._tools.values() if self._sees(t.name)]
        if names is None and tags is None:
            chosen = {t.name for t in visible}
        else:
            wanted, tag_set = set(names or ()), set(tags or ())
            unknown = wanted - {t.name for t in visible}
            if unknown:
                raise UnknownToolError(sorted(unknown)[0], f"cannot grant unknown tool(s) {sorted(unknown)}; known: "
                                                           f"{', '.join(t.name for t in visible) or 'none'}")
            chosen = {t.name for t in visible if t.name in wanted or t.tags & tag_set}
        view = ToolRegistry.__new__(ToolRegistry)
        view.__dict__.update(self.__dict__)
        view._granted = frozenset(chosen)
        return view

    def _sees(self, name: str) -> bool:
        return self._granted is None or name in self._granted

    def _lookup(self, name: str) -> RegisteredTool:
        tool = self._root._tools.get(name)
        if tool is None:
            known = ", ".join(n for n in sorted(self._root._tools) if self._sees(n)) or "none"
            raise UnknownToolError(name, f"unknown tool {name!r}; known: {known}")
        return tool

    def get(self, name: str) -> RegisteredTool:
        """The tool called ``name``, checked usable: unknown, not granted and disabled tools raise."""
        tool = self._lookup(name)
        if not self._sees(name):
            granted = ", ".join(sorted(self._granted or ())) or "none"
            raise ToolNotGrantedError(name, f"tool {name!r} is not granted to this agent (granted: {granted}); add "
                                            "it to the agent's tools=[...] or tags=[...]")
        if not tool.enabled:
            risky = sorted(tool.tags & RISKY_TAGS)
            why = (f"it is tagged {', '.join(risky)}" if risky else f"tools from {tool.source} start disabled"
                   if tool.source == "mcp" else "it was disabled")
            raise ToolDisabledError(name, f"tool {name!r} is disabled ({why}); enable it with "
                                          f"registry.enable({name!r}) or {ENABLE_ENV}={name}")
        return tool

    def tools(self, *, include_disabled: bool = False) -> list[RegisteredTool]:
        """The tools this registry (view) sees, sorted by name."""
        return [t for n, t in sorted(self._root._tools.items())
                if self._sees(n) and (include_disabled or t.enabled)]

    def names(self, *, include_disabled: bool = False) -> list[str]:
        """Names of :meth:`tools`."""
        return [t.name for t in self.tools(include_disabled=include_disabled)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._root._tools and self._sees(name)

    def __len__(self) -> int:
        return len(self.tools())

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter(self.tools())

    # -- calling

    def call(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Validate ``args`` and call tool ``name`` with its timeout, concurrency limit, retries and breaker.

        Raises:
            UnknownToolError, ToolNotGrantedError, ToolDisabledError: the tool cannot be called here.
            ToolArgumentError: an argument is missing, unexpected or of the wrong type (named in the message).
            ToolTimeoutError, ToolCircuitOpenError, ToolExecutionError: the call failed.
        """
        tool = self.get(name)
        return tool.invoke(tool.validate(args))

    async def acall(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """:meth:`call` on the event loop (async tools awaited and cancelled on timeout; sync ones in a thread)."""
        tool = self.get(name)
        return await tool.ainvoke(tool.validate(args))

    # -- DSPy

    def to_dspy_tool(self, name: str) -> RegistryTool:
        """Tool ``name`` as a ``dspy.Tool`` that calls through this registry."""
        from dspyo3_agents.dspy_tool import RegistryTool

        tool = self.get(name)
        args = {k: dict(v) for k, v in tool.parameters.get("properties", {}).items()}
        return RegistryTool(func=_Dispatch(self, name), name=name, desc=tool.description, args=args,
                            arg_types=dict.fromkeys(args, Any),
                            arg_desc={k: v["description"] for k, v in args.items() if "description" in v})

    def to_dspy_tools(self) -> list[RegistryTool]:
        """Every enabled tool this registry (view) sees, as ``dspy.Tool`` objects (for ``dspy.ReAct``)."""
        return [self.to_dspy_tool(t.name) for t in self.tools()]


def _resolve_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref``s into ``$defs`` (LMs read flat schemas better)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = defs.get(str(node["$ref"]).rsplit("/", 1)[-1])
                if target is not None:
                    return walk({**target, **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    resolved: dict[str, Any] = walk(schema)
    return resolved


def _field(obj: Any, snake: str, camel: str) -> Any:
    for attr in (snake, camel):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    if isinstance(obj, Mapping):
        return obj.get(snake, obj.get(camel))
    return None


async def _list_mcp_tools(session: Any) -> list[Any]:
    """Every tool of every page of ``session.list_tools()`` (the mcp SDK's takes
    ``params=PaginatedRequestParams(cursor=...)``; a session object whose ``list_tools`` takes ``cursor=`` is paged
    that way)."""
    tools: list[Any] = []
    listing = await session.list_tools()
    seen: set[str] = set()
    while True:
        tools.extend(listing.tools)
        cursor = _field(listing, "next_cursor", "nextCursor")
        if not cursor or cursor in seen:  # a server repeating a cursor would loop forever
            return tools
        seen.add(cursor)
        if "params" in inspect.signature(session.list_tools).parameters:
            types = importlib.import_module("mcp.types")
            listing = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
        else:
            listing = await session.list_tools(cursor=cursor)


def _mcp_block(block: Any) -> str:
    """One content block of an MCP result as text for the agent."""
    kind = str(_field(block, "type", "type") or "")
    text = _field(block, "text", "text")
    if text is not None:
        return str(text)
    if kind == "resource":  # embedded: the text of a text resource, else a placeholder
        resource = _field(block, "resource", "resource")
        inner = _field(resource, "text", "text")
        if inner is not None:
            return str(inner)
        return f"[embedded resource {_field(resource, 'uri', 'uri')}]"
    if kind == "resource_link":
        return f"[resource {_field(block, 'uri', 'uri')}]"
    data = _field(block, "data", "data")
    mime = _field(block, "mime_type", "mimeType") or "?"
    size = f", {len(data) * 3 // 4} bytes" if isinstance(data, str) else ""
    return f"[{kind or 'binary'} content ({mime}{size})]"


def _is_result_wrapper(output_schema: Any) -> bool:
    """The output schema ``MCPServer`` / ``FastMCP`` make for a non-object return: ``{"result": ...}`` only."""
    if not isinstance(output_schema, Mapping):
        return False
    return set(output_schema.get("properties") or {}) == {"result"} and list(output_schema.get("required") or []) \
        == ["result"]


def _mcp_result(tool: str, result: Any, output_schema: Any = None) -> Any:
    """A ``CallToolResult`` as the tool's return value (see :meth:`ToolRegistry.register_mcp_tool`)."""
    blocks = [_mcp_block(c) for c in _field(result, "content", "content") or []]
    text: Any = blocks[0] if len(blocks) == 1 else blocks
    if _field(result, "is_error", "isError"):
        raise RuntimeError(f"MCP tool {tool!r} reported an error: {'; '.join(blocks) or 'no details'}")
    structured = _field(result, "structured_content", "structuredContent")
    if structured is None:
        return text
    if _is_result_wrapper(output_schema) and isinstance(structured, Mapping) and set(structured) == {"result"}:
        return structured["result"]
    return structured


def __getattr__(name: str) -> Any:
    """``RegistryTool`` lives with DSPy in :mod:`dspyo3_agents.dspy_tool` (imported on first use, so listing and
    calling tools does not import DSPy)."""
    if name == "RegistryTool":
        from dspyo3_agents.dspy_tool import RegistryTool

        return RegistryTool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
