"""The Python examples in packages/production/README.md run as written and print what they say."""

from __future__ import annotations

from pathlib import Path

from dspyo3_core.testing.readme import run_python_blocks

README = Path(__file__).resolve().parents[2] / "packages" / "production" / "README.md"


def test_readme_examples_run(tmp_path: Path) -> None:
    quick, cache, logs, breaker, serve = run_python_blocks(README, tmp_path, expect=5)
    assert quick[:2] == ["WHAT IS DSPY?", "WHAT IS DSPY?"] and quick[3:] == ["2", "2"]
    assert quick[2].startswith("{'alice': ")
    assert cache == ["{'outputs': ['hello']}", "1"]
    assert logs == ["****cdef password is ****ter2 r-1"]
    assert breaker[0] == "open" and float(breaker[1]) > 0 and breaker[2].split()[0] == breaker[2].split()[1]
    assert serve == ["{'answer': 'Paris'} local", "question"]
