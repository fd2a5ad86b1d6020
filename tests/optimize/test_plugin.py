"""dspyo3-optimize installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestOptimizePlugin(PluginContract):
    distribution = "dspyo3-optimize"
    entry_point = "optimize"
