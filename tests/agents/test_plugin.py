"""dspyo3-agents installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

import pytest

from dspyo3_core.testing.contracts import PluginContract


class TestAgentsPlugin(PluginContract):
    distribution = "dspyo3-agents"
    entry_point = "agents"


def test_importing_the_plugin_loads_no_agent_machinery() -> None:
    """The ``dspyo3`` CLI imports every plugin at start-up: the package ``__init__`` is lazy (PEP 562)."""
    import subprocess
    import sys

    code = ("import sys, dspyo3_agents.plugin, dspyo3_agents\n"
            "print(sorted(m for m in sys.modules if m.startswith(('dspyo3_agents', 'dspyo3_async'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['dspyo3_agents', 'dspyo3_agents.plugin']"


def test_every_public_name_resolves_lazily() -> None:
    import dspyo3_agents
    from dspyo3_agents import tools

    for name in dspyo3_agents.__all__:
        assert getattr(dspyo3_agents, name) is not None, name
    assert dspyo3_agents.ToolRegistry is tools.ToolRegistry
    assert set(dspyo3_agents.__all__) <= set(dir(dspyo3_agents))
    with pytest.raises(AttributeError, match="NoSuchThing"):
        dspyo3_agents.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
