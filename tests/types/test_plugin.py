"""dspyo3-types installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestTypesPlugin(PluginContract):
    distribution = "dspyo3-types"
    entry_point = "types"
