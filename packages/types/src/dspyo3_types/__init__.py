"""dspyo3-types: typed signatures for DSPy: Rust (serde), Pydantic and JSON-Schema code generated from signatures,
and safe prediction parsing.

This package is a skeleton: it installs, imports and registers its plugin (the ``dspyo3 types`` command
group) through the ``dspyo3`` entry-point group. It claims no features yet.
"""

__version__ = "0.1.0"
