"""How closely ``dspyo3_async.RateLimit`` holds a requests/s budget: in one process (the native GCRA limiter) and
shared through Redis by two processes (one server-side Lua script).

Each contender takes ``--requests`` permits with ``--concurrency`` asyncio tasks asking at once; the observed rate
is (permits - 1) / (last grant - first grant). The anchor is ``aiolimiter.AsyncLimiter`` (a leaky bucket, the
usual asyncio choice) at the same rate, in the same run. A ``redis-server`` is started on loopback for the shared
case.

    python benchmarks/rate_limit.py [--rate 50] [--requests 500] [--concurrency 64] [--json F] [--plot F]

Last line: ``{"rate", "local_rps", "local_error", "redis_rps", "redis_error", "aiolimiter_rps", "aiolimiter_error"}``
(error = |observed - rate| / rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log

WORKER = """
import asyncio, json, sys, time
from dspyo3_async import RateLimit

async def main(url, rate, n, concurrency, start_at):
    limit = RateLimit(rate, redis_url=url, key="bench")
    stamps = []
    todo = iter(range(n))

    async def worker():
        for _ in todo:
            await limit.acquire()
            stamps.append(time.time())

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps(stamps))

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
"""


def observed(stamps: list[float]) -> float:
    stamps = sorted(stamps)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


async def local_run(rate: float, n: int, concurrency: int, kind: str) -> list[float]:
    if kind == "dspyo3":
        from dspyo3_async import RateLimit

        limit = RateLimit(rate)
        acquire = limit.acquire
    else:
        from aiolimiter import AsyncLimiter

        limiter = AsyncLimiter(1, 1 / rate)  # one permit per 1/rate seconds: no burst, like ours

        async def acquire() -> float:
            await limiter.acquire()
            return 0.0

    stamps: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            await acquire()
            stamps.append(time.time())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path")
    args = parser.parse_args()

    log(f"local: {args.requests} permits at {args.rate:g}/s")
    local = observed(asyncio.run(local_run(args.rate, args.requests, args.concurrency, "dspyo3")))
    log(f"aiolimiter: {args.requests} permits at {args.rate:g}/s")
    anchor = observed(asyncio.run(local_run(args.rate, args.requests, args.concurrency, "aiolimiter")))

    from dspyo3_core.testing.services import redis_server

    with redis_server() as url:
        log(f"redis: two processes, {args.requests // 2} permits each, one shared {args.rate:g}/s budget")
        start_at = time.time() + 2.0  # both start together, after their imports
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(args.rate), str(args.requests // 2),
                                     str(args.concurrency // 2), str(start_at)], stdout=subprocess.PIPE, text=True)
                   for _ in range(2)]
        stamps = [s for w in workers for s in json.loads(w.communicate(timeout=600)[0])]
        shared = observed(stamps)

    result = {
        "rate": args.rate,
        "local_rps": local, "local_error": abs(local - args.rate) / args.rate,
        "redis_rps": shared, "redis_error": abs(shared - args.rate) / args.rate,
        "aiolimiter_rps": anchor, "aiolimiter_error": abs(anchor - args.rate) / args.rate,
        "requests": args.requests, "concurrency": args.concurrency,
    }
    emit(result, args.json_path, args.plot_path,
         bars=[("target", args.rate), ("dspyo3 local", local), ("dspyo3 redis x2 procs", shared),
               ("aiolimiter", anchor)],
         title=f"observed requests/s for a {args.rate:g}/s budget")


if __name__ == "__main__":
    main()
