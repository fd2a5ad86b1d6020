"""A ReAct agent on ``dspy.ReAct`` over registry tools, with a step budget, a wall-clock budget, tool errors fed
back as observations, per-tool circuit breaking (from the registry), state saved after every step (so a run
killed mid-way resumes where it stopped, in another process) and a JSONL trajectory.

It subclasses ``dspy.ReAct`` and keeps its signatures, prompts, predictors (``react``, ``extract``: optimizers
see and tune them as usual), trajectory formatting and truncation. It replaces ``forward`` / ``aforward``
because DSPy's loop has no place to start from a saved trajectory, to stop on a deadline, to persist or log each
step, or to keep going when the LM's answer cannot be parsed (DSPy ends the run there; here the parse error is
fed back as an observation and costs one step of the budget). Its LM calls truncate the trajectory on
context-window errors as DSPy's do, and the cut lasts (``RunState.dropped``, saved with the run): later steps are
not sent the dropped ones again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError, ContextWindowExceededError
from dspy.utils.usage_tracker import UsageTracker, track_usage

from dspyo3_agents.state import AgentState, StateStore, open_store
from dspyo3_agents.tools import ToolError, ToolRegistry, tool_deadline
from dspyo3_agents.trajectory import Step, TrajectoryLog, jsonable
from dspyo3_core import spans

__all__ = ["ReActAgent", "RunState"]

logger = logging.getLogger("dspyo3.agents")

_TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _tokens(tracker: UsageTracker) -> dict[str, int]:
    totals = dict.fromkeys(_TOKEN_KEYS, 0)
    for usage in tracker.get_total_tokens().values():
        for key in _TOKEN_KEYS:
            value = usage.get(key)
            if isinstance(value, (int, float)):
                totals[key] += int(value)
    return totals if any(totals.values()) else {}


@dataclass
class RunState:
    """What is persisted about one run (under ``<agent name>:run:<run id>`` in the state store)."""

    run_id: str
    inputs: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    status: str = "running"
    stopped: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    tokens: dict[str, int] = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    dropped: int = 0
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"run_id": self.run_id, "inputs": jsonable(self.inputs), "steps": [s.to_dict() for s in self.steps],
                "status": self.status, "stopped": self.stopped, "outputs": jsonable(self.outputs),
                "elapsed": self.elapsed, "tokens": self.tokens, "pending": jsonable(self.pending),
                "dropped": self.dropped}

    @classmethod
    def from_state(cls, state: AgentState) -> RunState:
        """Rebuild from a stored :class:`AgentState`."""
        data = state.data
        return cls(run_id=str(data["run_id"]), inputs=dict(data.get("inputs") or {}),
                   steps=[Step.from_dict(s) for s in data.get("steps") or []], status=str(data.get("status")),
                   stopped=data.get("stopped"), outputs=dict(data.get("outputs") or {}),
                   elapsed=float(data.get("elapsed", 0.0)), tokens=dict(data.get("tokens") or {}),
                   pending=data.get("pending"), dropped=int(data.get("dropped", 0)), version=state.version)

    def trajectory(self) -> dict[str, Any]:
        """The steps the LM is shown, in ``dspy.ReAct``'s trajectory form (``thought_0``, ``tool_name_0``, ...):
        all but the ``dropped`` oldest, which were cut to fit the context window (``steps`` keeps them all)."""
        out: dict[str, Any] = {}
        for step in self.steps[self.dropped:]:
            i = step.index
            out[f"thought_{i}"] = step.thought
            out[f"tool_name_{i}"] = step.tool if step.tool is not None else "(unparseable answer)"
            out[f"tool_args_{i}"] = step.args
            out[f"observation_{i}"] = step.observation
        return out

    def add_tokens(self, tokens: Mapping[str, int]) -> None:
        for key, value in tokens.items():
            self.tokens[key] = self.tokens.get(key, 0) + value


class ReActAgent(dspy.ReAct):  # type: ignore[misc]  # dspy is untyped (Any)
    """A ``dspy.ReAct`` agent whose tools come from a :class:`~dspyo3_agents.ToolRegistry`.

    Args:
        signature: the task, as for ``dspy.ReAct`` (``"question -> answer"`` or a Signature class).
        registry: where the tools come from (default: every tool contributed by installed plugins).
        tools: names of the tools this agent is granted; ``tags``: grant every tool with one of these tags.
            Neither: every enabled tool of the registry. Disabled tools are never shown to the LM.
        max_steps: most ReAct steps per run (tool calls, ``finish`` included); a call may pass ``max_steps=``.
        max_seconds: wall-clock budget per run (time spent in earlier, interrupted attempts of a resumed run
            counts). Checked before every step; tool timeouts are capped by what is left; on the async path the
            LM call is cancelled when the budget runs out. When it is spent the agent answers from what it has.
        store: a :class:`~dspyo3_agents.StateStore` (or a URL for :func:`~dspyo3_agents.open_store`) where each
            run is saved after every step; calling again with the same ``run_id`` resumes it.
        trajectory: a JSONL file (or :class:`~dspyo3_agents.TrajectoryLog`) every step is appended to.
        name: the agent's name (state keys and trajectory events carry it).

    Call it like any DSPy module: ``agent(question=..., run_id="optional")``. The prediction has the signature's
    outputs plus ``trajectory`` (DSPy's form), ``steps`` (:class:`~dspyo3_agents.Step` list), ``run_id``,
    ``stopped`` (``"finish"``, ``"max_steps"``, ``"max_seconds"`` or ``"context_window"``) and ``tokens``.
    """

    def __init__(self, signature: Any, registry: ToolRegistry | None = None, *, tools: Sequence[str] | None = None,
                 tags: Sequence[str] | None = None, max_steps: int = 10, max_seconds: float | None = None,
                 store: StateStore | str | None = None, trajectory: TrajectoryLog | str | Path | None = None,
                 name: str = "agent") -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        base = registry if registry is not None else ToolRegistry.from_plugins()
        self.registry = base.granted(names=tools, tags=tags) if (tools is not None or tags is not None) else base
        super().__init__(signature, tools=list(self.registry.to_dspy_tools()), max_iters=max_steps)
        self.max_seconds = max_seconds
        self.store = open_store(store) if isinstance(store, str) else store
        self.log = trajectory if isinstance(trajectory, TrajectoryLog) or trajectory is None else TrajectoryLog(
            trajectory)
        self.name = name

    # -- runs

    def _key(self, run_id: str) -> str:
        return f"{self.name}:run:{run_id}"

    def _begin(self, run_id: str | None, inputs: dict[str, Any]) -> RunState:
        if run_id is not None and self.store is not None:
            stored = self.store.load(self._key(run_id))
            if stored.version:
                run = RunState.from_state(stored)
                if inputs and jsonable(inputs) != run.inputs:
                    raise ValueError(f"run {run_id!r} was started with inputs {run.inputs!r:.200}, not {inputs!r:.200};"
                                     " resume it with the same inputs (or none: agent.resume(run_id)) or use a new "
                                     "run_id")
                if run.status == "running" and self.log is not None:
                    pending = run.pending or {}
                    self.log.write("resume", run_id, agent=self.name, from_step=len(run.steps),
                                   pending_tool=pending.get("tool"), pending_args=pending.get("args"))
                return run
        run = RunState(run_id or uuid.uuid4().hex[:16], dict(inputs))
        for key in self.signature.input_fields:
            if key not in inputs:
                raise TypeError(f"{self.name}: missing input field {key!r} (the signature takes "
                                f"{', '.join(self.signature.input_fields)})")
        self._save(run)  # saved, then logged: the log never shows what the store does not hold
        if self.log is not None:
            self.log.write("start", run.run_id, agent=self.name, inputs=inputs)
        return run

    def _save(self, run: RunState) -> None:
        if self.store is not None:
            saved = self.store.save(AgentState(self._key(run.run_id), run.to_dict(), run.version))
            run.version = saved.version

    def resume(self, run_id: str, **options: Any) -> dspy.Prediction:
        """Continue the saved run ``run_id`` with its saved inputs (after a crash, in any process).

        Steps already saved are not repeated, but a tool that was running when the process died is called again
        (at-least-once tool execution): its step was never saved. Make tools idempotent, or give them an
        idempotency key (e.g. derived from the run id and step), if a repeat would do harm. The ``resume``
        trajectory event names such a tool (``pending_tool``, ``pending_args``)."""
        if self.store is None:
            raise ValueError("resume() needs the agent to have a state store (store=...)")
        stored = self.store.load(self._key(run_id))
        if not stored.version:
            known = ", ".join(k.split(":run:", 1)[1] for k in self.store.keys(f"{self.name}:run:")) or "none"
            raise KeyError(f"no saved run {run_id!r} for agent {self.name!r}; saved runs: {known}")
        result: dspy.Prediction = self(run_id=run_id, **stored.data["inputs"], **options)
        return result

    # -- LM calls, with DSPy's context-window truncation made to last

    def _truncate(self, run: RunState, trajectory: dict[str, Any], err: ContextWindowExceededError) -> None:
        """Cut the trajectory after ``err`` with ``self.truncate_trajectory`` (DSPy's: drop the oldest step; it
        raises when one step is left) and remember the cut in ``run.dropped`` (saved with the run), so later
        calls start from the shortened trajectory as in ``dspy.ReAct`` instead of overflowing again."""
        logger.warning("%s run %s: the trajectory exceeded the context window; dropping its oldest step",
                       self.name, run.run_id)
        kept = self.truncate_trajectory(trajectory)
        shown = run.steps[run.dropped:]
        gone = next((n for n, step in enumerate(shown) if f"thought_{step.index}" in kept), len(shown))
        if gone == 0:  # a truncate_trajectory override that cut nothing: retrying would overflow again
            raise err
        run.dropped += gone

    def _call_lm(self, module: Any, run: RunState, inputs: dict[str, Any]) -> Any:
        """``module`` on the run's trajectory, truncated (at most 3 times) on context-window errors, as
        ``dspy.ReAct._call_with_potential_trajectory_truncation`` does; the truncation lasts for the run."""
        for _ in range(3):
            trajectory = run.trajectory()
            try:
                return module(**inputs, trajectory=self._format_trajectory(trajectory))
            except ContextWindowExceededError as err:
                self._truncate(run, trajectory, err)
        raise ContextWindowExceededError(message="The context window was exceeded even after 3 attempts to truncate "
                                                 "the trajectory.")

    async def _acall_lm(self, module: Any, run: RunState, inputs: dict[str, Any]) -> Any:
        """:meth:`_call_lm` on the async path."""
        for _ in range(3):
            trajectory = run.trajectory()
            try:
                return await module.acall(**inputs, trajectory=self._format_trajectory(trajectory))
            except ContextWindowExceededError as err:
                self._truncate(run, trajectory, err)
        raise ContextWindowExceededError(message="The context window was exceeded even after 3 attempts to truncate "
                                                 "the trajectory.")

    def _prediction(self, run: RunState) -> dspy.Prediction:
        return dspy.Prediction(trajectory=run.trajectory(), steps=list(run.steps), run_id=run.run_id,
                               stopped=run.stopped, tokens=dict(run.tokens), **run.outputs)

    # -- one step, shared by the sync and async loops (only the LM, tool and store calls differ)

    def _open(self, input_args: dict[str, Any]) -> tuple[str | None, int]:
        run_id = input_args.pop("run_id", None)
        return run_id, int(input_args.pop("max_steps", input_args.pop("max_iters", self.max_iters)))

    def _stop(self, run: RunState, max_steps: int, deadline: float | None) -> bool:
        """Whether the run is over before its next step (``run.stopped`` says why)."""
        if run.stopped is None and len(run.steps) >= max_steps:
            run.stopped = "max_steps"
        elif run.stopped is None and deadline is not None and time.monotonic() >= deadline:
            run.stopped = "max_seconds"
        return run.stopped is not None

    def _record(self, run: RunState, pred: Any, error: Exception | None, started: float,
                tokens: dict[str, int]) -> Step:
        if pred is None:
            names = ", ".join(self.tools)
            observation = (f"Your last answer could not be used ({type(error).__name__}: {str(error)[:300]}). Answer "
                           f"again with next_thought, next_tool_name (one of: {names}) and next_tool_args as a "
                           "JSON object.")
            return Step(len(run.steps), "", None, {}, observation, True, started, 0.0, 0.0, tokens)
        args = pred.next_tool_args if isinstance(pred.next_tool_args, dict) else {"*": pred.next_tool_args}
        return Step(len(run.steps), str(pred.next_thought), str(pred.next_tool_name), args, None, False, started, 0.0,
                    0.0, tokens)

    def _tool_for(self, run: RunState, step: Step) -> Any:
        """The ``dspy.Tool`` the step calls, or ``None`` when there is nothing to call (``finish``, an unparseable
        answer, an unknown tool: the step's observation is set). Before a call, the run is marked *pending* with
        the tool and its arguments (saved by the caller), so a resume after a crash can say what was re-run."""
        if step.tool is None:
            return None
        if step.tool == "finish":
            step.observation = "Completed."
            run.stopped = "finish"
            return None
        tool = self.tools.get(step.tool)
        if tool is None:
            self._observe(step, None, ToolError(step.tool, f"unknown tool {step.tool!r}; use one of "
                                                           f"{', '.join(self.tools)}"))
            return None
        run.pending = {"step": step.index, "tool": step.tool, "args": step.args, "started": time.time()}
        return tool

    def _observe(self, step: Step, result: Any, error: BaseException | None) -> None:
        if error is None:
            step.observation = result
            return
        step.error = True
        if isinstance(error, ToolError):
            step.observation = f"Error: {error}"
        else:
            step.observation = f"Execution error in {step.tool}: {type(error).__name__}: {error}"

    def _add_step(self, run: RunState, step: Step, t0: float, began: float) -> None:
        step.duration = time.perf_counter() - t0
        run.steps.append(step)
        run.add_tokens(step.tokens)
        run.pending = None
        run.elapsed = time.monotonic() - began

    def _log_step(self, run: RunState, step: Step) -> None:
        """Log a step once the store holds it (a crash or a conflict in between loses no logged step)."""
        if self.log is not None:
            self.log.write("step", run.run_id, agent=self.name, **step.to_dict())

    def _complete(self, run: RunState, extract: Any, tokens: dict[str, int], elapsed: float) -> dspy.Prediction:
        run.add_tokens(tokens)
        run.outputs = {k: extract[k] for k in self.signature.output_fields if k in extract}
        run.status = "done"
        run.elapsed = elapsed
        self._save(run)
        if self.log is not None:
            self.log.write("finish", run.run_id, agent=self.name, outputs=run.outputs, stopped=run.stopped,
                           steps=len(run.steps), seconds=run.elapsed, tokens=run.tokens)
        return self._prediction(run)

    @contextlib.contextmanager
    def _deadline(self, run: RunState) -> Iterator[float | None]:
        if self.max_seconds is None:
            yield None
            return
        deadline = time.monotonic() + self.max_seconds - run.elapsed
        token = tool_deadline.set(deadline)
        try:
            yield deadline
        finally:
            tool_deadline.reset(token)

    # -- the loop: one generator of effects, driven by forward (sync) and aforward (async)

    def _loop(self, run: RunState, max_steps: int, deadline: float | None, began: float
              ) -> Generator[tuple[str, Any], Any, None]:
        """The ReAct loop without I/O: it yields ``("lm", None)`` (answer: the react prediction), ``("tool",
        (tool, args))`` (answer: its result) and ``("save", None)``; a driver performs each and sends the result
        back, or throws the error in. Only the drivers differ between sync and async."""
        while not self._stop(run, max_steps, deadline):
            started, t0 = time.time(), time.perf_counter()
            pred, error = None, None
            with track_usage() as tracker:
                try:
                    pred = yield "lm", None
                except asyncio.TimeoutError:  # the async driver's LM call ran out of budget
                    run.stopped = "max_seconds"
                    break
                except ContextWindowExceededError as exc:
                    logger.warning("%s run %s: ending the trajectory: %s", self.name, run.run_id, exc)
                    run.stopped = "context_window"
                    break
                except AdapterParseError as exc:  # only unparseable answers; setup errors propagate
                    error = exc
            step = self._record(run, pred, error, started, _tokens(tracker))
            tool = self._tool_for(run, step)
            if tool is not None:
                yield "save", None  # the pending marker
                t1 = time.perf_counter()
                try:
                    self._observe(step, (yield "tool", (tool, step.args)), None)
                except Exception as exc:
                    self._observe(step, None, exc)
                step.tool_seconds = time.perf_counter() - t1
            self._add_step(run, step, t0, began)
            yield "save", None  # saved, then logged: the log never shows a step the store does not hold
            self._log_step(run, step)

    @contextlib.contextmanager
    def _effects(self, run: RunState, max_steps: int) -> Iterator[_Effects]:
        """The run's loop as effects to perform, under its wall-clock deadline."""
        began = time.monotonic() - run.elapsed
        with self._deadline(run) as deadline, contextlib.closing(self._loop(run, max_steps, deadline, began)) as loop:
            yield _Effects(loop, deadline, began)

    def forward(self, **input_args: Any) -> dspy.Prediction:
        tracer = spans.TRACER
        if tracer is None:
            return self._forward(input_args)
        with tracer.start(f"invoke_agent {self.name}", attrs=self._span_attrs(input_args)) as span:
            prediction = self._forward(input_args)
            _span_result(span, prediction)
            return prediction

    async def aforward(self, **input_args: Any) -> dspy.Prediction:
        tracer = spans.TRACER
        if tracer is None:
            return await self._aforward(input_args)
        with tracer.start(f"invoke_agent {self.name}", attrs=self._span_attrs(input_args)) as span:
            prediction = await self._aforward(input_args)
            _span_result(span, prediction)
            return prediction

    def _span_attrs(self, input_args: Mapping[str, Any]) -> dict[str, spans.AttrValue]:
        """The ``invoke_agent`` span's attributes known before the run (a resumed run's id among them)."""
        attrs: dict[str, spans.AttrValue] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.name,
                                             "openinference.span.kind": "AGENT"}
        run_id = input_args.get("run_id")
        if isinstance(run_id, str):
            attrs["dspyo3.agent.run_id"] = run_id
        return attrs

    def _forward(self, input_args: dict[str, Any]) -> dspy.Prediction:
        run_id, max_steps = self._open(input_args)
        run = self._begin(run_id, input_args)
        if run.status == "done":
            return self._prediction(run)
        inputs = input_args or dict(run.inputs)
        with self._effects(run, max_steps) as effects:
            for kind, arg in effects:
                try:
                    if kind == "lm":
                        effects.reply = self._call_lm(self.react, run, inputs)
                    elif kind == "tool":
                        effects.reply = arg[0](**arg[1])
                    else:
                        self._save(run)
                except Exception as exc:
                    effects.error = exc
        with track_usage() as tracker:
            extract = self._call_lm(self.extract, run, inputs)
        return self._complete(run, extract, _tokens(tracker), time.monotonic() - effects.began)

    async def _aforward(self, input_args: dict[str, Any]) -> dspy.Prediction:
        run_id, max_steps = self._open(input_args)
        run = await asyncio.to_thread(self._begin, run_id, input_args)  # store I/O off the event loop
        if run.status == "done":
            return self._prediction(run)
        inputs = input_args or dict(run.inputs)
        with self._effects(run, max_steps) as effects:
            for kind, arg in effects:
                try:
                    if kind == "lm":
                        effects.reply = await asyncio.wait_for(self._acall_lm(self.react, run, inputs),
                                                               effects.time_left())
                    elif kind == "tool":
                        effects.reply = await arg[0].acall(**arg[1])
                    elif self.store is not None:
                        await asyncio.to_thread(self._save, run)
                except Exception as exc:
                    effects.error = exc
        with track_usage() as tracker:
            extract = await self._acall_lm(self.extract, run, inputs)
        return await asyncio.to_thread(self._complete, run, extract, _tokens(tracker),
                                       time.monotonic() - effects.began)


def _span_result(span: spans.Span, prediction: Any) -> None:
    """What an ``invoke_agent`` span learns from the run's prediction: its id, steps and why it stopped."""
    run_id = getattr(prediction, "run_id", None)
    if isinstance(run_id, str):
        span.set("dspyo3.agent.run_id", run_id)
    steps = getattr(prediction, "steps", None)
    if isinstance(steps, list):
        span.set("dspyo3.agent.steps", len(steps))
    stopped = getattr(prediction, "stopped", None)
    if isinstance(stopped, str):
        span.set("dspyo3.agent.stopped", stopped)


class _Effects:
    """Iterates over the effects a :meth:`ReActAgent._loop` asks for; the driver sets ``reply`` (the result) or
    ``error`` before the next one, and the loop gets it."""

    def __init__(self, loop: Generator[tuple[str, Any], Any, None], deadline: float | None, began: float) -> None:
        self.loop, self.deadline, self.began = loop, deadline, began
        self.reply: Any = None
        self.error: Exception | None = None

    def __iter__(self) -> _Effects:
        return self

    def __next__(self) -> tuple[str, Any]:
        reply, error, self.reply, self.error = self.reply, self.error, None, None
        return self.loop.throw(error) if error is not None else self.loop.send(reply)

    def time_left(self) -> float | None:
        """Seconds left of the wall-clock budget (``None``: no budget)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
