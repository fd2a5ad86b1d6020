"""The examples in crates/dspyo3-native/README.md run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "crates" / "dspyo3-native" / "README.md"


def _run(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_examples_run(tmp_path: Path) -> None:
    kernels, transport = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    out = _run(kernels, tmp_path)
    assert "('a'," in out and "42" in out
    assert _run(transport, tmp_path).startswith("Paris (")
