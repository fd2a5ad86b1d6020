"""Redis killed while ``dspyo3 serve`` is under load: every request is still answered (the cache's Redis tier and
the tenants' shared limits and budgets degrade to per-process state), none is lost, and readiness says Redis is
degraded."""

from __future__ import annotations

import asyncio
import threading

import httpx

import dspyo3_production as prod
from dspyo3_core.lm import HookedLM
from dspyo3_core.testing.services import RedisProcess
from dspyo3_production.metrics import Metrics
from dspyo3_production.serve.app import create_app
from dspyo3_production.serve.config import ServeConfig, TenantConfig
from dspyo3_production.serve.tenants import TenantGate, hash_key

from .conftest import StaticSource, qa_program, uvicorn_server

KEY = "sk-outage-abcdefghijklmnop"
CLIENTS = 8
PER_CLIENT = 30


def test_redis_killed_mid_load_loses_no_request(redis_binary: str, qa_lm: HookedLM, metrics: Metrics) -> None:
    with RedisProcess() as redis:
        cache = prod.TieredCache(redis_url=redis.url, redis_timeout=0.25, metrics=metrics)
        prod.enable(prod.Production(cache=cache, metrics=metrics, log_events=False))
        config = ServeConfig(redis_url=redis.url, tenants=(
            TenantConfig("acme", (hash_key(KEY),), requests_per_second=10_000, usd_per_day=100.0),))
        gate = TenantGate.from_config(config)
        app = create_app(config, sources={"qa": StaticSource("qa", {"1.0.0": qa_program(qa_lm)})}, tenants=gate,
                         metrics=metrics)
        done = 0
        killed = threading.Event()

        async def client(url: str, index: int) -> list[tuple[int, str, str]]:
            nonlocal done
            seen = []
            async with httpx.AsyncClient(base_url=url, timeout=60, headers={"x-api-key": KEY}) as http:
                for i in range(PER_CLIENT):
                    question = f"c{index}-q{i % 10}"  # repeats: some answers come from the cache tiers
                    response = await http.post("/v1/programs/qa", json={"question": question})
                    answer = response.json().get("outputs", {}).get("answer", "") if response.status_code == 200 \
                        else response.text
                    seen.append((response.status_code, question, answer))
                    done += 1
                    if done == CLIENTS * PER_CLIENT // 3 and not killed.is_set():
                        redis.kill()  # SIGKILL: no goodbye to the connected clients
                        killed.set()
            return seen

        async def load(url: str) -> tuple[list[tuple[int, str, str]], dict[str, object]]:
            results = await asyncio.gather(*(client(url, i) for i in range(CLIENTS)))
            async with httpx.AsyncClient(base_url=url) as http:
                ready = (await http.get("/readyz")).json()
            return [item for batch in results for item in batch], ready

        with uvicorn_server(app) as url:
            seen, ready = asyncio.run(load(url))
    assert killed.is_set()
    assert len(seen) == CLIENTS * PER_CLIENT
    failed = [item for item in seen if item[0] != 200]
    assert not failed, failed[:3]
    assert all(answer == f"answer to {question}" for _, question, answer in seen)
    assert ready["status"] == "ready" and ready["degraded"]  # still serving; says what is degraded
