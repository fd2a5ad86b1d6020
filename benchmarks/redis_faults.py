"""What the Redis-backed parts do when their redis-server is killed (SIGKILL) mid-run and started again on the
same port: the cache tier, the shared rate limiter, the agent state store and the program registry.

Each scenario starts its own ``redis-server`` on 127.0.0.1 (a free port, a temporary directory), runs a bounded
workload, kills the server part-way through, starts it again and finishes the workload. Per scenario it reports:

* ``calls``: operations attempted;
* ``failed``: calls that should have been served and were not, or raised something other than a clean
  "Redis is unavailable" error (a crash, a traceback, a wrong exception) — must be 0;
* ``wrong``: answers that differ from the truth (a cached answer that is not the LM's, a lost or doubled
  state update, a registry load returning another version's or a corrupt program) — must be 0;
* ``unavailable``: calls refused with a clean typed error while Redis was down, where the backend by design
  cannot serve without Redis (agent state, registry); they are not failures. The cache and the limiter degrade
  to local and must serve everything, so for them every error counts as ``failed``.

The agent-state and registry servers keep an append-only file fsynced on every write (as a Redis holding state
should), so a killed server loses no acknowledged write; the cache and limiter servers keep nothing.
The limiter scenario runs ``--processes`` processes (3) on one shared ``RateLimit`` key with the default options,
so each learns its share of the rate from Redis before the outage; it reports the rate all of them together were
granted during the outage against the configured one (``outage_rate_ratio``; the acceptance is <= 2), and is run a
second time with the server frozen (SIGSTOP) instead of killed.

    python benchmarks/redis_faults.py [--outage 5] [--processes 3] [--local-share S] [--scale 1.0] [--json F]

``--only limiter --local-share 1`` is the anchor: every process falling back to the full rate.

Loopback only; stops by itself (about a minute at the defaults). Exit status 1 if any ``failed`` or ``wrong``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

from common import emit, log

from dspyo3_core.testing.services import RedisProcess


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """What "Redis is unavailable" looks like from the stores that cannot serve without it."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Tally:
    """calls / failed / wrong / unavailable, with the first few failures and wrong answers kept as examples."""

    def __init__(self) -> None:
        self.calls = self.failed = self.wrong = self.unavailable = 0
        self.examples: list[str] = []
        self._lock = threading.Lock()

    def fail(self, what: str) -> None:
        with self._lock:
            self.failed += 1
            if len(self.examples) < 5:
                self.examples.append(f"failed: {what}")

    def mistake(self, what: str) -> None:
        with self._lock:
            self.wrong += 1
            if len(self.examples) < 5:
                self.examples.append(f"wrong: {what}")

    def figures(self) -> dict[str, Any]:
        return {"calls": self.calls, "failed": self.failed, "wrong": self.wrong, "unavailable": self.unavailable,
                "examples": self.examples}


# -- cache ------------------------------------------------------------------------------------------------------------
def cache_scenario(scale: float) -> dict[str, Any]:
    """DSPy ``Predict`` calls through ``TieredCache`` (memory + Redis) on the loopback LM server; wrong = an answer
    that is not what the LM gives for that question."""
    import dspy
    import redis

    import dspyo3_production as prod
    from dspyo3_core.testing.server import LMServer, digest_responder
    from dspyo3_production.cache import TieredCache

    n, distinct = max(60, int(300 * scale)), 40
    tally = Tally()
    qa = dspy.Predict("question -> answer")
    with LMServer(digest_responder()) as server, RedisProcess() as redis_server:
        truth_lm = dspy.LM("openai/faults", api_base=server.api_base, api_key="none", cache=False, num_retries=0)
        with dspy.context(lm=truth_lm):
            truth = {f"q{i}": qa(question=f"q{i}").answer for i in range(distinct)}
        cache = TieredCache(redis_url=redis_server.url, namespace="faults", redis_timeout=0.2, redis_max_backoff=0.5)
        previous = prod.install_cache(cache)
        lm = dspy.LM("openai/faults", api_base=server.api_base, api_key="none", cache=True, num_retries=0)
        kill_at, memory_off, restart_at = n // 3, n // 2, 2 * n // 3
        try:
            with dspy.context(lm=lm):
                for i in range(n):
                    if i == kill_at - 10:  # Redis holds the answers so far; from now on repeats come from Redis
                        cache.flush(5)
                        cache.reset_memory_cache()
                    if i == kill_at:
                        redis_server.kill()
                    if i == memory_off:
                        cache.reset_memory_cache()  # only the LM (or a recovered Redis) can answer now
                    if i == restart_at:
                        redis_server.start()
                    question = f"q{i % distinct}"
                    tally.calls += 1
                    try:
                        answer = qa(question=question).answer
                    except Exception as exc:  # every failure is counted and shown
                        tally.fail(_describe(exc))
                        continue
                    if answer != truth[question]:
                        tally.mistake(f"{question}: {answer!r} != {truth[question]!r}")
                # rejoined: new answers reach the restarted Redis (bounded: at most 50 new questions)
                client = redis.Redis.from_url(redis_server.url)
                for j in range(50):
                    qa(question=f"after-{j}")
                    cache.flush(2)
                    if client.keys("faults:cache:*"):
                        break
                rejoined = bool(client.keys("faults:cache:*"))
                client.close()
        finally:
            prod.install_cache(previous)
            cache.close()
        return {**tally.figures(), "provider_requests": len(server.requests), "redis_rejoined": rejoined}


# -- limiter ----------------------------------------------------------------------------------------------------------
def _limiter_worker(url: str, rate: float, processes: int, local_share: float | None, events: Any, stop: Any) -> None:
    """One process of the limiter scenario: ``run_many`` paced by a shared ``RateLimit`` on ``url`` until ``stop``
    is set (or 300 s passed, or it made 300 s worth of calls at the full rate). It puts ``("ready", None)`` on
    ``events`` once the limit has seen all ``processes`` sharers in Redis, then ``("done", figures)``."""
    import logging

    from dspyo3_async import RateLimit, run_many

    logging.basicConfig(level=logging.ERROR)  # the outage warnings are expected here
    limit = RateLimit(rate, redis_url=url, key="faults", local_share=local_share)
    stamps: list[float] = []
    shares: set[float] = set()
    started = time.monotonic()

    async def call(question: str) -> str:
        stamps.append(time.monotonic())
        if not limit.redis_available:
            shares.add(round(limit.local_share, 4))
        return question

    async def inputs() -> AsyncIterator[dict[str, str]]:
        i = 0
        while not stop.is_set() and i < rate * 300 and time.monotonic() - started < 300:  # bounded either way
            i += 1
            yield {"question": f"q{i}"}

    async def announce_ready() -> None:
        while (limit.sharing or 0) < processes and not stop.is_set():
            await asyncio.sleep(0.01)
        events.put(("ready", None))

    async def main() -> list[Any]:
        ready = asyncio.ensure_future(announce_ready())
        results = await run_many(call, inputs(), concurrency=16, rate=limit)
        ready.cancel()
        return results

    try:
        results = asyncio.run(main())
        figures = {"calls": len(results), "failures": [_describe(r.error) for r in results if not r.ok][:5],
                   "failed": sum(not r.ok for r in results), "stamps": stamps,
                   "granted_locally": limit.granted_locally, "outages": limit.outages, "rejoined": limit.rejoined,
                   "redis_available": limit.redis_available, "sharing": limit.sharing,
                   "outage_shares": sorted(shares)}
    except BaseException as exc:  # reported, never lost with the process
        figures = {"crash": f"{_describe(exc)}\n{traceback.format_exc(limit=5)}"}
    events.put(("done", figures))


def limiter_scenario(rate: float, before: float, outage: float, after: float, freeze: bool,
                     processes: int = 3, local_share: float | None = None) -> dict[str, Any]:
    """``processes`` processes, each running ``run_many`` paced by its own ``RateLimit`` on one shared key (the
    defaults: no ``processes=`` nor ``local_share=``), while their Redis is killed (or frozen with SIGSTOP) for
    ``outage`` seconds; the rate granted by all of them together over the outage against the configured one.
    The outage starts ``before`` seconds after every process has seen all the others in Redis. ``local_share``
    fixes each process's share instead (``1`` shows what a full-rate fallback in every process grants)."""
    import multiprocessing
    import queue

    import redis

    tally = Tally()
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no Redis connection crosses a fork
    events = context.Queue()
    stop = context.Event()
    window: dict[str, float] = {}
    figures: list[dict[str, Any]] = []
    with RedisProcess() as redis_server:
        assert redis_server.process is not None
        pid = redis_server.process.pid
        worker_args = (redis_server.url, rate, processes, local_share, events, stop)
        workers = [context.Process(target=_limiter_worker, args=worker_args) for _ in range(processes)]
        for worker in workers:
            worker.start()

        def wait_for(kind: str, count: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            seen = 0
            while seen < count:
                try:
                    what, payload = events.get(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
                except queue.Empty:
                    if time.monotonic() > deadline or not any(w.is_alive() for w in workers):
                        stop.set()
                        raise SystemExit(f"limiter: {seen} of {count} processes {kind} after {timeout:g} s") from None
                    continue
                if what == "done":
                    figures.append(payload)
                    if kind == "ready":  # a worker that ended before being ready crashed or timed out
                        stop.set()
                        raise SystemExit(f"limiter: a process ended before seeing the others: {payload}")
                seen += what == kind
        try:
            wait_for("ready", processes, 120)
            time.sleep(before)
            window["down"] = time.monotonic()
            if freeze:
                os.kill(pid, signal.SIGSTOP)
            else:
                redis_server.kill()
            time.sleep(outage)
            if freeze:
                os.kill(pid, signal.SIGCONT)
            else:
                redis_server.start()
            window["up"] = time.monotonic()
            time.sleep(after)
            window["end"] = time.monotonic()
            # the shared budget's state is back in the restarted Redis (the key lapses soon after the last grant)
            key_back = bool(redis.Redis.from_url(redis_server.url).exists("dspyo3:ratelimit:faults:requests"))
        finally:
            stop.set()
        wait_for("done", processes - len(figures), 120)
        for worker in workers:
            worker.join(10)

    stamps: list[float] = []
    for one in figures:
        if "crash" in one:
            tally.fail(one["crash"])
            continue
        tally.calls += one["calls"]
        for failure in one["failures"]:
            tally.fail(failure)
        tally.failed += one["failed"] - len(one["failures"])
        stamps += one["stamps"]
    done = [one for one in figures if "crash" not in one]

    def rate_between(start: float, end: float) -> float:
        return sum(start <= s < end for s in stamps) / (end - start)

    during = rate_between(window["down"], window["up"])
    return {**tally.figures(), "processes": processes, "local_share": local_share or "learnt", "configured_rate": rate,
            "outage_s": round(window["up"] - window["down"], 3),
            "rate_before": round(rate_between(window["down"] - before, window["down"]), 2),
            "rate_during_outage": round(during, 2), "outage_rate_ratio": round(during / rate, 3),
            "rate_after": round(rate_between(window["up"], window["end"]), 2),
            "rate_during_outage_per_process": [round(sum(window["down"] <= s < window["up"] for s in one["stamps"])
                                                     / (window["up"] - window["down"]), 2) for one in done],
            "outage_share_per_process": [one["outage_shares"] for one in done],
            "granted_locally": sum(one["granted_locally"] for one in done),
            "outages": max((one["outages"] for one in done), default=0),
            "rejoined": min((one["rejoined"] for one in done), default=0),
            "redis_rejoined": len(done) == processes and key_back
            and all(one["redis_available"] and one["rejoined"] >= 1 for one in done),
            "signal": "SIGSTOP/SIGCONT" if freeze else "SIGKILL, restart on the same port"}


# -- agent state ------------------------------------------------------------------------------------------------------
def agent_state_scenario(scale: float) -> dict[str, Any]:
    """Workers (threads, a store each) appending unique ids to one state with compare-and-set updates while Redis
    is killed and restarted; wrong = an acknowledged id missing (a lost update), an id stored twice, or a state
    whose version does not count its writes."""
    from dspyo3_agents.state import RedisStateStore

    workers, per_worker = 3, max(40, int(150 * scale))
    tally = Tally()
    unavailable = _unavailable_errors()
    acknowledged: set[str] = set()
    unknown: set[str] = set()  # the write raised "unavailable": it may or may not have been applied
    progress, after_restart = [0], [0]
    restarted = threading.Event()
    lock = threading.Lock()
    with RedisProcess(appendonly=True) as redis_server:
        stores = [RedisStateStore(redis_server.url, namespace="faults", timeout=0.5) for _ in range(workers)]

        def work(w: int) -> None:
            # per_worker writes, and then on until this worker has had 3 writes acknowledged after the restart (a
            # loaded machine can take longer to restart Redis than the remaining writes take to fail)
            store = stores[w]
            i = mine_after = 0
            while i < per_worker or (mine_after < 3 and i < per_worker * 20):
                item = f"w{w}-{i}"
                i += 1

                def add(data: dict[str, Any], item: str = item) -> dict[str, Any]:
                    return {"ids": [*data.get("ids", []), item]}

                with lock:
                    tally.calls += 1
                try:
                    store.update("counter", add)
                except unavailable:
                    with lock:
                        tally.unavailable += 1
                        unknown.add(item)
                    time.sleep(0.1)
                except Exception as exc:
                    tally.fail(f"{item}: {_describe(exc)}\n{traceback.format_exc(limit=3)}")
                else:
                    with lock:
                        acknowledged.add(item)
                        if restarted.is_set():
                            after_restart[0] += 1
                            mine_after += 1
                with lock:
                    progress[0] += 1

        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for thread in threads:
            thread.start()
        total = workers * per_worker
        while progress[0] < total // 3 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        redis_server.kill()
        time.sleep(1.0)
        redis_server.start()
        restarted.set()
        for thread in threads:
            thread.join()
        final = RedisStateStore(redis_server.url, namespace="faults").load("counter")
        for store in stores:
            store.close()
    ids = final.data.get("ids", [])
    stored = set(ids)
    for item in sorted(acknowledged - stored):
        tally.mistake(f"acknowledged update {item} is missing (lost update)")
    for item in sorted({i for i in ids if ids.count(i) > 1}):
        tally.mistake(f"{item} stored twice")
    for item in sorted(stored - acknowledged - unknown):
        tally.mistake(f"{item} stored but never written")
    if final.version != len(ids):
        tally.mistake(f"version {final.version} for {len(ids)} writes")
    return {**tally.figures(), "workers": workers, "acknowledged": len(acknowledged),
            "acknowledged_after_restart": after_restart[0],
            "unknown_outcome_applied": len(stored & unknown), "conflicts_retried": sum(s.conflicts for s in stores),
            "stored_ids": len(ids), "version": final.version}


# -- registry ---------------------------------------------------------------------------------------------------------
def registry_scenario(scale: float) -> dict[str, Any]:
    """register / load cycles on the Redis registry backend while Redis is killed and restarted; wrong = a load
    that returns another version's program or a corrupt one. A register that cannot reach Redis (or a stale lock
    left by a write Redis died under) must raise cleanly: ``unavailable``."""
    from dspyo3_optimize.registry import IntegrityError, ProgramRegistry, RegistryError

    cycles = max(30, int(90 * scale))
    tally = Tally()
    unavailable: tuple[type[BaseException], ...] = (*_unavailable_errors(), RegistryError)
    registered: dict[str, str] = {}  # version -> marker it was registered with
    attempted: set[str] = set()
    lock_timeouts = integrity_errors = 0
    after_restart: list[float] = []  # seconds from the restart to each register that succeeded after it
    with RedisProcess(appendonly=True) as redis_server:
        registry = ProgramRegistry(redis_server.url, lock_timeout=1.0)
        restarted_at: list[float] = []

        def fault() -> None:  # from another thread, so the kill can land in the middle of a register
            while len(registered) < cycles // 3:
                time.sleep(0.005)
            redis_server.kill()
            time.sleep(1.0)
            redis_server.start()
            restarted_at.append(time.monotonic())

        faulting = threading.Thread(target=fault)
        faulting.start()
        cycle = 0
        # bounded: every cycle counts; after the restart, stop after 10 registers or 15 s
        while cycle < 20 * cycles and not (restarted_at and (len(after_restart) >= 10
                                                             or time.monotonic() - restarted_at[0] > 15)):
            cycle += 1
            marker = f"cycle-{cycle}"
            attempted.add(marker)
            state = {"marker": marker, "demos": [{"question": marker, "answer": marker.upper()}]}
            tally.calls += 1
            ok = False
            try:
                meta = registry.register("qa", state, run_id=marker)
            except IntegrityError as exc:  # a corrupt read during the version allocation
                integrity_errors += 1
                tally.fail(_describe(exc))
            except unavailable as exc:
                tally.unavailable += 1
                lock_timeouts += "lock" in str(exc) and bool(restarted_at)
            except Exception as exc:
                tally.fail(f"register {marker}: {_describe(exc)}")
            else:
                ok = True
                registered[meta.version] = marker
                if restarted_at:
                    after_restart.append(time.monotonic() - restarted_at[0])
            for ref in (next(reversed(registered), None), "dev"):
                if ref is None:
                    continue
                tally.calls += 1
                try:
                    loaded, loaded_meta = registry.state("qa", ref)
                except IntegrityError as exc:
                    integrity_errors += 1
                    tally.mistake(f"load {ref}: {_describe(exc)}")
                except unavailable:
                    tally.unavailable += 1
                except Exception as exc:
                    tally.fail(f"load {ref}: {_describe(exc)}")
                else:
                    want = registered.get(loaded_meta.version)
                    if ref != "dev" and loaded_meta.version != ref:
                        tally.mistake(f"asked for {ref}, got {loaded_meta.version}")
                    elif loaded.get("marker") not in attempted:
                        tally.mistake(f"{loaded_meta.version} holds {loaded.get('marker')!r}, never registered")
                    elif want is not None and loaded.get("marker") != want:
                        tally.mistake(f"{loaded_meta.version} holds {loaded.get('marker')!r}, registered {want!r}")
            if not ok:
                time.sleep(0.05)
        faulting.join()
        for problem in registry.verify("qa"):
            tally.mistake(f"verify: {problem}")
    return {**tally.figures(), "registered": len(registered), "registered_after_restart": len(after_restart),
            "first_register_after_restart_s": round(after_restart[0], 3) if after_restart else None,
            "lock_timeouts_after_restart": lock_timeouts, "integrity_errors": integrity_errors}


SCENARIOS = ("cache", "limiter", "limiter_sigstop", "agent_state", "registry")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the limiter's Redis stays down")
    parser.add_argument("--rate", type=float, default=100.0, help="the limiter's requests per second")
    parser.add_argument("--processes", type=int, default=3, help="processes sharing the limiter's key")
    parser.add_argument("--local-share", type=float, help="fix the limiter's outage share (default: learnt)")
    parser.add_argument("--scale", type=float, default=1.0, help="workload size of the other scenarios")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    parser.add_argument("--json", dest="json_path", help="also write the result here")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)  # the outage warnings are expected here
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "cache": lambda: cache_scenario(args.scale),
        "limiter": lambda: limiter_scenario(args.rate, 2.0, args.outage, 3.0, freeze=False,
                                            processes=args.processes, local_share=args.local_share),
        "limiter_sigstop": lambda: limiter_scenario(args.rate, 1.0, args.outage, 3.0, freeze=True,
                                                    processes=args.processes, local_share=args.local_share),
        "agent_state": lambda: agent_state_scenario(args.scale),
        "registry": lambda: registry_scenario(args.scale),
    }
    result: dict[str, Any] = {
        "meaning": {"failed": "a call that should have been served failed, or raised other than a clean "
                              "'Redis unavailable' error", "wrong": "an answer that differs from the truth",
                    "unavailable": "a clean typed error while Redis was down, where the backend cannot serve "
                                   "without it (agent state, registry)"}}
    for name in args.only or SCENARIOS:
        started = time.perf_counter()
        log(f"{name}: running")
        result[name] = runs[name]()
        result[name]["wall_s"] = round(time.perf_counter() - started, 2)
        log(f"{name}: calls {result[name]['calls']}, failed {result[name]['failed']}, wrong {result[name]['wrong']}"
            f", unavailable {result[name]['unavailable']}")
    result["ok"] = all(result[n]["failed"] == 0 and result[n]["wrong"] == 0 for n in args.only or SCENARIOS)
    # the degrading parts must also find Redis again by themselves
    result["ok"] = result["ok"] and all(result[n].get("redis_rejoined", True) for n in args.only or SCENARIOS)
    for name in ("limiter", "limiter_sigstop"):
        if name in result:
            result["ok"] = result["ok"] and result[name]["outage_rate_ratio"] <= 2.0
    emit(result, args.json_path, None)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
