"""The program `benchmarks/serve.py` serves: the same module behind `dspyo3 serve` and the tutorial app.

The LM comes from the environment, so both contenders of a row run the same LM class against the same loopback
server: ``DSPYO3_BENCH_LM`` = ``dspy`` (``dspy.LM``, LiteLLM) or ``native`` (``dspyo3_core.native_lm.NativeLM``),
``DSPYO3_BENCH_API_BASE`` = the loopback LM server's api_base. Caching is off (every request reaches the LM).

- ``predict``: ``dspy.Predict("question -> answer")``, one LM call per request;
- ``cot``: :class:`TwoStepCoT`, two ``ChainOfThought`` calls per request (a draft, then the answer).

Each is a module instance with its LM set on every predictor (``set_lm``), so it answers the same way whether or
not the serving process configures a global LM.
"""

from __future__ import annotations

import os
from typing import Any

import dspy

__all__ = ["TwoStepCoT", "bench_lm", "cot", "predict"]


def bench_lm() -> Any:
    """The LM the environment names (see the module docstring)."""
    kind = os.environ.get("DSPYO3_BENCH_LM", "dspy")
    api_base = os.environ.get("DSPYO3_BENCH_API_BASE")
    if not api_base:
        raise RuntimeError("set DSPYO3_BENCH_API_BASE to the loopback LM server's api_base")
    if kind == "native":
        from dspyo3_core.native_lm import NativeLM

        return NativeLM("openai/dspyo3-bench", api_base=api_base, api_key="bench", cache=False, num_retries=0)
    if kind == "dspy":
        return dspy.LM("openai/dspyo3-bench", api_base=api_base, api_key="bench", cache=False, num_retries=0)
    raise RuntimeError(f"DSPYO3_BENCH_LM must be 'dspy' or 'native', not {kind!r}")


class TwoStepCoT(dspy.Module):
    """Two chained ``ChainOfThought`` steps: draft an answer, then answer with the draft in view."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.ChainOfThought("question -> draft")
        self.answer = dspy.ChainOfThought("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)

    async def aforward(self, question: str) -> dspy.Prediction:
        draft = (await self.draft.acall(question=question)).draft
        return await self.answer.acall(question=question, draft=draft)


def _with_lm(module: dspy.Module) -> dspy.Module:
    if os.environ.get("DSPYO3_BENCH_API_BASE"):
        module.set_lm(bench_lm())
    return module


predict = _with_lm(dspy.Predict("question -> answer"))
cot = _with_lm(TwoStepCoT())
