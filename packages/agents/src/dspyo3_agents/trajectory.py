"""Agent trajectories as JSONL: one JSON object per line, appended as the run goes.

Events (``event`` field): ``start`` (run id, agent, inputs), ``step`` (step number, thought, tool, args,
observation, whether the observation is an error, started/duration seconds, tokens), ``finish`` (outputs, why
the run stopped, steps, total seconds and tokens). A run resumed after a crash appends to the same file, so its
steps continue where the last saved one ended. ``dspyo3 agents trace FILE`` shows a file as a table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from dspyo3_core.files import append_jsonl, read_jsonl

__all__ = ["Step", "TrajectoryLog", "jsonable", "read_trajectory"]


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data (Pydantic models, dataclasses, sets, ...); anything else as ``str``."""
    return to_jsonable_python(value, fallback=str)


@dataclass
class Step:
    """One ReAct step.

    Attributes:
        index: step number in the run (0-based).
        thought: the LM's ``next_thought``.
        tool: the tool it chose (``"finish"`` to end, ``None`` when its answer could not be parsed).
        args: the arguments it gave.
        observation: what the tool returned, or the error fed back to the LM.
        error: the observation is an error (bad arguments, timeout, open circuit, tool failure, unparseable answer).
        started: Unix time the step started.
        duration: seconds for the whole step (LM call and tool call).
        tool_seconds: seconds in the tool call.
        tokens: token usage of the step's LM call(s) (``prompt_tokens``, ``completion_tokens``, ``total_tokens``).
    """

    index: int
    thought: str
    tool: str | None
    args: dict[str, Any]
    observation: Any
    error: bool = False
    started: float = 0.0
    duration: float = 0.0
    tool_seconds: float = 0.0
    tokens: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what is persisted for resumed runs)."""
        return {"index": self.index, "thought": self.thought, "tool": self.tool, "args": jsonable(self.args),
                "observation": jsonable(self.observation), "error": self.error, "started": self.started,
                "duration": self.duration, "tool_seconds": self.tool_seconds, "tokens": dict(self.tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        """Inverse of :meth:`to_dict`."""
        return cls(index=int(data["index"]), thought=str(data.get("thought", "")), tool=data.get("tool"),
                   args=dict(data.get("args") or {}), observation=data.get("observation"),
                   error=bool(data.get("error", False)), started=float(data.get("started", 0.0)),
                   duration=float(data.get("duration", 0.0)), tool_seconds=float(data.get("tool_seconds", 0.0)),
                   tokens={k: int(v) for k, v in (data.get("tokens") or {}).items()})


class TrajectoryLog:
    """Appends trajectory events to a JSONL file with :func:`dspyo3_core.files.append_jsonl`: each event is one
    ``O_APPEND`` write of one line, so concurrent agents (threads or processes) writing the same file interleave
    whole lines, and a crash loses at most the line being written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __deepcopy__(self, memo: dict[int, Any]) -> TrajectoryLog:
        """Copies of an agent append to the same file."""
        return self

    def write(self, event: str, run_id: str, **fields: Any) -> None:
        """Append one event."""
        append_jsonl(self.path, {"event": event, "run_id": run_id, "time": time.time(), **jsonable(fields)})


def read_trajectory(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of a trajectory file; a line that is not JSON raises ``ValueError`` naming the file and line,
    except a torn event (the start of one of our lines, cut short by a crash) which is skipped."""
    for number, event in enumerate(read_jsonl(path, torn_prefix=_TORN_PREFIX), 1):
        if not isinstance(event, dict) or "event" not in event:
            raise ValueError(f"{path}: event {number} is not a trajectory event (no 'event' field): {event!r:.200}")
        yield event


_TORN_PREFIX = '{"event":'  # how every line TrajectoryLog writes starts (with orjson or json)
