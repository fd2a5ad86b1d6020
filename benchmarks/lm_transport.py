"""Client CPU per LM call: ``dspy.LM`` (LiteLLM / lm15), dspyo3's native Rust transport (as ``NativeLM`` and as a
``dspy.LM`` whose engines are the Rust client), a bare httpx call, and the floor of DSPy's engine interface.

The loopback LM server (``python -m dspyo3_core.testing --latency L``, its own process) answers every request
after a fixed latency. The DSPy contenders (``litellm``, ``native``, ``engine``) run the same ``dspy.Predict``
(adapter formatting and parsing included) over ``--requests`` inputs with ``--concurrency`` ``acall``s in flight.
The **floor** contender is that ``dspy.Predict`` on a ``dspy.LM`` whose engines cost nothing (``free_engine``: no
HTTP, no server; each call awaits the latency on the event loop and returns a canned answer): what DSPy's adapter
and LM layer cost per call by themselves, below which no engine plugged into ``dspy.LM`` can go. The **httpx**
contender POSTs the same chat messages with one shared ``httpx.AsyncClient`` and reads the answer text (a Python
HTTP client with no LM framework at all); the **rust** contender sends them through the native transport alone
(``LMTransport`` on the event loop's completion queue, as NativeLM and the native engine submit them): what the
Rust client costs per request by itself. Each runs in a fresh interpreter of its own after a warm-up of one
request per slot, and reports requests/s and its process's CPU time (every thread) per request.

    python benchmarks/lm_transport.py [--requests 2000] [--concurrency 64] [--latency-ms 100] [--adapter chat|native]
        [--json F] [--plot F]

``--adapter native`` runs the DSPy contenders and the floor under ``dspyo3_types.adapters.NativeChatAdapter``
instead of DSPy's ``ChatAdapter`` (the same adapter for all of them, so the ratios still compare LM clients).

Last line: ``{"cpu_us_per_request": {"litellm", "native", "engine", "floor", "rust", "httpx"}, "rps": {...},
"limit_rps", "cpu_ratio", "engine_cpu_ratio", "floor_cpu_ratio", "same_predictions", ...}`` with cpu_ratio =
native / litellm, engine_cpu_ratio = engine / litellm (the native engine's target is <= 1/8) and floor_cpu_ratio =
floor / litellm (the least any engine can reach); same_predictions compares the three DSPy contenders that call
the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, lm_bench_parser, loopback_lm, run_workers, timed_answers

CONTENDERS = ("litellm", "native", "engine", "floor", "rust", "httpx")


def _dspy_run(kind: str, api_base: str, items: list[dict[str, str]], concurrency: int,
              adapter: str = "chat", latency: float = 0.1) -> list[str]:
    import dspy
    from free_engine import free_lm

    from dspyo3_types.adapters import NativeChatAdapter

    class QA(dspy.Signature):
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    dspy.configure(lm=free_lm(latency) if kind == "floor" else loopback_lm(kind, api_base),
                   adapter=NativeChatAdapter() if adapter == "native" else dspy.ChatAdapter())
    program = dspy.Predict(QA)

    async def run() -> list[str]:
        slots = asyncio.Semaphore(concurrency)

        async def one(item: dict[str, str]) -> str:
            async with slots:
                return str((await program.acall(**item)).answer)

        return list(await asyncio.gather(*(one(item) for item in items)))

    return asyncio.run(run())


async def _bare_run(items: list[dict[str, str]], concurrency: int, send: Callable[[Any], Awaitable[Any]],
                    read: Callable[[Any], str]) -> list[str]:
    """What the two bare contenders share: the ChatAdapter's messages for each item, ``send`` with at most
    ``concurrency`` in flight, then ``read`` the answer text out of what it returned."""
    import dspy

    adapter = dspy.ChatAdapter()
    signature = dspy.Signature("question -> answer")
    slots = asyncio.Semaphore(concurrency)

    async def one(item: dict[str, str]) -> str:
        messages = adapter.format(signature, [], item)
        async with slots:
            answer = await send(messages)
        return read(answer)

    return list(await asyncio.gather(*(one(item) for item in items)))


def _httpx_run(api_base: str, items: list[dict[str, str]], concurrency: int) -> list[str]:
    import httpx

    def read(response: Any) -> str:
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=api_base, limits=limits, timeout=60.0,
                                     headers={"Authorization": "Bearer bench"}) as client:

            def send(messages: Any) -> Awaitable[Any]:
                return client.post("/chat/completions", json={"model": "dspyo3-bench", "messages": messages})

            return await _bare_run(items, concurrency, send, read)

    return asyncio.run(run())


def _rust_run(api_base: str, items: list[dict[str, str]], concurrency: int) -> list[str]:
    """The httpx contender's requests through the native transport alone (``LMTransport`` via the event loop's
    completion queue, as NativeLM and the native engine submit them): its own CPU per request, no DSPy around it."""
    import dspyo3_native
    from dspyo3_core.native_lm import submit

    transport = dspyo3_native.LMTransport(api_base, api_key="bench", max_retries=0)

    def send(messages: Any) -> Awaitable[Any]:
        return submit(transport, "dspyo3-bench", messages, {})

    return asyncio.run(_bare_run(items, concurrency, send, lambda answer: str(answer[2][0][0])))


def worker(kind: str, api_base: str, requests: int, concurrency: int, adapter: str = "chat",
           latency: float = 0.1) -> dict[str, Any]:
    """One contender in this (fresh) process; returns its figures."""
    items = [{"question": f"question {i}"} for i in range(requests)]
    warm = [{"question": f"warm-up {i}"} for i in range(concurrency)]

    def run(batch: list[dict[str, str]]) -> list[str]:
        if kind == "httpx":
            return _httpx_run(api_base, batch, concurrency)
        if kind == "rust":
            return _rust_run(api_base, batch, concurrency)
        return _dspy_run(kind, api_base, batch, concurrency, adapter, latency)

    run(warm)
    return timed_answers(kind, run, items)


def main() -> None:
    parser = lm_bench_parser(__doc__, CONTENDERS, concurrency=64, latency_ms=100.0)
    parser.add_argument("--adapter", choices=["chat", "native"], default="chat",
                        help="the adapter of the DSPy contenders: DSPy's ChatAdapter or dspyo3's NativeChatAdapter")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.api_base, args.requests, args.concurrency, args.adapter,
                                args.latency_ms / 1000)))
        return

    latency = args.latency_ms / 1000
    figures = run_workers(__file__, CONTENDERS, args, ["--adapter", args.adapter, "--latency-ms", str(args.latency_ms)])
    cpu = {kind: figures[kind]["cpu_us_per_request"] for kind in CONTENDERS}
    result = {
        "cpu_us_per_request": cpu,
        "rps": {kind: figures[kind]["rps"] for kind in CONTENDERS},
        "limit_rps": args.concurrency / latency,
        "cpu_ratio": cpu["native"] / cpu["litellm"],
        "engine_cpu_ratio": cpu["engine"] / cpu["litellm"],
        "floor_cpu_ratio": cpu["floor"] / cpu["litellm"],
        "same_predictions": (figures["native"]["answers_digest"] == figures["litellm"]["answers_digest"]
                             == figures["engine"]["answers_digest"]),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "adapter": args.adapter,
    }
    emit(result, args.json_path, args.plot_path,
         bars=[("dspy.LM (LiteLLM/lm15)", cpu["litellm"]), ("dspyo3 NativeLM", cpu["native"]),
               ("dspy.LM + dspyo3 native engine", cpu["engine"]),
               ("dspy.LM + a zero-cost engine (floor)", cpu["floor"]),
               ("bare native transport (no DSPy)", cpu["rust"]), ("bare httpx (no DSPy)", cpu["httpx"])],
         title=f"client CPU µs per request, concurrency {args.concurrency}, {args.latency_ms:g} ms latency")


if __name__ == "__main__":
    main()
