"""dspyo3-async installs, imports and registers its plugin through the ``dspyo3`` entry-point group."""

from __future__ import annotations

from dspyo3_core.testing.contracts import PluginContract


class TestAsyncPlugin(PluginContract):
    distribution = "dspyo3-async"
    entry_point = "async"
