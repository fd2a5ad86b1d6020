"""pytest fixtures for dspyo3 and plugin authors.

Enable them in a ``conftest.py``::

    pytest_plugins = ["dspyo3_core.testing.pytest_plugin"]

Fixtures:

* ``lm_server`` — a running :class:`~dspyo3_core.testing.LMServer` (fresh per test);
* ``plugin_manager`` — a :class:`~dspyo3_core.PluginManager` with only core's plugin (no entry points), so a
  test registers exactly the plugins it means to test;
* ``loopback_lm`` — a :class:`~dspyo3_core.HookedLM` on ``lm_server`` through LiteLLM, cache off, no retries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager
from dspyo3_core.testing.server import LMServer


def core_plugin_manager() -> PluginManager:
    """A plugin manager holding only core's plugin (no entry points loaded)."""
    from dspyo3_core import plugin as core_plugin

    manager = PluginManager(entry_points=False)
    manager.register(core_plugin, name="core", distribution="dspyo3-core")
    manager.load()
    return manager


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
