"""Helpers shared by the benchmark scripts: BEIR-layout loading, IR metrics, timing, JSON and plot output."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dspyo3_rag.beir import BeirData, BeirFormatError, evaluate
from dspyo3_rag.beir import load_beir as _load_beir

__all__ = ["BeirData", "LMServerProcess", "best_time", "emit", "evaluate_run", "lm_bench_parser", "load_beir", "log",
           "output_args", "per_call_us", "run_workers", "timed_answers"]

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DSPYO3_DATA_DIR") or REPO.parent / "shared" / "data")


def load_beir(folder: Path, split: str = "test") -> BeirData:
    """``dspyo3_rag.beir.load_beir``, exiting with its message on a folder that is not in BEIR layout."""
    try:
        return _load_beir(folder, split)
    except BeirFormatError as exc:
        raise SystemExit(str(exc)) from None


def evaluate_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10 and recall@100 over the judged queries (``dspyo3_rag.beir.evaluate``, BEIR conventions)."""
    metrics = evaluate(run, qrels)
    return {"ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"]}


def best_time(fn: Callable[[], Any], repeat: int, *, collect_garbage: bool = True) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs of ``fn`` and the last result.

    With ``collect_garbage=False`` the cyclic garbage collector is paused while ``fn`` runs (as ``timeit`` does),
    so the time does not depend on how many unrelated objects the process happens to hold.
    """
    best, result = math.inf, None
    for _ in range(repeat):
        result = None
        gc.collect()
        if not collect_garbage:
            gc.disable()
        try:
            started = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return best, result


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    """Mean microseconds per call of ``n`` calls of ``fn`` in a row, the garbage collector paused (as ``timeit``
    does)."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1e6
    finally:
        gc.enable()


def log(message: str) -> None:
    """Progress line on stderr (stdout's last line is the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def output_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--json PATH`` and ``--plot PATH`` (what :func:`emit` writes besides the last stdout line)."""
    parser.add_argument("--json", dest="json_path", help="also write the result here")
    parser.add_argument("--plot", dest="plot_path", help="write a bar chart (PNG) here")


def emit(result: dict[str, Any], json_path: str | None, plot_path: str | None,
         bars: Iterable[tuple[str, float]] = (), title: str = "") -> None:
    """Print ``result`` as the last line of stdout, optionally write it as JSON and a bar chart PNG."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels, values = zip(*bars, strict=True)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh(labels, values, color=["#c0504d" if "dspyo3" in label else "#4f81bd" for label in labels])
        ax.set_title(title)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.1f}", va="center")
        fig.tight_layout()
        fig.savefig(plot_path, dpi=120)
    print(json.dumps(result))


def timed_answers(label: str, run: Callable[[list[dict[str, str]]], list[str]],
                  items: list[dict[str, str]]) -> dict[str, Any]:
    """Run ``run(items)`` once and report requests/s, this process's CPU µs per request (every thread) and a
    digest of the answers (equal digests, identical predictions); raises if any item went unanswered."""
    import hashlib

    cpu, wall = time.process_time(), time.perf_counter()
    answers = run(items)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if len(answers) != len(items) or any(not a for a in answers):
        raise RuntimeError(f"{label}: {sum(1 for a in answers if a)} of {len(items)} requests answered")
    return {"rps": len(items) / wall, "cpu_us_per_request": cpu / len(items) * 1e6, "wall_s": wall,
            "answers_digest": hashlib.sha256("\n".join(answers).encode()).hexdigest()[:16]}


def loopback_lm(kind: str, api_base: str) -> Any:
    """The LM a loopback-LM benchmark measures: ``"native"`` (NativeLM), ``"engine"`` (``dspy.LM`` on the native
    engines of ``dspyo3_core.native_engine``) or anything else (``dspy.LM`` on DSPy's default engine); cache and
    retries off."""
    import dspy

    options: dict[str, Any] = {"api_base": api_base, "api_key": "bench", "cache": False, "num_retries": 0}
    if kind == "native":
        from dspyo3_core.native_lm import NativeLM

        return NativeLM("openai/dspyo3-bench", **options)
    if kind == "engine":
        from dspyo3_core.native_engine import native_lm

        return native_lm("openai/dspyo3-bench", **options)
    return dspy.LM("openai/dspyo3-bench", **options)


class LMServerProcess:
    """`python -m dspyo3_core.testing --latency S` in a child process."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dspyo3_core.testing", "--latency", str(latency)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.api_base = self.proc.stdout.readline().strip()
        if not self.api_base.startswith("http://"):
            self.proc.kill()
            raise RuntimeError("the loopback LM server did not start")

    def __enter__(self) -> LMServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _at_least(minimum: float, kind: type = int) -> Callable[[str], Any]:
    """An argparse ``type`` reading ``kind`` and refusing values below ``minimum`` with a usage error."""

    def read(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} (got {text})")
        return value

    return read


def lm_bench_parser(doc: str, workers: Iterable[str], *, concurrency: int,
                    latency_ms: float) -> argparse.ArgumentParser:
    """The options every loopback-LM benchmark takes (``--requests``, ``--concurrency``, ``--latency-ms``,
    ``--json``, ``--plot``) plus the hidden ``--worker`` / ``--api-base`` its per-contender interpreters get."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--requests", type=_at_least(1), default=2000)
    parser.add_argument("--concurrency", type=_at_least(1), default=concurrency)  # 0 would wait forever
    parser.add_argument("--latency-ms", type=_at_least(0, float), default=latency_ms)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    parser.add_argument("--worker", choices=list(workers), help=argparse.SUPPRESS)
    parser.add_argument("--api-base", help=argparse.SUPPRESS)
    return parser


def run_workers(script: str, workers: Iterable[str], args: argparse.Namespace,
                extra: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Start the loopback LM server (``args.latency_ms``) once and run ``script --worker NAME`` for each worker in
    a fresh interpreter of its own; return each worker's figures (the JSON on its last stdout line)."""
    figures: dict[str, dict[str, Any]] = {}
    with LMServerProcess(args.latency_ms / 1000) as server:
        for name in workers:
            log(f"{name}: {args.requests} requests, concurrency {args.concurrency}, latency {args.latency_ms:g} ms")
            out = subprocess.run(
                [sys.executable, script, "--worker", name, "--api-base", server.api_base,
                 "--requests", str(args.requests), "--concurrency", str(args.concurrency), *(extra or [])],
                check=True, capture_output=True, text=True)
            figures[name] = json.loads(out.stdout.strip().splitlines()[-1])
            log(f"{name}: {figures[name]['rps']:.1f} req/s, {figures[name]['cpu_us_per_request']:.0f} us CPU/request")
    return figures
