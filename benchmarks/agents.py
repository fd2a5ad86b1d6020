"""Registry dispatch overhead per tool call, against calling a ``dspy.Tool`` directly, in one run.

The tool is ``add(a: int, b: int) -> int``; every contender calls it with ``a=1, b=2`` (valid arguments):

* ``dspy_tool_call_us``: ``dspy.Tool(add)(a=1, b=2)``, DSPy's own path (JSON-Schema validation of each argument,
  a Pydantic model per argument, callbacks) — the anchor;
* ``registry_call_us``: ``ToolRegistry.call("add", {...})`` — lookup, allow-list and enabled checks, Pydantic
  validation of the arguments, circuit breaker, concurrency slot, retry loop, the call;
* ``registry_dspy_tool_us``: the registry's ``dspy.Tool`` (``registry.to_dspy_tool("add")(a=1, b=2)``), what a
  ``ReActAgent`` calls: DSPy's callbacks wrapper plus ``registry.call``;
* ``registry_call_with_timeout_us``: ``registry.call`` of the same tool registered with ``timeout=5`` (the call
  then runs in a daemon thread of its own so it can be abandoned: a thread start per call);
* ``plain_call_us``: ``add(a=1, b=2)`` (the floor).

``added_us`` is ``registry_call_us - dspy_tool_call_us`` (negative: the registry is cheaper than ``dspy.Tool``).
Each figure is the median over ``--repeat`` batches of ``--calls`` calls (per call), garbage collector paused.

Run: ``hatch run bench-agents [--calls N] [--repeat R] [--json out.json] [--plot out.png]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log, output_args, per_call_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per batch")
    parser.add_argument("--repeat", type=int, default=15, help="batches per contender (median reported)")
    output_args(parser)
    args = parser.parse_args()
    if args.calls < 10 or args.repeat < 3:
        parser.error("use at least --calls 10 and --repeat 3")

    import dspy

    from dspyo3_agents import ToolRegistry

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    registry = ToolRegistry()
    registry.register(add)
    registry.register(add, name="add_with_timeout", timeout=5)
    direct = dspy.Tool(add)
    via_registry = registry.to_dspy_tool("add")
    values = {"a": 1, "b": 2}
    contenders: dict[str, Callable[[], Any]] = {
        "dspy_tool_call_us": lambda: direct(a=1, b=2),
        "registry_call_us": lambda: registry.call("add", values),
        "registry_dspy_tool_us": lambda: via_registry(a=1, b=2),
        "registry_call_with_timeout_us": lambda: registry.call("add_with_timeout", values),
        "plain_call_us": lambda: add(a=1, b=2),
    }
    for name, fn in contenders.items():  # same answers everywhere, and warm
        assert fn() == 3, name
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    log(f"{len(contenders)} contenders, {args.repeat} x {args.calls} calls each, interleaved")
    for _ in range(args.repeat):  # interleaved batches: drift on the machine hits every contender alike
        for name, fn in contenders.items():
            samples[name].append(per_call_us(fn, args.calls))
    result: dict[str, Any] = {name: round(statistics.median(values), 3) for name, values in samples.items()}
    result["added_us"] = round(result["registry_call_us"] - result["dspy_tool_call_us"], 3)
    result["registry_over_plain_us"] = round(result["registry_call_us"] - result["plain_call_us"], 3)
    result["calls"], result["repeat"] = args.calls, args.repeat
    result["dspy"] = dspy.__version__
    emit(result, args.json_path, args.plot_path,
         bars=[("dspy.Tool direct", result["dspy_tool_call_us"]),
               ("dspyo3 registry.call", result["registry_call_us"]),
               ("dspyo3 registry as dspy.Tool", result["registry_dspy_tool_us"]),
               ("dspyo3 registry.call, timeout", result["registry_call_with_timeout_us"]),
               ("plain function", result["plain_call_us"])],
         title="µs per tool call (lower is better)")


if __name__ == "__main__":
    main()
