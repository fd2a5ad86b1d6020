"""dspyo3-agents installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestAgentsPlugin(PluginContract):
    distribution = "dspyo3-agents"
    entry_point = "agents"
