"""Hit latency of each TieredCache tier against DSPy's own memory cache and a raw redis-py GET, in one run.

What is cached is what DSPy caches for an LM call: the record ``dspy.LM`` stores for one answer (DSPy's native
engine format), under the request DSPy would look it up with (model, a ~1 KB system prompt, a question, sampling
settings). Every lookup computes the key from the request, as a real call does.

* ``memory_hit_us``: ``TieredCache.get`` answered by the native memory tier;
* ``dspy_memory_hit_us``: ``dspy.clients.Cache.get`` (memory only) on the same request and value;
* ``redis_hit_us``: ``TieredCache.get`` answered by Redis (memory tier off), decode and copy included;
* ``redis_get_us``: ``redis.Redis.get`` of the same payload on the same server (the network floor).

Each figure is the median over ``--repeat`` batches of ``--gets`` lookups (per lookup). Redis is a real
``redis-server`` started on a free loopback port for the run.

Run: ``hatch run bench-cache [--gets N] [--repeat R] [--json out.json] [--plot out.png]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log, output_args, per_call_us
from free_engine import FreeEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gets", type=int, default=2000, help="lookups per batch")
    parser.add_argument("--repeat", type=int, default=15, help="batches per contender (median reported)")
    output_args(parser)
    args = parser.parse_args()
    if args.gets < 100 or args.repeat < 3:
        parser.error("use at least --gets 100 and --repeat 3")

    import dspy
    import redis
    from prometheus_client import CollectorRegistry

    from dspyo3_core.testing.services import RedisProcess
    from dspyo3_production.cache import TieredCache
    from dspyo3_production.metrics import Metrics

    warnings.simplefilter("ignore")
    # The value: the record dspy.LM stores for one answer.
    capture = dspy.clients.Cache(False, True, None)
    saved, dspy.cache = dspy.cache, capture
    dspy.LM("openai/gpt-4o-mini", engine=FreeEngine(0.0), cache=True)(messages=[{"role": "user", "content": "q"}])
    dspy.cache = saved
    value = next(iter(capture.memory_cache.values()))
    request = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "system", "content": "You answer questions. " * 50},
                     {"role": "user", "content": "[[ ## question ## ]]\nWhat is the capital of France?"}],
        "temperature": 0.0, "max_tokens": 512, "api_key": "sk-not-part-of-the-key",
        "_fn_identifier": "dspy.clients.lm.litellm_completion",
    }
    ignored = ["api_key", "api_base", "base_url"]
    metrics = Metrics(CollectorRegistry())

    with RedisProcess() as server:
        log(f"redis-server on {server.url}")
        ours = TieredCache(metrics=metrics)
        theirs = dspy.clients.Cache(False, True, None)
        shared = TieredCache(enable_memory_cache=False, redis_url=server.url, metrics=metrics, namespace="bench")
        for cache in (ours, theirs, shared):
            cache.put(request, value, ignored)
        if not shared.flush(10):
            raise SystemExit("the Redis writer did not land the entry")
        client = redis.Redis.from_url(server.url)
        redis_key = shared.redis.prefix + shared.cache_key(request, ignored)  # type: ignore[union-attr]
        if client.get(redis_key) is None:
            raise SystemExit("the entry is not in Redis")
        for name, cache in (("memory", ours), ("dspy", theirs), ("redis", shared)):
            got = cache.get(request, ignored)
            if got != value:
                raise SystemExit(f"{name} tier returned a different value: {got!r}")
        contenders = {
            "memory_hit_us": lambda: ours.get(request, ignored),
            "dspy_memory_hit_us": lambda: theirs.get(request, ignored),
            "redis_hit_us": lambda: shared.get(request, ignored),
            "redis_get_us": lambda: client.get(redis_key),
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(args.repeat):  # interleaved, so drift of a shared machine hits every contender alike
            for name, fn in contenders.items():
                samples[name].append(per_call_us(fn, args.gets if "redis" not in name else args.gets // 4))
            log(f"batch {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in samples.items()))
        client.close()
        shared.close()

    result = {name: round(statistics.median(v), 2) for name, v in samples.items()}
    print(__import__("json").dumps({"value_bytes": len(__import__("orjson").dumps(value)), "gets": args.gets,
                                    "repeat": args.repeat, "dspy": dspy.__version__,
                                    "memory_vs_dspy": round(result["memory_hit_us"] / result["dspy_memory_hit_us"],
                                                            3)}), flush=True)
    emit(result, args.json_path, args.plot_path,
         bars=[("DSPy memory cache", result["dspy_memory_hit_us"]), ("dspyo3 memory tier", result["memory_hit_us"]),
               ("raw redis-py GET", result["redis_get_us"]), ("dspyo3 redis tier", result["redis_hit_us"])],
         title="Cache hit latency (us per lookup, lower is better)")


if __name__ == "__main__":
    main()
