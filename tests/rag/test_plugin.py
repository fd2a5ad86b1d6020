"""dspyo3-rag installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestRagPlugin(PluginContract):
    distribution = "dspyo3-rag"
    entry_point = "rag"
