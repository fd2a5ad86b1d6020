"""Per-call CPU of ``dspy.Predict`` under DSPy's ``ChatAdapter`` against dspyo3's ``NativeChatAdapter``.

The LM costs nothing: ``ZeroLM`` is a ``dspy.BaseLM`` that returns a canned, valid ChatAdapter completion at once, so
what is measured is DSPy's own per-call work (``Predict``, the adapter's formatting and parsing) with each adapter.
A detail line repeats the measurement with a ``dspy.LM`` over an engine that answers at once (``free_engine``, cache
off): the same adapters under DSPy's full LM client; another compares ``JSONAdapter`` with ``NativeJSONAdapter``
(zero-cost LM answering JSON). Shapes, as the published per-call figures use them:

* ``demos0``: ``question -> answer``, no demos;
* ``demos2`` / ``demos16``: the same with 2 or 16 demos (question, answer);
* ``context50k``: ``context, question -> answer`` with a 50 KB context, no demos.

Sides alternate in short rounds (process CPU, ``time.process_time``, garbage collector paused while timing); each
figure is the median over rounds of CPU microseconds per call. ``same_outputs`` is true when, for every shape,
both adapters sent the same messages to the LM (compared as JSON) and returned the same predictions.
Target (not asserted): native <= 0.4x of stock at every shape.

Run: ``hatch run bench-adapter [--calls N] [--rounds R] [--json out.json] [--plot out.png]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from common import emit, log, output_args
from free_engine import free_lm

from dspyo3_types.adapters import NativeChatAdapter, NativeJSONAdapter

ANSWER = "[[ ## answer ## ]]\nParis is the capital of France.\n\n[[ ## completed ## ]]"
JSON_ANSWER = '{"answer": "Paris is the capital of France."}'
SHAPES = ("demos0", "demos2", "demos16", "context50k")


class ZeroLM(dspy.BaseLM):
    """An LM that answers at once with a canned completion and keeps the messages it was sent."""

    def __init__(self, answer: str = ANSWER) -> None:
        super().__init__(model="zero", cache=False)
        self.answer = answer
        self.last: Any = None

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> list[str]:
        self.last = messages
        return [self.answer]

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> list[str]:
        return self(prompt, messages=messages, **kwargs)


def program(shape: str) -> tuple[dspy.Predict, dict[str, str]]:
    """The Predict of a shape and the inputs of one call."""
    if shape == "context50k":
        paragraph = ("The Seine flows through Paris, which has been the capital of France since the tenth century; "
                     "its museums, bridges and boulevards draw visitors all year round. ")
        context = (paragraph * (50_000 // len(paragraph) + 1))[:50_000]
        return dspy.Predict("context, question -> answer"), {"context": context, "question": "What is the capital?"}
    predict = dspy.Predict("question -> answer")
    n = int(shape.removeprefix("demos"))
    predict.demos = [dspy.Example(question=f"What is the capital of country number {i}?",
                                  answer=f"City number {i}, on the river.") for i in range(n)]
    return predict, {"question": "What is the capital of France?"}


def cpu_per_call(predict: dspy.Predict, inputs: dict[str, str], calls: int) -> float:
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(calls):
            predict(**inputs)
        return (time.process_time() - start) / calls * 1e6
    finally:
        gc.enable()


def measure(lm: dspy.BaseLM, shape: str, calls: int, rounds: int, *, json_format: bool = False
            ) -> tuple[dict[str, float], bool]:
    predict, inputs = program(shape)
    adapters: dict[str, dspy.Adapter] = (
        {"dspy": dspy.JSONAdapter(), "native": NativeJSONAdapter()} if json_format
        else {"dspy": dspy.ChatAdapter(), "native": NativeChatAdapter()})
    figures: dict[str, list[float]] = {side: [] for side in adapters}
    seen: dict[str, Any] = {}
    for side, adapter in adapters.items():  # warm both, and keep what each sent and returned
        with dspy.context(lm=lm, adapter=adapter):
            prediction = predict(**inputs)
            sent = lm.last if isinstance(lm, ZeroLM) else lm.history[-1]["messages"]
            seen[side] = (json.dumps(sent), dict(prediction))
            cpu_per_call(predict, inputs, max(1, calls // 5))
    for turn in range(rounds):
        order = list(adapters) if turn % 2 == 0 else list(reversed(adapters))
        for side in order:
            with dspy.context(lm=lm, adapter=adapters[side]):
                figures[side].append(cpu_per_call(predict, inputs, calls))
    return {side: round(statistics.median(values), 1) for side, values in figures.items()}, \
        seen["dspy"] == seen["native"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per round and side")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per side and shape")
    output_args(parser)
    args = parser.parse_args()
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    dspy.configure(disable_history=False)

    result: dict[str, Any] = {"cpu_us_per_call": {}, "ratio": {}, "same_outputs": True}
    detail: dict[str, Any] = {}
    json_detail: dict[str, Any] = {}
    zero = ZeroLM()
    full = free_lm(0)
    full.cache = False
    for shape in SHAPES:
        figures, same = measure(zero, shape, args.calls, args.rounds)
        result["cpu_us_per_call"][shape] = figures
        result["ratio"][shape] = round(figures["native"] / figures["dspy"], 3)
        result["same_outputs"] &= same
        log(f"{shape}: ZeroLM   dspy {figures['dspy']:8.1f} us  native {figures['native']:8.1f} us  "
            f"ratio {result['ratio'][shape]:.3f}  same={same}")
        lm_figures, lm_same = measure(full, shape, args.calls, max(2, args.rounds // 2))
        detail[shape] = {**lm_figures, "ratio": round(lm_figures["native"] / lm_figures["dspy"], 3)}
        result["same_outputs"] &= lm_same
        log(f"{shape}: dspy.LM  dspy {lm_figures['dspy']:8.1f} us  native {lm_figures['native']:8.1f} us  "
            f"ratio {detail[shape]['ratio']:.3f}  same={lm_same}")
        json_figures, json_same = measure(ZeroLM(JSON_ANSWER), shape, args.calls, max(2, args.rounds // 2),
                                          json_format=True)
        json_detail[shape] = {**json_figures, "ratio": round(json_figures["native"] / json_figures["dspy"], 3)}
        result["same_outputs"] &= json_same
        log(f"{shape}: JSON     dspy {json_figures['dspy']:8.1f} us  native {json_figures['native']:8.1f} us  "
            f"ratio {json_detail[shape]['ratio']:.3f}  same={json_same}")
    log("detail (dspy.LM over a free engine, cache off): " + json.dumps(detail))
    log("detail (JSONAdapter against NativeJSONAdapter, zero-cost LM): " + json.dumps(json_detail))
    result["dspy_lm"] = detail
    result["json_adapter"] = json_detail
    result["dspy_version"] = dspy.__version__
    emit(result, args.json_path, args.plot_path,
         bars=[(f"{shape} {side}", result["cpu_us_per_call"][shape][label])
               for shape in SHAPES for side, label in (("dspy ChatAdapter", "dspy"), ("dspyo3 native", "native"))],
         title="CPU us per Predict call (zero-cost LM)")


if __name__ == "__main__":
    main()
