"""Per-LM-call overhead of the full dspyo3-production stack over bare DSPy, with a zero-cost LM.

Both sides are DSPy's own ``dspy.LM`` machinery (request preparation, cache lookup and store, usage, history)
over ``free_engine.FreeEngine(0)``, an engine that answers at once, so what differs is only what the stack adds:

* **bare**: ``dspy.LM`` with DSPy's own memory cache (``dspy.clients.Cache``, disk off), no callbacks;
* **stack**: ``dspyo3_core.HookedLM`` through the plugin manager (the ``dspyo3_lm_call`` hook) with
  ``dspyo3_production`` enabled: ``TieredCache`` (native memory tier) as ``dspy.cache``, Prometheus metrics, one
  JSON ``lm_call`` log event per call (written to /dev/null through the real formatter and redactor), a circuit
  breaker, cost tracking with a budget check before every call, single flight, and the module/tool callback.

Every call has a new prompt (a cache miss and a store on both sides: the common path). Short rounds alternate
between the two sides (the garbage collector paused while timing, as ``timeit`` does); the figure per side is the
median of its rounds' per-call means, and ``added_us`` is the median of the paired differences (each stack round
against the bare round next to it, so slow drifts of a shared VM cancel). Sync calls; the Redis tier is off
(with Redis, a memory miss adds one GET round trip, measured by ``cache.py``).

``--instructions`` also counts what each side executes per call with valgrind's callgrind (a count of machine
instructions, repeatable whatever else the VM is doing, unlike time): each side runs alone in a fresh interpreter
twice (300 and 800 calls after a warm-up) and the difference over the 500 extra calls is its per-call count. That
takes a few minutes and needs ``valgrind``; the counts go on the detail line.

Run: ``hatch run bench-overhead [--calls N] [--rounds R] [--instructions] [--json out.json] [--plot out.png]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log, output_args
from free_engine import FreeEngine


def build() -> dict[str, Any]:
    """Both sides: the bare ``dspy.LM`` with DSPy's memory cache, and the ``HookedLM`` with the full stack."""
    import dspy
    from prometheus_client import CollectorRegistry

    import dspyo3_production as prod
    from dspyo3_core.lm import HookedLM
    from dspyo3_core.plugins import PluginManager
    from dspyo3_production.metrics import Metrics

    warnings.simplefilter("ignore")  # DSPy's deprecation notice for messages= would otherwise print per call
    devnull = open("/dev/null", "w")  # noqa: SIM115 - lives for the whole run
    prod.configure_logging(devnull, redact_root=False)
    metrics = Metrics(CollectorRegistry())
    stack = prod.Production(
        cache=prod.TieredCache(metrics=metrics),
        metrics=metrics,
        log_events=True,
        breaker=prod.CircuitBreaker(),
        budgets=[prod.Budget(1e9, per="day")],
    )
    manager = PluginManager()
    wrappers = [impl.plugin_name for impl in manager.hook.dspyo3_lm_call.get_hookimpls() if impl.wrapper]
    if not any("production" in name for name in wrappers):
        raise SystemExit(f"the production plugin's dspyo3_lm_call wrapper is not loaded (wrappers: {wrappers})")
    return {
        "dspy": dspy, "prod": prod, "stack": stack, "metrics": metrics, "manager": manager,
        "bare_cache": dspy.clients.Cache(False, True, None),
        "bare_lm": dspy.LM("openai/gpt-4o-mini", engine=FreeEngine(0.0), cache=True, num_retries=0),
        "stack_lm": HookedLM("openai/gpt-4o-mini", engine=FreeEngine(0.0), cache=True, num_retries=0,
                             plugin_manager=manager),
    }


def run_one_side(side: str, calls: int) -> None:
    """``--one SIDE``: 50 warm-up calls, then ``calls`` more, and nothing else (what callgrind counts)."""
    env = build()
    dspy, prod = env["dspy"], env["prod"]
    prod.stack._loaded_from_settings = True  # no [production] config is read behind our back
    if side == "bare":
        dspy.cache = env["bare_cache"]
        dspy.configure(callbacks=[])
        lm = env["bare_lm"]
    else:
        env["stack"].install()
        lm = env["stack_lm"]
    for i in range(50 + calls):
        lm(messages=[{"role": "user", "content": f"question {i}"}])


def count_instructions() -> dict[str, int]:
    """Per-call machine instructions of each side, counted by callgrind (see the module docstring)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    out: dict[str, int] = {}
    for side in ("bare", "stack"):
        totals = []
        for calls in (300, 800):
            log(f"callgrind: {side} side, {calls} calls (about a minute)")
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                 "--one", side, "--calls", str(calls)],
                capture_output=True, text=True, env=os.environ, check=False)
            found = [line for line in done.stderr.splitlines() if "Collected" in line]
            if done.returncode != 0 or not found:
                raise SystemExit(f"callgrind run failed ({done.returncode}): {done.stderr[-1500:]}")
            totals.append(int(found[-1].split()[-1]))
        out[f"{side}_instructions"] = (totals[1] - totals[0]) // 500
    out["added_instructions"] = out["stack_instructions"] - out["bare_instructions"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="calls per round and side")
    parser.add_argument("--rounds", type=int, default=300, help="alternating rounds per side")
    parser.add_argument("--instructions", action="store_true", help="also count instructions per call (valgrind)")
    parser.add_argument("--one", choices=["bare", "stack"], help=argparse.SUPPRESS)  # one side, for callgrind
    output_args(parser)
    args = parser.parse_args()
    if args.one:
        run_one_side(args.one, args.calls)
        return
    if args.calls < 20 or args.rounds < 20:
        parser.error("use at least --calls 20 and --rounds 20 (fewer gives noise, not a figure)")

    env = build()
    dspy, prod, stack, metrics = env["dspy"], env["prod"], env["stack"], env["metrics"]
    bare_cache, bare_lm, stack_lm = env["bare_cache"], env["bare_lm"], env["stack_lm"]
    counter = iter(range(10**9))

    def round_(lm: dspy.BaseLM) -> float:
        prompts = [[{"role": "user", "content": f"question {next(counter)}"}] for _ in range(args.calls)]
        gc.collect()
        gc.disable()  # as timeit does: the collector's pauses would land on whichever side happens to trigger them
        try:
            started = time.perf_counter()
            for messages in prompts:
                lm(messages=messages)
            return (time.perf_counter() - started) / args.calls * 1e6
        finally:
            gc.enable()

    def bare_round() -> float:
        stack.uninstall()
        prod.stack._loaded_from_settings = True  # no [production] config is read behind our back
        dspy.cache = bare_cache
        with dspy.context(callbacks=[]):
            return round_(bare_lm)

    def stack_round() -> float:
        stack.install()
        return round_(stack_lm)

    bare_round(), stack_round()  # warm up: imports, pricing table, first-time paths
    bare, stacked = [], []
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("bare / stack rounds", total=args.rounds)
        for i in range(args.rounds):
            if i % 2:  # alternate which side goes first, so neither always runs on a warmer cache
                stacked.append(stack_round())
                bare.append(bare_round())
            else:
                bare.append(bare_round())
                stacked.append(stack_round())
            progress.advance(task)
    stack.uninstall()
    lm_calls = metrics.lm_requests_total("openai/gpt-4o-mini", "ok")
    expected = (args.rounds + 1) * args.calls
    if lm_calls != expected:
        raise SystemExit(f"the stack recorded {lm_calls} LM calls, expected {expected}: it was not on the path")
    bare_us, stack_us = statistics.median(bare), statistics.median(stacked)
    added_us = statistics.median(s - b for b, s in zip(bare, stacked, strict=True))  # paired: neighbours share drift
    log(f"bare {bare_us:.1f} us/call, stack {stack_us:.1f} us/call, added (median of paired rounds) {added_us:.1f}")
    detail = {
        "calls_per_round": args.calls, "rounds": args.rounds,
        "bare_quartiles_us": [round(q, 1) for q in statistics.quantiles(bare, n=4)],
        "stack_quartiles_us": [round(q, 1) for q in statistics.quantiles(stacked, n=4)],
        "python": sys.version.split()[0], "dspy": dspy.__version__,
    }
    if args.instructions:
        detail.update(count_instructions())
    print(__import__("json").dumps(detail), flush=True)
    logging.shutdown()
    emit({"bare_us": round(bare_us, 1), "stack_us": round(stack_us, 1), "added_us": round(added_us, 1)},
         args.json_path, args.plot_path,
         bars=[("bare DSPy", bare_us), ("dspyo3 production stack", stack_us)],
         title="Per-call time with a zero-cost LM (us, lower is better)")


if __name__ == "__main__":
    main()
