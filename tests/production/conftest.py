"""Fixtures for dspyo3-production: fresh metrics, a plugin manager with the production wrapper, an LM on the
loopback server that answers deterministically, and a clean ``dspy.cache`` / active stack / log handlers after
every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import dspy
import pytest
from prometheus_client import CollectorRegistry

import dspyo3_production as prod
from dspyo3_core.lm import HookedLM
from dspyo3_core.plugins import PluginManager, core_only_manager
from dspyo3_core.testing.server import LMServer, field_responder
from dspyo3_production import plugin as production_plugin
from dspyo3_production import stack as stack_module
from dspyo3_production.metrics import Metrics


def answer_for(question: str) -> str:
    """What the loopback server answers to ``question`` (so a wrong cached value is detectable)."""
    return f"answer to {question}"


@pytest.fixture(autouse=True)
def clean_production() -> Iterator[None]:
    """Each test starts with no active stack (and no config read behind its back) and DSPy's own cache."""
    saved_cache = dspy.cache
    saved_callbacks = list(dspy.settings.get("callbacks") or [])
    stack_module.disable()
    dspy.cache = dspy.clients.Cache(False, True, None)  # no answers from earlier runs' disk cache
    yield
    stack_module.disable()
    stack_module._loaded_from_settings = False
    dspy.cache = saved_cache
    callbacks = dspy.settings.get("callbacks")
    if isinstance(callbacks, list):
        callbacks[:] = saved_callbacks
    root = logging.getLogger("dspyo3")
    for handler in [h for h in root.handlers if isinstance(h, prod.logs.JsonEventHandler)]:
        root.removeHandler(handler)
        handler.flush()
    root.propagate = True
    root.setLevel(logging.NOTSET)


@pytest.fixture
def metrics() -> Metrics:
    """Metrics on a registry of their own."""
    return Metrics(CollectorRegistry())


@pytest.fixture
def manager() -> PluginManager:
    """Core's plugin plus the production plugin (its ``dspyo3_lm_call`` wrapper), no entry points."""
    pm = core_only_manager()
    pm.register(production_plugin, name="production", distribution="dspyo3-production")
    return pm


@pytest.fixture
def qa_server() -> Iterator[LMServer]:
    """Loopback server answering every DSPy question with :func:`answer_for`."""
    with LMServer(field_responder(lambda fields: {"answer": answer_for(fields["question"])})) as server:
        yield server


@pytest.fixture
def qa_lm(qa_server: LMServer, manager: PluginManager) -> HookedLM:
    """A cached ``HookedLM`` on :func:`qa_server` through the production wrapper (no retries)."""
    return HookedLM("openai/gpt-4o-mini", api_base=qa_server.api_base, api_key="sk-test-abcdefghijklmnop",
                    num_retries=0, cache=True, engine="litellm", plugin_manager=manager)
