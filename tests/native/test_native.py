"""The compiled ``dspyo3_native`` module imports and reports the Rust build it came from."""

from __future__ import annotations

import re
from pathlib import Path

import dspyo3_native

CRATES = Path(__file__).resolve().parents[2] / "crates"


def crate_version(name: str) -> str:
    found = re.search(r'^version = "([^"]+)"', (CRATES / name / "Cargo.toml").read_text(), re.M)
    assert found is not None
    return found.group(1)


def test_version_matches_the_crate() -> None:
    assert dspyo3_native.__version__ == crate_version("dspyo3-native")


def test_build_info_lists_the_compiled_kernels() -> None:
    kernels = dspyo3_native.kernels()
    assert isinstance(kernels, list)
    assert all(isinstance(name, str) for name in kernels)
    expected = ",".join(kernels) if kernels else "none"
    assert dspyo3_native.build_info() == f"dspyo3-kernels {crate_version('dspyo3-kernels')} (kernels: {expected})"


def test_it_is_the_compiled_extension() -> None:
    from dspyo3_native import _native

    assert Path(_native.__file__).suffix in {".so", ".pyd"}
