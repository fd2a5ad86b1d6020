"""LM-call throughput: ``dspyo3_async.run_many`` against ``dspy.Parallel`` and plain ``asyncio.gather``.

The loopback LM server (``python -m dspyo3_core.testing --latency L``, its own process) answers every request
after a fixed latency, so the ceiling is ``concurrency / latency`` requests per second. Each contender runs a
``dspy.Predict`` over ``--requests`` inputs with ``--concurrency`` calls in flight, in a fresh interpreter of its
own (after a warm-up of one request per slot), and reports requests/s and the CPU time of its process (every
thread) per request: that is what decides how many LM calls one core can drive.

    python benchmarks/lm_throughput.py [--requests 2000] [--concurrency 128] [--latency-ms 500]
        [--transport litellm|native|engine] [--program predict|lm] [--adapter chat|native] [--json F] [--plot F]

Last line: ``{"limit_rps", "run_many_rps", "parallel_rps", "gather_rps", "efficiency",
"cpu_us_per_request": {"run_many", "parallel", "gather"}, ...}`` with efficiency = run_many_rps / limit_rps.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, lm_bench_parser, loopback_lm, run_workers, timed_answers

MODES = ("run_many", "parallel", "gather")


def _program_and_inputs(api_base: str, requests: int, transport: str, program: str = "predict",
                        adapter: str = "chat") -> tuple[Any, list[dict[str, str]]]:
    import dspy

    from dspyo3_types.adapters import NativeChatAdapter

    class QA(dspy.Signature):
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    lm = loopback_lm(transport, api_base)
    dspy.configure(lm=lm, adapter=NativeChatAdapter() if adapter == "native" else dspy.ChatAdapter())
    inputs = [{"question": f"question {i}"} for i in range(requests)]
    if program == "lm":

        class RawLM(dspy.Module):
            """One LM call per input, no adapter: what the transport alone sustains."""

            def forward(self, question: str) -> Any:
                return dspy.Prediction(answer=lm(messages=[{"role": "user", "content": question}])[0])

            async def aforward(self, question: str) -> Any:
                return dspy.Prediction(answer=(await lm.acall(messages=[{"role": "user", "content": question}]))[0])

        return RawLM(), inputs
    return dspy.Predict(QA), inputs


def worker(mode: str, api_base: str, requests: int, concurrency: int, transport: str,
           program_kind: str = "predict", adapter: str = "chat") -> dict[str, Any]:
    """One contender in this (fresh) process; returns its figures."""
    import dspy

    from dspyo3_async import RetryPolicy, run_many

    program, inputs = _program_and_inputs(api_base, requests, transport, program_kind, adapter)
    warm = [{"question": f"warm-up {i}"} for i in range(concurrency)]

    async def gather(items: list[dict[str, str]]) -> list[Any]:
        slots = asyncio.Semaphore(concurrency)

        async def one(item: dict[str, str]) -> Any:
            async with slots:
                return await program.acall(**item)

        return await asyncio.gather(*(one(item) for item in items))

    def run(items: list[dict[str, str]]) -> list[Any]:
        if mode == "run_many":
            results = asyncio.run(run_many(program, items, concurrency=concurrency, retries=RetryPolicy(attempts=1)))
            return [r.unwrap() for r in results]
        if mode == "parallel":
            parallel = dspy.Parallel(num_threads=concurrency, disable_progress_bar=True, max_errors=0)
            examples = [dspy.Example(**item).with_inputs("question") for item in items]
            return list(parallel([(program, example) for example in examples]))
        return asyncio.run(gather(items))

    run(warm)
    return timed_answers(mode, lambda items: [str(getattr(o, "answer", "") or "") for o in run(items)], inputs)


def main() -> None:
    parser = lm_bench_parser(__doc__, MODES, concurrency=128, latency_ms=500.0)
    parser.add_argument("--transport", choices=["litellm", "native", "engine"], default="litellm",
                        help="the LM under test: dspy.LM on DSPy's default engine, NativeLM, or dspy.LM on the "
                             "native engine (dspyo3_core.native_engine)")
    parser.add_argument("--program", choices=["predict", "lm"], default="predict",
                        help="dspy.Predict (adapter included, the default) or bare LM calls (the transport alone)")
    parser.add_argument("--adapter", choices=["chat", "native"], default="chat",
                        help="dspy.ChatAdapter (the default) or dspyo3_types.adapters.NativeChatAdapter")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.api_base, args.requests, args.concurrency, args.transport,
                                args.program, args.adapter)))
        return

    limit = args.concurrency / (args.latency_ms / 1000)
    figures = run_workers(__file__, MODES, args,
                          ["--transport", args.transport, "--program", args.program, "--adapter", args.adapter])
    result = {
        "limit_rps": limit,
        "run_many_rps": figures["run_many"]["rps"],
        "parallel_rps": figures["parallel"]["rps"],
        "gather_rps": figures["gather"]["rps"],
        "efficiency": figures["run_many"]["rps"] / limit,
        "cpu_us_per_request": {mode: figures[mode]["cpu_us_per_request"] for mode in MODES},
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "transport": args.transport,
        "program": args.program,
        "adapter": args.adapter,
        "same_answers": len({figures[mode]["answers_digest"] for mode in MODES}) == 1,
    }
    emit(result, args.json_path, args.plot_path,
         bars=[("limit C/L", limit), ("dspyo3 run_many", result["run_many_rps"]),
               ("dspy.Parallel", result["parallel_rps"]), ("asyncio.gather", result["gather_rps"])],
         title=f"requests/s, concurrency {args.concurrency}, {args.latency_ms:g} ms latency")


if __name__ == "__main__":
    main()
