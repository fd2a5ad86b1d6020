"""A DSPy LM engine that costs (almost) nothing: it sleeps for the latency and returns a canned ChatAdapter answer.

Used by `rust_driver.py` to measure the ceiling of one process: with no LM-client cost at all, how many DSPy calls
per second DSPy itself allows at a given latency and concurrency (DSPy's own per-call Python work under one GIL).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

_TEXT = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"


def _response() -> Response:
    return Response(id=None, model="free", message=Message.assistant([TextPart(_TEXT)]), finish_reason="stop",
                    usage=Usage(input_tokens=1, output_tokens=1, total_tokens=2))


class FreeEngine:
    """Sync engine: blocks for the latency without holding the GIL."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    def complete(self, request: Any) -> Response:
        if self.latency > 0:  # sleep(0) is still a syscall that gives up the CPU: not free
            time.sleep(self.latency)
        return _response()

    def stream(self, request: Any) -> Any:
        raise NotImplementedError("the free engine does not stream")

    def close(self) -> None:
        pass


class AsyncFreeEngine:
    """Async engine: awaits the latency on the event loop."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def complete(self, request: Any) -> Response:
        await asyncio.sleep(self.latency)
        return _response()

    async def stream(self, request: Any) -> Any:
        raise NotImplementedError("the free engine does not stream")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        pass


def free_lm(latency: float) -> dspy.LM:
    """A ``dspy.LM`` whose calls cost only DSPy's own work plus ``latency`` seconds of waiting."""
    return dspy.LM("openai/free", engine=FreeEngine(latency), async_engine=AsyncFreeEngine(latency), cache=False)
