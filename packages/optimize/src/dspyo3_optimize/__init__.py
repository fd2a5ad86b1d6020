"""dspyo3-optimize: optimizer runs for DSPy with progress and checkpoints, a versioned registry of compiled programs,
evaluation, statistical comparison and quality gates.

This package is a skeleton: it installs, imports and registers its plugin (the ``dspyo3 optimize`` command
group) through the ``dspyo3`` entry-point group. It claims no features yet.
"""

__version__ = "0.1.0"
