"""``dspyo3 demo`` (``hatch run demo``): a DSPy program run end to end through the plugin core.

A ``dspy.ChainOfThought("question -> answer")`` program answers GSM8K questions and ``dspy.Evaluate`` scores it.
Every LM call goes ``HookedLM`` -> ``dspyo3_lm_call`` hook (a demo wrapper counts calls and latency) ->
``dspy.LM`` -> HTTP.

Without ``DSPYO3_LM`` the demo is OFFLINE: the "LM" is :class:`~dspyo3_core.testing.LMServer` on loopback, whose
scripted answer is the last number in the question (a baseline, not a model), so the accuracy printed is that
baseline's. With ``DSPYO3_LM`` set (a profile name or ``provider/model``), the same program runs on that LM.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import dspy
from rich.console import Console
from rich.panel import Panel

from dspyo3_core.config import LMProfile, build_lm, load_settings
from dspyo3_core.gsm8k import FALLBACK_QUESTIONS, exact_number, last_number, load_gsm8k
from dspyo3_core.hookspecs import hookimpl
from dspyo3_core.lm import LMCall
from dspyo3_core.plugins import PluginManager

__all__ = ["FALLBACK_QUESTIONS", "CallStats", "exact_number", "load_gsm8k", "run_demo"]


class CallStats:
    """A ``dspyo3_lm_call`` wrapper: counts LM calls and their latency (what production metrics plug into)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self._lock = threading.Lock()

    @hookimpl(wrapper=True)
    def dspyo3_lm_call(self, call: LMCall) -> Any:
        started = time.perf_counter()
        try:
            return (yield)
        except Exception:
            with self._lock:
                self.errors += 1
            raise
        finally:
            with self._lock:
                self.latencies.append(time.perf_counter() - started)


def _offline_answer(inputs: dict[str, str]) -> dict[str, str]:
    number = last_number(inputs.get("question", ""))
    answer = "unknown" if number is None else f"{float(number):g}"
    return {"reasoning": "Scripted offline reply: no model was called; the answer is the last number in the "
                         "question.", "answer": answer}


def _offline_label() -> str:
    from dspyo3_core.offline import OFFLINE_SHORT_LABEL

    return OFFLINE_SHORT_LABEL


def run_demo(manager: PluginManager, *, limit: int = 8, json_path: str | None = None) -> dict[str, Any]:
    """Run the demo and print a summary; returns the results (also written to ``json_path`` if given).

    The summary (JSON) is the only thing on stdout, so ``dspyo3 demo | jq`` works; the banner, DSPy's progress bar
    and the "written to" line go to stderr."""
    import contextlib
    import sys

    from dspyo3_core.testing.server import LMServer, field_responder

    console = Console(stderr=True)
    offline = not os.environ.get("DSPYO3_LM")
    examples, source = load_gsm8k(limit)
    stats = CallStats()
    stats_name = manager.register(stats, name="demo-call-stats")
    server = LMServer(responder=field_responder(_offline_answer)) if offline else None
    try:
        if server is not None:
            # DSPy would fetch model metadata from the internet on first use; offline means offline.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
            server.start()
            profile = LMProfile("offline", "openai-compatible", "dspyo3-offline-baseline", api_base=server.api_base,
                                params={"cache": False}, source="demo (loopback server)")
            console.print(Panel(
                "OFFLINE DEMO: answers come from a scripted loopback server (the last number in each question), "
                "not from a model. Set DSPYO3_LM=provider/model (and its API key) to run the same program on a "
                "real LM.",
                style="yellow"))
        else:
            profile = load_settings().profile()
        lm = build_lm(profile, plugin_manager=manager)
        extractive = type(lm).__name__ == "OfflineLM"  # DSPYO3_LM=offline/...: answers from the prompt, no model
        if extractive:
            console.print(Panel(
                f"OFFLINE DEMO: {lm.model} is the {_offline_label()}: every answer is copied from the question. "
                "Set DSPYO3_LM=provider/model (and its API key) to run the same program on a real LM.",
                style="yellow"))
        program = dspy.ChainOfThought("question -> answer")
        evaluate = dspy.Evaluate(devset=examples, metric=exact_number, num_threads=2, display_progress=True,
                                 display_table=False)
        started = time.perf_counter()
        with dspy.context(lm=lm), contextlib.redirect_stdout(sys.stderr):  # DSPy's tqdm writes to stdout
            result = evaluate(program)
        elapsed = time.perf_counter() - started
    finally:
        manager.unregister(stats_name)
        if server is not None:
            server.stop()
    latencies = stats.latencies
    summary = {
        "mode": ("offline (scripted loopback LM)" if offline
                 else f"offline ({lm.model}: {_offline_label()})" if extractive else f"live ({lm.model})"),
        "lm_is_model": not (offline or extractive),  # False: the accuracy is a baseline's, not a model's
        "data": source,
        "examples": len(examples),
        "accuracy": round(float(result.score) / 100.0, 4),
        "lm_calls_seen_by_hook": len(latencies),
        "lm_errors": stats.errors,
        "http_requests_at_server": len(server.requests) if server is not None else None,
        "mean_call_latency_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "wall_s": round(elapsed, 3),
    }
    Console().print_json(json.dumps(summary))
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"results written to {json_path}")
    return summary
