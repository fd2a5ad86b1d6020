"""Run the Python examples of a README as written, for tests that check what they print.

    from dspyo3_core.testing.readme import run_python_blocks

    def test_readme_examples(tmp_path):
        quick, cache = run_python_blocks(README, tmp_path, expect=2)
        assert quick == ["42"]

Each fenced ``python`` block runs in a fresh interpreter (this one's ``sys.executable``) in ``cwd``, so an example
cannot lean on state another example left behind; what a block prints is returned line by line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
"""A fenced ``python`` block of Markdown (group 1: its code)."""


def python_blocks(readme: Path | str) -> list[str]:
    """The code of every fenced ``python`` block of ``readme``, in order."""
    return PYTHON_BLOCK.findall(Path(readme).read_text(encoding="utf-8"))


def run_python_blocks(readme: Path | str, cwd: Path | str, *, expect: int | None = None,
                      env: Mapping[str, str] | None = None, timeout: float = 120.0) -> list[list[str]]:
    """Run every ``python`` block of ``readme`` in a fresh interpreter in ``cwd``; each block's stdout lines.

    Raises AssertionError (with the block's number and the end of its stderr) when a block exits non-zero, and
    when ``expect`` is given and the README has another number of blocks (an example added or dropped without its
    test)."""
    blocks = python_blocks(readme)
    if expect is not None and len(blocks) != expect:
        raise AssertionError(f"{readme}: {len(blocks)} python blocks, the test expects {expect}")
    outputs = []
    for number, code in enumerate(blocks, 1):
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=None if env is None else dict(env),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{readme}: python block {number} exited {result.returncode}:\n"
                                 f"{result.stderr[-3000:]}")
        outputs.append(result.stdout.splitlines())
    return outputs
