"""Driving DSPy from Rust (the `dspyo3` crate) against calling it from Python, same program, same LM.

    python benchmarks/rust_driver.py [--requests 1280] [--concurrency 64] [--latency-ms 200] [--calls 1000]
                                     [--json out.json] [--plot out.png]

Builds `crates/dspyo3/examples/bench_driver.rs` in release mode against this interpreter (PYO3_PYTHON and
VIRTUAL_ENV are set from it), then measures:

* per-call overhead: `Predict::<QA>::call` from Rust vs the same `dspy.Predict` object in a Python loop, with
  `dspy.utils.DummyLM` so the LM costs nothing; alternating rounds in one process, best of 7 each;
  ``overhead_ratio`` = Rust / Python (1.0 = no overhead);
* throughput: ``--concurrency`` tokio tasks awaiting `acall` (DSPy's `acall` on the crate's asyncio loop) against
  the loopback LM server (`python -m dspyo3_core.testing`, its own process) answering after ``--latency-ms``:
  ``rust_async_rps`` with the crate's native transport (`Lm::new(..).native()`: HTTP in Rust under `dspy.LM`),
  ``rust_async_default_rps`` with `dspy.LM`'s own client, vs ``python_async_rps``: the same number of Python
  asyncio tasks awaiting `acall` on a plain `dspy.LM`; plus Rust OS threads calling sync `call` (native).
  ``limit_rps`` = concurrency / latency, what a client with no cost of its own would reach;
* the ceiling of one process: both sides again with `free_engine.py`, a DSPy engine that only waits for the
  latency (no HTTP, no LM client): what is left is DSPy's own per-call work under one GIL.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LMServerProcess, emit, log

ROOT = Path(__file__).resolve().parent.parent
CRATES = ROOT / "crates"


def rust_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYO3_PYTHON"] = str(Path(sys.prefix) / "bin" / "python")
    env["VIRTUAL_ENV"] = sys.prefix
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    return env


def build_driver() -> Path:
    log("building the Rust driver (cargo build --release -p dspyo3 --example bench_driver)")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "dspyo3", "--example", "bench_driver",
         "--manifest-path", str(CRATES / "Cargo.toml")],
        check=True, env=rust_env(),
    )
    return CRATES / "target" / "release" / "examples" / "bench_driver"


def run_driver(driver: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run([str(driver), *args], check=True, env=rust_env(), capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def python_async(api_base: str, concurrency: int, requests: int) -> dict[str, float]:
    """The Python side of the throughput run (executed in a fresh interpreter, like the Rust driver).

    ``api_base`` ``free:SECONDS`` selects the zero-cost engine with that latency.
    """
    import dspy

    class QA(dspy.Signature):
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    if api_base.startswith("free:"):
        from free_engine import free_lm

        lm = free_lm(float(api_base.removeprefix("free:")))
    else:
        lm = dspy.LM("openai/dspyo3-test", api_base=api_base, api_key="bench", cache=False)
    dspy.configure(lm=lm)
    program = dspy.Predict(QA)

    async def main() -> dict[str, float]:
        await asyncio.gather(*(program.acall(question=f"warm {i}") for i in range(concurrency)))
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await program.acall(question="What is the capital of France?")

        cpu0, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
        return {"rps": requests / elapsed, "cpu_us_per_request": cpu / requests * 1e6}

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1280, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent tasks")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="LM server latency")
    parser.add_argument("--calls", type=int, default=1000, help="calls per round of the overhead measurement")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    parser.add_argument("--python-async", nargs=3, metavar=("API_BASE", "C", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    if args.python_async:
        base, c, n = args.python_async
        print(json.dumps(python_async(base, int(c), int(n))))
        return
    for name in ("requests", "concurrency", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.latency_ms <= 0:
        parser.error("--latency-ms must be > 0")

    driver = build_driver()
    log(f"overhead: {args.calls} calls x 7 rounds, Rust vs Python, DummyLM")
    overhead = run_driver(driver, "overhead", "--calls", str(args.calls))
    log(f"  rust {overhead['rust_per_call_us']:.1f} us/call, python {overhead['python_per_call_us']:.1f} us/call")

    limit = args.concurrency / (args.latency_ms / 1000)
    common = ["--tasks", str(args.concurrency), "--requests", str(args.requests)]
    with LMServerProcess(args.latency_ms / 1000) as server:
        log(f"throughput: {args.concurrency} tasks, {args.requests} requests, {args.latency_ms:g} ms latency "
            f"(limit {limit:.0f} req/s)")
        rust_async = run_driver(driver, "async", "--api-base", server.api_base, "--native", *common)
        log(f"  rust tokio acall, native transport:  {rust_async['rps']:.1f} req/s")
        rust_threads = run_driver(driver, "threads", "--api-base", server.api_base, "--native", *common)
        log(f"  rust threads call, native transport: {rust_threads['rps']:.1f} req/s")
        rust_default = run_driver(driver, "async", "--api-base", server.api_base, *common)
        log(f"  rust tokio acall, dspy.LM client:    {rust_default['rps']:.1f} req/s")
        out = subprocess.run(
            [sys.executable, __file__, "--python-async", server.api_base, str(args.concurrency), str(args.requests)],
            check=True, capture_output=True, text=True,
        )
        py_async = json.loads(out.stdout.strip().splitlines()[-1])
        log(f"  python asyncio acall, dspy.LM:       {py_async['rps']:.1f} req/s")

    latency_s = str(args.latency_ms / 1000)
    log("ceiling: the same runs on a zero-cost engine (DSPy's own work only)")
    free_rust = run_driver(driver, "async", "--free-engine", str(Path(__file__).resolve().parent),
                           "--latency", latency_s, *common)
    log(f"  rust tokio acall:    {free_rust['rps']:.1f} req/s")
    out = subprocess.run(
        [sys.executable, __file__, "--python-async", f"free:{latency_s}", str(args.concurrency), str(args.requests)],
        check=True, capture_output=True, text=True,
    )
    free_python = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"  python asyncio acall: {free_python['rps']:.1f} req/s")

    result = {
        "overhead_ratio": round(overhead["overhead_ratio"], 4),
        "rust_async_rps": round(rust_async["rps"], 1),
        "python_async_rps": round(py_async["rps"], 1),
        "limit_rps": round(limit, 1),
        "efficiency": round(rust_async["rps"] / limit, 3),
        "rust_threads_rps": round(rust_threads["rps"], 1),
        "rust_async_default_rps": round(rust_default["rps"], 1),
        "rust_per_call_us": round(overhead["rust_per_call_us"], 1),
        "python_per_call_us": round(overhead["python_per_call_us"], 1),
        "cpu_us_per_request": {
            "rust_async": round(rust_async["cpu_us_per_request"], 1),
            "rust_threads": round(rust_threads["cpu_us_per_request"], 1),
            "rust_async_default": round(rust_default["cpu_us_per_request"], 1),
            "python_async": round(py_async["cpu_us_per_request"], 1),
        },
        "free_engine": {
            "rust_async_rps": round(free_rust["rps"], 1),
            "python_async_rps": round(free_python["rps"], 1),
            "cpu_us_per_request": {"rust_async": round(free_rust["cpu_us_per_request"], 1),
                                   "python_async": round(free_python["cpu_us_per_request"], 1)},
        },
        "requests": args.requests,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
    }
    bars = [
        ("limit (C / latency)", limit),
        ("dspyo3 tokio acall, native transport", rust_async["rps"]),
        ("dspyo3 threads call, native transport", rust_threads["rps"]),
        ("dspyo3 tokio acall, dspy.LM client", rust_default["rps"]),
        ("python asyncio acall, dspy.LM", py_async["rps"]),
        ("dspyo3 acall, zero-cost engine", free_rust["rps"]),
        ("python acall, zero-cost engine", free_python["rps"]),
    ]
    emit(result, args.json_path, args.plot_path, bars=bars, title="DSPy calls/s from Rust and from Python")


if __name__ == "__main__":
    main()
