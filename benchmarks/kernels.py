"""Native kernels against the usual Python choice, same workload, same run.

    python benchmarks/kernels.py [--duration 10] [--json out.json] [--plot out.png]

* LRU: ``dspyo3_native.LRUCache`` vs ``cachetools.LRUCache`` (what DSPy's memory cache uses): get hits, get
  misses and puts, per call and batched (``get_many`` / ``put_many`` vs a Python loop), in ns per item.
* Fusion: ``dspyo3_native.rrf`` vs a pure-Python RRF over three ranked lists of 100 ids, per call and batched
  (``rrf_many`` over 300 queries vs a loop), in µs per query.
* Rate limiter: per-acquire overhead of ``acquire_async`` vs ``aiolimiter.AsyncLimiter.acquire`` with capacity
  to spare, then accuracy: 50 asyncio tasks acquiring as fast as allowed for ``--duration`` seconds at a target
  rate; ``error_pct`` is the achieved rate's distance from the target.

The last stdout line is one JSON object; ``speedup`` values are the anchor's time over ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log


def per_item_ns(fn: Any, items: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - started) / items)
    return round(best, 1)


def bench_lru() -> dict[str, Any]:
    import cachetools

    import dspyo3_native

    n_keys, n_ops = 1000, 200_000
    keys = [f"{random.getrandbits(128):032x}" for _ in range(n_keys)]  # like DSPy's hashed cache keys
    rng = random.Random(7)
    hits = [keys[rng.randrange(n_keys)] for _ in range(n_ops)]
    misses = [f"missing-{i}" for i in range(n_ops)]
    ours, theirs = dspyo3_native.LRUCache(n_keys), cachetools.LRUCache(maxsize=n_keys)
    for key in keys:
        ours.put(key, key)
        theirs[key] = key
    out: dict[str, Any] = {}

    def loop_get(cache: Any, seq: list[str]) -> Any:
        get = cache.get
        return lambda: [get(k) for k in seq]

    out["get_hit_ns"] = {"dspyo3": per_item_ns(loop_get(ours, hits), n_ops),
                         "cachetools": per_item_ns(loop_get(theirs, hits), n_ops)}
    out["get_miss_ns"] = {"dspyo3": per_item_ns(loop_get(ours, misses), n_ops),
                          "cachetools": per_item_ns(loop_get(theirs, misses), n_ops)}
    puts = [(f"p{i}", i) for i in range(n_ops)]

    def put_ours() -> None:
        put = ours.put
        for key, value in puts:
            put(key, value)

    def put_theirs() -> None:
        for key, value in puts:
            theirs[key] = value

    out["put_ns"] = {"dspyo3": per_item_ns(put_ours, n_ops), "cachetools": per_item_ns(put_theirs, n_ops)}
    for key in keys:
        ours.put(key, key)
        theirs[key] = key
    out["get_many_hit_ns"] = {"dspyo3": per_item_ns(lambda: ours.get_many(hits), n_ops),
                              "cachetools": out["get_hit_ns"]["cachetools"]}
    out["put_many_ns"] = {"dspyo3": per_item_ns(lambda: ours.put_many(puts), n_ops),
                          "cachetools": out["put_ns"]["cachetools"]}
    for row in out.values():
        row["speedup"] = round(row["cachetools"] / row["dspyo3"], 2)
    return out


def python_rrf(lists: list[list[str]], k: float = 60.0) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for ranking in lists:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def bench_fusion() -> dict[str, Any]:
    import dspyo3_native

    rng = random.Random(11)
    pool = [f"doc{i}" for i in range(1000)]
    problems = [[rng.sample(pool, 100) for _ in range(3)] for _ in range(300)]
    one = problems[0]
    per_call = {"dspyo3": per_item_ns(lambda: [dspyo3_native.rrf(one) for _ in range(1000)], 1000) / 1000,
                "python": per_item_ns(lambda: [python_rrf(one) for _ in range(1000)], 1000) / 1000}
    batched = {"dspyo3": per_item_ns(lambda: dspyo3_native.rrf_many(problems), len(problems)) / 1000,
               "python": per_item_ns(lambda: [python_rrf(p) for p in problems], len(problems)) / 1000}
    assert [d for d, _ in dspyo3_native.rrf(one)] == [d for d, _ in python_rrf(one)]  # same answer
    for row in (per_call, batched):
        row["dspyo3"], row["python"] = round(row["dspyo3"], 2), round(row["python"], 2)
        row["speedup"] = round(row["python"] / row["dspyo3"], 2)
    return {"rrf_per_call_us": per_call, "rrf_batched_us_per_query": batched}


async def limiter_overhead(n: int) -> dict[str, Any]:
    import aiolimiter

    import dspyo3_native

    ours = dspyo3_native.RateLimiter(1e9, burst=1e6)
    theirs = aiolimiter.AsyncLimiter(1e9, 1)
    started = time.perf_counter_ns()
    for _ in range(n):
        await dspyo3_native.acquire_async(ours)
    ours_ns = (time.perf_counter_ns() - started) / n
    started = time.perf_counter_ns()
    for _ in range(n):
        await theirs.acquire()
    theirs_ns = (time.perf_counter_ns() - started) / n
    started = time.perf_counter_ns()
    for _ in range(n):
        ours.try_acquire()
    sync_ns = (time.perf_counter_ns() - started) / n
    return {"dspyo3": round(ours_ns, 1), "aiolimiter": round(theirs_ns, 1),
            "dspyo3_try_acquire_sync": round(sync_ns, 1), "speedup": round(theirs_ns / ours_ns, 2)}


async def limiter_accuracy(kind: str, rate: float, duration: float, tasks: int = 50) -> dict[str, Any]:
    import aiolimiter

    import dspyo3_native

    if kind == "dspyo3":
        limiter = dspyo3_native.RateLimiter(rate, burst=1)

        async def acquire() -> None:
            await dspyo3_native.acquire_async(limiter)
    else:
        theirs = aiolimiter.AsyncLimiter(rate, 1)

        async def acquire() -> None:
            await theirs.acquire()

    done = 0
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        nonlocal done
        while True:
            await acquire()
            if time.perf_counter() > deadline:
                return
            done += 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    achieved = done / duration
    return {"target_per_s": rate, "achieved_per_s": round(achieved, 2),
            "error_pct": round(abs(achieved / rate - 1) * 100, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the rate-accuracy runs")
    parser.add_argument("--rate", type=float, default=500.0, help="target rate of the accuracy runs, per second")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    args = parser.parse_args()
    log("LRU")
    lru = bench_lru()
    log("fusion")
    fusion = bench_fusion()
    log("rate limiter overhead")
    overhead = asyncio.run(limiter_overhead(100_000))
    log(f"rate limiter accuracy: {args.duration:g}s each at {args.rate:g}/s")
    accuracy = {kind: asyncio.run(limiter_accuracy(kind, args.rate, args.duration))
                for kind in ("dspyo3", "aiolimiter")}
    result = {"lru": lru, "fusion": fusion,
              "rate_limiter": {"acquire_ns": overhead, "accuracy": accuracy, "duration_s": args.duration}}
    bars = [(f"{name} speedup", row["speedup"]) for name, row in lru.items()]
    bars += [(f"{name} speedup", row["speedup"]) for name, row in fusion.items()]
    emit(result, args.json_path, args.plot_path, bars=bars, title="dspyo3 native kernels: speedup over the anchor")


if __name__ == "__main__":
    main()
