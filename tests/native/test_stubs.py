"""The hand-written ``_native.pyi`` matches the compiled extension (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys


def test_native_stub_matches_the_compiled_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dspyo3_native._native"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
