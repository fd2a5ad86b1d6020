"""dspyo3-production installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestProductionPlugin(PluginContract):
    distribution = "dspyo3-production"
    entry_point = "production"
