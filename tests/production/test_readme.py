"""The Python examples in packages/production/README.md run as written and print what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "packages" / "production" / "README.md"


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 4
    outputs = []
    for code in blocks:
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout.splitlines())
    quick, cache, logs, breaker = outputs
    assert quick[:2] == ["WHAT IS DSPY?", "WHAT IS DSPY?"] and quick[3:] == ["2", "2"]
    assert quick[2].startswith("{'alice': ")
    assert cache == ["{'outputs': ['hello']}", "1"]
    assert logs == ["****cdef password is ****ter2 r-1"]
    assert breaker[0] == "open" and float(breaker[1]) > 0 and breaker[2].split()[0] == breaker[2].split()[1]
