"""TenantGate: API keys (hashed, constant-time), rate limits, tokens per minute, USD budgets per UTC day / month,
shared through a real Redis by two gates (as two workers would be), and the local fallback while Redis is down."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import logging
import time
from typing import Any

import pytest

from dspyo3_production.serve.config import ServeConfig, TenantConfig
from dspyo3_production.serve.errors import ServeError
from dspyo3_production.serve.tenants import Tenant, TenantGate, hash_key
from tests.production.serve.conftest import uvicorn_server

KEY_A = "sk-acme-0123456789abcdef"
KEY_B = "sk-beta-fedcba9876543210"
WRONG = "sk-wrong-5555555555555555"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tenant(name: str, key: str, **limits: float) -> TenantConfig:
    return TenantConfig(name, (hash_key(key),), **limits)


def gate_of(*tenants: TenantConfig, **options: object) -> TenantGate:
    return TenantGate(tenants, **options)  # type: ignore[arg-type]


def test_hash_key_is_sha256_hex_of_the_key() -> None:
    assert hash_key("secret") == hashlib.sha256(b"secret").hexdigest()
    assert hash_key(" secret\n") == hash_key("secret")


def test_from_config_without_tenants_is_none() -> None:
    assert TenantGate.from_config(ServeConfig()) is None
    gate = TenantGate.from_config(ServeConfig(tenants=(tenant("acme", KEY_A),)))
    assert gate is not None and gate.tenants == ["acme"]


@pytest.mark.parametrize("headers", [
    {"authorization": f"Bearer {KEY_A}"},
    {"Authorization": f"bearer   {KEY_A} "},
    {"x-api-key": KEY_A},
    {"X-API-Key": KEY_A},
    {"authorization": "Basic dXNlcjpwYXNz", "x-api-key": KEY_A},
])
def test_authenticate_by_bearer_or_x_api_key(headers: dict[str, str]) -> None:
    gate = gate_of(tenant("acme", KEY_A), tenant("beta", KEY_B))
    found = gate.authenticate(headers)
    assert isinstance(found, Tenant) and found.name == "acme" and found.config.name == "acme"
    assert gate.authenticate({"x-api-key": KEY_B}).name == "beta"


def test_authenticate_with_starlette_headers() -> None:
    from starlette.datastructures import Headers

    gate = gate_of(tenant("acme", KEY_A))
    assert gate.authenticate(Headers({"X-Api-Key": KEY_A})).name == "acme"
    assert gate.authenticate(Headers({"AUTHORIZATION": f"Bearer {KEY_A}"})).name == "acme"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer "}, {"authorization": "Basic abc"},
                                     {"x-api-key": "  "}])
def test_missing_key_is_401_with_bearer_advice(headers: dict[str, str]) -> None:
    gate = gate_of(tenant("acme", KEY_A))
    with pytest.raises(ServeError) as caught:
        gate.authenticate(headers)
    assert caught.value.status == 401 and caught.value.type == "unauthorized"
    assert "WWW-Authenticate: Bearer" in caught.value.message and "x-api-key" in caught.value.message


def test_wrong_key_is_401_and_no_key_appears_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    gate = gate_of(tenant("acme", KEY_A), tenant("beta", KEY_B))
    caplog.set_level(logging.DEBUG)
    messages = []
    for headers in ({"authorization": f"Bearer {WRONG}"}, {"x-api-key": KEY_A + "x"}, {"x-api-key": KEY_B[:-1]}):
        with pytest.raises(ServeError) as caught:
            gate.authenticate(headers)
        error = caught.value
        assert error.status == 401 and error.type == "unauthorized"
        messages.append(error.message)
        text = f"{error} {error!r} {error.to_json('r1')}"
        for secret in (WRONG, KEY_A, KEY_B, KEY_B[:-1], hash_key(KEY_A), hash_key(KEY_B), "acme", "beta"):
            assert secret not in text
    assert len(set(messages)) == 1  # the same answer whichever key was tried: nothing about which keys exist
    assert caplog.records  # the refusal is logged ...
    for secret in (WRONG, KEY_A, KEY_B[:-1], hash_key(WRONG)):
        assert secret not in caplog.text  # ... without the key


def test_requests_per_second_429_with_retry_after() -> None:
    gate = gate_of(tenant("acme", KEY_A, requests_per_second=1), tenant("beta", KEY_B, requests_per_second=1))
    acme, beta = gate.authenticate({"x-api-key": KEY_A}), gate.authenticate({"x-api-key": KEY_B})

    async def main() -> ServeError:
        await gate.admit(acme, 0)
        with pytest.raises(ServeError) as caught:
            await gate.admit(acme, 0)
        await gate.admit(beta, 0)  # another tenant's limit is its own
        return caught.value

    error = asyncio.run(main())
    assert error.status == 429 and error.type == "rate_limited"
    assert error.retry_after is not None and 0 < error.retry_after <= 1.0
    assert error.retry_after_header == "1"


def test_tokens_per_minute_checked_with_the_estimate_and_corrected_on_settle() -> None:
    gate = gate_of(tenant("acme", KEY_A, tokens_per_minute=1000))
    acme = gate.authenticate({"x-api-key": KEY_A})

    async def main() -> None:
        await gate.admit(acme, 600)
        gate.settle(acme, 100, 0.0)  # used far less than estimated: 500 tokens given back
        await gate.flush()
        await gate.admit(acme, 600)  # 100 + 600 <= 1000
        gate.settle(acme, 600, 0.0)
        await gate.flush()
        with pytest.raises(ServeError) as caught:
            await gate.admit(acme, 600)  # 700 used, 300 left
        assert caught.value.status == 429 and caught.value.type == "rate_limited"
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 60
        await gate.admit(acme, 250)
        gate.settle(acme, 900, 0.0)  # used more than estimated: the rest is charged
        await gate.flush()
        with pytest.raises(ServeError):
            await gate.admit(acme, 1)

    asyncio.run(main())


def test_day_budget_429_until_midnight_utc_then_admitted() -> None:
    clock = Clock(utc(2026, 12, 7, 23, 0))
    gate = gate_of(tenant("acme", KEY_A, usd_per_day=1.0), tenant("beta", KEY_B, usd_per_day=1.0), clock=clock)
    acme, beta = gate.authenticate({"x-api-key": KEY_A}), gate.authenticate({"x-api-key": KEY_B})

    async def main() -> None:
        await gate.admit(acme, 10)
        gate.settle(acme, 10, 0.6)
        await gate.admit(acme, 10)  # 0.6 < 1.0
        gate.settle(acme, 10, 0.6)
        await gate.flush()
        with pytest.raises(ServeError) as caught:
            await gate.admit(acme, 10)
        error = caught.value
        assert error.status == 429 and error.type == "over_budget"
        assert error.retry_after == pytest.approx(3600.0)
        assert "per day" in error.message
        await gate.admit(beta, 10)
        clock.now = utc(2026, 12, 8, 0, 0) + 1
        await gate.admit(acme, 10)  # a new UTC day, a new budget

    asyncio.run(main())


def test_month_budget_retry_after_until_the_month_rolls_over() -> None:
    clock = Clock(utc(2026, 12, 31, 12, 0))
    gate = gate_of(tenant("acme", KEY_A, usd_per_day=100.0, usd_per_month=5.0), clock=clock)
    acme = gate.authenticate({"x-api-key": KEY_A})
    gate.settle(acme, 0, 5.0)  # outside an event loop: settled at once

    async def main() -> ServeError:
        with pytest.raises(ServeError) as caught:
            await gate.admit(acme, 0)
        return caught.value

    error = asyncio.run(main())
    assert error.type == "over_budget" and error.retry_after == pytest.approx(utc(2027, 1, 1) - clock.now)


def test_two_gates_share_budgets_and_limits_through_redis(redis_url: str) -> None:
    clock = Clock(utc(2026, 12, 7, 12, 0))
    config = ServeConfig(redis_url=redis_url, workers=2, tenants=(
        tenant("shared-a", KEY_A, usd_per_day=1.0), tenant("shared-b", KEY_B, usd_per_day=1.0),
        tenant("shared-c", WRONG, requests_per_second=0.5)))
    first, second = TenantGate.from_config(config, clock=clock), TenantGate.from_config(config, clock=clock)
    assert first is not None and second is not None
    a = first.authenticate({"x-api-key": KEY_A})
    b = second.authenticate({"x-api-key": KEY_B})
    c = first.authenticate({"x-api-key": WRONG})

    async def main() -> None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(redis_url)
        await client.delete("dspyo3:serve:tenant:shared-a:usd:day:2026-12-07",
                            "dspyo3:serve:tenant:shared-b:usd:day:2026-12-07", "dspyo3:serve:tenant:shared-c:requests")
        await first.admit(a, 10)
        first.settle(a, 10, 0.7)
        await first.flush()
        await second.admit(a, 10)  # 0.7 spent so far, seen by the other worker
        second.settle(a, 10, 0.7)
        await second.flush()
        for gate in (first, second):
            with pytest.raises(ServeError) as caught:
                await gate.admit(a, 10)
            assert caught.value.type == "over_budget" and caught.value.retry_after == pytest.approx(43200.0)
            await gate.admit(b, 10)  # the other tenant keeps being admitted on both
        ttl = await client.ttl("dspyo3:serve:tenant:shared-a:usd:day:2026-12-07")
        assert 0 < ttl <= 43200 + 86400
        assert float(await client.get("dspyo3:serve:tenant:shared-a:usd:day:2026-12-07")) == pytest.approx(1.4)
        await first.admit(c, 0)
        with pytest.raises(ServeError) as caught:
            await second.admit(c, 0)  # the request rate is shared too
        assert caught.value.type == "rate_limited" and caught.value.retry_after is not None
        await client.aclose()
        await first.aclose()
        await second.aclose()

    asyncio.run(main())
    assert first.outages == 0 and second.outages == 0


def test_redis_killed_mid_way_falls_back_to_local_state(redis_binary: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from dspyo3_core.testing.services import RedisProcess

    clock = Clock(utc(2026, 12, 7, 12, 0))
    with RedisProcess() as server:
        url = server.url.replace("redis://", "redis://:hunter2-password@")  # a password to mask in the warning
        server.stop()
        server.process = None
        caplog.set_level(logging.INFO)
        gate = gate_of(tenant("acme", KEY_A, usd_per_day=1.0, requests_per_second=1000),
                       tenant("beta", KEY_B, usd_per_day=1.0), redis_url=url, clock=clock)
        acme, beta = gate.authenticate({"x-api-key": KEY_A}), gate.authenticate({"x-api-key": KEY_B})
        server.start()

        async def main() -> float:
            import redis.asyncio

            await gate.admit(acme, 5)
            gate.settle(acme, 5, 0.4)
            await gate.flush()
            assert gate.redis_available
            server.kill()
            for _ in range(5):  # answered all along, from local state
                await gate.admit(acme, 5)
                await gate.admit(beta, 5)
            assert not gate.redis_available
            gate.settle(acme, 5, 0.7)  # spent during the outage: counted locally on top of the last shared total
            await gate.flush()
            with pytest.raises(ServeError) as caught:
                await gate.admit(acme, 5)
            assert caught.value.type == "over_budget"
            await gate.admit(beta, 5)
            server.start()
            await asyncio.sleep(2.5)  # past the longest back-off
            await gate.admit(beta, 5)  # reaches Redis again and adds what was spent meanwhile
            assert gate.redis_available
            client = redis.asyncio.Redis.from_url(server.url)
            total = float(await client.get("dspyo3:serve:tenant:acme:usd:day:2026-12-07") or 0)
            await client.aclose()
            await gate.aclose()
            return total

        # the restarted server lost its data (no persistence): only the outage's spend was written back
        assert asyncio.run(main()) == pytest.approx(0.7)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and gate.outages == 1  # one warning per outage
    assert "hunter2" not in caplog.text and "****" in warnings[0].getMessage()


# -- through HTTP: two workers sharing Redis --------------------------------------------------------------------------
def worker(app: Any) -> contextlib.AbstractContextManager[str]:
    """``app`` on a real uvicorn server on 127.0.0.1 in a thread, as one worker process would run it."""
    return uvicorn_server(app)


def test_tenant_over_budget_gets_429_while_another_is_served_by_two_workers_sharing_redis(
        redis_url: str, qa_lm: Any) -> None:
    import dspy
    import httpx
    import redis
    from prometheus_client import CollectorRegistry

    from dspyo3_production.metrics import Metrics
    from dspyo3_production.serve.app import create_app

    config = ServeConfig(redis_url=redis_url, workers=2, tenants=(
        tenant("http-acme", KEY_A, usd_per_day=1e-6), tenant("http-beta", KEY_B, usd_per_day=100.0)))
    client = redis.Redis.from_url(redis_url)
    client.delete(*[f"dspyo3:serve:tenant:{name}:usd:day:{time.strftime('%Y-%m-%d', time.gmtime())}"
                    for name in ("http-acme", "http-beta")])

    class Source:  # a ProgramSource over one in-memory module
        name, reference, stage = "qa", "memory:qa", None

        def current(self) -> str:
            return "1.0.0"

        def load(self, version: str) -> Any:
            program = dspy.Predict("question -> answer")
            program.set_lm(qa_lm)
            return program

    apps = [create_app(config, sources={"qa": Source()}, metrics=Metrics(CollectorRegistry())) for _ in range(2)]
    acme, beta = {"x-api-key": KEY_A}, {"authorization": f"Bearer {KEY_B}"}
    with worker(apps[0]) as one, worker(apps[1]) as two, httpx.Client(timeout=30) as http:
        first = http.post(f"{one}/v1/programs/qa", json={"question": "budget question 1"}, headers=acme)
        assert first.status_code == 200, first.text
        assert first.json()["cost"] > 1e-6  # more than acme's whole day
        day_key = f"dspyo3:serve:tenant:http-acme:usd:day:{time.strftime('%Y-%m-%d', time.gmtime())}"
        deadline = time.monotonic() + 10
        while client.get(day_key) is None:  # the first worker charges the cost right after answering
            assert time.monotonic() < deadline, "the first worker never charged acme's cost to Redis"
            time.sleep(0.01)
        for url in (two, one):
            refused = http.post(f"{url}/v1/programs/qa", json={"question": "budget question 2"}, headers=acme)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["type"] == "over_budget"
            assert 1 <= int(refused.headers["retry-after"]) <= 86400
            served = http.post(f"{url}/v1/programs/qa", json={"question": f"beta on {url}"}, headers=beta)
            assert served.status_code == 200, served.text
            assert served.json()["outputs"]["answer"] == f"answer to beta on {url}"
    client.close()
