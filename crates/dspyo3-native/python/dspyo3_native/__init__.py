"""Rust kernels for dspyo3, compiled with PyO3 (see ``crates/dspyo3-kernels``).

Import what you need from here; the compiled module is ``dspyo3_native._native``.
"""

from dspyo3_native._native import __version__, build_info, kernels

__all__ = ["__version__", "build_info", "kernels"]
