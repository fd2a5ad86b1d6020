"""The examples in crates/dspyo3-native/README.md run as written."""

from __future__ import annotations

from pathlib import Path

from dspyo3_core.testing.readme import run_python_blocks

README = Path(__file__).resolve().parents[2] / "crates" / "dspyo3-native" / "README.md"


def test_readme_examples_run(tmp_path: Path) -> None:
    kernels, transport = ("\n".join(lines) for lines in run_python_blocks(README, tmp_path, expect=2, timeout=60))
    assert "('a'," in kernels and "42" in kernels
    assert transport.startswith("Paris (")
